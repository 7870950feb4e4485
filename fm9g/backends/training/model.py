"""The model a run trains: built from the config, kernels and the fused loss head in, the delta applied,
the checkpoint loaded."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fm9g.backends.models.build import build_model, load_into
from fm9g.backends.models.kernels import apply_kernels
from fm9g.backends.training import checkpoints
from fm9g.backends.training.fused_loss import install_fused_head
from fm9g.backends.training.resume import ResumePoint
from fm9g.backends.weights.files import read_safetensors
from fm9g.core.errors import Fm9gError
from fm9g.core.plugins import get_plugin


@dataclass
class TrainingModel:
    """The model a backend trains, with what its checkpoints need besides the weights."""

    model: torch.nn.Module
    engine: Any | None
    """The delta engine that wrapped the model (``None`` for a full fine-tune)."""
    hf_config: Any
    """The base model's HF config, as ``config.json`` of every checkpoint."""
    base_weights: Path | None
    """The stored base weights to link into every checkpoint (LoRA on a bare preset), else ``None``."""


def build_training_model(config: dict[str, Any], *, device: torch.device, vocab_size: int | None,
                         resume: ResumePoint | None, is_main: bool, base_dtype: torch.dtype,
                         prepare: Callable[[torch.nn.Module], Any] | None = None) -> TrainingModel:
    """Build the model, put in its kernels (``model.kernels``) and its fused loss head
    (``model.loss_chunk_tokens``: before any delta or wrapper, which then carry it along), ``prepare``
    it (e.g. untie embeddings), apply the delta (the engine comes from the plugin registry), load the
    resume checkpoint's weights.

    A LoRA run on a bare preset stores its base weights (rounded to ``base_dtype``, the precision
    the frozen base trains in) once in the save directory, or, resuming, loads them from the
    checkpoint, so the base is the same whatever device re-initialises it.
    """
    model = build_model(config["model"], seed=config["seed"], device=device, vocab_size=vocab_size)
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and config["max_length"] > positions:
        raise Fm9gError(f"max_length {config['max_length']} is longer than the model's {positions} positions",
                        where="train config: max_length", fix=f"use max_length ≤ {positions}")
    apply_kernels(model, config["model"]["kernels"], device)
    install_fused_head(model, config["model"]["loss_chunk_tokens"])
    if prepare is not None:
        prepare(model)
    hf_config = copy.deepcopy(model.config)
    stored = resume.base_weights() if resume is not None else None
    if stored is not None:
        load_into(model, read_safetensors(stored), source=stored)
    elif checkpoints.stores_base_weights(config):
        stored = Path(config["save"]) / checkpoints.BASE_WEIGHTS
        if is_main:
            checkpoints.store_base_weights(model.state_dict(), config["save"], base_dtype)
    delta, engine = config["delta"], None
    if delta:
        engine = get_plugin("delta_engine", delta["engine"], where="train config: delta.engine")
        model = engine.apply(model, delta)
    if resume is not None:
        resume.load_weights(model, engine)
    return TrainingModel(model, engine, hf_config, stored)
