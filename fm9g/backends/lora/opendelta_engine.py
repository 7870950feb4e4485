"""The ``opendelta`` delta engine: LoRA through the real OpenDelta 0.3.2 library, as the seed does.

The seed (the original FM9G guide) builds LoRA with::

    delta_model = LoraModel(backbone_model=model, modified_modules=lora_layer,
                            lora_r=r, lora_alpha=alpha, lora_dropout=dropout, backend="bmt")
    delta_model.freeze_module(exclude=["deltas"], set_state_dict=True)

This engine makes those calls on the Hugging Face model fm9g trains, with OpenDelta's ``backend="hf"``
on both fm9g backends: the bmtrain backend applies the delta before ``BMTrainModelWrapper`` turns
the decoder layers into ZeRO blocks, so the LoRA modules are sharded with their layers and
OpenDelta's own BMTrain wrapping (``backend="bmt"``) is not needed. OpenDelta inserts a
``lora`` module beside each chosen linear (``<linear>.lora.lora_A`` (r, in), ``.lora.lora_B``
(out, r); output ``base(x) + dropout(x) @ A.T @ B.T · alpha/r``) and freezes everything else
(see :meth:`OpenDeltaEngine.apply`). OpenDelta 0.3.2 does not
import on today's transformers as published; :mod:`fm9g.backends.lora.opendelta_bridge` bridges that,
and is applied only when this engine is used. fm9g imports without OpenDelta installed; using the
engine without it is a clear error naming the install command (docs/opendelta.md).

``lora_layer`` takes the seed's names (``project_q`` … ``w_out``) or HF names (``q_proj`` …
``down_proj``); both become the HF module names OpenDelta's ``modified_modules`` matches.

Checkpoints (the same files the ``peft`` engine writes, so resume and ``fm9g export --merge-lora``
do not depend on the engine): ``adapter_model.safetensors`` + ``adapter_config.json`` in PEFT's
format, and with ``save_format: opendelta`` also ``opendelta_lora.pt``, the seed's file: a
``torch.save`` dict of OpenDelta keys with the seed's parameter names
(``encoder.layers.0.self_att.self_attention.project_q.lora.lora_A``).

Engine interface used by the backends (as :mod:`fm9g.backends.lora.peft_engine`): ``apply(model, options)
-> model``, ``save(model, directory, options, state_dict=None) -> {role: file}``,
``load(model, directory)``; plus ``trainable_state_dict(model)`` (LoRA tensors, OpenDelta keys).
The registry imports this module, so torch is imported inside the methods that use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fm9g
from fm9g.backends.lora.adapter import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, OPENDELTA_WEIGHTS, OPTIONS_SCHEMA,
                                        lora_hyper, peft_lora_config, target_modules, with_defaults)
from fm9g.backends.lora.opendelta_bridge import import_opendelta
from fm9g.backends.weights.files import load_weights_only
from fm9g.backends.weights.names import OPENDELTA_KEYS, PEFT_KEYS, convert_lora, hf_path_to_seed, seed_path_to_hf
from fm9g.core.errors import Fm9gError

if TYPE_CHECKING:
    import torch


def lora_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The OpenDelta LoRA entries (``….lora.lora_A`` / ``….lora.lora_B``) of a state dict."""
    return {name: tensor for name, tensor in state.items() if OPENDELTA_KEYS.is_lora(name)}


class OpenDeltaEngine:
    name = "opendelta"
    description = "LoRA through the real OpenDelta 0.3.2 library (the seed's engine), bridged for today's transformers"
    options_schema = OPTIONS_SCHEMA

    def apply(self, model: torch.nn.Module, lora: dict[str, Any]) -> torch.nn.Module:
        """Insert OpenDelta LoRA modules into ``model`` (in place), freeze the rest; return ``model``.

        LoRA tensors take the dtype and device of the linear they sit beside (OpenDelta's choice).
        ``set_state_dict`` stays off (``model.state_dict()`` keeps every tensor): the backends gather
        the trainable entries themselves, and FSDP's state-dict gathering needs the full dict."""
        if lora_tensors(dict(model.named_parameters())):
            raise Fm9gError("the model already has OpenDelta LoRA modules", fix="apply the delta engine once")
        opendelta = import_opendelta()
        r, alpha, dropout = lora_hyper(lora)
        delta_model = opendelta.LoraModel(backbone_model=model, modified_modules=target_modules(lora, model),
                                          lora_r=r, lora_alpha=alpha, lora_dropout=dropout, backend="hf")
        delta_model.freeze_module(exclude=["deltas"], set_state_dict=False)
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
        where = "the trained LoRA tensors"
        save_file(convert_lora(tensors, OPENDELTA_KEYS, PEFT_KEYS, where=where), str(directory / ADAPTER_WEIGHTS),
                  metadata={"format": "pt"})
        targets = list(dict.fromkeys(name.rsplit(".", 3)[-3] for name in tensors))
        name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None) or None
        peft_lora_config(lora, targets, name_or_path).save_pretrained(str(directory))
        files = {"adapter": ADAPTER_WEIGHTS, "adapter_config": ADAPTER_CONFIG}
        if with_defaults(lora)["save_format"] == "opendelta":
            torch.save(convert_lora(tensors, OPENDELTA_KEYS, OPENDELTA_KEYS, rename=hf_path_to_seed, where=where),
                       directory / OPENDELTA_WEIGHTS)
            files["opendelta"] = OPENDELTA_WEIGHTS
        return files

    def load(self, model: torch.nn.Module, directory: str | Path) -> None:
        """Copy a checkpoint's LoRA tensors into an applied model.

        Reads ``adapter_model.safetensors`` (PEFT keys), or else ``opendelta_lora.pt`` (the seed's
        OpenDelta keys, seed or HF names). Every LoRA parameter must be present with its shape."""
        import torch

        directory = Path(directory)
        adapter_path, seed_path = directory / ADAPTER_WEIGHTS, directory / OPENDELTA_WEIGHTS
        if adapter_path.is_file():
            from safetensors.torch import load_file

            where = str(adapter_path)
            loaded = convert_lora(load_file(where), PEFT_KEYS, OPENDELTA_KEYS, where=where)
        elif seed_path.is_file():
            where = str(seed_path)
            loaded = convert_lora(lora_tensors(load_weights_only(seed_path)), OPENDELTA_KEYS, OPENDELTA_KEYS,
                                  rename=seed_path_to_hf, where=where)
        else:
            raise Fm9gError(f"no {ADAPTER_WEIGHTS} or {OPENDELTA_WEIGHTS}", where=str(directory),
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
