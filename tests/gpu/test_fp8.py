"""``model.fp8`` on a GPU: float8 rowwise linear layers (torchao) follow the bf16 run's loss curve.

Both runs start from the same initialisation (the preset seeded alike) and see the same 300
batches. Float8 rowwise training typically stays within 1–2 % of bf16's loss late in training (the
mean of the last 50 steps agreed to 0.02 % on an H200), so the check is 2 %; a wrong scale or
recipe either diverges or stalls far outside that, and a conversion that converts nothing gives a
curve equal to bf16's, which the count of float8 layers rules out.
"""

from __future__ import annotations

import pytest
import torch

from backend_helpers import list_stream_factory
from fm9g.backends.torch_backend.plugin import TorchBackend
from fm9g.backends.training.config import load_train_config
from fm9g.backends.training.metrics import read_log
from fm9g.backends.training.run import RunContext

pytest.importorskip("torchao")

pytestmark = pytest.mark.gpu

STEPS = 300


def _losses(tmp_path, name, *extra):
    config = load_train_config(None, ["data.manifest=unused.json", "model.preset=small-llama",
                                      f"save={tmp_path / name}", f"train_iters={STEPS}", "save_iters=0",
                                      "batch_size=4", "max_length=256", "lr=1e-3", "warmup_iters=20", *extra])
    TorchBackend().train(config, RunContext(stream_factory=list_stream_factory(STEPS, seed=3), show_progress=False))
    return [r["loss"] for r in read_log(tmp_path / name / "train_log.jsonl")]


def _mean(values):
    return sum(values) / len(values)


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9),
                    reason="float8 matmuls need compute capability >= 8.9")
def test_fp8_training_follows_bf16(tmp_path, record):
    from fm9g.backends.models.build import build_model
    from fm9g.backends.torch_backend.speed import convert_to_fp8

    converted = convert_to_fp8(build_model({"preset": "small-llama"}, seed=0, device=torch.device("cuda")))
    assert converted == 4 * 7  # q, k, v, o, gate, up, down in each of the 4 layers; lm_head stays

    bf16 = _losses(tmp_path, "bf16")
    fp8 = _losses(tmp_path, "fp8", "model.fp8=true")
    late_bf16, late_fp8 = _mean(bf16[-50:]), _mean(fp8[-50:])
    record("fp8_vs_bf16", {"bf16": bf16[::10], "fp8": fp8[::10], "late_bf16": late_bf16, "late_fp8": late_fp8})
    assert all(torch.isfinite(torch.tensor(fp8)))
    assert late_bf16 < 0.8 * _mean(bf16[:20]) and late_fp8 < 0.8 * _mean(fp8[:20])
    assert fp8[0] == pytest.approx(bf16[0], rel=2e-2)
    assert late_fp8 == pytest.approx(late_bf16, rel=2e-2)
