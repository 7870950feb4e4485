"""Writing an export or conversion: the output checks, the staged directory, dtypes, ``save_pretrained``.

Every output is written into a fresh temporary directory beside the target and renamed into place
(:func:`staged_directory`), so a crash never leaves a complete-looking half output. Shared by
``fm9g export`` and ``fm9g convert``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fm9g.backends.weights.files import SAFETENSORS_FILE, SAFETENSORS_INDEX
from fm9g.core.atomic import OUTPUT_MARKER, atomic_directory, check_replaceable
from fm9g.core.errors import Fm9gError

DTYPES = ("keep", "float32", "bfloat16", "float16")


@dataclass
class ExportReport:
    """What an export or conversion wrote, for the command to print."""

    output: Path
    kind: str
    notes: list[str] = field(default_factory=list)

    def files(self) -> list[str]:
        return sorted(path.name for path in self.output.iterdir() if path.name != OUTPUT_MARKER)


def refuse_nested(output: Path, inputs: Iterable[Path]) -> None:
    """Refuse an output that is, or lies inside, an input directory, or that contains an input."""
    out = output.resolve()
    for source in inputs:
        src = source.resolve()
        if out == src or (src.is_dir() and out.is_relative_to(src)):
            raise Fm9gError(f"output {output} lies inside the input {source}", where="--output",
                            fix="write the output to a directory outside the input")
        if src.is_relative_to(out):
            raise Fm9gError(f"input {source} lies inside the output {output}", where="--output",
                            fix="choose an output directory that does not contain the input")


def check_output_free(output: Path, force: bool) -> None:
    """A non-empty output (or an existing file) is refused unless ``force``; ``force`` replaces only
    what fm9g wrote (:func:`fm9g.core.atomic.check_replaceable`)."""
    if force:
        check_replaceable(output)
    if output.is_file() and not force:
        raise Fm9gError("output exists", where=str(output), fix="pass --force to replace it, or choose another path")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise Fm9gError("output directory is not empty", where=str(output),
                        fix="pass --force to replace it, or choose another directory")


@contextmanager
def staged_directory(output: Path, *, force: bool) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``output``; on success it replaces ``output`` whole,
    so nothing stale (a reference directory's ``*.index.json``, an old shard) survives in it."""
    check_output_free(output, force)
    with atomic_directory(output.resolve(), replace=True) as stage:
        yield stage


def torch_dtype(name: str):
    """``"bfloat16"`` -> ``torch.bfloat16``; ``"keep"`` -> None."""
    import torch

    if name not in DTYPES:
        raise Fm9gError(f"unknown dtype '{name}'", where="--dtype", fix=f"use one of {', '.join(DTYPES)}")
    return None if name == "keep" else getattr(torch, name)


def cast_state(state: dict[str, Any], dtype_name: str) -> dict[str, Any]:
    """Floating-point tensors cast to ``dtype_name`` (``keep``: untouched)."""
    dtype = torch_dtype(dtype_name)
    if dtype is None:
        return state
    return {name: tensor.to(dtype) if tensor.is_floating_point() else tensor for name, tensor in state.items()}


def save_model_dir(model, out: Path, *, max_shard_size: str | int, special_ids: dict | None,
                   reference_dir: Path | None = None) -> None:
    """``save_pretrained`` (shards + index when large) with a generation config.

    The generation config comes from ``reference_dir/generation_config.json`` when there is one,
    else from the tokenizer's special ids. Nothing else is taken from a reference directory."""
    from transformers import GenerationConfig

    generation = None
    if reference_dir is not None and (reference_dir / "generation_config.json").is_file():
        generation = GenerationConfig.from_pretrained(reference_dir)
    elif model.generation_config is not None:
        generation = model.generation_config
        for key, value in (special_ids or {}).items():
            if value is not None:
                setattr(generation, key, value)
    if generation is not None:
        model.generation_config = generation
    # Training turns the KV cache off (it only costs memory there); an export is for inference.
    model.config.use_cache = True
    if model.generation_config is not None:
        model.generation_config.use_cache = True
    for key, value in (special_ids or {}).items():
        if value is not None and getattr(model.config, key, None) is None:
            setattr(model.config, key, value)
    model.save_pretrained(out, max_shard_size=max_shard_size)
    for stale in out.glob("*.index.json"):
        if stale.name != SAFETENSORS_INDEX:
            stale.unlink()
    if not (out / SAFETENSORS_FILE).is_file() and not (out / SAFETENSORS_INDEX).is_file():
        raise Fm9gError("save_pretrained wrote no safetensors weights", where=str(out),
                        fix="report this as a bug in fm9g")


def copy_remote_code(config, source: Path | None, out: Path) -> None:
    """Copy ``*.py`` model code from ``source`` when the config needs it (``auto_map``)."""
    if source is None or not getattr(config, "auto_map", None):
        return
    for path in source.glob("*.py"):
        shutil.copy2(path, out / path.name)
