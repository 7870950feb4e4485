"""The ``opendelta`` delta engine: LoRA through the real OpenDelta 0.3.2 library, as the seed does.

The seed (the original FM9G guide) builds LoRA with::

    delta_model = LoraModel(backbone_model=model, modified_modules=lora_layer,
                            lora_r=r, lora_alpha=alpha, lora_dropout=dropout, backend="bmt")
    delta_model.freeze_module(exclude=["deltas"], set_state_dict=True)

This engine makes those calls on the Hugging Face model fm9g trains (``backend="hf"`` on the
torch backend; ``backend="bmt"`` when the bmtrain backend passes ``backend="bmtrain"``). OpenDelta inserts a
``lora`` module beside each chosen linear (``<linear>.lora.lora_A`` (r, in), ``.lora.lora_B``
(out, r); output ``base(x) + dropout(x) @ A.T @ B.T · alpha/r``) and freezes everything else
(``set_state_dict`` only on bmtrain, see :meth:`OpenDeltaEngine.apply`). OpenDelta 0.3.2 does not
import on today's transformers as published; :mod:`fm9g.backends.opendelta_compat` bridges that,
and is applied only when this engine is used. fm9g imports without OpenDelta installed; using the
engine without it is a clear error naming the install command (docs/opendelta.md).

``lora_layer`` takes the seed's names (``project_q`` … ``w_out``) or HF names (``q_proj`` …
``down_proj``); both become the HF module names OpenDelta's ``modified_modules`` matches.

Checkpoints (the same files the ``peft`` engine writes, so resume and ``fm9g export --merge-lora``
do not depend on the engine): ``adapter_model.safetensors`` + ``adapter_config.json`` in PEFT's
format, and with ``save_format: opendelta`` also ``opendelta_lora.pt``, the seed's file: a
``torch.save`` dict of OpenDelta keys with the seed's parameter names
(``encoder.layers.0.self_att.self_attention.project_q.lora.lora_A``).

Engine interface used by the backends (as ``fm9g.backends.peft_engine``): ``apply(model, options)
-> model``, ``save(model, directory, options, state_dict=None) -> {role: file}``,
``load(model, directory)``; plus ``trainable_state_dict(model)`` (LoRA tensors, OpenDelta keys).
The registry imports this module, so torch is imported inside the methods that use it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fm9g
from fm9g.backends.opendelta_compat import import_opendelta
from fm9g.backends.peft_engine import OPENDELTA_FILE, OPTIONS_SCHEMA, SEED_TO_HF_MODULE, hf_target_modules
from fm9g.backends.seed_names import (
    PEFT_LORA_A,
    PEFT_LORA_B,
    PEFT_PREFIX,
    SEED_LORA_A,
    SEED_LORA_B,
    hf_name_to_seed,
    seed_name_to_hf,
)
from fm9g.core.errors import Fm9gError

if TYPE_CHECKING:
    import torch

ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"

OPENDELTA_BACKENDS = {"torch": "hf", "bmtrain": "bmt"}
"""fm9g backend -> OpenDelta's ``backend`` argument. With ``bmt`` OpenDelta wraps each new LoRA
module in ``bmt.BMTrainModelWrapper`` (as the seed does); the bmtrain backend passes
``backend="bmtrain"`` to :meth:`OpenDeltaEngine.apply`."""


def lora_hyper(lora: Mapping[str, Any]) -> tuple[int, float, float]:
    """``(r, alpha, dropout)`` of a delta block, with the train schema's defaults."""
    return int(lora.get("lora_r", 64)), float(lora.get("lora_alpha", 32)), float(lora.get("lora_dropout", 0.0))


def lora_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The OpenDelta LoRA entries (``….lora.lora_A`` / ``….lora.lora_B``) of a state dict."""
    return {name: tensor for name, tensor in state.items() if name.endswith((SEED_LORA_A, SEED_LORA_B))}


def opendelta_to_peft_keys(lora_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenDelta keys on HF paths -> PEFT's saved keys: ``model.layers.0.self_attn.q_proj.lora.lora_A`` ->
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``.

    The shapes are the same in both formats (A (r, in), B (out, r))."""
    converted = {}
    for name, tensor in lora_state.items():
        if name.endswith(SEED_LORA_A):
            converted[PEFT_PREFIX + name[: -len(SEED_LORA_A)] + PEFT_LORA_A] = tensor
        elif name.endswith(SEED_LORA_B):
            converted[PEFT_PREFIX + name[: -len(SEED_LORA_B)] + PEFT_LORA_B] = tensor
    return converted


