"""``fm9g train`` as a real subprocess on a real mixture: outputs, TensorBoard tags, SIGKILL + exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from backend_helpers import fm9g_command, run_fm9g, write_train_config
from fm9g.backends.training.checkpoints import read_manifest
from fm9g.backends.training.metrics import read_log
from fm9g.core.schemas import schema_problems


def test_train_writes_checkpoints_logs_and_tensorboard(mixture, tmp_path):
    config = write_train_config(tmp_path, mixture / "mix.json")
    result = run_fm9g("train", "--config", str(config), "train_iters=6", "save_iters=3", "inspect_iters=3")
    assert result.returncode == 0, result.stderr
    for text in ("fm9g train", "torch", "transformers", "preset tiny-llama", "trainable", "tasks chat, book",
                 "6 steps", "step 3: loss"):
        assert text in result.stderr
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("step-")) == ["step-00000003", "step-00000006"]
    manifest = read_manifest(run / "step-00000006")
    assert schema_problems(manifest, "checkpoint") == []
    assert manifest["step"] == 6 and manifest["weights"] == "full" and manifest["config"]["save"] == str(run)
    assert manifest["config"]["data"]["manifest"] == str(mixture / "mix.json")  # resolved against the config file
    weights = load_file(run / "step-00000006" / "model.safetensors")
    assert "model.layers.0.self_attn.q_proj.weight" in weights and weights["lm_head.weight"].dtype == torch.float32
    stream_state = json.loads((run / "step-00000006" / "stream_state.json").read_text())
    assert stream_state  # the mixer's JSON state

    log = read_log(run / "train_log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert log[0]["lr"] == pytest.approx(1e-3)  # warmup's first step is not lr=0
    assert sum(r["tokens"] for r in log) == manifest["tokens_seen"]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"Loss/train", "Loss/train/chat", "Loss/train/book", "Optimizer/lr", "Optimizer/scale",
            "Optimizer/grad_norm", "Throughput/tokens_per_s"} <= tags
    losses = events.Scalars("Loss/train")
    assert [e.step for e in losses] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in losses] == pytest.approx([r["loss"] for r in log], rel=1e-6)
    chat = [(r["step"], r["task_loss"]["chat"]) for r in log if "chat" in r["task_loss"]]
    logged = events.Scalars("Loss/train/chat")
    assert chat and [e.step for e in logged] == [step for step, _ in chat]
    assert [e.value for e in logged] == pytest.approx([value for _, value in chat], rel=1e-6)


@pytest.mark.slow
def test_sigkill_then_resume_auto_equals_uninterrupted_run(mixture, tmp_path):
    steps, every = 12, 3
    whole_dir, killed_dir = tmp_path / "whole", tmp_path / "killed"
    whole_dir.mkdir()
    killed_dir.mkdir()
    overrides = [f"train_iters={steps}", f"save_iters={every}"]
    whole = run_fm9g("train", "--config", str(write_train_config(whole_dir, mixture / "mix.json")), *overrides)
    assert whole.returncode == 0, whole.stderr

    config = write_train_config(killed_dir, mixture / "mix.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(fm9g_command("train", "--config", str(config), *overrides), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = killed_dir / "run" / "step-00000003" / "checkpoint.json"
    deadline = time.monotonic() + 240
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    assert not (killed_dir / "run" / f"step-{steps:08d}").exists(), "the run finished before it was killed"

    resumed = run_fm9g("train", "--config", str(config), *overrides, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resume    from" in resumed.stderr

    whole_log = read_log(whole_dir / "run" / "train_log.jsonl")
    resumed_log = read_log(killed_dir / "run" / "train_log.jsonl")
    assert [r["step"] for r in resumed_log] == list(range(1, steps + 1))
    assert [r["loss"] for r in resumed_log] == [r["loss"] for r in whole_log]
    assert [r["tokens"] for r in resumed_log] == [r["tokens"] for r in whole_log]
    final = f"step-{steps:08d}"
    a = load_file(whole_dir / "run" / final / "model.safetensors")
    b = load_file(killed_dir / "run" / final / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list((killed_dir / "run").glob(".step-*")) and not list((killed_dir / "run").glob(".ranks-*"))
    events = EventAccumulator(str(killed_dir / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("Loss/train")] == list(range(1, steps + 1))


def test_sigterm_ends_training_like_ctrl_c_and_os_errors_are_one_line(mixture, tmp_path):
    config = write_train_config(tmp_path, mixture / "mix.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(fm9g_command("train", "--config", str(config), "train_iters=100000", "save_iters=0"),
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "train_log.jsonl"
    deadline = time.monotonic() + 240
    while not (log.exists() and log.stat().st_size) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "fm9g train: interrupted" in stderr and "Traceback" not in stderr

    (tmp_path / "file").write_text("x")
    result = run_fm9g("train", "--config", str(config), f"save={tmp_path / 'file' / 'run'}", "train_iters=1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("fm9g train: error: ")
    assert str(tmp_path / "file") in result.stderr and "not a directory" in result.stderr


SIGTERM_DURING_A_STEP = """
import os, signal
from pathlib import Path

