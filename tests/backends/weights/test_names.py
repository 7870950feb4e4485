"""The seed <-> HF parameter-name map (the seed's ordered substring replacement) and LoRA key maps."""

from __future__ import annotations

import pytest

from _convert_helpers import tiny_model
from fm9g.backends.weights.names import (
    hf_name_to_seed,
    hf_to_seed,
    lora_layers_to_hf,
    lora_layers_to_seed,
    OPENDELTA_KEYS,
    PEFT_KEYS,
    convert_lora,
    hf_path_to_seed,
    lora_pairs,
    seed_path_to_hf,
    seed_name_to_hf,
    seed_to_hf,
)
from fm9g.core.errors import Fm9gError

FACTS_ROWS = [
    ("input_embedding.weight", "model.embed_tokens.weight"),
    ("encoder.output_layernorm.weight", "model.norm.weight"),
    ("encoder.layers.3.self_att.self_attention.project_q.weight", "model.layers.3.self_attn.q_proj.weight"),
    ("encoder.layers.3.self_att.self_attention.project_k.bias", "model.layers.3.self_attn.k_proj.bias"),
    ("encoder.layers.3.self_att.self_attention.project_v.weight", "model.layers.3.self_attn.v_proj.weight"),
    ("encoder.layers.3.self_att.self_attention.attention_out.weight", "model.layers.3.self_attn.o_proj.weight"),
    ("encoder.layers.3.self_att.layernorm_before_attention.weight", "model.layers.3.input_layernorm.weight"),
    ("encoder.layers.3.ffn.layernorm_before_ffn.weight", "model.layers.3.post_attention_layernorm.weight"),
    ("encoder.layers.3.ffn.ffn.w_in.w_0.weight", "model.layers.3.mlp.gate_proj.weight"),
    ("encoder.layers.3.ffn.ffn.w_in.w_1.weight", "model.layers.3.mlp.up_proj.weight"),
    ("encoder.layers.3.ffn.ffn.w_out.weight", "model.layers.3.mlp.down_proj.weight"),
    ("lm_head.weight", "lm_head.weight"),
]

SEED_HGFACE_2_BMTRAIN = {
    "model.embed_tokens.": "input_embedding.",
    "model.norm.weight": "encoder.output_layernorm.weight",
    "model.": "encoder.",
    "self_attn.q_proj.": "self_att.self_attention.project_q.",
    "self_attn.k_proj.": "self_att.self_attention.project_k.",
    "self_attn.v_proj.": "self_att.self_attention.project_v.",
    "self_attn.o_proj.": "self_att.self_attention.attention_out.",
    "input_layernorm.": "self_att.layernorm_before_attention.",
    "post_attention_layernorm.": "ffn.layernorm_before_ffn.",
    "mlp.gate_proj.": "ffn.ffn.w_in.w_0.",
    "mlp.up_proj.": "ffn.ffn.w_in.w_1.",
    "mlp.down_proj.": "ffn.ffn.w_out.",
}
"""The replacement dict of the seed guide's ``hgface_2_bmtrain.py``, verbatim."""

SEED_BMTRAIN_2_HGFACE = {
    "input_embedding.": "model.embed_tokens.",
    "output_layernorm.": "norm.",
    "encoder.": "model.",
    "self_att.self_attention.project_q.": "self_attn.q_proj.",
    "self_att.self_attention.project_k.": "self_attn.k_proj.",
    "self_att.self_attention.project_v.": "self_attn.v_proj.",
    "self_att.self_attention.attention_out.": "self_attn.o_proj.",
    "self_att.layernorm_before_attention.": "input_layernorm.",
    "ffn.layernorm_before_ffn.": "post_attention_layernorm.",
    "ffn.ffn.w_in.w_0.": "mlp.gate_proj.",
    "ffn.ffn.w_in.w_1.": "mlp.up_proj.",
    "ffn.ffn.w_out.": "mlp.down_proj.",
}
"""The replacement dict of the seed's ``bmtrain_2_hgface.py``, verbatim."""


def _seed_rename(name: str, table: dict[str, str]) -> str:
    """The seed scripts' loop: every rule, in order, ``str.replace`` when the fragment occurs."""
    for old, new in table.items():
        if old in name:
            name = name.replace(old, new)
    return name


