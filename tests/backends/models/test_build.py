"""Models from presets, HF directories and seed ``.pt`` files (bmtrain names mapped to HF names)."""

from __future__ import annotations

import pytest
import torch

from fm9g.backends.models.attention import ATTENTION_NAME
from fm9g.backends.models.build import build_model, parameter_counts
from fm9g.backends.weights.names import hf_name_to_seed
from fm9g.core.errors import Fm9gError


def test_seed_pt_loads_into_a_preset(tmp_path):
    source = build_model({"preset": "tiny-qwen2"}, seed=11)
    seed_state = {hf_name_to_seed(name): tensor.clone() for name, tensor in source.state_dict().items()}
    assert "encoder.layers.0.self_att.self_attention.project_q.bias" in seed_state
    assert "input_embedding.weight" in seed_state and "encoder.output_layernorm.weight" in seed_state
    torch.save(seed_state, tmp_path / "seed.pt")

    loaded = build_model({"preset": "tiny-qwen2", "seed_pt": str(tmp_path / "seed.pt")}, seed=99)
    for name, tensor in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert loaded.config._attn_implementation == ATTENTION_NAME


def test_seed_pt_of_another_shape_is_a_clear_error(tmp_path):
    state = {hf_name_to_seed(k): v for k, v in build_model({"preset": "tiny-qwen2"}).state_dict().items()}
    torch.save(state, tmp_path / "seed.pt")
    with pytest.raises(Fm9gError, match="does not fit the model: unexpected 6"):
        build_model({"preset": "tiny-llama", "seed_pt": str(tmp_path / "seed.pt")})
    torch.save({"x": [1, 2]}, tmp_path / "bad.pt")
    with pytest.raises(Fm9gError, match="tensor"):
        build_model({"preset": "tiny-llama", "seed_pt": str(tmp_path / "bad.pt")})


def test_hf_directory_and_vocab_check(tmp_path):
    source = build_model({"preset": "tiny-llama"}, seed=5)
    source.save_pretrained(tmp_path / "hf")
    loaded = build_model({"hf_path": str(tmp_path / "hf")}, vocab_size=260)
    assert loaded.config._attn_implementation == ATTENTION_NAME
    torch.testing.assert_close(loaded.state_dict()["lm_head.weight"], source.state_dict()["lm_head.weight"])
    with pytest.raises(Fm9gError, match="tokenizer has 4000 ids"):
        build_model({"hf_path": str(tmp_path / "hf")}, vocab_size=4000)
    with pytest.raises(Fm9gError, match="no config.json"):
        build_model({"hf_path": str(tmp_path)})


def test_presets_build_with_the_facts_shapes():
    from fm9g.backends.models.presets import preset_config

    config = preset_config("fm9g-7b")
    assert (config.model_type, config.num_key_value_heads, config.vocab_size) == ("qwen2", 28, 73448)
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(config)
    assert parameter_counts(model)[0] == 7_668_831_744


class _NotATensor:
    """A Python object in a checkpoint: loading it with pickle would run code of the file's choosing."""


def test_a_seed_pt_holding_python_objects_is_refused_on_the_train_path(tmp_path):
    path = tmp_path / "crafted.pt"
    torch.save({"model.embed_tokens.weight": torch.zeros(2), "extra": _NotATensor()}, path)
    with pytest.raises(Fm9gError, match="refused: the file holds Python objects") as caught:
        build_model({"preset": "tiny-llama", "seed_pt": str(path)}, seed=0)
    assert "weights_only=False" not in str(caught.value)  # never advise the unsafe load
