"""``model.compile`` and ``backend_options.optimizer: adamw_8bit`` on a GPU.

* compile: the CUDA varlen path (one host sync per forward for the cached sample boundaries) trains
  compiled with the eager run's losses, and the layers compile a bounded number of graphs however
  many batches (with different sample lengths) go through them.
* adamw_8bit: the loss falls; a run resumed from a checkpoint continues with the uninterrupted
  run's losses; the 8-bit moments round-trip a save and restore code for code.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from backend_helpers import list_stream_factory
from fm9g.backends.torch_backend.plugin import TorchBackend
from fm9g.backends.training.config import load_train_config
from fm9g.backends.training.metrics import read_log
from fm9g.backends.training.resume import ResumePoint
from fm9g.backends.training.run import RunContext

pytestmark = pytest.mark.gpu


def _train(save, *extra, resume=None, steps=12):
    config = load_train_config(None, ["data.manifest=unused.json", "model.preset=small-llama", f"save={save}",
                                      f"train_iters={steps}", "save_iters=6", "batch_size=4", "max_length=256",
                                      "lr=3e-3", "warmup_iters=2", *extra])
    TorchBackend().train(config, RunContext(resume=ResumePoint.open(resume) if resume else None,
                                            stream_factory=list_stream_factory(40, seed=1), show_progress=False))
    return [r["loss"] for r in read_log(save / "train_log.jsonl")]


def _compiled_graphs(save, steps):
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    losses = _train(save, "model.compile=true", steps=steps)
    graphs = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    return losses, graphs


def test_compiled_layers_train_like_eager_without_recompiling_per_batch(tmp_path, record):
    eager = _train(tmp_path / "eager", steps=16)
    compiled, graphs = _compiled_graphs(tmp_path / "compiled", 16)
    _, graphs_after_4 = _compiled_graphs(tmp_path / "short", 4)
    record("compile_cuda", {"eager": eager, "compiled": compiled, "graphs_16_steps": graphs,
                            "graphs_4_steps": graphs_after_4})
    # Inductor fuses and reorders bf16 arithmetic, so the losses drift apart slowly; a wrong mask or a
    # dropped layer moves the first loss by far more than 1e-2.
    assert compiled[0] == pytest.approx(eager[0], rel=1e-2)
    assert compiled == pytest.approx(eager, rel=3e-2)
    # The batches' sample lengths differ: a recompile per batch would add graphs after step 4. The
    # varlen path's host sync splits each layer into a few graphs (graph breaks), compiled once each.
    assert graphs == graphs_after_4, (graphs, graphs_after_4)


def test_adamw_8bit_trains_and_resumes_where_it_left_off(tmp_path, record):
    pytest.importorskip("torchao")
    whole = _train(tmp_path / "a", "backend_options.optimizer=adamw_8bit")
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "step-00000006", tmp_path / "b" / "step-00000006")
    resumed = _train(tmp_path / "b", "backend_options.optimizer=adamw_8bit", resume=tmp_path / "b" / "step-00000006")
    record("adamw_8bit", {"whole": whole, "resumed": resumed})
    assert sum(whole[-3:]) < sum(whole[:3])
    # The same kernels on the same GPU: the resumed steps repeated the uninterrupted ones bit for bit
    # on an H200. Re-quantizing the saved float32 moments instead of restoring their codes moved the
    # losses by 2e-4 relative, and lost moments move them by far more, so 1e-5 tells them apart.
    assert resumed == pytest.approx(whole[6:], rel=1e-5)


def test_adamw_8bit_state_round_trips_code_for_code():
    pytest.importorskip("torchao")
    import io

    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_optimizer_state_dict)
    from torchao.optim import AdamW8bit

    from fm9g.backends.torch_backend.speed import (is_quantized_state, requantize_state, savable_state,
                                                   split_packed_state)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.Linear(512, 4)).cuda()
    optimizer = AdamW8bit(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    for _ in range(3):
        model(torch.randn(16, 256, device="cuda")).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    buffer = io.BytesIO()
    torch.save(savable_state(get_optimizer_state_dict(model, optimizer, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True))), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # plain tensors: fm9g's checkpoint loader reads it
    assert set(saved["state"]["0.weight"]) == {"step", "exp_avg", "exp_avg_sq", "exp_avg_8bit_codes",
                                               "exp_avg_8bit_scale", "exp_avg_sq_8bit_codes", "exp_avg_sq_8bit_scale"}
    assert not any(is_quantized_state(v) for entry in saved["state"].values() for v in entry.values())

    state, packed = split_packed_state(saved)
    restored = AdamW8bit(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    set_optimizer_state_dict(model, restored, state, options=StateDictOptions(full_state_dict=True))
    # the 512×256 weight's two moments; the 2,048-value head and the biases stay plain (torchao
    # quantizes tensors of ≥ 4,096 values)
    assert requantize_state(restored, dict(model.named_parameters()), packed) == 2
    for parameter in model.parameters():
        before, after = optimizer.state[parameter], restored.state[parameter]
        for key in ("exp_avg", "exp_avg_sq"):
            assert is_quantized_state(before[key]) == is_quantized_state(after[key])
            if is_quantized_state(before[key]):
                assert torch.equal(before[key].codes, after[key].codes)
                assert torch.equal(before[key].scale, after[key].scale)
            else:
                assert torch.equal(before[key], after[key])


@pytest.mark.skipif(torch.cuda.get_device_capability() < (8, 9), reason="float8 needs compute capability >= 8.9")
def test_all_three_levers_together_train(tmp_path, record):
    pytest.importorskip("torchao")
    import torch._dynamo

    torch._dynamo.reset()
    try:
        losses = _train(tmp_path / "all", "model.compile=true", "model.fp8=true",
                        "backend_options.optimizer=adamw_8bit", steps=12)
    finally:
        torch._dynamo.reset()
    record("compile_fp8_adamw_8bit", losses)
    assert all(torch.isfinite(torch.tensor(losses))) and sum(losses[-3:]) < sum(losses[:3])
