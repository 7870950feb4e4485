"""The ``peft`` delta engine: seed or HF layer names, only LoRA trainable and saved, OpenDelta key export."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from backend_helpers import list_stream_factory
from fm9g.backends.models.build import build_model
from fm9g.backends.lora.adapter import target_modules
from fm9g.backends.lora.peft_engine import PeftEngine
from fm9g.backends.weights.names import OPENDELTA_KEYS, PEFT_KEYS, convert_lora, hf_path_to_seed
from fm9g.backends.training.run import RunContext
from fm9g.backends.torch_backend.plugin import TorchBackend
from fm9g.backends.training.config import load_train_config
from fm9g.core.errors import UnknownName
from fm9g.core.plugins import get_plugin

SEED_LAYERS = ["project_q", "project_k", "project_v", "attention_out", "w_0", "w_1", "w_out"]


def test_engine_is_registered():
    assert isinstance(get_plugin("delta_engine", "peft"), PeftEngine)


def test_seed_names_map_to_hf_modules_and_only_lora_trains():
    model = build_model({"preset": "tiny-qwen2"}, seed=0)
    wrapped = PeftEngine().apply(model, {"lora_layer": SEED_LAYERS, "lora_r": 4, "lora_alpha": 8})
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    layers = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert layers == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(trainable) == 2 * 7 * model.config.num_hidden_layers
    lora_a = next(p for n, p in wrapped.named_parameters() if n.endswith("q_proj.lora_A.default.weight"))
    assert lora_a.shape == (4, model.config.hidden_size)
    fresh = build_model({"preset": "tiny-qwen2"}, seed=0)
    assert target_modules({"lora_layer": ["q_proj", "project_q", "w_out"]}, fresh) == ["q_proj", "down_proj"]


def test_unknown_layer_name_suggests():
    model = build_model({"preset": "tiny-llama"}, seed=0)
    with pytest.raises(UnknownName, match="did you mean 'project_q'"):
        PeftEngine().apply(model, {"lora_layer": ["project_qq"], "lora_r": 2})


def test_lora_training_saves_only_lora_tensors_in_peft_and_opendelta_format(tmp_path):
    config = load_train_config(None, [
        "data.manifest=unused.json", "model.preset=tiny-llama", f"save={tmp_path / 'run'}", "train_iters=3",
        "batch_size=2", "max_length=64", "lr=1e-2",
        'delta={"lora_r": 4, "lora_alpha": 8, "lora_layer": ["project_q", "w_out"], "save_format": "opendelta"}'])
    TorchBackend().train(config, RunContext(stream_factory=list_stream_factory(10), show_progress=False))
    checkpoint = tmp_path / "run" / "step-00000003"
    manifest = json.loads((checkpoint / "checkpoint.json").read_text())
    assert manifest["weights"] == "lora" and not (checkpoint / "model.safetensors").exists()
    adapter = load_file(checkpoint / "adapter_model.safetensors")
    assert len(adapter) == 2 * 2 * 2 and all("lora_A" in k or "lora_B" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # trained away from B = 0
    adapter_config = json.loads((checkpoint / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and adapter_config["lora_alpha"] == 8
    assert set(adapter_config["target_modules"]) == {"q_proj", "down_proj"}

    base = build_model({"preset": "tiny-llama"}, seed=config["seed"])  # the run's base weights
    loaded = PeftModel.from_pretrained(base, str(checkpoint))
    state = loaded.state_dict()
    key = "base_model.model.model.layers.1.mlp.down_proj.lora_B.default.weight"
    torch.testing.assert_close(state[key], adapter["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"])

    opendelta = torch.load(checkpoint / "opendelta_lora.pt", weights_only=True)
    a = opendelta["encoder.layers.0.self_att.self_attention.project_q.lora.lora_A"]
    b = opendelta["encoder.layers.1.ffn.ffn.w_out.lora.lora_B"]
    assert a.shape == (4, 64) and b.shape == (64, 4) and len(opendelta) == len(adapter)
    torch.testing.assert_close(b, adapter["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"])
    assert convert_lora(adapter, PEFT_KEYS, OPENDELTA_KEYS, rename=hf_path_to_seed, where="t").keys() == opendelta.keys()
