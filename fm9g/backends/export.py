"""``fm9g export``: a training checkpoint (COMMON contract 3) -> a Hugging Face directory.

Full checkpoints become ``save_pretrained`` output (sharded safetensors with their own index,
config.json, generation_config.json) plus tokenizer files. LoRA checkpoints are either merged into
their base weights (``--merge-lora``, :mod:`fm9g.backends.lora_merge`) or written as an adapter,
in PEFT's format or the seed's OpenDelta key format (``opendelta_lora.pt``, the trainer's name for
it, + ``lora_config.json`` with the seed's ``finetune`` block).

Every output is written into a fresh temporary directory beside the target and renamed into place,
so nothing stale (a reference directory's ``*.index.json``, an old shard) can survive in it and a
crash never leaves a complete-looking half output. Writing helpers are shared with ``fm9g convert``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fm9g.backends.export_source import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CheckpointSource
from fm9g.backends.export_tokenizer import write_tokenizer
from fm9g.core.errors import Fm9gError

OPENDELTA_WEIGHTS = "opendelta_lora.pt"
OPENDELTA_CONFIG = "lora_config.json"
DTYPES = ("keep", "float32", "bfloat16", "float16")


@dataclass
class ExportReport:
    """What an export or conversion wrote, for the command to print."""

    output: Path
    kind: str
    notes: list[str] = field(default_factory=list)

    def files(self) -> list[str]:
        return sorted(path.name for path in self.output.iterdir())


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
    """A non-empty output (or an existing file) is refused unless ``force``."""
    if output.is_file() and not force:
        raise Fm9gError("output exists", where=str(output), fix="pass --force to replace it, or choose another path")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise Fm9gError("output directory is not empty", where=str(output),
                        fix="pass --force to replace it, or choose another directory")


@contextmanager
def staged_directory(output: Path, *, force: bool) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``output``; on success it replaces ``output`` whole."""
    check_output_free(output, force)
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    stage = output.parent / f".{output.name}.tmp-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        yield stage
        if output.exists() or output.is_symlink():
            retired = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(output, retired)
            os.replace(stage, output)
            if retired.is_dir() and not retired.is_symlink():
                shutil.rmtree(retired)
            else:
                retired.unlink()
        else:
            os.replace(stage, output)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


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
    for key, value in (special_ids or {}).items():
        if value is not None and getattr(model.config, key, None) is None:
            setattr(model.config, key, value)
    model.save_pretrained(out, max_shard_size=max_shard_size)
    for stale in out.glob("*.index.json"):
        if stale.name != "model.safetensors.index.json":
            stale.unlink()
    if not (out / "model.safetensors").is_file() and not (out / "model.safetensors.index.json").is_file():
        raise Fm9gError("save_pretrained wrote no safetensors weights", where=str(out),
                        fix="report this as a bug in fm9g")


def copy_remote_code(config, source: Path | None, out: Path) -> None:
    """Copy ``*.py`` model code from ``source`` when the config needs it (``auto_map``)."""
    if source is None or not getattr(config, "auto_map", None):
        return
    for path in source.glob("*.py"):
        shutil.copy2(path, out / path.name)


def write_json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_adapter(source: CheckpointSource, stage: Path, fmt: str) -> str:
    """The LoRA adapter unmerged: PEFT's files, or OpenDelta keys + the seed's ``finetune`` block."""
    adapter_config, adapter_state = source.adapter()
    if fmt == "peft":
        hf_dir = source.base_hf_dir()
        if hf_dir is not None:
            adapter_config = {**adapter_config, "base_model_name_or_path": str(hf_dir.resolve())}
        write_json(stage / ADAPTER_CONFIG, adapter_config)
        shutil.copy2(source.file("adapter", ADAPTER_WEIGHTS), stage / ADAPTER_WEIGHTS)
        return "PEFT LoRA adapter"
    from fm9g.backends.lora_merge import LoraHyper
    from fm9g.backends.seed_checkpoint import save_seed_pt
    from fm9g.backends.seed_names import lora_layers_to_seed, lora_peft_to_seed

    where = str(source.file("adapter_config", ADAPTER_CONFIG))
    if any(adapter_config.get(key) for key in ("use_rslora", "rank_pattern", "alpha_pattern")):
        raise Fm9gError("rsLoRA / per-module rank or alpha cannot be expressed in the seed's LoRA format",
                        where=where, fix="export with --format peft or --merge-lora")
    targets = adapter_config.get("target_modules")
    hyper = LoraHyper(lora_r=int(adapter_config["r"]), lora_alpha=float(adapter_config["lora_alpha"]),
                      lora_layer=tuple(lora_layers_to_seed(targets)) if isinstance(targets, list) else None,
                      lora_dropout=float(adapter_config.get("lora_dropout") or 0.0))
    save_seed_pt(lora_peft_to_seed(adapter_state, where=where), stage / OPENDELTA_WEIGHTS)
    write_json(stage / OPENDELTA_CONFIG, {"finetune": hyper.as_seed_finetune()})
    return "OpenDelta LoRA adapter (seed key format)"


def export_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    merge_lora: bool = False,
    fmt: str = "peft",
    force: bool = False,
    max_shard_size: str | int = "5GB",
    dtype: str = "keep",
    base: str | os.PathLike | None = None,
    tokenizer: str | None = None,
) -> ExportReport:
    """Export a training checkpoint directory to ``output`` (see the module docstring)."""
    from fm9g.backends.seed_checkpoint import materialize_model

    source = CheckpointSource.open(Path(checkpoint), base=Path(base) if base else None)
    output = Path(output)
    refuse_nested(output, [source.directory, *source.external_inputs()])
    if fmt not in ("peft", "opendelta"):
        raise Fm9gError(f"unknown adapter format '{fmt}'", where="--format", fix="use peft or opendelta")
    if source.weights == "full" and merge_lora:
        raise Fm9gError("--merge-lora given but the checkpoint holds full weights", where=str(source.directory),
                        fix="drop --merge-lora; full checkpoints export as they are")
    if fmt != "peft" and (merge_lora or source.weights == "full"):
        raise Fm9gError(f"--format {fmt} applies to an unmerged LoRA adapter only", where="--format",
                        fix="drop --format, or export a LoRA checkpoint without --merge-lora")
    torch_dtype(dtype)
    spec = tokenizer if tokenizer is not None else source.tokenizer_spec
    with staged_directory(output, force=force) as stage:
        note, special_ids = write_tokenizer(spec, stage, fallback_dir=source.base_hf_dir())
        if source.weights == "lora" and not merge_lora:
            kind = write_adapter(source, stage, fmt)
        else:
            config = source.model_config()
            state = cast_state(source.merged_state() if merge_lora else source.full_state(), dtype)
            model = materialize_model(config, state, where=str(source.directory), architecture=source.architecture,
                                      trust_remote_code=source.trust_remote_code)
            save_model_dir(model, stage, max_shard_size=max_shard_size, special_ids=special_ids,
                           reference_dir=source.base_hf_dir())
            copy_remote_code(config, source.base_hf_dir(), stage)
            kind = "merged LoRA model" if merge_lora else "full model"
    return ExportReport(output=output, kind=kind, notes=[note, *source.notes])
