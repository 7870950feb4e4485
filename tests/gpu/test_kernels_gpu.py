"""``model.kernels: liger`` on a GPU: the same loss and gradients as transformers' own layers on a
packed row, and both backends training through the fused kernels.

Each check runs in a subprocess: Liger patches transformers' RoPE function for the whole process,
which must not leak into the other GPU tests.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("liger_kernel")

from fm9g.backends.training.metrics import read_log  # noqa: E402

pytestmark = pytest.mark.gpu

COMPARE = r"""
import json, sys, torch
from fm9g.backends.models.kernels import apply_kernels
from fm9g.backends.training.loss import token_loss
from fm9g.backends.models.build import build_model

preset, dtype = sys.argv[1], sys.argv[2]
device = torch.device("cuda")
lengths = [100, 37, 119]  # one packed row of three samples: positions restart per sample
position_ids = torch.cat([torch.arange(n) for n in lengths])[None].to(device)
generator = torch.Generator().manual_seed(0)
input_ids = torch.randint(0, 512, (1, sum(lengths)), generator=generator).to(device)
targets = torch.randint(0, 512, (1, sum(lengths)), generator=generator).to(device)
task_ids = torch.zeros_like(targets)

def run(kernels):
    model = build_model({"preset": preset}, seed=0, device=device)
    apply_kernels(model, kernels, device)
    if dtype == "bf16":
        model.to(torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "autocast"):
        logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
    loss = token_loss(logits, targets, task_ids, 1).total / targets.numel()
    loss.backward()
    return float(loss), {n: p.grad.float().flatten() for n, p in model.named_parameters()}

hf_loss, hf_grads = run("hf")  # before Liger patches anything
liger_loss, liger_grads = run("liger")
cosines = {n: float(torch.nn.functional.cosine_similarity(hf_grads[n], liger_grads[n], dim=0)) for n in hf_grads}
print(json.dumps({"hf": hf_loss, "liger": liger_loss, "min_cosine": min(cosines.values()),
                  "worst": min(cosines, key=cosines.get)}))
"""


@pytest.mark.parametrize("preset", ["small-qwen2", "small-llama"])
@pytest.mark.parametrize("dtype", ["bf16", "autocast"])
def test_liger_matches_transformers_layers_on_a_packed_row(preset, dtype, record):
    result = subprocess.run([sys.executable, "-c", COMPARE, preset, dtype], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    record(f"liger_vs_hf_{preset}_{dtype}", measured)
    assert measured["liger"] == pytest.approx(measured["hf"], rel=1e-2)
    assert measured["min_cosine"] > 0.99, measured


@pytest.mark.parametrize("backend", ["bmtrain", "torch"])
def test_training_with_liger_kernels_follows_the_hf_kernels(backend, gpu_mixture, tmp_path, record):
    if backend == "bmtrain":
        pytest.importorskip("bmtrain")
    logs = {}
    for kernels in ("hf", "liger"):
        config = tmp_path / f"{kernels}.json"
        config.write_text(json.dumps({
            "data": {"manifest": str(gpu_mixture / "mix.json")}, "model": {"preset": "small-qwen2", "kernels": kernels},
            "backend": backend, "save": str(tmp_path / kernels), "train_iters": 8, "save_iters": 0,
            "batch_size": 4, "max_length": 256, "lr": 3e-3, "warmup_iters": 2}))
        result = subprocess.run([sys.executable, "-m", "fm9g", "train", "--config", str(config)], cwd=tmp_path,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "could not be imported" not in result.stderr  # Liger's advice about kernels fm9g does not use
        logs[kernels] = [r["loss"] for r in read_log(tmp_path / kernels / "train_log.jsonl")]
    record(f"liger_training_{backend}", logs)
    assert logs["liger"][0] == pytest.approx(logs["hf"][0], rel=1e-2)
    assert logs["liger"] == pytest.approx(logs["hf"], rel=5e-2)
    assert sum(logs["liger"][-3:]) < sum(logs["liger"][:3])
