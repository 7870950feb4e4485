"""The FM9G presets have the shapes of the original code's ``model_configs`` (9G7B_MHA, CPM-9G-8B).

Each value below is read from those configs; a preset that drifts from any of them (a wrong RoPE
base or RMSNorm epsilon trains fine and silently gives another model) fails here.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from fm9g.backends.models.presets import preset_config

FM9G_CONFIGS = {
    "fm9g-7b": dict(model_type="qwen2", vocab_size=73448, hidden_size=3584, num_hidden_layers=28,
                    num_attention_heads=28, num_key_value_heads=28, head_dim=128, intermediate_size=18944,
                    rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=32768, tie_word_embeddings=False,
                    hidden_act="silu"),
    "fm9g-8b": dict(model_type="llama", vocab_size=119696, hidden_size=4096, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=32, head_dim=128, intermediate_size=14336,
                    rms_norm_eps=1e-5, rope_theta=1e4, max_position_embeddings=8192, tie_word_embeddings=False,
                    hidden_act="silu"),
}


def _rope_theta(config) -> float:
    parameters = getattr(config, "rope_parameters", None) or {}
    return float(parameters.get("rope_theta", getattr(config, "rope_theta", 0.0)))


@pytest.mark.parametrize("name", sorted(FM9G_CONFIGS))
def test_preset_matches_the_fm9g_model_config(name):
    config, expected = preset_config(name), FM9G_CONFIGS[name]
    for key, value in expected.items():
        actual = _rope_theta(config) if key == "rope_theta" else getattr(config, key, None)
        if key == "head_dim":
            actual = config.hidden_size // config.num_attention_heads
        assert actual == value, f"{name}.{key}: {actual!r}, the FM9G config says {value!r}"


def test_bias_layout_and_parameter_count():
    with torch.device("meta"):
        qwen = AutoModelForCausalLM.from_config(preset_config("fm9g-7b"))
        llama = AutoModelForCausalLM.from_config(preset_config("fm9g-8b"))
    attention = qwen.model.layers[0].self_attn
    assert attention.q_proj.bias is not None and attention.k_proj.bias is not None
    assert attention.v_proj.bias is not None and attention.o_proj.bias is None  # q/k/v bias, o_proj none
    assert all(getattr(llama.model.layers[0].self_attn, f"{p}_proj").bias is None for p in "qkvo")
    assert sum(p.numel() for p in qwen.parameters()) == 7_668_831_744  # the 9G7B_MHA count
