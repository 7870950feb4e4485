"""Building the model a train config names: a preset, a local Hugging Face directory, or a seed ``.pt``.

The seed's bmtrain checkpoints use other parameter names; ``fm9g.backends.seed_names`` maps them
(the FACTS.md table, ordered substring replacement). Loads use ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fm9g.backends.attention import register_varlen_attention
from fm9g.backends.kernels import apply_kernels
from fm9g.backends.presets import PRESETS, preset_config
from fm9g.backends.seed_names import seed_name_to_hf
from fm9g.core.errors import Fm9gError, UnknownName


def load_seed_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A seed ``.pt`` (plain ``{name: tensor}``, bmtrain names) with its names mapped to HF names."""
    path = Path(path)
    if not path.is_file():
        raise Fm9gError("seed checkpoint not found", where=str(path), fix="check model.seed_pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise Fm9gError(f"cannot read the seed checkpoint: {error}", where=str(path),
                        fix="it must be a torch.save'd {name: tensor} dict") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise Fm9gError("not a {name: tensor} dict", where=str(path), fix="pass a seed bmtrain .pt checkpoint")
    return {seed_name_to_hf(name): tensor for name, tensor in state.items()}


def model_config(model_cfg: dict[str, Any], *, base_dir: Path | None = None):
    """The transformers config the ``model`` block describes (no weights loaded)."""
    from transformers import AutoConfig

    if model_cfg.get("hf_path"):
        path = _hf_dir(model_cfg["hf_path"])
        return AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.get("trust_remote_code", False))
    name = model_cfg["preset"]
    if name not in PRESETS:
        raise UnknownName("model preset", name, PRESETS, where="train config: model.preset")
    overrides = {"vocab_size": model_cfg["vocab_size"]} if model_cfg.get("vocab_size") else {}
    return preset_config(name, **overrides)


def _hf_dir(path: str | Path) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise Fm9gError("not a Hugging Face model directory (no config.json)", where=str(path),
                        fix="point model.hf_path at a directory written by save_pretrained")
    return path


def build_model(model_cfg: dict[str, Any], *, seed: int = 0, vocab_size: int | None = None,
                device: torch.device | str = "cpu") -> torch.nn.Module:
    """A causal LM in float32 with fm9g's varlen attention selected.

    Presets are randomly initialised from ``seed`` (on ``device``; the meta device then ``to_empty``
    keeps a 7B init fast on a GPU); ``seed_pt`` then loads seed weights into the preset; ``hf_path``
    loads the directory's weights. ``vocab_size`` (the tokenizer's) must fit the model's embedding.
    """
    from transformers import AutoModelForCausalLM

    attention = register_varlen_attention()
    trust = bool(model_cfg.get("trust_remote_code", False))
    if model_cfg.get("hf_path"):
        model = AutoModelForCausalLM.from_pretrained(_hf_dir(model_cfg["hf_path"]), dtype=torch.float32,
                                                     trust_remote_code=trust, attn_implementation=attention)
        model.to(device)
    else:
        config = model_config(model_cfg)
        config._attn_implementation = attention
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        if model_cfg.get("seed_pt"):
            load_into(model, load_seed_state_dict(model_cfg["seed_pt"]), source=model_cfg["seed_pt"])
    model.config.use_cache = False
    model_vocab = model.get_input_embeddings().num_embeddings
    if vocab_size is not None and vocab_size > model_vocab:
        raise Fm9gError(f"the tokenizer has {vocab_size} ids but the model's embedding has {model_vocab}",
                        where="train config: model / tokenizer", fix="use a matching tokenizer or model")
    return model


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str | Path) -> None:
    """Copy ``state`` (HF names) into ``model``; any missing, extra or mis-shaped tensor is an error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [f"{n}: {tuple(state[n].shape)} vs model {tuple(own[n].shape)}"
              for n in own if n in state and state[n].shape != own[n].shape]
    tied = getattr(model.config, "tie_word_embeddings", False)
    if tied and missing == ["lm_head.weight"]:
        missing = []
    if missing or extra or shapes:
        details = "; ".join(filter(None, [
            f"missing {len(missing)} (e.g. {missing[0]})" if missing else "",
            f"unexpected {len(extra)} (e.g. {extra[0]})" if extra else "",
            f"shape mismatch {shapes[0]}" if shapes else ""]))
        raise Fm9gError(f"the checkpoint does not fit the model: {details}", where=str(source),
                        fix="check that model.preset matches the checkpoint's shape")
    model.load_state_dict(state, strict=not tied)


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` parameter counts (DTensor shards count their global size)."""
    total = trainable = 0
    for parameter in model.parameters():
        count = parameter.numel()
        total += count
        trainable += count if parameter.requires_grad else 0
    return total, trainable


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
                         resume: Path | None, manifest: dict[str, Any] | None, is_main: bool,
                         base_dtype: torch.dtype, prepare: Callable[[torch.nn.Module], Any] | None = None) -> TrainingModel:
    """Build the model, put in its kernels (``model.kernels``), ``prepare`` it (e.g. untie embeddings),
    apply the delta, load a checkpoint.

    A LoRA run on a bare preset stores its base weights (rounded to ``base_dtype``, the precision
    the frozen base trains in) once in the save directory, or, resuming, loads them from the
    checkpoint, so the base is the same whatever device re-initialises it.
    """
    from fm9g.backends import checkpoints as ckpt

    model = build_model(config["model"], seed=config["seed"], device=device, vocab_size=vocab_size)
    apply_kernels(model, config["model"].get("kernels", "hf"), device)
    if prepare is not None:
        prepare(model)
    hf_config = copy.deepcopy(model.config)
    stored = ckpt.base_weights_of(resume, manifest) if manifest is not None else None
    if stored is not None:
        from safetensors.torch import load_file

        load_into(model, load_file(str(stored)), source=stored)
    elif ckpt.stores_base_weights(config):
        stored = Path(config["save"]) / ckpt.BASE_WEIGHTS
        if is_main:
            ckpt.store_base_weights(model.state_dict(), config["save"], base_dtype)
    delta, engine = config.get("delta"), None
    if delta:
        from fm9g.core.plugins import get_plugin

        engine = get_plugin("delta_engine", delta.get("engine", "peft"), where="train config: delta.engine")
        model = engine.apply(model, delta)
    if manifest is not None:
        if engine is not None:
            engine.load(model, resume)
        else:
            load_into(model, ckpt.load_full_weights(resume), source=resume)
    return TrainingModel(model, engine, hf_config, stored)