LOG, WENT_ON = Path(os.environ["TRAIN_LOG"]), Path(os.environ["WENT_ON"])


def transform(data, num_sample, r):
    if LOG.exists() and LOG.stat().st_size and not WENT_ON.exists():
        signal.raise_signal(signal.SIGTERM)
        WENT_ON.write_text("the step went on after the SIGTERM")
    return data
"""


def test_a_sigterm_inside_a_step_stops_the_run_at_the_next_step_boundary(mixture, tmp_path):
    """A SIGTERM raised at an arbitrary point of a step can land inside a lock that a background
    thread shares (tensorboardX's queue), after which cleanup waits forever; so it must not raise
    there. A transform script (run during the step, in the main thread) signals and must go on."""
    (tmp_path / "transform.py").write_text(SIGTERM_DURING_A_STEP)
    manifest = json.loads((mixture / "mix.json").read_text())
    for spec in manifest["datasets"]:
        spec["path"] = str(mixture / spec["path"])
        spec["transform"] = "./transform.py"
    (tmp_path / "mix.json").write_text(json.dumps(manifest))
    config = write_train_config(tmp_path, tmp_path / "mix.json")
    went_on = tmp_path / "went_on"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRAIN_LOG": str(tmp_path / "run" / "train_log.jsonl"),
           "WENT_ON": str(went_on)}
    command = fm9g_command("train", "--config", str(config), "train_iters=100000", "save_iters=0", "--trust-scripts")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 130, result.stderr
    assert "fm9g train: interrupted" in result.stderr and "Traceback" not in result.stderr
    assert went_on.exists(), "the SIGTERM raised inside the step instead of at its end"


def test_overrides_anywhere_trust_scripts_flag_and_resume_refuses_a_changed_run(mixture, tmp_path):
    config = write_train_config(tmp_path, mixture / "mix.json")
    first = run_fm9g("train", "--config", str(config), "save_iters=2", "--no-progress", "train_iters=2",
                     "--trust-scripts")
    assert first.returncode == 0, first.stderr
    changed = run_fm9g("train", "--config", str(config), "train_iters=4", "--resume", "auto", "batch_size=4")
    assert changed.returncode == 2
    assert "batch_size (2 -> 4)" in changed.stderr and "--allow-config-change" in changed.stderr
    longer = run_fm9g("train", "--config", str(config), "--resume", "auto", "train_iters=4", "lr=0.003")
    assert longer.returncode == 0, longer.stderr
    assert "resuming with a changed config: lr (0.002 -> 0.003)" in longer.stderr
    assert "train_iters (2 -> 4)" in longer.stderr and "trust_scripts (true -> false)" in longer.stderr
    assert read_manifest(tmp_path / "run" / "step-00000004")["config"]["lr"] == 0.003
    forced = run_fm9g("train", "--config", str(config), "--resume", "auto", "train_iters=6", "batch_size=4",
                      "--allow-config-change")
    assert forced.returncode == 0, forced.stderr
    assert run_fm9g("train", "--config", str(config), "--bogus").returncode == 2


def test_without_a_terminal_progress_is_a_plain_line_with_eta(mixture, tmp_path):
    config = write_train_config(tmp_path, mixture / "mix.json")
    result = run_fm9g("train", "--config", str(config), "train_iters=3", "save_iters=0", "progress_seconds=0")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("step ") and "ETA" in line]
    assert [line.split(":")[0] for line in lines] == ["step 1/3", "step 2/3", "step 3/3"]
    assert "tokens/s ETA 00:00:00" in lines[-1]
    quiet = run_fm9g("train", "--config", str(config), "train_iters=3", "save_iters=0", f"save={tmp_path / 'quiet'}")
    assert quiet.returncode == 0, quiet.stderr
    assert sum("ETA" in line for line in quiet.stderr.splitlines()) == 1, quiet.stderr  # default 60 s: the last step
