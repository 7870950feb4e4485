"""Folding LoRA into base weights: ``W + scale·(B @ A)`` with ``scale = alpha / r`` (OpenDelta's and PEFT's scaling).

Two sources of LoRA tensors, one arithmetic:

- the seed's OpenDelta checkpoint (``<seed linear>.lora.lora_A`` / ``.lora_B``) with r and alpha
  from a seed train config (``7b_lora.json``'s ``finetune`` block) or a plain ``{lora_r, lora_alpha}``
  file (:func:`read_lora_config`), as the seed's ``bmtrain_2_hgface.py --lora-ckpt-path`` does;
- a PEFT adapter (``adapter_model.safetensors`` + ``adapter_config.json``), whose scale follows
  PEFT (``lora_alpha / r``, ``/ sqrt(r)`` with ``use_rslora``, per-module ``rank_pattern`` /
  ``alpha_pattern``), so the result equals PEFT's ``merge_and_unload()``.

The product is formed in float32 and the sum cast back to the base weight's dtype.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fm9g.backends.weights.files import load_seed_pt
from fm9g.backends.weights.names import OPENDELTA_KEYS, hf_name_to_seed, hf_path_to_seed, lora_pairs, seed_path_to_hf
from fm9g.core.errors import Fm9gError
from fm9g.core.schemas import read_json

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LoraHyper:
    """LoRA hyper-parameters as the seed names them."""

    lora_r: int
    lora_alpha: float
    lora_layer: tuple[str, ...] | None = None
    lora_dropout: float = 0.0

    @property
    def scale(self) -> float:
        return self.lora_alpha / self.lora_r

    def as_seed_finetune(self) -> dict[str, Any]:
        """The ``finetune`` block of a seed train config (what ``bmtrain_2_hgface.py`` reads)."""
        block: dict[str, Any] = {"lora_r": self.lora_r, "lora_alpha": self.lora_alpha,
                                 "lora_dropout": self.lora_dropout}
        if self.lora_layer is not None:
            block["lora_layer"] = list(self.lora_layer)
        return block


def _lora_block(document: Any) -> tuple[dict[str, Any], str]:
    """The mapping holding ``lora_r``/``lora_alpha`` and its JSON path."""
    if not isinstance(document, dict):
        return {}, "$"
    for key in ("finetune", "delta"):
        if isinstance(document.get(key), dict):
            return document[key], f"$.{key}"
    return document, "$"


def read_lora_config(path: str | os.PathLike) -> LoraHyper:
    """r/alpha (and ``lora_layer``, ``lora_dropout`` when present) from a JSON file.

    Accepts a seed train config with a ``finetune`` block (``7b_lora.json``), an fm9g train config
    with a ``delta`` block, or a plain ``{"lora_r": .., "lora_alpha": ..}``. ``lora_layer`` may be a
    list or the seed's JSON-encoded string (``"[\\"project_q\\", ...]"``)."""
    path = Path(path)
    if not path.is_file():
        raise Fm9gError("file not found", where=str(path), fix="pass the seed train config, e.g. 7b_lora.json")
    block, json_path = _lora_block(read_json(path))
    fix = 'give {"finetune": {"lora_r": 64, "lora_alpha": 32}} or {"lora_r": 64, "lora_alpha": 32}'
    r, alpha = block.get("lora_r"), block.get("lora_alpha")
    if isinstance(r, str) and r.strip().isdigit():
        r = int(r)
    if isinstance(alpha, str):
        try:
            alpha = float(alpha)
        except ValueError:
            pass
    if r is None or alpha is None:
        missing = "lora_r" if r is None else "lora_alpha"
        raise Fm9gError(f"{json_path}.{missing} is missing", where=str(path), fix=fix)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise Fm9gError(f"{json_path}.lora_r: {r!r} is not a positive integer", where=str(path), fix=fix)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise Fm9gError(f"{json_path}.lora_alpha: {alpha!r} is not a positive number", where=str(path), fix=fix)
    layers = block.get("lora_layer")
    if isinstance(layers, str):
        try:
            layers = json.loads(layers)
        except json.JSONDecodeError:
            layers = [layers]
    dropout = block.get("lora_dropout", 0.0)
    return LoraHyper(
        lora_r=r,
        lora_alpha=float(alpha),
        lora_layer=tuple(layers) if isinstance(layers, list) else None,
        lora_dropout=float(dropout) if isinstance(dropout, (int, float)) else 0.0,
    )


