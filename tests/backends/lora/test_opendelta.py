"""The ``opendelta`` delta engine against the real OpenDelta 0.3.2 and against the ``peft`` engine.

OpenDelta must be installed (``scripts/install_opendelta.sh``; CI does): these tests do not skip.
Merges use fm9g's own merge code (``fm9g.backends.lora.merge``) and are checked against the formula
``W + (alpha/r)·B@A`` computed here and against PEFT's ``merge_and_unload``.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from fm9g.backends.lora.merge import LoraHyper, merge_lora_pairs, peft_scale, seed_scale
from fm9g.backends.lora.opendelta_bridge import apply_bridges, import_opendelta
from fm9g.backends.lora.opendelta_engine import OpenDeltaEngine
from fm9g.backends.lora.adapter import OPENDELTA_WEIGHTS as OPENDELTA_FILE
from fm9g.backends.lora.peft_engine import PeftEngine
from fm9g.backends.models.presets import preset_config
from fm9g.backends.weights.names import OPENDELTA_KEYS, PEFT_KEYS, lora_pairs, seed_path_to_hf
from fm9g.core.errors import Fm9gError, UnknownName
from fm9g.core.plugins import get_plugin

R, ALPHA = 4, 8.0
SEED_LAYERS = ["project_q", "project_k", "project_v", "attention_out", "w_0", "w_1", "w_out"]
HF_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_options(layers=SEED_LAYERS, **extra):
    return {"method": "lora", "lora_layer": list(layers), "lora_r": R, "lora_alpha": ALPHA, "lora_dropout": 0.0,
            **extra}


@pytest.fixture(scope="module")
def base_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(preset_config("tiny-llama"), dtype=torch.float32).eval()


@pytest.fixture()
def batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(4, 512, (2, 24), generator=generator)


def peft_name(opendelta_name: str) -> str:
    """``model.layers.0.self_attn.q_proj.lora.lora_A`` -> the PeftModel parameter name."""
    linear, part = opendelta_name.rsplit(".lora.", 1)
    return f"base_model.model.{linear}.{part}.default.weight"


def paired_models(base_model, options):
    """The same base through both engines, with identical non-zero LoRA tensors (B random, not zero)."""
    opendelta_model = OpenDeltaEngine().apply(copy.deepcopy(base_model), options)
    peft_model = PeftEngine().apply(copy.deepcopy(base_model), options)
    generator = torch.Generator().manual_seed(2)
    peft_parameters = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, parameter in OpenDeltaEngine().trainable_state_dict(opendelta_model).items():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
            peft_parameters[peft_name(name)].copy_(parameter)
    return opendelta_model, peft_model


def test_real_opendelta_is_bridged_not_copied():
    opendelta = import_opendelta()
    assert opendelta.LoraModel.__module__ == "opendelta.delta_models.lora"
    assert "site-packages" in Path(opendelta.__file__).parts or "dist-packages" in Path(opendelta.__file__).parts
    bridged = apply_bridges()
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        assert any("transformers.deepspeed" in item for item in bridged)
        assert any("MultiHeadSelfAttention" in item for item in bridged)


def test_registered_and_importing_fm9g_does_not_import_opendelta():
    assert isinstance(get_plugin("delta_engine", "opendelta"), OpenDeltaEngine)
    code = ("import sys, fm9g.backends.lora.opendelta_engine; "
            "assert 'opendelta' not in sys.modules and 'transformers.deepspeed' not in sys.modules, 'eager'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_opendelta_names_the_install_command(monkeypatch, base_model):
    monkeypatch.setitem(sys.modules, "opendelta", None)
    with pytest.raises(Fm9gError, match="install_opendelta.sh"):
        OpenDeltaEngine().apply(copy.deepcopy(base_model), lora_options())


@pytest.mark.parametrize("layers", [SEED_LAYERS, HF_LAYERS, ["project_q", "v_proj"]])
def test_layer_names_seed_or_hf_and_only_lora_trains(base_model, layers):
    model = OpenDeltaEngine().apply(copy.deepcopy(base_model), lora_options(layers))
    trainable = sorted(name for name, parameter in model.named_parameters() if parameter.requires_grad)
    expected_leaves = {dict(zip(SEED_LAYERS, HF_LAYERS)).get(layer, layer) for layer in layers}
    expected = sorted(f"model.layers.{i}.{'self_attn' if leaf in HF_LAYERS[:4] else 'mlp'}.{leaf}.lora.{part}"
                      for i in range(2) for leaf in expected_leaves for part in ("lora_A", "lora_B"))
    assert trainable == expected
    assert set(expected) <= set(model.state_dict()) and "lm_head.weight" in model.state_dict()
    parameters = dict(model.named_parameters())
    for name in expected:
        linear = model.get_submodule(name.rsplit(".lora.", 1)[0])
        expected_shape = (R, linear.in_features) if name.endswith("lora_A") else (linear.out_features, R)
        assert tuple(parameters[name].shape) == expected_shape, name


def test_unknown_layer_is_a_clear_error(base_model):
    with pytest.raises(UnknownName, match="did you mean 'project_q'"):
        OpenDeltaEngine().apply(copy.deepcopy(base_model), lora_options(["project_qq"]))


def test_one_step_equals_peft(base_model, batch):
    opendelta_model, peft_model = paired_models(base_model, lora_options())
    od_loss = opendelta_model(input_ids=batch, labels=batch).loss
    peft_loss = peft_model(input_ids=batch, labels=batch).loss
    od_loss.backward()
    peft_loss.backward()
    torch.testing.assert_close(od_loss, peft_loss, rtol=1e-6, atol=1e-6)
    peft_parameters = dict(peft_model.named_parameters())
    od_lora = OpenDeltaEngine().trainable_state_dict(opendelta_model)
    assert len(od_lora) == 2 * 7 * 2
    assert {peft_name(name) for name in od_lora} == {n for n, p in peft_parameters.items() if p.requires_grad}
    od_parameters = dict(opendelta_model.named_parameters())
    for name in od_lora:
        grad = od_parameters[name].grad
        assert grad is not None and grad.abs().max() > 0, name
        torch.testing.assert_close(grad, peft_parameters[peft_name(name)].grad, rtol=1e-5, atol=1e-7)
    for model in (opendelta_model, peft_model):
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                                      betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
        optimizer.step()
    for name in od_lora:
        torch.testing.assert_close(od_parameters[name], peft_parameters[peft_name(name)], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(opendelta_model(input_ids=batch, labels=batch).loss,
                               peft_model(input_ids=batch, labels=batch).loss, rtol=1e-6, atol=1e-6)


def formula_merge(base_state, lora_pairs, scale):
    merged = dict(base_state)
    for linear, (lora_a, lora_b) in lora_pairs.items():
        merged[f"{linear}.weight"] = base_state[f"{linear}.weight"] + scale * (lora_b @ lora_a)
    return merged


def test_checkpoints_of_both_engines_merge_to_the_same_weights(base_model, tmp_path):
    options = lora_options(save_format="opendelta")
    opendelta_model, peft_model = paired_models(base_model, options)
    od_dir, peft_dir = tmp_path / "opendelta", tmp_path / "peft"
    od_dir.mkdir()
    peft_dir.mkdir()
    od_files = OpenDeltaEngine().save(opendelta_model, od_dir, options)
    peft_files = PeftEngine().save(peft_model, peft_dir, options)
    assert od_files == peft_files == {"adapter": "adapter_model.safetensors",
                                      "adapter_config": "adapter_config.json", "opendelta": OPENDELTA_FILE}
    base_state = base_model.state_dict()
    where = "test"
    import json

    merged = {}
    for name, directory in (("opendelta", od_dir), ("peft", peft_dir)):
        adapter_config = json.loads((directory / "adapter_config.json").read_text())
        pairs = lora_pairs(load_file(str(directory / "adapter_model.safetensors")), PEFT_KEYS, where=where)
        merged[name] = merge_lora_pairs(base_state, pairs, peft_scale(adapter_config, where=where), where=where)
        seed_state = torch.load(directory / OPENDELTA_FILE, weights_only=True)
        assert all(key.startswith("encoder.layers.") and ".lora.lora_" in key for key in seed_state)
        seed_pairs = {seed_path_to_hf(path): pair
                      for path, pair in lora_pairs(seed_state, OPENDELTA_KEYS, where=where).items()}
        merged[f"{name}-seed-file"] = merge_lora_pairs(base_state, seed_pairs,
                                                       seed_scale(LoraHyper(R, ALPHA), where=where), where=where)
    od_lora = OpenDeltaEngine().trainable_state_dict(opendelta_model)
    expected = formula_merge(base_state, {name.rsplit(".lora.", 1)[0]: (od_lora[name], od_lora[name[:-1] + "B"])
                                          for name in od_lora if name.endswith("lora_A")}, ALPHA / R)
    reference = copy.deepcopy(peft_model).merge_and_unload().state_dict()
    assert sum(not torch.equal(expected[k], base_state[k]) for k in base_state) == 2 * 7
    for variant in merged.values():
        assert sorted(variant) == sorted(base_state)
        for key in base_state:
            torch.testing.assert_close(variant[key], expected[key], rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(variant[key], reference[key], rtol=1e-6, atol=1e-6)


def test_adapter_loads_in_peft_and_round_trips(base_model, batch, tmp_path):
    from peft import PeftModel

    options = lora_options(["w_0", "project_v"], save_format="opendelta")
    opendelta_model, _ = paired_models(base_model, options)
    OpenDeltaEngine().save(opendelta_model, tmp_path, options)
    loaded_by_peft = PeftModel.from_pretrained(copy.deepcopy(base_model), str(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(loaded_by_peft(input_ids=batch).logits, opendelta_model(input_ids=batch).logits,
                                   rtol=1e-5, atol=1e-5)
    saved = OpenDeltaEngine().trainable_state_dict(opendelta_model)
    for only_file in ("adapter_model.safetensors", OPENDELTA_FILE):
        directory = tmp_path / f"only-{only_file}"
        directory.mkdir()
        (directory / only_file).write_bytes((tmp_path / only_file).read_bytes())
        fresh = OpenDeltaEngine().apply(copy.deepcopy(base_model), options)
        OpenDeltaEngine().load(fresh, directory)
        restored = OpenDeltaEngine().trainable_state_dict(fresh)
        assert sorted(restored) == sorted(saved)
        for name in saved:
            assert torch.equal(restored[name], saved[name]), name


def test_load_refuses_a_checkpoint_of_another_shape(base_model, tmp_path):
    options = lora_options(["q_proj"])
    OpenDeltaEngine().save(OpenDeltaEngine().apply(copy.deepcopy(base_model), options), tmp_path, options)
    wider = OpenDeltaEngine().apply(copy.deepcopy(base_model), {**options, "lora_r": R * 2})
    with pytest.raises(Fm9gError, match="has shape"):
        OpenDeltaEngine().load(wider, tmp_path)
    other_layers = OpenDeltaEngine().apply(copy.deepcopy(base_model), lora_options(["k_proj"]))
    with pytest.raises(Fm9gError, match="does not fit the model"):
        OpenDeltaEngine().load(other_layers, tmp_path)
    with pytest.raises(Fm9gError, match="no adapter_model.safetensors"):
        OpenDeltaEngine().load(other_layers, tmp_path / "absent")


@pytest.mark.slow
def test_torch_backend_trains_and_resumes_exactly_with_opendelta(tmp_path):
    """The torch backend with ``delta.engine: opendelta``: trains, checkpoints both formats, resumes exactly."""
    import shutil

    from backend_helpers import list_stream_factory
    from fm9g.backends.training.checkpoints import latest_checkpoint, read_manifest
    from fm9g.backends.training.metrics import read_log
    from fm9g.backends.training.run import RunContext
    from fm9g.backends.training.resume import ResumePoint
    from fm9g.backends.torch_backend.plugin import TorchBackend
    from fm9g.backends.training.config import load_train_config

    def train(save, resume=None):
        config = load_train_config(None, [
            "data.manifest=unused.json", "model.preset=tiny-llama", f"save={save}", "train_iters=6", "save_iters=3",
            "batch_size=2", "max_length=64", "lr=2e-3", "warmup_iters=1",
            'delta={"engine": "opendelta", "lora_r": 4, "lora_alpha": 8, "save_format": "opendelta"}'])
        context = RunContext(resume=ResumePoint.open(resume) if resume else None, stream_factory=list_stream_factory(30), show_progress=False)
        TorchBackend().train(config, context)
        return read_log(Path(save) / "train_log.jsonl")

    whole = train(tmp_path / "whole")
    assert whole[-1]["loss"] < whole[0]["loss"]
    final = tmp_path / "whole" / "step-00000006"
    manifest = read_manifest(final)
    assert manifest["weights"] == "lora" and manifest["files"]["opendelta"] == OPENDELTA_FILE
    seed_keys = torch.load(final / OPENDELTA_FILE, weights_only=True)
    assert len(seed_keys) == 2 * 7 * 2
    assert "encoder.layers.1.ffn.ffn.w_out.lora.lora_B" in seed_keys
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "whole" / "step-00000003", resumed_dir / "step-00000003")
    resumed = train(resumed_dir, resume=latest_checkpoint(resumed_dir))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole[3:]]
    a = load_file(final / "adapter_model.safetensors")
    b = load_file(resumed_dir / "step-00000006" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
