"""The bmtrain backend on a GPU: same first-step loss as the torch backend, exact resume, LoRA,
offload, loss scaling, checkpoints that the torch backend resumes and ``fm9g export`` exports, and
a 2-GPU run (rank r takes global batches b ≡ r mod 2) matching 1 GPU with grad_accum=2.

In-process runs share one ``bmt.init_distributed`` (once per process); the CLI and torchrun runs are
subprocesses. Skipped without CUDA (conftest) or without BMTrain (``tests/gpu/run.sh`` builds it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("bmtrain")

from backend_helpers import list_stream_factory  # noqa: E402
from fm9g.backends.bmtrain_backend.plugin import BmtrainBackend  # noqa: E402
from fm9g.backends.training.metrics import read_log  # noqa: E402
from fm9g.backends.training.run import RunContext  # noqa: E402
from fm9g.backends.training.resume import ResumePoint  # noqa: E402
from fm9g.backends.torch_backend.plugin import TorchBackend  # noqa: E402
from fm9g.backends.training.config import load_train_config  # noqa: E402

pytestmark = pytest.mark.gpu

BASE = ["data.manifest=unused.json", "train_iters=4", "save_iters=2", "batch_size=4", "max_length=256",
        "lr=3e-3", "warmup_iters=1"]


def _config(save, *extra, preset="small-qwen2"):
    return load_train_config(None, [*BASE, f"model.preset={preset}", f"save={save}", *extra])


def _train(backend, save, *extra, resume=None, preset="small-qwen2"):
    config = _config(save, f"backend={backend.name}", *extra, preset=preset)
    resume_point = ResumePoint.open(resume) if resume else None
    backend().train(config, RunContext(resume=resume_point, stream_factory=list_stream_factory(40, seed=1),
                                       show_progress=False))
    return read_log(save / "train_log.jsonl")


def _losses(log):
    return [r["loss"] for r in log]


def test_first_steps_equal_torch_backend_in_float32_with_clipping(tmp_path, record):
    """fp32 weights on both sides (attention in bf16 on both: the same varlen kernel): the first
    loss equal to ~1e-5, and after clipped updates still equal, so BMTrain's Adam applying the clip
    factor as its gradient ``scale`` does what clip_grad_norm_ + AdamW do (no weight decay: for fp32
    parameters BMTrain's Adam decays the L2 way)."""
    same = ("model.dtype=float32", "train_iters=3", "save_iters=0", "weight_decay=0", "clip_grad=0.5")
    torch_log = _train(TorchBackend, tmp_path / "torch", *same)
    bmt_log = _train(BmtrainBackend, tmp_path / "bmt", *same)
    record("bmtrain_fp32_first_steps", {"torch": torch_log, "bmtrain": bmt_log})
    assert all(r["grad_norm"] > 0.5 for r in torch_log)  # every update was clipped
    assert bmt_log[0]["loss"] == pytest.approx(torch_log[0]["loss"], rel=1e-5)
    assert _losses(bmt_log) == pytest.approx(_losses(torch_log), rel=1e-4)
    assert [r["grad_norm"] for r in bmt_log] == pytest.approx([r["grad_norm"] for r in torch_log], rel=1e-3)
    assert bmt_log[0]["task_loss"].keys() == torch_log[0]["task_loss"].keys()


def test_first_step_loss_equals_torch_backend_in_bf16_and_trains(tmp_path, record):
    """bf16 weights (bmtrain) vs fp32 weights under bf16 autocast (torch): within bf16 rounding."""
    torch_log = _train(TorchBackend, tmp_path / "torch", "train_iters=1", preset="small-llama")
    bmt_log = _train(BmtrainBackend, tmp_path / "bmt", "train_iters=10", "save_iters=0", preset="small-llama")
    record("bmtrain_bf16_losses", {"torch_first": torch_log[0]["loss"], "bmtrain": _losses(bmt_log)})
    assert bmt_log[0]["loss"] == pytest.approx(torch_log[0]["loss"], rel=1e-2)
    assert sum(_losses(bmt_log)[-3:]) < sum(_losses(bmt_log)[:3])
    assert all(r["scale"] == 1.0 for r in bmt_log)


def test_resume_is_exact_and_checkpoint_has_the_torch_layout(tmp_path, record):
    whole = _train(BmtrainBackend, tmp_path / "a")
    step2 = tmp_path / "a" / "step-00000002"
    files = json.loads((step2 / "checkpoint.json").read_text())
    assert files["backend"] == "bmtrain" and files["weights"] == "full"
    assert {"model.safetensors", "config.json", "optimizer.pt", "optimizer.rank-0.pt", "rng.pt",
            "stream_state.json", "scheduler.json"} <= {p.name for p in step2.iterdir()}
    weights = load_file(step2 / "model.safetensors")
    from fm9g.backends.models.build import build_model

    plain = build_model({"preset": "small-qwen2"}, vocab_size=260).state_dict()  # the byte tokenizer's ids
    assert weights.keys() == plain.keys()
    assert all(t.dtype == torch.float32 and t.shape == plain[k].shape for k, t in weights.items())

    (tmp_path / "b").mkdir()
    shutil.copytree(step2, tmp_path / "b" / "step-00000002")
    resumed = _train(BmtrainBackend, tmp_path / "b", resume=tmp_path / "b" / "step-00000002")
    record("bmtrain_resume", {"whole": _losses(whole), "resumed": _losses(resumed)})
    assert [r["step"] for r in resumed] == [3, 4]  # the resumed run's log starts after the checkpoint
    assert _losses(resumed)[0] == pytest.approx(_losses(whole)[2], rel=1e-6)  # same weights, same batch
    assert _losses(resumed) == pytest.approx(_losses(whole)[2:], rel=1e-4)
    final_a, final_b = (load_file(tmp_path / d / "step-00000004" / "model.safetensors") for d in "ab")
    assert max(float((final_a[k] - final_b[k]).abs().max()) for k in final_a) < 1e-3


def test_checkpoints_cross_backends_and_export(tmp_path, record):
    """bmtrain → torch resume (partitioned optimizer read as a full state dict), torch → bmtrain, export."""
    bmt = _train(BmtrainBackend, tmp_path / "bmt")
    (tmp_path / "to_torch").mkdir()
    shutil.copytree(tmp_path / "bmt" / "step-00000002", tmp_path / "to_torch" / "step-00000002")
    as_torch = _train(TorchBackend, tmp_path / "to_torch", resume=tmp_path / "to_torch" / "step-00000002")
    torch_run = _train(TorchBackend, tmp_path / "torch")
    (tmp_path / "to_bmt").mkdir()
    shutil.copytree(tmp_path / "torch" / "step-00000002", tmp_path / "to_bmt" / "step-00000002")
    as_bmt = _train(BmtrainBackend, tmp_path / "to_bmt", resume=tmp_path / "to_bmt" / "step-00000002")
    record("bmtrain_cross_backend", {"bmt": _losses(bmt), "bmt_then_torch": _losses(as_torch),
                                     "torch": _losses(torch_run), "torch_then_bmt": _losses(as_bmt)})
    assert [r["step"] for r in as_torch] == [3, 4] and [r["step"] for r in as_bmt] == [3, 4]
    assert _losses(as_torch) == pytest.approx(_losses(bmt)[2:], rel=2e-2)
    assert _losses(as_bmt) == pytest.approx(_losses(torch_run)[2:], rel=2e-2)

    out = tmp_path / "hf"
    result = subprocess.run([sys.executable, "-m", "fm9g", "export", "--checkpoint",
                             str(tmp_path / "bmt" / "step-00000004"), "--output", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    saved = load_file(tmp_path / "bmt" / "step-00000004" / "model.safetensors")
    assert all(torch.equal(exported.state_dict()[k], saved[k]) for k in saved)


def test_lora_saves_only_lora_resumes_exactly_and_learns(tmp_path, record):
    lora = ['delta={"lora_r": 8, "lora_alpha": 16}', "lr=1e-2", "train_iters=8", "save_iters=4"]
    log = _train(BmtrainBackend, tmp_path / "a", *lora)
    record("bmtrain_lora_losses", _losses(log))
    assert sum(_losses(log)[-3:]) < sum(_losses(log)[:3])
    step = tmp_path / "a" / "step-00000008"
    names = {p.name for p in step.iterdir()}
    assert "adapter_model.safetensors" in names and "model.safetensors" not in names
    adapter = load_file(step / "adapter_model.safetensors")
    assert adapter and all("lora_" in k and v.dtype == torch.float32 for k, v in adapter.items())
    rank_state = torch.load(step / "optimizer.rank-0.pt", weights_only=True)
    assert rank_state["params"] and all("lora_" in k for k in rank_state["params"])

    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "step-00000004", tmp_path / "b" / "step-00000004")
    resumed = _train(BmtrainBackend, tmp_path / "b", *lora, resume=tmp_path / "b" / "step-00000004")
    assert _losses(resumed) == pytest.approx(_losses(log)[4:], rel=1e-4)


def test_opendelta_lora_on_bmtrain_saves_seed_keys_resumes_and_learns(tmp_path, record):
    """The seed's pairing: OpenDelta LoRA on BMTrain. LoRA goes in before the ZeRO wrapper, so
    OpenDelta's plain ``hf`` modules are what BMTrain shards (``backend='bmt'`` is for models
    built from ``bmt`` layers, which fm9g does not use)."""
    from fm9g.backends.lora.opendelta_bridge import import_opendelta

    import_opendelta()
    delta = ('delta={"engine": "opendelta", "lora_r": 8, "lora_alpha": 16, "save_format": "opendelta"}')
    lora = [delta, "lr=1e-2", "train_iters=8", "save_iters=4"]
    log = _train(BmtrainBackend, tmp_path / "a", *lora)
    record("bmtrain_opendelta_losses", _losses(log))
    assert sum(_losses(log)[-3:]) < sum(_losses(log)[:3])
    step = tmp_path / "a" / "step-00000008"
    seed_keys = torch.load(step / "opendelta_lora.pt", weights_only=True)
    assert seed_keys and all(k.endswith((".lora.lora_A", ".lora.lora_B")) for k in seed_keys)
    assert "model.safetensors" not in {p.name for p in step.iterdir()}

    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "step-00000004", tmp_path / "b" / "step-00000004")
    resumed = _train(BmtrainBackend, tmp_path / "b", *lora, resume=tmp_path / "b" / "step-00000004")
    assert _losses(resumed) == pytest.approx(_losses(log)[4:], rel=1e-4)


def test_offload_and_block_checkpointing_match_the_gpu_optimizer(tmp_path, record):
    gpu = _train(BmtrainBackend, tmp_path / "gpu", "save_iters=0")
    offload = _train(BmtrainBackend, tmp_path / "offload", "save_iters=0", "offload=true", "use_checkpoint=true")
    record("bmtrain_offload", {"gpu": _losses(gpu), "offload_checkpointed": _losses(offload)})
    assert _losses(offload) == pytest.approx(_losses(gpu), rel=5e-3)


def test_checkpoint_blocks_recomputes_only_the_first_blocks_and_changes_no_loss(tmp_path, monkeypatch, record):
    from fm9g.backends.bmtrain_backend import training as bmtrain_training

    flags = []
    real = bmtrain_training.set_block_checkpointing

    def recording(model, block_class, enabled, limit=None):
        count = real(model, block_class, enabled, limit)
        flags.append([block._use_checkpoint for block in model.modules() if isinstance(block, block_class)])
        return count

    monkeypatch.setattr(bmtrain_training, "set_block_checkpointing", recording)
    plain = _train(BmtrainBackend, tmp_path / "plain", "save_iters=0")
    partial = _train(BmtrainBackend, tmp_path / "partial", "save_iters=0", "use_checkpoint=true",
                     "backend_options.checkpoint_blocks=1")
    record("bmtrain_checkpoint_blocks", {"plain": _losses(plain), "first_block_only": _losses(partial),
                                         "flags": flags})
    assert flags[0] == [False] * len(flags[0]) and flags[1] == [True] + [False] * (len(flags[1]) - 1)
    assert _losses(partial) == pytest.approx(_losses(plain), rel=1e-5)


def test_loss_scaling_is_logged_and_harmless(tmp_path):
    plain = _train(BmtrainBackend, tmp_path / "plain", "save_iters=0")
    scaled = _train(BmtrainBackend, tmp_path / "scaled", "save_iters=0", 'backend_options={"loss_scale": 1024}')
    assert [r["scale"] for r in scaled] == [1024.0] * 4
    assert _losses(scaled) == pytest.approx(_losses(plain), rel=5e-3)


def _cli(tmp_path, gpu_mixture, *args, env=None, save):
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"data": {"manifest": str(gpu_mixture / "mix.json")},
                                  "model": {"preset": "small-qwen2"}, "backend": "bmtrain", "save": "run",
                                  "train_iters": 6, "save_iters": 3, "batch_size": 4, "max_length": 256,
                                  "lr": 3e-3, "warmup_iters": 2}))
    result = subprocess.run([sys.executable, "-m", "fm9g", "train", "--config", str(config), f"save={save}", *args],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_cli_trains_and_resumes_auto(gpu_mixture, tmp_path):
    _cli(tmp_path, gpu_mixture, "train_iters=3", save="run")
    result = _cli(tmp_path, gpu_mixture, "--resume", "auto", save="run")
    assert "resume    from" in result.stderr and "backend   bmtrain" in result.stderr
    assert [r["step"] for r in read_log(tmp_path / "run" / "train_log.jsonl")] == list(range(1, 7))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_match_one_gpu_accumulation_and_resume_on_one(gpu_mixture, tmp_path, record):
    _cli(tmp_path, gpu_mixture, "--nproc-per-node", "2", save="two")
    one_gpu = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
    _cli(tmp_path, gpu_mixture, "grad_accum=2", env=one_gpu, save="one")
    two, one = read_log(tmp_path / "two" / "train_log.jsonl"), read_log(tmp_path / "one" / "train_log.jsonl")
    record("bmtrain_two_gpus", {"two": _losses(two), "one": _losses(one)})
    assert two[0]["batches"] == [[0], [1]] and one[0]["batches"] == [[0, 1]]
    assert _losses(two) == pytest.approx(_losses(one), rel=2e-2)
    step3 = tmp_path / "two" / "step-00000003"
    assert (step3 / "optimizer.rank-0.pt").is_file() and (step3 / "optimizer.rank-1.pt").is_file()
    shutil.copytree(step3, tmp_path / "regrid" / "step-00000003")
    _cli(tmp_path, gpu_mixture, "grad_accum=2", "--resume", str(tmp_path / "regrid" / "step-00000003"),
         env=one_gpu, save="regrid")
    regrid = read_log(tmp_path / "regrid" / "train_log.jsonl")
    assert _losses(regrid) == pytest.approx(_losses(two)[3:], rel=2e-2)
