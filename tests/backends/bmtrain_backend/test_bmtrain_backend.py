"""What of the bmtrain backend runs without BMTrain (and without a GPU): registration, the
missing-BMTrain error, option validation, name mapping, dtype/tying preparation, and the
partitioned optimizer checkpoint format read back at any world size and by the torch backend.

The partitioned state here is made by real torch Adam optimizers over flat slices of real
parameters, laid out the way BMTrain lays out ``DistributedParameter`` (``ceil(n / W)`` per rank).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from fm9g.backends.bmtrain_backend import checkpoint as bc
from fm9g.backends.training.checkpoints import OPTIMIZER, optimizer_rank_file
from fm9g.backends.training.optimizer_state import PARTITIONED_FORMAT, SavedOptimizer, is_partitioned
from fm9g.backends.training.resume import ResumePoint
from fm9g.backends.weights.files import load_weights_only
from fm9g.backends.bmtrain_backend.training import cast_parameters, untie_embeddings
from fm9g.backends.bmtrain_backend.runtime import import_bmtrain
from fm9g.backends.models.build import build_model
from fm9g.core.errors import Fm9gError, ValidationFailed
from fm9g.core.plugins import get_plugin, validate_options

from backend_helpers import write_train_config


def test_plugin_is_registered_with_options_schema():
    backend = get_plugin("backend", "bmtrain")
    assert backend.name == "bmtrain" and "ZeRO" in backend.description
    options = validate_options(backend, {}, where="t")
    assert options == {"loss_scale": None, "loss_scale_factor": 2, "loss_scale_steps": 1024, "checkpoint_blocks": None}
    assert validate_options(backend, {"loss_scale": 1024}, where="t")["loss_scale"] == 1024


@pytest.mark.parametrize("options, fragment", [({"loss_scale": -1}, "loss_scale"),
                                               ({"loss_scale_factor": 1}, "loss_scale_factor"),
                                               ({"zero_level": 2}, "zero_level")])
def test_bad_backend_options_are_rejected(options, fragment):
    with pytest.raises(ValidationFailed) as error:
        validate_options(get_plugin("backend", "bmtrain"), options, where="train config: backend_options")
    assert fragment in str(error.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without BMTrain/GPU")
def test_missing_bmtrain_is_a_clear_error():
    import importlib.util

    if importlib.util.find_spec("bmtrain") is not None:
        pytest.skip("bmtrain is installed here")
    with pytest.raises(Fm9gError) as error:
        import_bmtrain()
    assert "not installed" in str(error.value) and "fm9g install-bmtrain" in error.value.fix


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without BMTrain/GPU")
def test_train_cli_with_bmtrain_fails_in_one_line(mixture, tmp_path):
    config = write_train_config(tmp_path, mixture / "mix.json", backend="bmtrain")
    result = subprocess.run([sys.executable, "-m", "fm9g", "train", "--config", str(config)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "BMTrain is not installed" in lines[0] and "install-bmtrain" in lines[0]
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("step-*"))


def test_train_cli_rejects_unknown_bmtrain_option(mixture, tmp_path):
    config = write_train_config(tmp_path, mixture / "mix.json", backend="bmtrain",
                                backend_options={"loss_scael": 8})
    result = subprocess.run([sys.executable, "-m", "fm9g", "train", "--config", str(config)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "loss_scael" in result.stderr


@pytest.mark.parametrize("name, expected", [
    ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight"),
    ("model.layers.0._module.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight"),
    ("_module.model.norm.weight", "model.norm.weight"),
    ("base_model.model.model.layers.3._module.mlp.down_proj.lora_A.default.weight",
     "base_model.model.model.layers.3.mlp.down_proj.lora_A.default.weight"),
    ("model.my_module.weight", "model.my_module.weight"),
])
def test_hf_parameter_name(name, expected):
    assert bc.hf_parameter_name(name) == expected


def test_untie_and_cast_keep_rope_buffers_float32():
    from transformers import AutoModelForCausalLM

    from fm9g.backends.models.presets import preset_config

    model = AutoModelForCausalLM.from_config(preset_config("tiny-llama", tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert untie_embeddings(model) and model.config.tie_word_embeddings is False
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    assert not untie_embeddings(model)
    cast_parameters(model, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(b.dtype == torch.float32 for name, b in model.named_buffers() if "inv_freq" in name)


# --------------------------------------------------------------------------- partitioned optimizer state


def _spans(numel: int, world: int) -> list[tuple[int, int]]:
    """BMTrain's DistributedParameter split: ceil(n / W) values per rank, the last ones shorter or empty."""
    size = -(-numel // world)
    return [(r * size, min(numel, (r + 1) * size)) for r in range(world)]


def _trained_model_and_grads(steps: int = 2):
    """A tiny model, its AdamW (weight decay 0: Adam moments), and the gradients of each step."""
    model = build_model({"preset": "tiny-qwen2"}, seed=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    grads = []
    for step in range(steps):
        ids = torch.randint(0, 512, (1, 24), generator=torch.Generator().manual_seed(step))
        model(input_ids=ids).logits.float().pow(2).mean().backward()
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model, optimizer, grads


def _saved(directory) -> SavedOptimizer:
    return SavedOptimizer.read(directory, load_weights_only(directory / OPTIMIZER))


def _write_partitioned(directory, model, grads, world: int) -> None:
    """Each rank: Adam over its flat slices (BMTrain-style attributes), the same gradients; then the files."""
    names = [n for n, _ in model.named_parameters()]
    full = {n: p for n, p in build_model({"preset": "tiny-qwen2"}, seed=3).named_parameters()}
    for rank in range(world):
        named = []
        for name in names:
            start, end = _spans(full[name].numel(), world)[rank]
            piece = torch.nn.Parameter(full[name].detach().reshape(-1)[start:end].clone())
            piece._start_partition, piece._end_partition = start, end
            piece._original_shape = full[name].shape
            named.append((name, piece))
        optimizer = torch.optim.Adam([p for _, p in named], lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
        for step_grads in grads:
            for name, piece in named:
                piece.grad = step_grads[name].reshape(-1)[piece._start_partition:piece._end_partition].clone()
            optimizer.step()
        torch.save(bc.optimizer_partition(named, optimizer, rank=rank, world_size=world),
                   directory / optimizer_rank_file(rank))
    header = bc.optimizer_header(named, optimizer, world_size=world,
                                 manager={"loss_scale": 1.0, "loss_scale_enabled": False, "steps_since_last_scale": 0})
    torch.save(header, directory / OPTIMIZER)


def test_partitioned_state_reads_back_at_any_world_size(tmp_path):
    model, optimizer, grads = _trained_model_and_grads()
    _write_partitioned(tmp_path, model, grads, world=3)
    saved = _saved(tmp_path)
    assert saved.manager["loss_scale_enabled"] is False
    by_name = dict(model.named_parameters())
    assert sorted(saved.names()) == sorted(by_name)
    for name, parameter in by_name.items():
        reference = optimizer.state[parameter]
        flat_avg, flat_sq = reference["exp_avg"].reshape(-1), reference["exp_avg_sq"].reshape(-1)
        for start, end in _spans(parameter.numel(), 2) + _spans(parameter.numel(), 5):
            if end <= start:
                continue
            piece = saved.local(name, start, end)
            assert piece["step"] == 2
            torch.testing.assert_close(piece["exp_avg"], flat_avg[start:end], rtol=1e-6, atol=1e-9)
            torch.testing.assert_close(piece["exp_avg_sq"], flat_sq[start:end], rtol=1e-6, atol=1e-12)


def test_torch_backend_state_from_partitioned_checkpoint_continues_like_the_original(tmp_path):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    model, optimizer, grads = _trained_model_and_grads()
    _write_partitioned(tmp_path, model, grads, world=4)
    assert is_partitioned(torch.load(tmp_path / OPTIMIZER, weights_only=True))
    state = _saved(tmp_path).torch_state_dict()

    twin = build_model({"preset": "tiny-qwen2"}, seed=3)
    twin.load_state_dict(model.state_dict())
    twin_optimizer = torch.optim.AdamW(twin.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    set_optimizer_state_dict(twin, twin_optimizer, state, options=StateDictOptions(full_state_dict=True))
    ids = torch.randint(0, 512, (1, 24), generator=torch.Generator().manual_seed(9))
    for m, o in ((model, optimizer), (twin, twin_optimizer)):
        m(input_ids=ids).logits.float().pow(2).mean().backward()
        o.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


def test_torch_format_state_is_read_by_name_and_range(tmp_path):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    model, optimizer, _ = _trained_model_and_grads(steps=1)
    torch.save(get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True)),
               tmp_path / OPTIMIZER)
    saved = _saved(tmp_path)
    name, parameter = next(iter(model.named_parameters()))
    piece = saved.local(name, 5, 40)
    assert piece["step"] == 1 and "master" not in piece
    assert torch.equal(piece["exp_avg"], optimizer.state[parameter]["exp_avg"].reshape(-1)[5:40])
    assert saved.local("no.such.parameter", 0, 4) is None


def test_incomplete_partitioned_state_is_an_error(tmp_path):
    model, _, grads = _trained_model_and_grads(steps=1)
    _write_partitioned(tmp_path, model, grads, world=2)
    (tmp_path / optimizer_rank_file(1)).unlink()
    with pytest.raises(Fm9gError, match="optimizer.rank-1.pt"):
        _saved(tmp_path)
    torch.save({"something": 1}, tmp_path / OPTIMIZER)
    with pytest.raises(Fm9gError, match="unrecognized optimizer state"):
        _saved(tmp_path)


def test_partition_of_plain_and_empty_slices():
    plain = torch.zeros(6)
    assert bc.partition(plain) == (0, 6)
    empty = torch.nn.Parameter(torch.zeros(0))
    empty._start_partition, empty._end_partition, empty._original_shape = None, 0, torch.Size([4, 2])
    assert bc.partition(empty) is None and bc.full_shape(empty) == (4, 2)


def test_master_from_torch_weights(tmp_path):
    from safetensors.torch import save_file

    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    save_file({"model.norm.weight": weight}, str(tmp_path / "model.safetensors"))
    master_of = bc.master_from_weights(ResumePoint(tmp_path, {"weights": "full", "files": {"weights": "model.safetensors"}}))
    assert torch.equal(master_of("model.norm.weight", (2, 7)), torch.arange(2, 7, dtype=torch.float32))
    assert master_of("missing.weight", (0, 1)) is None
    save_file({"base_model.model.q_proj.lora_A.weight": weight}, str(tmp_path / "adapter_model.safetensors"))
    lora = bc.master_from_weights(ResumePoint(tmp_path, {"weights": "lora",
                                                        "files": {"adapter": "adapter_model.safetensors"}}))
    assert torch.equal(lora("base_model.model.q_proj.lora_A.default.weight", (0, 3)), torch.arange(3.0))
    assert json.dumps(PARTITIONED_FORMAT)
