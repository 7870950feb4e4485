"""The torch backend's speed levers on CPU: ``model.compile`` trains (compiled once) with the eager
run's losses, and ``model.fp8`` / ``optimizer: adamw_8bit`` refuse what they cannot do with one-line
errors. Their GPU behaviour is checked in tests/gpu/test_fp8.py and tests/gpu/test_speed_options.py."""

from __future__ import annotations

import importlib.util
import io
import shutil

import pytest
import torch

from backend_helpers import list_stream_factory
from fm9g.backends.torch_backend.plugin import TorchBackend
from fm9g.backends.torch_backend.speed import check_speed_options, fp8_layer_filter
from fm9g.backends.training.config import load_train_config
from fm9g.backends.training.metrics import read_log
from fm9g.backends.training.run import RunContext
from fm9g.core.errors import Fm9gError

BASE = ["data.manifest=unused.json", "model.preset=tiny-llama", "train_iters=6", "save_iters=0", "batch_size=2",
        "max_length=64", "lr=2e-3", "warmup_iters=1"]
TORCHAO_INSTALLED = importlib.util.find_spec("torchao") is not None


def _config(*extra):
    return load_train_config(None, [*BASE, "save=unused", *extra])


def _train(save, *extra):
    config = load_train_config(None, [*BASE, f"save={save}", *extra])
    out = io.StringIO()
    TorchBackend().train(config, RunContext(stream_factory=list_stream_factory(20), show_progress=False, out=out))
    return [r["loss"] for r in read_log(save / "train_log.jsonl")], out.getvalue()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                    reason="inductor compiles CPU kernels with a C compiler, and there is none here")
def test_compiled_layers_train_with_the_eager_losses_compiled_once(tmp_path):
    import torch._dynamo
    from torch._dynamo.utils import counters

    eager, _ = _train(tmp_path / "eager")
    torch._dynamo.reset()
    counters.clear()
    try:
        compiled, output = _train(tmp_path / "compiled", "model.compile=true")
        graphs = counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
    assert "note: model.compile: each decoder layer" in output
    # On CPU the block-causal mask path has no host sync: one graph for the layer, traced once and
    # reused by both layers and all six batches. A recompile per batch or per layer would add graphs.
    assert graphs == 1
    # float32 throughout; inductor's fused kernels reorder a few reductions (≈ 1e-7 relative), while
    # a wrong mask or a skipped layer changes the loss in the second decimal.
    assert compiled == pytest.approx(eager, rel=1e-5)
    assert compiled[-1] < compiled[0]


def test_fp8_needs_a_cuda_gpu():
    with pytest.raises(Fm9gError, match="float8 matmuls need a CUDA GPU with compute capability ≥ 8.9") as error:
        TorchBackend().train(_config("model.fp8=true"), RunContext(stream_factory=list_stream_factory(2)))
    assert error.value.where == "train config: model.fp8"


def test_fp8_with_a_delta_is_refused():
    config = _config("model.fp8=true", 'delta={"lora_r": 8}')
    with pytest.raises(Fm9gError, match="model.fp8 with a delta is not supported") as error:
        check_speed_options(config, torch.device("cuda"), world_size=1)
    assert "drop model.fp8" in error.value.fix


def test_adamw_8bit_needs_a_cuda_gpu():
    with pytest.raises(Fm9gError, match="adamw_8bit .* CUDA GPUs only") as error:
        TorchBackend().train(_config("backend_options.optimizer=adamw_8bit"),
                             RunContext(stream_factory=list_stream_factory(2)))
    assert error.value.where == "train config: backend_options.optimizer"


def test_adamw_8bit_runs_on_one_process():
    with pytest.raises(Fm9gError, match="one process, and this run has 2"):
        check_speed_options(_config("backend_options.optimizer=adamw_8bit"), torch.device("cuda"), world_size=2)


@pytest.mark.skipif(TORCHAO_INSTALLED, reason="torchao is installed here, so its absence cannot be seen")
def test_missing_torchao_says_how_to_install_it():
    with pytest.raises(Fm9gError, match="adamw_8bit needs torchao, which does not import") as error:
        check_speed_options(_config("backend_options.optimizer=adamw_8bit"), torch.device("cuda"), world_size=1)
    assert "pip install 'fm9g[fp8]'" in error.value.fix


def test_fp8_layer_filter_keeps_lm_head_and_odd_dims_out():
    assert fp8_layer_filter(torch.nn.Linear(64, 176), "model.layers.0.mlp.up_proj")
    assert not fp8_layer_filter(torch.nn.Linear(64, 512), "lm_head")
    assert not fp8_layer_filter(torch.nn.Linear(64, 260), "model.layers.0.mlp.up_proj")  # 260 % 16 != 0
    assert not fp8_layer_filter(torch.nn.Embedding(16, 16), "model.embed_tokens")


@pytest.mark.parametrize("key", ["compile", "fp8"])
def test_the_bmtrain_backend_refuses_torch_only_model_keys(key):
    from fm9g.backends.bmtrain_backend.training import BmtrainStrategy

    with pytest.raises(Fm9gError, match=f"model.{key} applies to the torch backend only") as error:
        BmtrainStrategy(_config("backend=bmtrain", f"model.{key}=true"))
    assert error.value.where == f"train config: model.{key}"


def _counting(forward, calls: list[int], index: int):
    def counted(*args, **kwargs):
        calls[index] += 1
        return forward(*args, **kwargs)
    return counted


@pytest.mark.parametrize(("blocks", "recomputed"), [(None, [2, 2]), (1, [2, 1]), (0, [1, 1])])
def test_checkpoint_blocks_recomputes_only_the_first_layers(blocks, recomputed):
    """Each layer's MLP runs once in the forward and once more in the backward if its layer recomputes."""
    from transformers import AutoModelForCausalLM

    from fm9g.backends.models.presets import preset_config
    from fm9g.backends.torch_backend.speed import decoder_layers, enable_checkpointing

    model = AutoModelForCausalLM.from_config(preset_config("tiny-llama"))
    model.train()
    assert enable_checkpointing(model, blocks) == sum(count == 2 for count in recomputed)
    calls = [0, 0]
    for index, layer in enumerate(decoder_layers(model)):  # counted in forward itself: the recompute runs no hooks
        layer.mlp.forward = _counting(layer.mlp.forward, calls, index)
    ids = torch.randint(0, 512, (1, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    assert calls == recomputed


def test_checkpoint_blocks_trains_with_the_losses_of_full_checkpointing(tmp_path):
    full, _ = _train(tmp_path / "all", "use_checkpoint=true", "train_iters=3")
    partial, _ = _train(tmp_path / "one", "use_checkpoint=true", "backend_options.checkpoint_blocks=1", "train_iters=3")
    assert partial == pytest.approx(full, rel=1e-6)
