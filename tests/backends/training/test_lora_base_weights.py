"""LoRA on a bare preset: the random base weights are stored with the checkpoints, so export and resume
need nothing else (no ``--base``, no re-initialisation that could differ by device or seed)."""

from __future__ import annotations

import os
import shutil

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from backend_helpers import list_stream_factory
from fm9g.backends.training.checkpoints import BASE_WEIGHTS, read_manifest
from fm9g.backends.training.metrics import read_log
from fm9g.backends.models.build import build_model
from fm9g.backends.lora.peft_engine import PeftEngine
from fm9g.backends.training.run import RunContext
from fm9g.backends.training.resume import ResumePoint
from fm9g.backends.torch_backend.plugin import TorchBackend
from fm9g.backends.training.config import load_train_config
from fm9g.cli import main

LORA = 'delta={"lora_r": 4, "lora_alpha": 8, "lora_layer": ["project_q", "project_v", "w_out"]}'
PROMPT = torch.tensor([[1, 76, 105, 110, 101, 36, 120, 4, 200]])


def _config(save, *extra):
    return load_train_config(None, ["data.manifest=unused.json", "model.preset=tiny-llama", f"save={save}",
                                    "train_iters=4", "save_iters=2", "batch_size=2", "max_length=64",
                                    "lr=1e-2", "seed=5", *extra])


def _train(config, resume=None):
    TorchBackend().train(config, RunContext(resume=ResumePoint.open(resume) if resume else None, stream_factory=list_stream_factory(20),
                                            show_progress=False))


def test_lora_on_a_bare_preset_exports_merged_without_base_and_matches_the_trained_model(tmp_path):
    config = _config(tmp_path / "run", LORA)
    _train(config)
    run = tmp_path / "run"
    checkpoints = [run / "step-00000002", run / "step-00000004"]
    for checkpoint in checkpoints:
        manifest = read_manifest(checkpoint)
        assert manifest["files"]["base_weights"] == BASE_WEIGHTS
        assert os.stat(checkpoint / BASE_WEIGHTS).st_ino == os.stat(run / BASE_WEIGHTS).st_ino  # stored once

    out = tmp_path / "merged"
    assert main(["export", "--checkpoint", str(checkpoints[-1]), "--output", str(out), "--merge-lora"]) == 0
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()

    base = build_model(config["model"], seed=config["seed"], vocab_size=260)  # the byte tokenizer the run used
    trained = PeftEngine().apply(base, config["delta"])
    PeftEngine().load(trained, checkpoints[-1])
    trained.eval()
    assert any(v.abs().sum() > 0 for k, v in load_file(checkpoints[-1] / "adapter_model.safetensors").items()
               if "lora_B" in k)  # the adapter is trained, so the merge changes the base
    with torch.no_grad():
        torch.testing.assert_close(exported(PROMPT).logits, trained(PROMPT).logits, rtol=1e-4, atol=1e-4)


def test_resume_takes_the_stored_base_not_a_new_initialisation(tmp_path):
    whole = tmp_path / "whole"
    _train(_config(whole, LORA))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(whole / "step-00000002", resumed / "step-00000002")
    _train(_config(resumed, LORA, "seed=77"), resume=resumed / "step-00000002")  # another seed: another init
    assert ([r["loss"] for r in read_log(resumed / "train_log.jsonl")]
            == [r["loss"] for r in read_log(whole / "train_log.jsonl")[2:]])
    base = load_file(resumed / "step-00000004" / BASE_WEIGHTS)
    for name, tensor in load_file(whole / BASE_WEIGHTS).items():
        assert torch.equal(base[name], tensor), name


def test_full_fine_tunes_store_no_separate_base(tmp_path):
    _train(_config(tmp_path / "run", "train_iters=1", "save_iters=0"))
    checkpoint = tmp_path / "run" / "step-00000001"
    assert "base_weights" not in read_manifest(checkpoint)["files"]
    assert not (checkpoint / BASE_WEIGHTS).exists() and not (tmp_path / "run" / BASE_WEIGHTS).exists()
