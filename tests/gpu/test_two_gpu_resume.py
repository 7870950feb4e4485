"""Resuming on another number of GPUs (needs 2): a 2-GPU run (``grad_accum=1``) continued on 1 GPU
(``grad_accum=2``) and a 1-GPU run continued on 2, on the torch backend (FSDP2) and on bmtrain; and
held-out evaluation on 2 ranks equal to 1 rank's.

The CPU twin is tests/backends/torch_backend/test_world_size_resume.py (gloo). Here the weights are
float32 (``model.dtype=float32``) so the curves are comparable tightly; the train log's per-rank
batch indices must cover every global batch exactly once over the resumed run. Every process is
started with NVLink multicast off (NCCL_NVLS_ENABLE=0 and friends).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from backend_helpers import write_train_config
from fm9g.backends.training.metrics import read_log

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")]

STEPS, SAVE_EVERY = 6, 3
OVERRIDES = [f"train_iters={STEPS}", f"save_iters={SAVE_EVERY}", "model.dtype=float32", "lr=3e-3", "warmup_iters=2"]
LOSS_RTOL = 1e-4
"""float32 weights on both sides, gradients reduced in another order: the CPU twin agrees to 1e-7 and
the bmtrain-vs-torch float32 test holds 1e-4; a skipped or repeated batch moved the CPU twin's step
losses by 8e-4 to 7e-3 (the batch indices catch it outright)."""
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def _env(gpus: str) -> dict[str, str]:
    return {**os.environ, **NO_MULTICAST, "CUDA_VISIBLE_DEVICES": gpus, "OMP_NUM_THREADS": "4"}


def _fm9g(tmp_path, *args, gpus: str):
    result = subprocess.run([sys.executable, "-m", "fm9g", *args], cwd=tmp_path, env=_env(gpus),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _train(tmp_path, config, save, *extra, nproc: int):
    launch = ["--nproc-per-node", "2"] if nproc == 2 else []
    return _fm9g(tmp_path, "train", "--config", str(config), *launch, *OVERRIDES, f"save={save}",
                 f"grad_accum={2 // nproc}", *extra, gpus="0,1" if nproc == 2 else "0")


def _cut_to_first_checkpoint(source, target):
    """``source``'s run as a crash after its first checkpoint leaves it (later checkpoints gone)."""
    shutil.copytree(source, target)
    for later in sorted(target.glob("step-*"))[1:]:
        shutil.rmtree(later)


def _check(log, reference):
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    trained = [index for record in log for rank in record["batches"] for index in rank]
    assert sorted(trained) == list(range(2 * STEPS)), f"skipped or repeated batches: {trained}"
    assert [r["tokens"] for r in log] == [r["tokens"] for r in reference]
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in reference], rel=LOSS_RTOL)


@pytest.mark.parametrize("backend", ["torch", "bmtrain"])
def test_world_size_changes_on_resume_keep_every_batch_once_and_the_curve(backend, gpu_mixture, tmp_path, record):
    if backend == "bmtrain":
        pytest.importorskip("bmtrain")
    config = write_train_config(tmp_path, gpu_mixture / "mix.json", model={"preset": "small-qwen2"},
                                backend=backend, batch_size=4, max_length=256)
    _train(tmp_path, config, "one", nproc=1)
    _train(tmp_path, config, "two", nproc=2)
    one, two = read_log(tmp_path / "one" / "train_log.jsonl"), read_log(tmp_path / "two" / "train_log.jsonl")
    assert [len(r["batches"]) for r in two] == [2] * STEPS

    _cut_to_first_checkpoint(tmp_path / "two", tmp_path / "two_to_one")
    _train(tmp_path, config, "two_to_one", "--resume", "auto", nproc=1)
    _cut_to_first_checkpoint(tmp_path / "one", tmp_path / "one_to_two")
    _train(tmp_path, config, "one_to_two", "--resume", "auto", nproc=2)
    two_to_one = read_log(tmp_path / "two_to_one" / "train_log.jsonl")
    one_to_two = read_log(tmp_path / "one_to_two" / "train_log.jsonl")
    record(f"{backend}_world_size_resume", {name: [r["loss"] for r in log] for name, log in (
        ("one", one), ("two", two), ("two_to_one", two_to_one), ("one_to_two", one_to_two))})
    assert [len(r["batches"]) for r in two_to_one] == [2] * SAVE_EVERY + [1] * (STEPS - SAVE_EVERY)
    assert [len(r["batches"]) for r in one_to_two] == [1] * SAVE_EVERY + [2] * (STEPS - SAVE_EVERY)
    for log in (two, two_to_one, one_to_two):
        _check(log, one)


def test_held_out_evaluation_on_two_gpus_equals_one(gpu_mixture, tmp_path, record):
    config = write_train_config(tmp_path, gpu_mixture / "mix.json", model={"preset": "small-qwen2"},
                                batch_size=4, max_length=256)
    _train(tmp_path, config, "run", "train_iters=2", "save_iters=2", nproc=1)
    common = ["eval", "--checkpoint", str(tmp_path / "run" / "step-00000002"), "--autocast", "none", "--force"]
    _fm9g(tmp_path, *common, "--report", str(tmp_path / "one.json"), gpus="0")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "fm9g", *common, "--report", str(tmp_path / "two.json")], cwd=tmp_path,
                         env=_env("0,1"), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one_record = json.loads((tmp_path / "one.json").read_text())["evaluation"]
    two_record = json.loads((tmp_path / "two.json").read_text())["evaluation"]
    record("eval_two_gpus", {"one": one_record["tasks"], "two": two_record["tasks"]})
    assert two_record["tokens"] == one_record["tokens"]
    for name, task in one_record["tasks"].items():  # the same float32 forward per batch, sums in float64
        assert two_record["tasks"][name]["target_tokens"] == task["target_tokens"]
        assert two_record["tasks"][name]["loss"] == pytest.approx(task["loss"], rel=1e-6)
