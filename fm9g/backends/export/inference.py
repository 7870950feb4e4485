"""Trained weights as a model to run (``fm9g eval``, ``fm9g generate``), from any place fm9g puts them.

A training checkpoint (full, or LoRA merged into its base: ``W + (alpha/r)·B@A``), an exported
Hugging Face directory, or a seed ``.pt`` loaded into a preset. The model is in eval mode, in
float32 unless asked otherwise, with fm9g's packed (varlen) attention, so that a packed batch of
held-out samples gives each sample the loss it has alone — the same numbers training reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fm9g.backends.export.output import torch_dtype
from fm9g.backends.export.source import CheckpointSource
from fm9g.backends.models.attention import register_varlen_attention
from fm9g.backends.models.materialize import materialize_model
from fm9g.backends.models.presets import PRESETS, preset_config
from fm9g.backends.weights.files import load_seed_pt
from fm9g.backends.weights.names import seed_to_hf
from fm9g.core.errors import Fm9gError, UnknownName


@dataclass
class LoadedModel:
    """A model ready to run, and what it came from."""

    model: torch.nn.Module
    description: str
    train_config: dict[str, Any] | None = None
    """The train config a training checkpoint recorded (``None`` for other sources)."""
    tokenizer_spec: str | None = None
    """The tokenizer the weights were trained with, where the source says (a checkpoint's run)."""
    step: int | None = None
    """A training checkpoint's step."""
    notes: list[str] = field(default_factory=list)


def load_model(*, checkpoint: str | Path | None = None, hf_dir: str | Path | None = None,
               seed_pt: str | Path | None = None, preset: str | None = None, base: str | Path | None = None,
               device: torch.device | str = "cpu", dtype: str = "float32",
               trust_remote_code: bool = False) -> LoadedModel:
    """Load exactly one of ``checkpoint``, ``hf_dir`` or ``seed_pt`` (+ ``preset``); see the module docstring."""
    given = [name for name, value in (("--checkpoint", checkpoint), ("--model", hf_dir), ("--seed-pt", seed_pt))
             if value is not None]
    if len(given) != 1:
        raise Fm9gError(f"give exactly one model source (got {', '.join(given) or 'none'})", where="command line",
                        fix="pass --checkpoint DIR, --model HF_DIR or --seed-pt FILE --preset NAME")
    if checkpoint is not None:
        loaded = _from_checkpoint(Path(checkpoint), base, trust_remote_code)
    elif hf_dir is not None:
        loaded = _from_hf_dir(Path(hf_dir), trust_remote_code)
    else:
        loaded = _from_seed_pt(Path(seed_pt), preset)
    model = loaded.model.to(device=device, dtype=torch_dtype(dtype) if dtype != "keep" else None)
    model.set_attn_implementation(register_varlen_attention())
    model.config.use_cache = False
    loaded.model = model.eval()
    return loaded


def _from_checkpoint(directory: Path, base: str | Path | None, trust_remote_code: bool) -> LoadedModel:
    source = CheckpointSource.open(directory, base=Path(base) if base else None, trust_remote_code=trust_remote_code)
    state = source.merged_state() if source.weights == "lora" else source.full_state()
    model = materialize_model(source.model_config(), state, where=str(directory), architecture=source.architecture,
                              trust_remote_code=trust_remote_code)
    kind = "LoRA checkpoint (merged into its base)" if source.weights == "lora" else "checkpoint"
    step = int(source.manifest["step"])
    return LoadedModel(model, f"{kind} {directory} (step {step})", source.config, source.tokenizer_spec, step,
                       source.notes)


def _from_hf_dir(directory: Path, trust_remote_code: bool) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    if not (directory / "config.json").is_file():
        raise Fm9gError("not a Hugging Face model directory (no config.json)", where=str(directory),
                        fix="pass a directory written by fm9g export or save_pretrained")
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, trust_remote_code=trust_remote_code)
    return LoadedModel(model, f"Hugging Face model {directory}")


def _from_seed_pt(path: Path, preset: str | None) -> LoadedModel:
    if preset is None:
        raise Fm9gError("a seed .pt needs the model shape it belongs to", where="--seed-pt",
                        fix="add --preset NAME (e.g. fm9g-7b)")
    if preset not in PRESETS:
        raise UnknownName("model preset", preset, PRESETS, where="--preset")
    state = seed_to_hf(load_seed_pt(path))
    config = preset_config(preset, vocab_size=int(state["model.embed_tokens.weight"].shape[0])) \
        if "model.embed_tokens.weight" in state else preset_config(preset)
    model = materialize_model(config, state, where=str(path), architecture=f"preset {preset}")
    return LoadedModel(model, f"seed weights {path} in preset {preset}")
