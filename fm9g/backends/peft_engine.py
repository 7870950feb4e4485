"""The ``peft`` delta engine: LoRA through Hugging Face PEFT (the default engine).

``lora_layer`` may use the seed's names (``project_q`` … ``w_out``) or HF module names
(``q_proj`` … ``down_proj``). Only the LoRA tensors are trainable and saved. PEFT's initialisation
(A kaiming-uniform(a=√5), B zeros) and scaling (``alpha / r``) equal OpenDelta's (FACTS.md), so a
PEFT adapter can be written with OpenDelta's keys (``<seed linear path>.lora.lora_A`` / ``.lora_B``)
for the seed's tools.

Engine interface used by the backends: ``apply(model, options) -> model``,
``save(model, directory, options, state_dict=None) -> {role: file}``, ``load(model, directory)``.
The registry imports this module, so torch and PEFT are imported inside the functions that use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import fm9g
from fm9g.core.errors import Fm9gError, UnknownName

if TYPE_CHECKING:
    import torch

SEED_TO_HF_MODULE = {
    "project_q": "q_proj", "project_k": "k_proj", "project_v": "v_proj", "attention_out": "o_proj",
    "w_0": "gate_proj", "w_1": "up_proj", "w_out": "down_proj",
}
"""The seed's LoRA layer names -> the HF module names of Llama/Qwen2 causal LMs."""

OPENDELTA_FILE = "opendelta_lora.pt"

OPTIONS_SCHEMA = {
    "type": "object",
    "properties": {
        "method": {"const": "lora"},
        "engine": {"type": "string"},
        "lora_layer": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "lora_r": {"type": "integer", "minimum": 1},
        "lora_alpha": {"type": "number", "exclusiveMinimum": 0},
        "lora_dropout": {"type": "number", "minimum": 0, "maximum": 1},
        "save_format": {"enum": ["peft", "opendelta"]},
    },
}


def hf_target_modules(lora_layer: list[str], model: torch.nn.Module | None = None) -> list[str]:
    """Map seed names to HF module names; with a model, unknown names are errors with suggestions."""
    targets = [SEED_TO_HF_MODULE.get(name, name) for name in lora_layer]
    if model is not None:
        import torch

        leaf_names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                      if isinstance(module, torch.nn.Linear)}
        for original, target in zip(lora_layer, targets):
            if target not in leaf_names:
                known = sorted(leaf_names | {seed for seed, hf in SEED_TO_HF_MODULE.items() if hf in leaf_names})
                raise UnknownName("lora layer", original, known, where="train config: delta.lora_layer")
    return list(dict.fromkeys(targets))


def to_opendelta(adapter_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A PEFT adapter state dict (as saved) with OpenDelta keys (``<seed linear>.lora.lora_A``/``lora_B``).

    Shapes already agree: PEFT's ``lora_A.weight`` is (r, in) and ``lora_B.weight`` (out, r), as in OpenDelta.
    """
    from fm9g.backends.seed_names import lora_peft_to_seed

    return {key: tensor.detach().cpu().contiguous() for key, tensor in lora_peft_to_seed(adapter_state).items()}


class PeftEngine:
    name = "peft"
    description = "LoRA through Hugging Face PEFT; seed or HF layer names; OpenDelta key export"
    options_schema = OPTIONS_SCHEMA

    def apply(self, model: torch.nn.Module, lora: dict[str, Any]) -> torch.nn.Module:
        """Wrap ``model`` in a ``PeftModel`` with LoRA on ``lora_layer``; everything else frozen."""
        from peft import LoraConfig, get_peft_model

        targets = hf_target_modules(lora.get("lora_layer") or list(SEED_TO_HF_MODULE), model)
        config = LoraConfig(r=int(lora.get("lora_r", 64)), lora_alpha=float(lora.get("lora_alpha", 32)),
                            lora_dropout=float(lora.get("lora_dropout", 0.0)), target_modules=targets,
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
        files = {"adapter": "adapter_model.safetensors", "adapter_config": "adapter_config.json"}
        if lora.get("save_format") == "opendelta":
            adapter = get_peft_model_state_dict(model, state_dict=state_dict, save_embedding_layers=False)
            torch.save(to_opendelta(adapter), directory / OPENDELTA_FILE)
            files["opendelta"] = OPENDELTA_FILE
        return files

    def load(self, model: torch.nn.Module, directory: str | Path) -> None:
        """Load ``adapter_model.safetensors`` from a checkpoint into a model ``apply`` wrapped."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        path = Path(directory) / "adapter_model.safetensors"
        if not path.is_file():
            raise Fm9gError("no adapter_model.safetensors", where=str(directory),
                            fix="resume a LoRA run from a LoRA checkpoint")
        result = set_peft_model_state_dict(model, load_file(str(path)))
        if getattr(result, "unexpected_keys", None):
            raise Fm9gError(f"adapter does not fit the model: unexpected {result.unexpected_keys[0]}",
                            where=str(path), fix="use the same lora_layer and base model as the run that wrote it")


@fm9g.hookimpl
def register_delta_engines(register):
    register(PeftEngine())
