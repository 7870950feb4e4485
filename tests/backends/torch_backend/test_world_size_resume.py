"""Resuming on another number of processes (CPU, gloo, the real ``fm9g train --nproc-per-node 2`` CLI).

One optimizer step consumes W·grad_accum global batches, so a 2-process run with ``grad_accum=1``
and a 1-process run with ``grad_accum=2`` train on the same batches; a checkpoint of either
continues on the other. The train log records per step which global batches each rank trained:
over a killed and resumed run they must cover 0..2·T-1 exactly once, and the loss curve must be an
uninterrupted 1-process run's. The held-out losses the run logs on 2 ranks must be 1 rank's, and
the export of the resumed run's last checkpoint must give the loss that run logged for it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from backend_helpers import fm9g_command, run_fm9g, write_train_config
from fm9g.backends.models.build import build_model
from fm9g.backends.training.collectives import TorchDistributed
from fm9g.backends.training.evaluate import Evaluator, held_out_batches
from fm9g.backends.training.metrics import read_log
from fm9g.cli import main
from fm9g.tokenizers import load_tokenizer

STEPS, SAVE_EVERY = 8, 3
OVERRIDES = [f"train_iters={STEPS}", f"save_iters={SAVE_EVERY}", "eval_iters=2"]
LOSS_RTOL = 1e-5
"""FSDP2 over 2 gloo ranks and 1-process accumulation give step losses equal to ~1e-7 relative
(float32 gradients summed in another order; measured 7e-8). Resuming from a stream state one
batch ahead or behind (a skipped or repeated batch; the checkpoint's stream_state.json swapped for
the one a run saved a batch later or earlier) moved the step losses after it by 8e-4 to 7e-3."""
EVAL_RTOL = 1e-6
"""Held-out losses (float64 sums) agreed to 4e-9 across world sizes; the skipped or repeated batch
moved them by 1e-6 to 2e-4 (the batch indices catch it outright; the token counts must be equal)."""


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (torchrun starts its workers in sessions of their own, so a
    process-group kill would miss them)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += _tree(int(child))
    return found


def _kill(pids: list[int]) -> None:
    for pid in reversed(pids):  # workers first, so none outlives its launcher
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _kill_after_checkpoint(config: Path, save: Path, tmp_path: Path, *, nproc: int, grad_accum: int) -> None:
    """Start the run and SIGKILL it (launcher and workers) once it logs the step after the first checkpoint."""
    command = fm9g_command("train", "--config", str(config), "--nproc-per-node", str(nproc), *OVERRIDES,
                           f"grad_accum={grad_accum}")
    process = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log, checkpoint = save / "train_log.jsonl", save / f"step-{SAVE_EVERY:08d}" / "checkpoint.json"
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline and not (
            checkpoint.exists() and log.exists() and f'"step": {SAVE_EVERY + 1},' in log.read_text()):
        time.sleep(0.005)
    _kill(_tree(process.pid))
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    assert not (save / f"step-{STEPS:08d}").exists(), "the run finished before it was killed"


def _trained_batches(log: list[dict]) -> list[int]:
    return [index for record in log for rank in record["batches"] for index in rank]


def _check_resumed(save: Path, reference: Path) -> None:
    """The resumed run in ``save`` trained every global batch once, and its losses are the reference's."""
    log, expected = read_log(save / "train_log.jsonl"), read_log(reference / "train_log.jsonl")
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    batches = _trained_batches(log)
    assert sorted(batches) == list(range(2 * STEPS)), f"skipped or repeated batches: {batches}"
    assert [sorted(sum(r["batches"], [])) for r in log] == [sum(r["batches"], []) for r in expected]
    assert [r["tokens"] for r in log] == [r["tokens"] for r in expected]
    assert [r["target_tokens"] for r in log] == [r["target_tokens"] for r in expected]
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in expected], rel=LOSS_RTOL)
    evaluated, expected_eval = read_log(save / "eval_log.jsonl"), read_log(reference / "eval_log.jsonl")
    assert [r["step"] for r in evaluated] == [r["step"] for r in expected_eval] == [2, 4, 6, 8]
    for got, want in zip(evaluated, expected_eval):  # no held-out sample lost or counted twice on 2 ranks
        assert got["tokens"] == want["tokens"]
        for name, task in want["tasks"].items():
            assert got["tasks"][name]["target_tokens"] == task["target_tokens"]
            assert got["tasks"][name]["loss"] == pytest.approx(task["loss"], rel=EVAL_RTOL)


