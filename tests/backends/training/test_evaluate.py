"""Held-out evaluation: per-sample exactness of packed batches, ranks, the training it must not change,
``fm9g eval`` reproducing the in-training figures, and the eval history across kill -9 + resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from backend_helpers import fm9g_command, run_fm9g, write_train_config
from fm9g.backends.models.build import build_model
from fm9g.backends.training.checkpoints import read_manifest
from fm9g.backends.training.collectives import TorchDistributed
from fm9g.backends.training.evaluate import Evaluator, held_out_batches
from fm9g.backends.training.metrics import read_log
from fm9g.tokenizers import load_tokenizer

EVAL_CONFIG = {"max_length": 128, "batch_size": 2, "eval_tokens": 0, "trust_scripts": False}


def _held_out(mixture, **overrides):
    config = {**EVAL_CONFIG, "data": {"manifest": str(mixture / "mix.json")}, **overrides}
    return held_out_batches(config, load_tokenizer("byte"))


def test_a_packed_eval_batch_gives_each_sample_the_loss_it_has_alone(mixture):
    held = _held_out(mixture)
    model = build_model({"preset": "tiny-llama"}, seed=3, vocab_size=260)
    record = Evaluator(held, TorchDistributed())(model, step=7)
    assert model.training, "the model's mode is restored"

    sums, counts, samples = [0.0, 0.0], [0, 0], 0
    with torch.no_grad():
        for batch in held:
            starts = [int(i) for i in np.flatnonzero(batch.position_ids[: batch.num_tokens] == 0)] + [batch.num_tokens]
            for begin, end in zip(starts, starts[1:]):
                ids = torch.as_tensor(batch.input_ids[begin:end], dtype=torch.long)[None]
                targets = torch.as_tensor(batch.targets[begin:end], dtype=torch.long)
                logits = model(input_ids=ids, use_cache=False).logits[0]
                task = int(batch.task_ids[begin])
                sums[task] += float(F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum"))
                counts[task] += int((targets != -100).sum())
                samples += 1
    kept = sum(counts.samples for counts in held.counts.values())
    assert samples >= kept > len(list(held))  # whole samples or segment windows; several share a packed row
    # Attention leaking across packed samples moves a tiny model's loss by > 1e-3; float32 sums agree to ~1e-6.
    for task, name in enumerate(("chat", "book")):
        assert record["tasks"][name]["loss"] == pytest.approx(sums[task] / counts[task], rel=1e-5)
        assert record["tasks"][name]["target_tokens"] == counts[task]
        task_record = record["tasks"][name]
        assert task_record["rows"] == (23, 17)[task]
        assert task_record["rows"] == task_record["samples"] + sum(task_record["skipped"].values())
    assert record["loss"] == pytest.approx(sum(sums) / sum(counts), rel=1e-5)
    weighted = (0.6 * sums[0] / counts[0] + 0.4 * sums[1] / counts[1]) / 1.0
    assert record["weighted_loss"] == pytest.approx(weighted, rel=1e-5)
    assert record["perplexity"] == pytest.approx(np.exp(record["loss"]), rel=1e-9) and record["step"] == 7


def _eval_log(run):
    return read_log(run / "eval_log.jsonl")


def test_training_with_evaluation_trains_exactly_as_without_and_records_every_evaluation(mixture, tmp_path):
    config = write_train_config(tmp_path, mixture / "mix.json")
    plain = run_fm9g("train", "--config", str(config), "save=plain", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    evaluated = run_fm9g("train", "--config", str(config), "save=evaluated", "eval_iters=3", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "eval      every 3 steps" in evaluated.stderr
    assert "chat: 23 rows (test split" in evaluated.stderr and "book: 17 rows (test split" in evaluated.stderr
    assert "eval step 3: loss" in evaluated.stderr

    plain_log, evaluated_log = read_log(tmp_path / "plain" / "train_log.jsonl"), read_log(tmp_path / "evaluated" / "train_log.jsonl")
    assert [r["loss"] for r in evaluated_log] == [r["loss"] for r in plain_log]  # bit for bit
    assert [r["grad_norm"] for r in evaluated_log] == [r["grad_norm"] for r in plain_log]
    history = _eval_log(tmp_path / "evaluated")
    assert [r["step"] for r in history] == [3, 6, 8]  # every eval_iters steps and at the end
    assert history[-1]["loss"] < history[0]["loss"]
    assert read_manifest(tmp_path / "evaluated" / "step-00000008")["evaluation"] == history[-1]
    assert "evaluation" not in read_manifest(tmp_path / "evaluated" / "step-00000004")  # not evaluated at step 4
    assert not (tmp_path / "plain" / "eval_log.jsonl").read_text()

    events = EventAccumulator(str(tmp_path / "evaluated" / "tensorboard"))
    events.Reload()
    for tag, values in (("Loss/eval", [r["loss"] for r in history]),
                        ("Loss/eval_weighted", [r["weighted_loss"] for r in history]),
                        ("Loss/eval/chat", [r["tasks"]["chat"]["loss"] for r in history]),
                        ("Perplexity/eval/book", [r["tasks"]["book"]["perplexity"] for r in history])):
        assert [e.step for e in events.Scalars(tag)] == [3, 6, 8]
        assert [e.value for e in events.Scalars(tag)] == pytest.approx(values, rel=1e-6)

    # fm9g eval of the step-8 checkpoint, and of its export, gives the figures the run logged at step 8.
    report = tmp_path / "eval.json"
    result = run_fm9g("eval", "--checkpoint", str(tmp_path / "evaluated" / "step-00000008"), "--report", str(report),
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "all (token-weighted)" in result.stdout and "chat" in result.stdout
    assert json.loads(report.read_text())["evaluation"]["tasks"] == history[-1]["tasks"]
    exported = run_fm9g("export", "--checkpoint", str(tmp_path / "evaluated" / "step-00000008"),
                        "--output", str(tmp_path / "hf"), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    again = run_fm9g("eval", "--model", str(tmp_path / "hf"), "--manifest", str(mixture / "mix.json"),
                     "--report", str(report), cwd=tmp_path)
    assert again.returncode != 0 and "--force" in again.stderr  # an existing report is not overwritten silently
    again = run_fm9g("eval", "--model", str(tmp_path / "hf"), "--manifest", str(mixture / "mix.json"),
                     "--max-length", "128", "--batch-size", "2", "--report", str(report), "--force", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    from_export = json.loads(report.read_text())["evaluation"]
    for name, task in history[-1]["tasks"].items():
        assert from_export["tasks"][name]["loss"] == pytest.approx(task["loss"], rel=1e-6)


@pytest.mark.slow
def test_two_processes_evaluate_exactly_as_one(mixture, tmp_path):
    """Each rank evaluates every other batch (and a padding batch when the groups run out); the summed
    figures equal one process's. Losing the padding forward deadlocks; double-counting doubles sums."""
    config = write_train_config(tmp_path, mixture / "mix.json", train_iters=2, save_iters=2)
    trained = run_fm9g("train", "--config", str(config), cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    checkpoint = tmp_path / "run" / "step-00000002"
    batch_size = next(size for size in (1, 2, 3)
                      if len(list(_held_out(mixture, batch_size=size))) % 2 == 1)  # an odd count: one rank pads
    common = ["--checkpoint", str(checkpoint), "--batch-size", str(batch_size), "--force"]
    one = run_fm9g("eval", *common, "--report", str(tmp_path / "one.json"), cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "fm9g",
                          "eval", *common, "--report", str(tmp_path / "two.json")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    assert "cpu × 2" in two.stderr
    one_record = json.loads((tmp_path / "one.json").read_text())["evaluation"]
    two_record = json.loads((tmp_path / "two.json").read_text())["evaluation"]
    for name, task in one_record["tasks"].items():  # float64 sums added in another order: equal to ~1e-15
        assert two_record["tasks"][name]["loss"] == pytest.approx(task["loss"], rel=1e-12)
        assert two_record["tasks"][name]["target_tokens"] == task["target_tokens"]
    assert two_record["tokens"] == one_record["tokens"]


@pytest.mark.slow
def test_kill_9_and_resume_auto_keep_the_eval_history_without_gap_or_duplicate(mixture, tmp_path):
    steps = 12
    overrides = [f"train_iters={steps}", "save_iters=3", "eval_iters=2"]
    whole = run_fm9g("train", "--config", str(write_train_config(tmp_path, mixture / "mix.json")), *overrides,
                     "save=whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    config = write_train_config(tmp_path, mixture / "mix.json", name="killed.json", save="killed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(fm9g_command("train", "--config", str(config), *overrides), env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # killed once the step-5 evaluation is logged: after checkpoint 3, before checkpoint 6 records step 6
    deadline = time.monotonic() + 240
    log = tmp_path / "killed" / "eval_log.jsonl"
    while process.poll() is None and time.monotonic() < deadline and (
            not log.exists() or '"step": 4' not in log.read_text()):
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    assert not (tmp_path / "killed" / f"step-{steps:08d}").exists(), "the run finished before it was killed"

    resumed = run_fm9g("train", "--config", str(config), *overrides, "--resume", "auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    history, expected = _eval_log(tmp_path / "killed"), _eval_log(tmp_path / "whole")
    assert [r["step"] for r in history] == [2, 4, 6, 8, 10, 12]
    assert [r["tasks"] for r in history] == [r["tasks"] for r in expected]
    events = EventAccumulator(str(tmp_path / "killed" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("Loss/eval")] == [2, 4, 6, 8, 10, 12]


def test_eval_iters_without_any_held_out_set_is_one_clear_error(tmp_path):
    from backend_helpers import build_mixture

    (tmp_path / "mix").mkdir()
    mixture = build_mixture(tmp_path / "mix")
    for name in ("chat", "book"):
        shutil.rmtree(mixture / "idx" / name / "test")
    config = write_train_config(tmp_path, mixture / "mix.json", eval_iters=2)
    result = run_fm9g("train", "--config", str(config), cwd=tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "no task has a held-out set" in lines[0] and "--split" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_lora_evaluation_is_in_eval_mode_and_fm9g_eval_of_the_checkpoint_agrees(mixture, tmp_path):
    """LoRA dropout 0.5 left on in evaluation would move the held-out loss by ~1e-2 at this learning
    rate; fm9g eval merges the adapter (W + s·B@A), which agrees with PEFT's unmerged forward to ~1e-6."""
    config = write_train_config(tmp_path, mixture / "mix.json", lr=0.05, eval_iters=8, delta={
        "engine": "peft", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.5})
    trained = run_fm9g("train", "--config", str(config), cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    logged = _eval_log(tmp_path / "run")[-1]
    report = tmp_path / "eval.json"
    result = run_fm9g("eval", "--checkpoint", str(tmp_path / "run" / "step-00000008"), "--report", str(report),
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "LoRA checkpoint" in result.stderr
    evaluated = json.loads(report.read_text())["evaluation"]
    for name, task in logged["tasks"].items():
        assert evaluated["tasks"][name]["loss"] == pytest.approx(task["loss"], rel=1e-5)
