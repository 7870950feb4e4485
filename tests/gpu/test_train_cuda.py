"""Full and LoRA training steps on a GPU (bf16 autocast, fp32 master weights) and FSDP2 over 2 GPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from backend_helpers import list_stream_factory
from fm9g.backends.training.metrics import read_log
from fm9g.backends.training.run import RunContext
from fm9g.backends.training.resume import ResumePoint
from fm9g.backends.torch_backend.plugin import TorchBackend
from fm9g.backends.training.config import load_train_config

pytestmark = pytest.mark.gpu


def _train(tmp_path, *extra):
    config = load_train_config(None, ["data.manifest=unused.json", "model.preset=small-qwen2",
                                      f"save={tmp_path / 'run'}", "train_iters=12", "save_iters=6",
                                      "batch_size=4", "max_length=256", "lr=3e-3", "warmup_iters=2", *extra])
    torch.cuda.reset_peak_memory_stats()
    result = TorchBackend().train(config, RunContext(stream_factory=list_stream_factory(40, seed=1),
                                                     show_progress=False))
    return result, read_log(tmp_path / "run" / "train_log.jsonl")


def test_full_training_steps_on_cuda(tmp_path, record):
    result, log = _train(tmp_path)
    losses = [r["loss"] for r in log]
    record("cuda_full_losses", losses)
    record("cuda_full_peak_bytes", torch.cuda.max_memory_allocated())
    assert result["step"] == 12 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[:3])
    weights = load_file(tmp_path / "run" / "step-00000012" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values())  # fp32 master weights are saved


def test_lora_training_steps_on_cuda(tmp_path, record):
    result, log = _train(tmp_path, 'delta={"lora_r": 8, "lora_alpha": 16}', "lr=1e-2")
    losses = [r["loss"] for r in log]
    record("cuda_lora_losses", losses)
    assert result["step"] == 12 and sum(losses[-3:]) < sum(losses[:3])
    adapter = load_file(tmp_path / "run" / "step-00000012" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k and v.dtype == torch.float32 for k, v in adapter.items())


def test_resume_is_exact_on_cuda(tmp_path):
    _, whole = _train(tmp_path / "a")
    import shutil

    (tmp_path / "b" / "run").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "run" / "step-00000006", tmp_path / "b" / "run" / "step-00000006")
    config = load_train_config(None, ["data.manifest=unused.json", "model.preset=small-qwen2",
                                      f"save={tmp_path / 'b' / 'run'}", "train_iters=12", "save_iters=6",
                                      "batch_size=4", "max_length=256", "lr=3e-3", "warmup_iters=2"])
    TorchBackend().train(config, RunContext(resume=ResumePoint.open(tmp_path / "b" / "run" / "step-00000006"),
                                            stream_factory=list_stream_factory(40, seed=1), show_progress=False))
    resumed = read_log(tmp_path / "b" / "run" / "train_log.jsonl")
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in whole[6:]], rel=1e-3)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_fsdp_two_gpus_matches_single_gpu_accumulation(gpu_mixture, tmp_path, record):
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"data": {"manifest": str(gpu_mixture / "mix.json")},
                                  "model": {"preset": "small-qwen2"}, "save": "run", "train_iters": 6,
                                  "batch_size": 4, "max_length": 256, "lr": 3e-3, "warmup_iters": 2}))
    base = [sys.executable, "-m", "fm9g", "train", "--config", str(config)]
    sharded = subprocess.run(base + ["--nproc-per-node", "2", "save=fsdp"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
    assert sharded.returncode == 0, sharded.stderr
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
    single = subprocess.run(base + ["grad_accum=2", "save=single"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    a, b = read_log(tmp_path / "fsdp" / "train_log.jsonl"), read_log(tmp_path / "single" / "train_log.jsonl")
    record("fsdp2_gpu_losses", {"fsdp": [r["loss"] for r in a], "single": [r["loss"] for r in b]})
    assert [r["batches"] for r in a][0] == [[0], [1]] and [r["batches"] for r in b][0] == [[0, 1]]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=2e-2)