def peft_to_opendelta_keys(adapter_state: Mapping[str, torch.Tensor], *, where: str) -> dict[str, torch.Tensor]:
    """The inverse of :func:`opendelta_to_peft_keys`; any other key is an error naming it."""
    converted = {}
    for key, tensor in adapter_state.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        if name.endswith(PEFT_LORA_A):
            converted[name[: -len(PEFT_LORA_A)] + SEED_LORA_A] = tensor
        elif name.endswith(PEFT_LORA_B):
            converted[name[: -len(PEFT_LORA_B)] + SEED_LORA_B] = tensor
        else:
            raise Fm9gError(f"'{key}' is not a LoRA A/B tensor", where=where,
                            fix="resume from a checkpoint of a LoRA run (plain LoRA, no DoRA/modules_to_save)")
    return converted


def to_seed_names(lora_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenDelta keys on HF paths -> the seed's keys
    (``encoder.layers.0.self_att.self_attention.project_q.lora.lora_A``)."""
    renamed = {}
    for name, tensor in lora_state.items():
        suffix = SEED_LORA_A if name.endswith(SEED_LORA_A) else SEED_LORA_B
        renamed[hf_name_to_seed(name[: -len(suffix)] + ".")[:-1] + suffix] = tensor
    return renamed


def from_seed_names(lora_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The seed's OpenDelta keys -> OpenDelta keys on HF paths (HF-named keys pass unchanged)."""
    renamed = {}
    for name, tensor in lora_state.items():
        suffix = SEED_LORA_A if name.endswith(SEED_LORA_A) else SEED_LORA_B
        renamed[seed_name_to_hf(name[: -len(suffix)] + ".")[:-1] + suffix] = tensor
    return renamed


def peft_lora_config(lora: Mapping[str, Any], targets: list[str], base_model_name_or_path: str | None = None):
    """The ``peft.LoraConfig`` equal to this LoRA (what the ``peft`` engine builds), for ``adapter_config.json``."""
    from peft import LoraConfig

    r, alpha, dropout = lora_hyper(lora)
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                      task_type="CAUSAL_LM", base_model_name_or_path=base_model_name_or_path,
                      inference_mode=True)