def merge_lora_pairs(
    state_dict: Mapping[str, torch.Tensor],
    pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    scale_for: Callable[[str, int], float],
    *,
    where: str,
    display: Callable[[str], str] = lambda name: name,
) -> dict[str, torch.Tensor]:
    """A copy of ``state_dict`` with ``<path>.weight += scale_for(path, r) · (B @ A)`` for every pair.

    ``pairs`` maps a linear's path (same naming as ``state_dict``) to ``(A (r, in), B (out, r))``.
    A LoRA for a weight the base does not have, or of the wrong shape, is an error naming the key."""
    merged = dict(state_dict)
    for path, (lora_a, lora_b) in pairs.items():
        key = f"{path}.weight"
        if key not in merged:
            raise Fm9gError(f"LoRA targets '{display(key)}', which the base model does not have", where=where,
                            fix="the LoRA checkpoint belongs to another model; pass its base")
        weight = merged[key]
        rank = lora_a.shape[0]
        if lora_a.dim() != 2 or lora_b.dim() != 2 or lora_b.shape[1] != rank:
            raise Fm9gError(f"LoRA pair for '{display(key)}' has shapes A {tuple(lora_a.shape)}, B "
                            f"{tuple(lora_b.shape)}; expected A (r, in) and B (out, r)", where=where,
                            fix="the LoRA checkpoint is corrupt or not LoRA")
        if (lora_b.shape[0], lora_a.shape[1]) != tuple(weight.shape):
            raise Fm9gError(f"LoRA for '{display(key)}' gives shape {(lora_b.shape[0], lora_a.shape[1])} but the "
                            f"weight is {tuple(weight.shape)}", where=where,
                            fix="the LoRA checkpoint belongs to another model size")
        delta = lora_b.float() @ lora_a.float()
        merged[key] = (weight.float() + scale_for(path, rank) * delta).to(weight.dtype)
    return merged


def seed_scale(hyper: LoraHyper, *, where: str) -> Callable[[str, int], float]:
    """``alpha / r`` for every linear; a rank that disagrees with the config is an error (wrong config)."""
    def scale(path: str, rank: int) -> float:
        if rank != hyper.lora_r:
            raise Fm9gError(f"'{path}.lora.lora_A' has rank {rank} but the LoRA config says lora_r={hyper.lora_r}",
                            where=where, fix="pass the train config this LoRA checkpoint was trained with")
        return hyper.scale
    return scale


def _pattern_value(patterns: Mapping[str, Any], module_path: str) -> Any | None:
    """PEFT's rank_pattern/alpha_pattern lookup: a key matches the module path's tail (regex)."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module_path):
            return value
    return None


def peft_scale(adapter_config: Mapping[str, Any], *, where: str) -> Callable[[str, int], float]:
    """The scale PEFT uses for each module, from ``adapter_config.json``; DoRA etc. are refused."""
    if adapter_config.get("peft_type", "LORA") != "LORA":
        raise Fm9gError(f"adapter type {adapter_config.get('peft_type')} is not LoRA", where=where,
                        fix="only LoRA adapters can be merged")
    for flag in ("use_dora", "fan_in_fan_out"):
        if adapter_config.get(flag):
            raise Fm9gError(f"'{flag}' adapters are not supported by fm9g's merge", where=where,
                            fix="merge with PEFT's merge_and_unload instead")
    base_r = adapter_config.get("r", 8)
    base_alpha = adapter_config.get("lora_alpha", 8)
    rank_pattern = adapter_config.get("rank_pattern") or {}
    alpha_pattern = adapter_config.get("alpha_pattern") or {}
    use_rslora = bool(adapter_config.get("use_rslora"))

    def scale(path: str, rank: int) -> float:
        expected_rank = _pattern_value(rank_pattern, path) or base_r
        if rank != expected_rank:
            raise Fm9gError(f"'{path}' has LoRA rank {rank} but adapter_config.json says r={expected_rank}",
                            where=where, fix="the adapter files do not belong together")
        alpha = _pattern_value(alpha_pattern, path) or base_alpha
        return alpha / math.sqrt(rank) if use_rslora else alpha / rank
    return scale


def merge_seed_lora_file(
    state_dict: Mapping[str, torch.Tensor],
    lora_ckpt: str | os.PathLike,
    lora_config: str | os.PathLike,
    *,
    naming: str,
) -> dict[str, torch.Tensor]:
    """Fold a seed OpenDelta LoRA checkpoint into ``state_dict`` (``naming``: "seed" or "hf" names).

    What the seed's ``bmtrain_2_hgface.py --lora-ckpt-path --lora-config-path`` does, with r/alpha
    from :func:`read_lora_config` and every key and shape checked."""
    where = str(lora_ckpt)
    hyper = read_lora_config(lora_config)
    pairs = lora_pairs(load_seed_pt(lora_ckpt), OPENDELTA_KEYS, where=where)
    seed_scale_fn = seed_scale(hyper, where=where)
    if naming == "seed":
        return merge_lora_pairs(state_dict, pairs, seed_scale_fn, where=where)
    hf_pairs = {seed_path_to_hf(path): pair for path, pair in pairs.items()}

    def hf_scale(path: str, rank: int) -> float:
        return seed_scale_fn(hf_path_to_seed(path), rank)

    return merge_lora_pairs(state_dict, hf_pairs, hf_scale, where=where, display=hf_name_to_seed)
