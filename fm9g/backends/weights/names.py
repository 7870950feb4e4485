"""Parameter names: the seed's bmtrain names <-> Hugging Face names, and the key formats of LoRA files.

The seed renames by ordered substring replacement (``hgface_2_bmtrain.py`` one way,
``bmtrain_2_hgface.py`` the other). Both tables below apply every rule, in order, to each name,
exactly as the seed does, so names fm9g writes are the names the seed's tools read and vice versa.

LoRA tensors come in two key formats, each ``prefix + <linear path> + suffix``:

* OpenDelta (the seed's LoRA library): ``<linear path>.lora.lora_A`` (r, in) and
  ``.lora.lora_B`` (out, r), no ``.weight`` suffix; the seed's files use seed linear paths;
* PEFT: ``base_model.model.<HF linear path>.lora_A.weight`` / ``.lora_B.weight``.

The matrices have the same shapes in both, so converting is renaming: :func:`lora_pairs` reads a
file's tensors as ``{linear path: (A, B)}`` (strictly: any other key is an error naming it) and
:func:`lora_state` writes pairs back in a format; :func:`convert_lora` does both, optionally
renaming the paths (:func:`seed_path_to_hf`, :func:`hf_path_to_seed`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
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
"""seed -> HF, in the order of the seed's ``bmtrain_2_hgface.py`` (so the names are the ones it gives)."""

SEED_LINEAR_TO_HF: dict[str, str] = {
    "project_q": "q_proj",
    "project_k": "k_proj",
    "project_v": "v_proj",
    "attention_out": "o_proj",
    "w_0": "gate_proj",
    "w_1": "up_proj",
    "w_out": "down_proj",
}
"""The seed's ``lora_layer`` names -> the HF module names of Llama/Qwen2 linears (PEFT ``target_modules``)."""

HF_LINEAR_TO_SEED: dict[str, str] = {hf: seed for seed, hf in SEED_LINEAR_TO_HF.items()}


@dataclass(frozen=True)
class LoraKeys:
    """How one LoRA file format keys the two matrices of a linear: ``prefix + path + suffix_a|suffix_b``."""

    name: str
    prefix: str
    suffix_a: str
    suffix_b: str

    def is_lora(self, key: str) -> bool:
        return key.endswith((self.suffix_a, self.suffix_b))


OPENDELTA_KEYS = LoraKeys("OpenDelta", "", ".lora.lora_A", ".lora.lora_B")
PEFT_KEYS = LoraKeys("PEFT", "base_model.model.", ".lora_A.weight", ".lora_B.weight")


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


def seed_path_to_hf(path: str) -> str:
    """A seed module path (no trailing parameter name) -> the HF one: ``encoder.layers.0.ffn.ffn.w_out``
    -> ``model.layers.0.mlp.down_proj``."""
    return seed_name_to_hf(path + ".")[:-1]


def hf_path_to_seed(path: str) -> str:
    """The inverse of :func:`seed_path_to_hf`."""
    return hf_name_to_seed(path + ".")[:-1]


def lora_pairs(tensors: Mapping[str, V], keys: LoraKeys, *, where: str) -> dict[str, tuple[V, V]]:
    """``{linear path: (A, B)}`` from tensors keyed in ``keys``' format.

    Every key must be one of the two LoRA matrices and come with its partner; any other tensor
    (``modules_to_save``, DoRA magnitudes, biases) is an error naming it: folding or renaming it
    would not be LoRA."""
    parts: dict[str, dict[str, V]] = {keys.suffix_a: {}, keys.suffix_b: {}}
    for key, value in tensors.items():
        suffix = next((s for s in (keys.suffix_a, keys.suffix_b) if key.endswith(s)), None)
        if suffix is None:
            raise Fm9gError(f"unexpected key '{key}' in {keys.name} LoRA tensors (its keys end in "
                            f"'{keys.suffix_a}' or '{keys.suffix_b}'; only LoRA A/B matrices can be converted "
                            "or merged)", where=where,
                            fix="pass a plain LoRA checkpoint (no modules_to_save / DoRA / LoRA biases), or "
                                "merge with PEFT's merge_and_unload")
        path = key[:-len(suffix)]
        parts[suffix][path[len(keys.prefix):] if path.startswith(keys.prefix) else path] = value
    a_parts, b_parts = parts[keys.suffix_a], parts[keys.suffix_b]
    for path in sorted(set(a_parts) ^ set(b_parts)):
        missing = keys.suffix_b if path in a_parts else keys.suffix_a
        raise Fm9gError(f"'{keys.prefix}{path}{missing}' is missing (its partner is present)", where=where,
                        fix="the LoRA checkpoint is incomplete; save it again")
    if not a_parts:
        raise Fm9gError(f"no LoRA tensors found ({keys.name} keys)", where=where,
                        fix=f"pass a LoRA checkpoint with {keys.name} keys")
    return {path: (a_parts[path], b_parts[path]) for path in sorted(a_parts)}


def lora_state(pairs: Mapping[str, tuple[V, V]], keys: LoraKeys) -> dict[str, V]:
    """``{key: tensor}`` in ``keys``' format from ``{linear path: (A, B)}``."""
    state: dict[str, V] = {}
    for path, (lora_a, lora_b) in pairs.items():
        state[keys.prefix + path + keys.suffix_a] = lora_a
        state[keys.prefix + path + keys.suffix_b] = lora_b
    return state


def convert_lora(tensors: Mapping[str, V], source: LoraKeys, target: LoraKeys, *,
                 rename: Callable[[str], str] | None = None, where: str) -> dict[str, V]:
    """LoRA tensors from ``source``'s key format to ``target``'s, each linear path through ``rename``.

    ``convert_lora(seed_file, OPENDELTA_KEYS, PEFT_KEYS, rename=seed_path_to_hf, where=...)`` turns
    the seed's ``encoder.layers.0.self_att.self_attention.project_q.lora.lora_A`` into PEFT's
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``."""
    pairs = lora_pairs(tensors, source, where=where)
    if rename is not None:
        pairs = {rename(path): pair for path, pair in pairs.items()}
    return lora_state(pairs, target)


def lora_layers_to_hf(names: Iterable[str]) -> list[str]:
    """``lora_layer`` names (seed ``project_q`` ... ``w_out`` or HF ``q_proj`` ...) -> PEFT target modules."""
    return [SEED_LINEAR_TO_HF.get(name, name) for name in names]


def lora_layers_to_seed(names: Iterable[str]) -> list[str]:
    """PEFT target module names (or seed names) -> the seed's ``lora_layer`` names."""
    return [HF_LINEAR_TO_SEED.get(name, name) for name in names]
