"""Building the model a train config's ``model`` block names: a preset, a local Hugging Face
directory, or a seed ``.pt`` loaded into a preset (its bmtrain names mapped by
:mod:`fm9g.backends.weights.names`). Every model gets fm9g's packed (varlen) attention.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fm9g.backends.models.attention import register_varlen_attention
from fm9g.backends.models.presets import FIT_TOKENIZER, PRESETS, preset_config
from fm9g.backends.weights.files import load_seed_pt
from fm9g.backends.weights.names import seed_to_hf
from fm9g.core.errors import Fm9gError, UnknownName


def load_seed_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A seed ``.pt`` (plain ``{name: tensor}``, bmtrain names) with its names mapped to HF names."""
    return seed_to_hf(load_seed_pt(path))


def model_config(model_cfg: dict[str, Any], *, tokenizer_vocab: int | None = None):
    """The transformers config the ``model`` block describes (no weights loaded).

    ``model.vocab_size`` overrides a preset's vocabulary; a test-shape preset without it takes the
    tokenizer's (``tokenizer_vocab``), so that it never generates ids the tokenizer cannot decode."""
    from transformers import AutoConfig

    if model_cfg.get("hf_path"):
        path = _hf_dir(model_cfg["hf_path"])
        return AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.get("trust_remote_code", False))
    name = model_cfg["preset"]
    if name not in PRESETS:
        raise UnknownName("model preset", name, PRESETS, where="train config: model.preset")
    vocab = model_cfg.get("vocab_size") or (tokenizer_vocab if name in FIT_TOKENIZER else None)
    return preset_config(name, **({"vocab_size": vocab} if vocab else {}))


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
        config = model_config(model_cfg, tokenizer_vocab=vocab_size)
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
