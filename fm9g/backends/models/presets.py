"""Model presets as transformers configs: the FM9G shapes, read from the original code's
``model_configs`` (``9G7B_MHA``: Qwen2 with 28 heads and 28 KV heads, q/k/v bias, RoPE base 1e6;
CPM-9G-8B: Llama, RoPE base 1e4), the TinyLlama 1.1B shape for benchmarks, and tiny shapes for CPU tests."""

from __future__ import annotations

from typing import Any

from fm9g.core.errors import UnknownName

_TINY = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=4096, rms_norm_eps=1e-6)

_SMALL = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6)
"""GPU-test shape: head dim 64 (what fused varlen kernels expect) and grouped KV heads."""

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "fm9g-7b": ("qwen2", dict(
        vocab_size=73448, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=28, rms_norm_eps=1e-6, rope_theta=1e6,
        max_position_embeddings=32768, tie_word_embeddings=False, hidden_act="silu")),
    "fm9g-8b": ("llama", dict(
        vocab_size=119696, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-5, rope_theta=1e4,
        max_position_embeddings=8192, tie_word_embeddings=False, hidden_act="silu",
        attention_bias=False, mlp_bias=False)),
    "llama-1.1b": ("llama", dict(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, rms_norm_eps=1e-5, rope_theta=1e4,
        max_position_embeddings=4096, tie_word_embeddings=False, hidden_act="silu")),
    "tiny-llama": ("llama", dict(_TINY, vocab_size=512, tie_word_embeddings=False, rope_theta=1e4)),
    "tiny-qwen2": ("qwen2", dict(_TINY, vocab_size=512, tie_word_embeddings=False, rope_theta=1e6)),
    "small-qwen2": ("qwen2", dict(_SMALL, vocab_size=512, tie_word_embeddings=False, rope_theta=1e6)),
    "small-llama": ("llama", dict(_SMALL, vocab_size=512, tie_word_embeddings=False, rope_theta=1e4)),
}
"""name -> (transformers model_type, config fields)."""

FIT_TOKENIZER = frozenset(name for name in PRESETS if name.startswith(("tiny-", "small-")))
"""Test shapes: built for a run, they take the run's tokenizer vocabulary (the byte tokenizer's 260
ids, say) instead of their 512, so they never generate an id the tokenizer cannot decode."""


def preset_config(name: str, **overrides: Any):
    """A transformers ``PretrainedConfig`` for a preset; ``overrides`` (e.g. ``vocab_size``) win."""
    from transformers import AutoConfig

    try:
        model_type, fields = PRESETS[name]
    except KeyError:
        raise UnknownName("model preset", name, PRESETS) from None
    return AutoConfig.for_model(model_type, **{**fields, **overrides})
