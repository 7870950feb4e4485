"""The seed's bmtrain parameter names <-> Hugging Face names (FACTS.md), for weights and LoRA tensors.

The seed renames by ordered substring replacement (``hgface_2_bmtrain.py`` one way,
``bmtrain_2_hgface.py`` the other). Both tables below apply every rule, in order, to each name,
exactly as the seed does, so names fm9g writes are the names the seed's tools read and vice versa.

LoRA tensors: the seed (OpenDelta) keys them ``<seed linear path>.lora.lora_A`` (r, in) and
``.lora.lora_B`` (out, r) with no ``.weight`` suffix; PEFT saves them as
``base_model.model.<HF linear path>.lora_A.weight`` / ``.lora_B.weight``.

Public API (used by the converters and by the trainer to load seed ``.pt`` files into presets):
``seed_name_to_hf``, ``hf_name_to_seed``, ``seed_to_hf``, ``hf_to_seed``, ``lora_seed_to_peft``,
``lora_peft_to_seed``, ``lora_pairs_from_seed``, ``lora_layers_to_hf``, ``lora_layers_to_seed``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

from fm9g.core.errors import Fm9gError

V = TypeVar("V")

HF_TO_SEED_RULES: tuple[tuple[str, str], ...] = (
    ("model.embed_tokens.", "input_embedding."),
    ("model.norm.", "encoder.output_layernorm."),
    ("model.", "encoder."),
    ("self_attn.q_proj.", "self_att.self_attention.project_q."),
    ("self_attn.k_proj.", "self_att.self_attention.project_k."),
    ("self_attn.v_proj.", "self_att.self_attention.project_v."),
    ("self_attn.o_proj.", "self_att.self_attention.attention_out."),
    ("input_layernorm.", "self_att.layernorm_before_attention."),
    ("post_attention_layernorm.", "ffn.layernorm_before_ffn."),
    ("mlp.gate_proj.", "ffn.ffn.w_in.w_0."),
    ("mlp.up_proj.", "ffn.ffn.w_in.w_1."),
    ("mlp.down_proj.", "ffn.ffn.w_out."),
)
"""HF -> seed, in the order ``hgface_2_bmtrain.py`` applies them (``lm_head.weight`` is unchanged)."""

SEED_TO_HF_RULES: tuple[tuple[str, str], ...] = (
    ("input_embedding.", "model.embed_tokens."),
    ("encoder.output_layernorm.", "model.norm."),
    ("encoder.", "model."),
    ("self_att.self_attention.project_q.", "self_attn.q_proj."),
    ("self_att.self_attention.project_k.", "self_attn.k_proj."),
    ("self_att.self_attention.project_v.", "self_attn.v_proj."),
    ("self_att.self_attention.attention_out.", "self_attn.o_proj."),
    ("self_att.layernorm_before_attention.", "input_layernorm."),
    ("ffn.layernorm_before_ffn.", "post_attention_layernorm."),
    ("ffn.ffn.w_in.w_0.", "mlp.gate_proj."),
    ("ffn.ffn.w_in.w_1.", "mlp.up_proj."),
    ("ffn.ffn.w_out.", "mlp.down_proj."),
)
"""seed -> HF, the FACTS.md table in order (the seed's ``bmtrain_2_hgface.py`` gives the same names)."""

SEED_LINEAR_TO_HF: dict[str, str] = {
    "project_q": "q_proj",
    "project_k": "k_proj",
    "project_v": "v_proj",
    "attention_out": "o_proj",
    "w_0": "gate_proj",
    "w_1": "up_proj",
    "w_out": "down_proj",
}
"""The seed's ``lora_layer`` names -> PEFT ``target_modules`` names."""

HF_LINEAR_TO_SEED: dict[str, str] = {hf: seed for seed, hf in SEED_LINEAR_TO_HF.items()}

PEFT_PREFIX = "base_model.model."
"""Prefix PEFT puts in front of the wrapped model's own parameter names in a saved adapter."""

SEED_LORA_A = ".lora.lora_A"
SEED_LORA_B = ".lora.lora_B"
PEFT_LORA_A = ".lora_A.weight"
PEFT_LORA_B = ".lora_B.weight"


def _apply_rules(name: str, rules: tuple[tuple[str, str], ...]) -> str:
    for old, new in rules:
        if old in name:
            name = name.replace(old, new)
    return name


def hf_name_to_seed(name: str) -> str:
    """``model.layers.0.self_attn.q_proj.weight`` -> ``encoder.layers.0.self_att.self_attention.project_q.weight``."""
    return _apply_rules(name, HF_TO_SEED_RULES)


def seed_name_to_hf(name: str) -> str:
    """``encoder.layers.0.ffn.ffn.w_out.weight`` -> ``model.layers.0.mlp.down_proj.weight``."""
    return _apply_rules(name, SEED_TO_HF_RULES)


def _rename_all(state_dict: Mapping[str, V], rename, direction: str) -> dict[str, V]:
    renamed: dict[str, V] = {}
    origin: dict[str, str] = {}
    for name, value in state_dict.items():
        new_name = rename(name)
        if new_name in renamed:
            raise Fm9gError(
                f"'{origin[new_name]}' and '{name}' both map to '{new_name}'",
                where=f"{direction} parameter names",
                fix="the state dict mixes naming conventions; convert a checkpoint written in one of them",
            )
        renamed[new_name] = value
        origin[new_name] = name
    return renamed


def seed_to_hf(state_dict: Mapping[str, V]) -> dict[str, V]:
    """A seed (bmtrain) state dict with HF names; values are passed through untouched.

    Raises ``Fm9gError`` when two seed names would land on one HF name."""
    return _rename_all(state_dict, seed_name_to_hf, "seed -> HF")


def hf_to_seed(state_dict: Mapping[str, V]) -> dict[str, V]:
    """An HF state dict with the seed's (bmtrain) names; values are passed through untouched."""
    return _rename_all(state_dict, hf_name_to_seed, "HF -> seed")


def _pair_lora_tensors(tensors: Mapping[str, V], suffix_a: str, suffix_b: str, *, where: str,
                       unexpected, incomplete_fix: str, empty_fix: str,
                       shown_prefix: str = "") -> dict[str, tuple[V, V]]:
    """``{linear path: (A, B)}`` from keys ``<path><suffix_a>`` / ``<path><suffix_b>``; a key with
    neither suffix raises ``unexpected(key)``, an unpaired or empty set a clear error."""
    parts: dict[str, dict[str, V]] = {suffix_a: {}, suffix_b: {}}
    for key, value in tensors.items():
        suffix = next((s for s in (suffix_a, suffix_b) if key.endswith(s)), None)
        if suffix is None:
            raise unexpected(key)
        parts[suffix][key[: -len(suffix)]] = value
    a_parts, b_parts = parts[suffix_a], parts[suffix_b]
    for path in sorted(set(a_parts) ^ set(b_parts)):
        missing = suffix_b if path in a_parts else suffix_a
        raise Fm9gError(f"'{shown_prefix}{path}{missing}' is missing (its partner is present)", where=where,
                        fix=incomplete_fix)
    if not a_parts:
        raise Fm9gError("no LoRA tensors found", where=where, fix=empty_fix)
    return {path: (a_parts[path], b_parts[path]) for path in sorted(a_parts)}


def lora_pairs_from_seed(lora_state: Mapping[str, V], *, where: str = "seed LoRA checkpoint") -> dict[str, tuple[V, V]]:
    """``{seed linear path: (lora_A, lora_B)}`` from OpenDelta-keyed tensors.

    Every key must end in ``.lora.lora_A`` or ``.lora.lora_B`` and come in pairs; anything else is a
    clear error naming the key."""
    return _pair_lora_tensors(
        lora_state, SEED_LORA_A, SEED_LORA_B, where=where,
        unexpected=lambda key: Fm9gError(
            f"unexpected key '{key}' (OpenDelta LoRA keys end in '{SEED_LORA_A}' or '{SEED_LORA_B}')",
            where=where, fix="pass the LoRA checkpoint the seed's training wrote (only LoRA tensors)"),
        incomplete_fix="the LoRA checkpoint is incomplete; re-save it",
        empty_fix="pass a LoRA checkpoint (OpenDelta keys)")


def lora_seed_to_peft(lora_state: Mapping[str, V], *, where: str = "seed LoRA checkpoint") -> dict[str, V]:
    """OpenDelta keys (seed names) -> the keys of a PEFT ``adapter_model.safetensors``.

    ``encoder.layers.0.self_att.self_attention.project_q.lora.lora_A`` ->
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``."""
    converted: dict[str, V] = {}
    for path, (lora_a, lora_b) in lora_pairs_from_seed(lora_state, where=where).items():
        hf_path = seed_name_to_hf(path + ".")[:-1]
        converted[PEFT_PREFIX + hf_path + PEFT_LORA_A] = lora_a
        converted[PEFT_PREFIX + hf_path + PEFT_LORA_B] = lora_b
    return converted


def peft_lora_paths(adapter_state: Mapping[str, V], *, where: str = "PEFT adapter") -> dict[str, tuple[V, V]]:
    """``{HF linear path: (lora_A, lora_B)}`` from a PEFT adapter state dict (``base_model.model.`` stripped).

    Non-LoRA tensors (``modules_to_save``, DoRA magnitudes, biases) are refused by name: folding them
    is not a LoRA merge."""
    def unexpected(key: str) -> Fm9gError:
        return Fm9gError(
            f"unsupported adapter tensor '{PEFT_PREFIX}{key}' (only LoRA A/B matrices can be converted or merged)",
            where=where,
            fix="train without modules_to_save / DoRA / LoRA biases, or merge with PEFT's merge_and_unload")

    stripped = {(key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key): value
                for key, value in adapter_state.items()}
    return _pair_lora_tensors(stripped, PEFT_LORA_A, PEFT_LORA_B, where=where, unexpected=unexpected,
                              incomplete_fix="the adapter is incomplete; re-save it",
                              empty_fix="pass a PEFT LoRA adapter", shown_prefix=PEFT_PREFIX)


def lora_peft_to_seed(adapter_state: Mapping[str, V], *, where: str = "PEFT adapter") -> dict[str, V]:
    """PEFT adapter keys -> OpenDelta keys with seed names (the inverse of :func:`lora_seed_to_peft`)."""
    converted: dict[str, V] = {}
    for path, (lora_a, lora_b) in peft_lora_paths(adapter_state, where=where).items():
        seed_path = hf_name_to_seed(path + ".")[:-1]
        converted[seed_path + SEED_LORA_A] = lora_a
        converted[seed_path + SEED_LORA_B] = lora_b
    return converted


def lora_layers_to_hf(names: Iterable[str]) -> list[str]:
    """``lora_layer`` names (seed ``project_q`` ... ``w_out`` or HF ``q_proj`` ...) -> PEFT target modules."""
    return [SEED_LINEAR_TO_HF.get(name, name) for name in names]


def lora_layers_to_seed(names: Iterable[str]) -> list[str]:
    """PEFT target module names (or seed names) -> the seed's ``lora_layer`` names."""
    return [HF_LINEAR_TO_SEED.get(name, name) for name in names]
