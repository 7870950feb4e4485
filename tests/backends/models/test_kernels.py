"""``model.kernels``: the schema's choices, ``hf`` leaving the model as transformers builds it, and
the one-line errors for ``liger`` where it cannot run (this CPU machine; the GPU checks are in
``tests/gpu/test_kernels_gpu.py``)."""

from __future__ import annotations

import pytest
import torch

from backend_helpers import run_fm9g, write_train_config
from fm9g.backends.models.kernels import apply_kernels
from fm9g.backends.models.build import build_model
from fm9g.core.errors import Fm9gError
from fm9g.core.schemas import schema_problems


def test_schema_takes_hf_and_liger_only():
    base = {"data": {"manifest": "mix.json"}, "save": "run", "train_iters": 2}
    for kernels in ("hf", "liger"):
        assert schema_problems({**base, "model": {"preset": "tiny-llama", "kernels": kernels}}, "train") == []
    problems = schema_problems({**base, "model": {"preset": "tiny-llama", "kernels": "fast"}}, "train")
    assert len(problems) == 1 and "model.kernels" in problems[0] and "'fast'" in problems[0], problems


def test_hf_kernels_leave_the_model_untouched():
    model = build_model({"preset": "tiny-qwen2"}, seed=0)
    forwards = {name: type(module).forward for name, module in model.named_modules()}
    apply_kernels(model, "hf", torch.device("cpu"))
    assert {name: type(module).forward for name, module in model.named_modules()} == forwards
    assert all("forward" not in vars(module) for module in model.modules())  # no instance patches


def test_liger_on_cpu_is_a_clear_error():
    model = build_model({"preset": "tiny-qwen2"}, seed=0)
    with pytest.raises(Fm9gError, match="CUDA GPUs only") as caught:
        apply_kernels(model, "liger", torch.device("cpu"))
    assert caught.value.where == "train config: model.kernels"
    with pytest.raises(Fm9gError, match="unknown kernels"):
        apply_kernels(model, "fast", torch.device("cpu"))


def test_train_with_liger_on_cpu_fails_in_one_line_before_training(mixture, tmp_path):
    config = write_train_config(tmp_path, mixture / "mix.json")
    result = run_fm9g("train", "--config", str(config), "model.kernels=liger", "train_iters=2")
    assert result.returncode != 0
    assert "model.kernels" in result.stderr and "CUDA GPUs only" in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(p.name.startswith("step-") for p in (tmp_path / "run").glob("*"))
