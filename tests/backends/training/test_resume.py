"""Exact resume: the losses and weights after a resume equal an uninterrupted run's."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from backend_helpers import list_stream_factory
from fm9g.backends.training.checkpoints import latest_checkpoint, read_manifest
from fm9g.backends.training.metrics import read_log
from fm9g.backends.training.run import RunContext
from fm9g.backends.training.resume import ResumePoint
from fm9g.backends.torch_backend.plugin import TorchBackend
from fm9g.backends.training.config import load_train_config
from fm9g.core.errors import Fm9gError


def _config(save, *extra):
    return load_train_config(None, ["data.manifest=unused.json", "model.preset=tiny-llama", f"save={save}",
                                    "train_iters=8", "save_iters=4", "batch_size=2", "max_length=64",
                                    "lr=2e-3", "warmup_iters=2", *extra])


def _train(config, resume=None):
    context = RunContext(resume=ResumePoint.open(resume) if resume else None, stream_factory=list_stream_factory(40), show_progress=False)
    return TorchBackend().train(config, context)


@pytest.mark.parametrize("extra", [[], ["delta={\"lora_r\": 4, \"lora_dropout\": 0.1}"]], ids=["full", "lora"])
def test_resume_from_a_checkpoint_reproduces_the_run(tmp_path, extra):
    whole = tmp_path / "whole"
    _train(_config(whole, *extra))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(whole / "step-00000004", resumed / "step-00000004")
    config = _config(resumed, *extra)
    _train(config, resume=latest_checkpoint(resumed))

    whole_log, resumed_log = read_log(whole / "train_log.jsonl"), read_log(resumed / "train_log.jsonl")
    assert [r["step"] for r in resumed_log] == [5, 6, 7, 8]
    assert [r["loss"] for r in resumed_log] == [r["loss"] for r in whole_log[4:]]
    assert [r["grad_norm"] for r in resumed_log] == [r["grad_norm"] for r in whole_log[4:]]
    weights = "adapter_model.safetensors" if extra else "model.safetensors"
    a, b = load_file(whole / "step-00000008" / weights), load_file(resumed / "step-00000008" / weights)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    manifest = read_manifest(resumed / "step-00000008")
    assert manifest["tokens_seen"] == read_manifest(whole / "step-00000008")["tokens_seen"]
    assert manifest["weights"] == ("lora" if extra else "full")


def test_fresh_run_refuses_a_save_dir_with_checkpoints(tmp_path):
    config = _config(tmp_path / "run", "train_iters=2", "save_iters=0")
    _train(config)
    with pytest.raises(Fm9gError, match="already holds checkpoints"):
        _train(config)


def test_save_total_limit_keeps_the_last_checkpoints_of_a_run(tmp_path):
    _train(_config(tmp_path / "run", "save_iters=2", "save_total_limit=2"))
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("step-")) == [
        "step-00000006", "step-00000008"]