class OpenDeltaEngine:
    name = "opendelta"
    description = "LoRA through the real OpenDelta 0.3.2 library (the seed's engine), bridged for today's transformers"
    options_schema = OPTIONS_SCHEMA

    def apply(self, model: torch.nn.Module, lora: dict[str, Any], *, backend: str = "torch") -> torch.nn.Module:
        """Insert OpenDelta LoRA modules into ``model`` (in place), freeze the rest; return ``model``.

        LoRA tensors take the dtype and device of the linear they sit beside (OpenDelta's choice).
        ``set_state_dict`` (``model.state_dict()`` returning only the LoRA tensors) is the seed's
        choice for bmtrain, where ``bmt.save(model)`` then writes just the LoRA checkpoint. The torch
        backend leaves it off: ``torch.distributed.checkpoint.get_model_state_dict`` (used to gather
        FSDP shards) needs the full state dict and drops the frozen entries itself."""
        if backend not in OPENDELTA_BACKENDS:
            raise Fm9gError(f"the opendelta engine does not support backend '{backend}'",
                            fix=f"use one of: {', '.join(OPENDELTA_BACKENDS)}")
        if lora_tensors(dict(model.named_parameters())):
            raise Fm9gError("the model already has OpenDelta LoRA modules", fix="apply the delta engine once")
        opendelta = import_opendelta()
        if backend == "bmtrain" and importlib.util.find_spec("bmtrain") is None:
            raise Fm9gError("OpenDelta's bmtrain backend needs BMTrain, which is not installed",
                            fix="build and install BMTrain for this GPU (docs), or use backend 'torch'")
        targets = hf_target_modules(lora.get("lora_layer") or list(SEED_TO_HF_MODULE), model)
        r, alpha, dropout = lora_hyper(lora)
        delta_model = opendelta.LoraModel(backbone_model=model, modified_modules=targets, lora_r=r,
                                          lora_alpha=alpha, lora_dropout=dropout,
                                          backend=OPENDELTA_BACKENDS[backend])
        delta_model.freeze_module(exclude=["deltas"], set_state_dict=backend == "bmtrain")
        return model

    def trainable_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The LoRA parameters of an applied model, OpenDelta keys on HF paths (no copies)."""
        return {name: parameter.detach() for name, parameter in lora_tensors(dict(model.named_parameters())).items()}

    def save(self, model: torch.nn.Module, directory: str | Path, lora: dict[str, Any],
             state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, str]:
        """Write the PEFT-format adapter (and, with ``save_format: opendelta``, the seed's file).

        ``state_dict`` is the model's state (e.g. gathered from FSDP shards; only its LoRA entries
        are used); by default the model's own LoRA parameters. Tensors are saved as float32."""
        import torch
        from safetensors.torch import save_file

        directory = Path(directory)
        source = lora_tensors(state_dict) if state_dict is not None else self.trainable_state_dict(model)
        if not source:
            raise Fm9gError("the model has no OpenDelta LoRA tensors to save",
                            fix="call apply() with the opendelta engine before saving")
        tensors = {name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in source.items()}
        save_file(opendelta_to_peft_keys(tensors), str(directory / ADAPTER_FILE), metadata={"format": "pt"})
        targets = list(dict.fromkeys(name.rsplit(".", 3)[-3] for name in tensors))
        name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None) or None
        peft_lora_config(lora, targets, name_or_path).save_pretrained(str(directory))
        files = {"adapter": ADAPTER_FILE, "adapter_config": ADAPTER_CONFIG_FILE}
        if lora.get("save_format") == "opendelta":
            torch.save(to_seed_names(tensors), directory / OPENDELTA_FILE)
            files["opendelta"] = OPENDELTA_FILE
        return files

    def load(self, model: torch.nn.Module, directory: str | Path) -> None:
        """Copy a checkpoint's LoRA tensors into an applied model.

        Reads ``adapter_model.safetensors`` (PEFT keys), or else ``opendelta_lora.pt`` (the seed's
        OpenDelta keys, seed or HF names). Every LoRA parameter must be present with its shape."""
        import torch

        directory = Path(directory)
        adapter_path, seed_path = directory / ADAPTER_FILE, directory / OPENDELTA_FILE
        if adapter_path.is_file():
            from safetensors.torch import load_file

            where = str(adapter_path)
            loaded = peft_to_opendelta_keys(load_file(where), where=where)
        elif seed_path.is_file():
            where = str(seed_path)
            loaded = from_seed_names(lora_tensors(torch.load(seed_path, map_location="cpu", weights_only=True)))
        else:
            raise Fm9gError(f"no {ADAPTER_FILE} or {OPENDELTA_FILE}", where=str(directory),
                            fix="resume a LoRA run from a LoRA checkpoint")
        parameters = lora_tensors(dict(model.named_parameters()))
        unexpected = sorted(set(loaded) - set(parameters))
        missing = sorted(set(parameters) - set(loaded))
        if unexpected or missing:
            problem = f"unexpected '{unexpected[0]}'" if unexpected else f"missing '{missing[0]}'"
            raise Fm9gError(f"LoRA checkpoint does not fit the model: {problem}", where=where,
                            fix="use the same lora_layer and base model as the run that wrote it")
        with torch.no_grad():
            for name, parameter in parameters.items():
                tensor = loaded[name]
                if tuple(tensor.shape) != tuple(parameter.shape):
                    raise Fm9gError(f"'{name}' has shape {tuple(tensor.shape)}, the model needs "
                                    f"{tuple(parameter.shape)}", where=where,
                                    fix="use the same lora_r and base model as the run that wrote it")
                parameter.copy_(tensor)


@fm9g.hookimpl
def register_delta_engines(register):
    register(OpenDeltaEngine())