@pytest.fixture(scope="module")
def reference(mixture, tmp_path_factory) -> Path:
    """An uninterrupted 1-process run with ``grad_accum=2``: the curve both resumed runs must give."""
    directory = tmp_path_factory.mktemp("reference")
    config = write_train_config(directory, mixture / "mix.json", save="whole")
    result = run_fm9g("train", "--config", str(config), *OVERRIDES, "grad_accum=2", cwd=directory)
    assert result.returncode == 0, result.stderr
    log = read_log(directory / "whole" / "train_log.jsonl")
    assert [sum(r["batches"], []) for r in log] == [[2 * s, 2 * s + 1] for s in range(STEPS)]
    return directory / "whole"


@pytest.mark.slow
def test_two_processes_killed_after_a_checkpoint_resume_on_one_and_export(mixture, reference, tmp_path):
    config = write_train_config(tmp_path, mixture / "mix.json", save="killed")
    save = tmp_path / "killed"
    _kill_after_checkpoint(config, save, tmp_path, nproc=2, grad_accum=1)
    killed_log = read_log(save / "train_log.jsonl")
    assert all(len(r["batches"]) == 2 for r in killed_log)  # those steps ran on 2 ranks

    resumed = run_fm9g("train", "--config", str(config), *OVERRIDES, "grad_accum=2", "--resume", "auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "grad_accum (1 -> 2)" in resumed.stderr
    _check_resumed(save, reference)
    log = read_log(save / "train_log.jsonl")
    resumed_from = max(r["step"] for r in log if len(r["batches"]) == 2)
    assert resumed_from in (SAVE_EVERY, 2 * SAVE_EVERY) and len(log[resumed_from]["batches"]) == 1

    hf = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(save / f"step-{STEPS:08d}"), "--output", str(hf)]) == 0
    manifest = json.loads((mixture / "mix.json").read_text())
    held_out = held_out_batches({"data": {"manifest": str(mixture / "mix.json")}, "max_length": manifest["max_length"],
                                 "batch_size": manifest["batch_size"], "eval_tokens": 0, "trust_scripts": False},
                                load_tokenizer("byte"))
    record = Evaluator(held_out, TorchDistributed())(build_model({"hf_path": str(hf)}), step=STEPS)
    logged = read_log(save / "eval_log.jsonl")
    last, before = logged[-1]["tasks"], logged[-2]["tasks"]
    for name, task in last.items():  # the same float32 weights and forward: equal to ~1e-7
        assert record["tasks"][name]["target_tokens"] == task["target_tokens"]
        assert record["tasks"][name]["loss"] == pytest.approx(task["loss"], rel=1e-5)
        assert abs(before[name]["loss"] - task["loss"]) > 1e-3 * task["loss"]  # another checkpoint would fail


@pytest.mark.slow
def test_one_process_checkpoint_resumes_on_two(mixture, reference, tmp_path):
    """The reference run, cut back to its first checkpoint (its later ones removed, its logs left
    as a crash after step 3 leaves them), continues on 2 processes."""
    save = tmp_path / "cut"
    shutil.copytree(reference, save)
    for later in sorted(save.glob("step-*"))[1:]:
        shutil.rmtree(later)
    config = write_train_config(tmp_path, mixture / "mix.json", save="cut")
    resumed = run_fm9g("train", "--config", str(config), "--nproc-per-node", "2", *OVERRIDES, "grad_accum=1",
                       "--resume", "auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "× 2 process(es)" in resumed.stderr and "grad_accum (2 -> 1)" in resumed.stderr
    _check_resumed(save, reference)
    log = read_log(save / "train_log.jsonl")
    assert [len(r["batches"]) for r in log] == [1] * SAVE_EVERY + [2] * (STEPS - SAVE_EVERY)


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_its_workers(mixture, tmp_path):
    """``kill PID`` of ``fm9g train --nproc-per-node 2`` reaches the workers (through torchrun), so
    none keeps training into the save directory after fm9g has exited."""
    config = write_train_config(tmp_path, mixture / "mix.json", train_iters=100000, save_iters=0)
    process = subprocess.Popen(fm9g_command("train", "--config", str(config), "--nproc-per-node", "2"), cwd=tmp_path,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    log = tmp_path / "run" / "train_log.jsonl"
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline and not (log.exists() and log.read_text()):
        time.sleep(0.01)
    pids = _tree(process.pid)
    try:
        assert len(pids) == 4, f"expected fm9g, torchrun and 2 workers: {pids}"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=90)  # torchrun gives its workers 30 s before it kills them
        assert process.returncode != 0
        assert not _running_fm9g(pids), "workers still training after fm9g exited"
    finally:
        _kill(_running_fm9g(pids))


def _running_fm9g(pids: list[int]) -> list[int]:
    """Those of ``pids`` that are still fm9g processes and not zombies."""
    running = []
    for pid in pids:
        try:
            if b"fm9g" in Path(f"/proc/{pid}/cmdline").read_bytes() and \
                    Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
                running.append(pid)
        except OSError:
            pass
    return running
