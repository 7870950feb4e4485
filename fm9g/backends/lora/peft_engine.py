"""The ``peft`` delta engine: LoRA through Hugging Face PEFT (the default engine).

``lora_layer`` may use the seed's names (``project_q`` … ``w_out``) or HF module names
(``q_proj`` … ``down_proj``). Only the LoRA tensors are trainable and saved. PEFT's initialisation
(A kaiming-uniform(a=√5), B zeros) and scaling (``alpha / r``) are OpenDelta's too, so the same
adapter can be written with OpenDelta's keys for the seed's tools.

Engine interface used by the backends: ``apply(model, options) -> model``,
``save(model, directory, options, state_dict=None) -> {role: file}``, ``load(model, directory)``.
The registry imports this module, so torch and PEFT are imported inside the functions that use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import fm9g
from fm9g.backends.lora.adapter import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, OPENDELTA_WEIGHTS, OPTIONS_SCHEMA,
                                        lora_hyper, target_modules, with_defaults)
from fm9g.backends.weights.names import OPENDELTA_KEYS, PEFT_KEYS, convert_lora, hf_path_to_seed
from fm9g.core.errors import Fm9gError

if TYPE_CHECKING:
    import torch


class PeftEngine:
    name = "peft"
    description = "LoRA through Hugging Face PEFT; seed or HF layer names; OpenDelta key export"
    options_schema = OPTIONS_SCHEMA

    def apply(self, model: torch.nn.Module, lora: dict[str, Any]) -> torch.nn.Module:
        """Wrap ``model`` in a ``PeftModel`` with LoRA on ``lora_layer``; everything else frozen."""
        from peft import LoraConfig, get_peft_model

        targets = target_modules(lora, model)
        r, alpha, dropout = lora_hyper(lora)
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                            bias="none", task_type="CAUSAL_LM")
        return get_peft_model(model, config)

    def save(self, model: torch.nn.Module, directory: str | Path, lora: dict[str, Any],
             state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, str]:
        """Write ``adapter_model.safetensors`` + ``adapter_config.json`` (and the OpenDelta file if asked).

        ``state_dict`` is the model's (trainable) state with PeftModel names, e.g. gathered from
        FSDP shards; by default the model's own.
        """
        import torch
        from peft import get_peft_model_state_dict

        directory = Path(directory)
        if state_dict is not None:
            state_dict = {k: v.detach().to("cpu", torch.float32) for k, v in state_dict.items()}
        model.save_pretrained(str(directory), state_dict=state_dict, save_embedding_layers=False)
        files = {"adapter": ADAPTER_WEIGHTS, "adapter_config": ADAPTER_CONFIG}
        if with_defaults(lora)["save_format"] == "opendelta":
            adapter = get_peft_model_state_dict(model, state_dict=state_dict, save_embedding_layers=False)
            seed_keyed = convert_lora(adapter, PEFT_KEYS, OPENDELTA_KEYS, rename=hf_path_to_seed,
                                      where="the trained adapter")
            torch.save({key: tensor.detach().cpu().contiguous() for key, tensor in seed_keyed.items()},
                       directory / OPENDELTA_WEIGHTS)
            files["opendelta"] = OPENDELTA_WEIGHTS
        return files

    def load(self, model: torch.nn.Module, directory: str | Path) -> None:
        """Load ``adapter_model.safetensors`` from a checkpoint into a model ``apply`` wrapped."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        path = Path(directory) / ADAPTER_WEIGHTS
        if not path.is_file():
            raise Fm9gError(f"no {ADAPTER_WEIGHTS}", where=str(directory),
                            fix="resume a LoRA run from a LoRA checkpoint")
        result = set_peft_model_state_dict(model, load_file(str(path)))
        if getattr(result, "unexpected_keys", None):
            raise Fm9gError(f"adapter does not fit the model: unexpected {result.unexpected_keys[0]}",
                            where=str(path), fix="use the same lora_layer and base model as the run that wrote it")


@fm9g.hookimpl
def register_delta_engines(register):
    register(PeftEngine())