@pytest.mark.parametrize(("seed", "hf"), FACTS_ROWS)
def test_every_facts_row_maps_both_ways(seed: str, hf: str) -> None:
    assert seed_name_to_hf(seed) == hf
    assert hf_name_to_seed(hf) == seed


@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-llama"])
def test_names_equal_the_seed_scripts_and_round_trip(preset: str) -> None:
    names = list(tiny_model(preset).state_dict())
    seed_names = [hf_name_to_seed(name) for name in names]
    assert seed_names == [_seed_rename(name, SEED_HGFACE_2_BMTRAIN) for name in names]
    assert [seed_name_to_hf(name) for name in seed_names] == names
    assert [_seed_rename(name, SEED_BMTRAIN_2_HGFACE) for name in seed_names] == names
    assert "encoder.layers.1.self_att.self_attention.project_q.weight" in seed_names


def test_state_dict_maps_keep_values_and_refuse_collisions() -> None:
    marker = object()
    assert seed_to_hf({"encoder.layers.0.ffn.ffn.w_out.weight": marker}) == {
        "model.layers.0.mlp.down_proj.weight": marker}
    assert hf_to_seed({"model.norm.weight": marker}) == {"encoder.output_layernorm.weight": marker}
    with pytest.raises(Fm9gError, match="both map to 'model.norm.weight'"):
        seed_to_hf({"encoder.output_layernorm.weight": 1, "model.norm.weight": 2})


def test_lora_keys_between_opendelta_and_peft() -> None:
    seed_state = {
        "encoder.layers.0.self_att.self_attention.project_q.lora.lora_A": "A0",
        "encoder.layers.0.self_att.self_attention.project_q.lora.lora_B": "B0",
        "encoder.layers.1.ffn.ffn.w_in.w_1.lora.lora_A": "A1",
        "encoder.layers.1.ffn.ffn.w_in.w_1.lora.lora_B": "B1",
    }
    peft_state = convert_lora(seed_state, OPENDELTA_KEYS, PEFT_KEYS, rename=seed_path_to_hf, where="t")
    assert peft_state == {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": "A0",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": "B0",
        "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight": "A1",
        "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight": "B1",
    }
    assert convert_lora(peft_state, PEFT_KEYS, OPENDELTA_KEYS, rename=hf_path_to_seed, where="t") == seed_state
    assert lora_pairs(seed_state, OPENDELTA_KEYS, where="t")["encoder.layers.1.ffn.ffn.w_in.w_1"] == ("A1", "B1")
    hf_keyed = convert_lora(seed_state, OPENDELTA_KEYS, OPENDELTA_KEYS, rename=seed_path_to_hf, where="t")
    assert hf_keyed["model.layers.1.mlp.up_proj.lora.lora_B"] == "B1" and len(hf_keyed) == 4


def test_lora_key_errors_name_the_key() -> None:
    with pytest.raises(Fm9gError, match="unexpected key 'encoder.layers.0.x.weight' in OpenDelta LoRA tensors"):
        lora_pairs({"encoder.layers.0.x.weight": 1}, OPENDELTA_KEYS, where="t")
    with pytest.raises(Fm9gError, match=r"'encoder.layers.0.w.lora.lora_B' is missing"):
        lora_pairs({"encoder.layers.0.w.lora.lora_A": 1}, OPENDELTA_KEYS, where="t")
    with pytest.raises(Fm9gError, match=r"'base_model.model.model.w.lora_A.weight' is missing"):
        lora_pairs({"base_model.model.model.w.lora_B.weight": 1}, PEFT_KEYS, where="t")
    with pytest.raises(Fm9gError, match="unexpected key 'base_model.model.lm_head.modules_to_save.weight' in PEFT LoRA tensors"):
        convert_lora({"base_model.model.lm_head.modules_to_save.weight": 1}, PEFT_KEYS, OPENDELTA_KEYS, where="t")
    with pytest.raises(Fm9gError, match="no LoRA tensors found"):
        lora_pairs({}, PEFT_KEYS, where="t")


def test_lora_layer_names() -> None:
    seed = ["project_q", "project_k", "project_v", "attention_out", "w_0", "w_1", "w_out"]
    hf = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert lora_layers_to_hf(seed) == hf
    assert lora_layers_to_seed(hf) == seed
    assert lora_layers_to_hf(["q_proj", "w_out"]) == ["q_proj", "down_proj"]
