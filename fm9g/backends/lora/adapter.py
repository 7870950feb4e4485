"""What both LoRA engines share: their options, the modules LoRA goes on, and the adapter files.

Both engines write a checkpoint's LoRA in PEFT's format (``adapter_model.safetensors`` +
``adapter_config.json``), so resume, ``fm9g export`` and ``--merge-lora`` never depend on the engine
that trained it; ``save_format: opendelta`` adds the seed's own file (``opendelta_lora.pt``, OpenDelta
keys with the seed's parameter names) for the seed's tools. This module imports neither torch nor
PEFT at import time: the plugin registry imports the engines, and listing plugins stays light.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fm9g.backends.weights.names import SEED_LINEAR_TO_HF, lora_layers_to_hf
from fm9g.core.errors import UnknownName
from fm9g.core.schemas import load_schema

if TYPE_CHECKING:
    import torch

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
OPENDELTA_WEIGHTS = "opendelta_lora.pt"
"""File names of PEFT's adapter (what ``PeftModel.save_pretrained`` writes) and of the seed's LoRA file."""

_DELTA_PROPERTIES = load_schema("train")["properties"]["delta"]["properties"]

OPTIONS_SCHEMA = {"type": "object", "properties": _DELTA_PROPERTIES, "additionalProperties": False}
"""The options of both engines: the train config's ``delta`` block, defaults included (one source)."""


def with_defaults(lora: Mapping[str, Any]) -> dict[str, Any]:
    """``lora`` with the ``delta`` block's schema defaults for the keys it leaves out."""
    defaults = {key: spec["default"] for key, spec in _DELTA_PROPERTIES.items() if "default" in spec}
    return {**defaults, **lora}


def lora_hyper(lora: Mapping[str, Any]) -> tuple[int, float, float]:
    """``(r, alpha, dropout)`` of a ``delta`` block (schema defaults for what it leaves out)."""
    lora = with_defaults(lora)
    return int(lora["lora_r"]), float(lora["lora_alpha"]), float(lora["lora_dropout"])


def target_modules(lora: Mapping[str, Any], model: torch.nn.Module) -> list[str]:
    """The HF module names LoRA goes on: ``lora_layer`` (seed or HF names; by default all seven
    linears), each checked against the model's linears — an unknown name is an error with suggestions."""
    import torch

    names = list(with_defaults(lora)["lora_layer"])
    leaf_names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                  if isinstance(module, torch.nn.Linear)}
    for original, target in zip(names, lora_layers_to_hf(names)):
        if target not in leaf_names:
            known = sorted(leaf_names | {seed for seed, hf in SEED_LINEAR_TO_HF.items() if hf in leaf_names})
            raise UnknownName("lora layer", original, known, where="train config: delta.lora_layer")
    return list(dict.fromkeys(lora_layers_to_hf(names)))


def peft_lora_config(lora: Mapping[str, Any], targets: list[str], base_model_name_or_path: str | None = None):
    """The ``peft.LoraConfig`` of this LoRA, as saved for inference (what ``adapter_config.json`` holds)."""
    from peft import LoraConfig

    r, alpha, dropout = lora_hyper(lora)
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                      task_type="CAUSAL_LM", base_model_name_or_path=base_model_name_or_path,
                      inference_mode=True)
