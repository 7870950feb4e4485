"""``fm9g export``: a training checkpoint -> a Hugging Face directory.

Full checkpoints become ``save_pretrained`` output (sharded safetensors with their own index,
config.json, generation_config.json) plus tokenizer files. LoRA checkpoints are either merged into
their base weights (``--merge-lora``, :mod:`fm9g.backends.lora.merge`) or written as an adapter,
in PEFT's format or the seed's OpenDelta key format (``opendelta_lora.pt``, the trainer's name for
it, + ``lora_config.json`` with the seed's ``finetune`` block).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fm9g.backends.export.output import (ExportReport, cast_state, copy_remote_code, refuse_nested, save_model_dir,
                                         staged_directory, torch_dtype)
from fm9g.backends.export.source import CheckpointSource
from fm9g.backends.export.tokenizer import training_chat_template, write_tokenizer
from fm9g.backends.lora.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, OPENDELTA_WEIGHTS
from fm9g.backends.lora.merge import LoraHyper
from fm9g.backends.models.materialize import materialize_model
from fm9g.backends.weights.files import save_seed_pt
from fm9g.backends.weights.names import OPENDELTA_KEYS, PEFT_KEYS, convert_lora, hf_path_to_seed, lora_layers_to_seed
from fm9g.core.atomic import write_json_atomic
from fm9g.core.errors import Fm9gError

OPENDELTA_CONFIG = "lora_config.json"
"""The seed's LoRA config file beside an OpenDelta adapter: its ``finetune`` block (r, alpha, layers)."""


def write_adapter(source: CheckpointSource, stage: Path, fmt: str) -> str:
    """The LoRA adapter unmerged: PEFT's files, or OpenDelta keys + the seed's ``finetune`` block."""
    adapter_config, adapter_state = source.adapter()
    if fmt == "peft":
        hf_dir = source.base_hf_dir()
        if hf_dir is not None:
            adapter_config = {**adapter_config, "base_model_name_or_path": str(hf_dir.resolve())}
        write_json_atomic(stage / ADAPTER_CONFIG, adapter_config)
        shutil.copy2(source.file("adapter", ADAPTER_WEIGHTS), stage / ADAPTER_WEIGHTS)
        return "PEFT LoRA adapter"
    where = str(source.file("adapter_config", ADAPTER_CONFIG))
    if any(adapter_config.get(key) for key in ("use_rslora", "rank_pattern", "alpha_pattern")):
        raise Fm9gError("rsLoRA / per-module rank or alpha cannot be expressed in the seed's LoRA format",
                        where=where, fix="export with --format peft or --merge-lora")
    targets = adapter_config.get("target_modules")
    hyper = LoraHyper(lora_r=int(adapter_config["r"]), lora_alpha=float(adapter_config["lora_alpha"]),
                      lora_layer=tuple(lora_layers_to_seed(targets)) if isinstance(targets, list) else None,
                      lora_dropout=float(adapter_config.get("lora_dropout") or 0.0))
    save_seed_pt(convert_lora(adapter_state, PEFT_KEYS, OPENDELTA_KEYS, rename=hf_path_to_seed, where=where),
                 stage / OPENDELTA_WEIGHTS)
    write_json_atomic(stage / OPENDELTA_CONFIG, {"finetune": hyper.as_seed_finetune()})
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
    trust_remote_code: bool = False,
) -> ExportReport:
    """Export a training checkpoint directory to ``output`` (see the module docstring)."""
    source = CheckpointSource.open(Path(checkpoint), base=Path(base) if base else None,
                                   trust_remote_code=trust_remote_code)
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
        note, special_ids = write_tokenizer(spec, stage, fallback_dir=source.base_hf_dir(),
                                            chat_template=training_chat_template(source.data_manifest()))
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
