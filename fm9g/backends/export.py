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

from fm9g.core.errors import Fm9gError

CHECKPOINT_MANIFEST = "checkpoint.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
OPENDELTA_WEIGHTS = "opendelta_lora.pt"
OPENDELTA_CONFIG = "lora_config.json"
TOKENIZER_PATTERNS = (
    "tokenizer*.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "vocab.txt", "merges.txt", "chat_template*", "*.tiktoken", "spiece.model", "sentencepiece*.model",
)
"""Files copied from an ``hf:`` tokenizer directory (never weights or shard indexes)."""
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


def byte_tokenizer_fast():
    """A ``PreTrainedTokenizerFast`` giving exactly fm9g's byte tokenizer ids (byte + 4; 0-3 specials).

    A BPE model without merges over GPT-2's 256 byte-level symbols; special-token strings in text
    are encoded as bytes (``split_special_tokens``), as the byte tokenizer does."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from fm9g.tokenizers.byte import OFFSET, SPECIALS

    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    remapped = iter(range(256, 512))
    symbols = {byte: chr(byte) if byte in printable else chr(next(remapped)) for byte in range(256)}
    vocab = {special: index for index, special in enumerate(SPECIALS)}
    vocab.update({symbol: byte + OFFSET for byte, symbol in symbols.items()})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(special, special=True, normalized=False) for special in SPECIALS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        split_special_tokens=True, model_max_length=1 << 30, clean_up_tokenization_spaces=False,
    )


def _sentencepiece_tokenizer(model_file: Path, out: Path) -> None:
    """``tokenizer.model`` (the file itself) plus the ``tokenizer.json`` transformers converts it to."""
    import sentencepiece
    from transformers import AutoTokenizer

    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    shutil.copy2(model_file, out / "tokenizer.model")
    specials = {f"{role}_token": processor.id_to_piece(index) for role, index in (
        ("bos", processor.bos_id()), ("eos", processor.eos_id()), ("unk", processor.unk_id()),
        ("pad", processor.pad_id())) if index >= 0}
    write_json(out / "tokenizer_config.json", {**specials, "add_bos_token": False, "add_eos_token": False})
    AutoTokenizer.from_pretrained(out).save_pretrained(out)


def write_tokenizer(spec: str | None, out: Path, *, fallback_dir: Path | None = None) -> tuple[str, dict | None]:
    """Write tokenizer files for ``spec`` into ``out``; return a note and its special ids (or None).

    ``byte``: a ``tokenizer.json`` reproducing the byte tokenizer; ``hf:DIR``: DIR's tokenizer files
    copied verbatim; ``sp:FILE.model``: the model as ``tokenizer.model`` plus its converted
    ``tokenizer.json``; None: the base model directory's tokenizer files when it has some, else
    nothing (said in the note). Exact ids: load with ``PreTrainedTokenizerFast.from_pretrained`` —
    transformers 5's ``AutoTokenizer`` swaps in ``Qwen2Tokenizer`` (NFC-normalizing) for qwen2 dirs."""
    from fm9g.tokenizers import split_spec

    if spec is None:
        if fallback_dir is not None and _tokenizer_files(fallback_dir):
            spec = f"hf:{fallback_dir}"
        else:
            return "no tokenizer written (the checkpoint names none; pass --tokenizer SPEC)", None
    name, argument = split_spec(spec)
    source = Path(argument or "")
    if name == "byte":
        byte_tokenizer_fast().save_pretrained(out)
        note = "tokenizer: byte (tokenizer.json reproducing fm9g's byte tokenizer ids)"
    elif name == "hf":
        files = [source] if source.is_file() else _tokenizer_files(source)
        if not files:
            raise Fm9gError(f"no tokenizer files in {source}", where=f"tokenizer spec '{spec}'",
                            fix="point hf: at a directory holding tokenizer.json / tokenizer_config.json")
        for path in files:
            shutil.copy2(path, out / path.name)
        note = f"tokenizer: copied {', '.join(path.name for path in files)} from {source}"
    elif name == "sp":
        if not source.is_file():
            raise Fm9gError("sentencepiece model not found", where=f"tokenizer spec '{spec}'", fix="check the path")
        _sentencepiece_tokenizer(source, out)
        note = f"tokenizer: sentencepiece {source} as tokenizer.model + tokenizer.json"
    else:
        raise Fm9gError(f"cannot export tokenizer spec '{spec}'", where="tokenizer",
                        fix="use byte, hf:DIR or sp:FILE.model, or copy the tokenizer files by hand")
    return note, _special_ids(out)


def _tokenizer_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    found = {path for pattern in TOKENIZER_PATTERNS for path in directory.glob(pattern) if path.is_file()}
    return sorted(path for path in found if not path.name.endswith(".index.json"))


def _special_ids(out: Path) -> dict | None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(out)
    except (OSError, ValueError, TypeError):
        return None
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


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


class CheckpointSource:
    """One training checkpoint directory (contract 3) and everything it points at.

    For a LoRA checkpoint the base weights come, first found: from ``--base`` (an HF directory, a
    seed ``.pt`` or a ``.safetensors`` file); from ``base_model.safetensors`` in the checkpoint; from
    the train config's ``model.hf_path``; from ``model.seed_pt`` (seed names). A run on a bare preset
    has randomly initialised base weights that are not stored anywhere: that needs ``--base``."""

    def __init__(self, directory: Path, manifest: dict[str, Any], base: Path | None):
        self.directory = directory
        self.manifest = manifest
        self.config: dict[str, Any] = manifest.get("config") or {}
        self.model_block: dict[str, Any] = self.config.get("model") or {}
        self.weights: str = manifest["weights"]
        self.files: dict[str, str] = manifest.get("files") or {}
        self.notes: list[str] = []
        self.explicit_base = base
        self.trust_remote_code = bool(self.model_block.get("trust_remote_code", False))

    @classmethod
    def open(cls, directory: Path, *, base: Path | None = None) -> CheckpointSource:
        from fm9g.core.schemas import read_json, validate

        if not directory.is_dir():
            raise Fm9gError("checkpoint directory not found", where=str(directory), fix="check --checkpoint")
        manifest_path = directory / CHECKPOINT_MANIFEST
        if not manifest_path.is_file():
            raise Fm9gError("not a complete checkpoint (no checkpoint.json)", where=str(directory),
                            fix="pass a step-NNNNNNNN directory written by fm9g train")
        manifest = read_json(manifest_path)
        validate(manifest, "checkpoint", str(manifest_path))
        if base is not None and not base.exists():
            raise Fm9gError("base weights not found", where=f"--base {base}", fix="check the path")
        return cls(directory, manifest, base)

    def _file(self, role: str, default: str) -> Path:
        return self.directory / self.files.get(role, default)

    def _resolve(self, raw: str, key: str, *, required: bool = True) -> Path | None:
        """A path from the train config: absolute, or relative to the cwd or the run directories."""
        path = Path(raw)
        candidates = [path] if path.is_absolute() else [
            Path.cwd() / path, self.directory / path, self.directory.parent / path, self.directory.parent.parent / path]
        found = next((candidate for candidate in candidates if candidate.exists()), None)
        if found is None and required:
            raise Fm9gError(f"'{raw}' not found", where=f"{self.directory / CHECKPOINT_MANIFEST}: $.config.{key}",
                            fix="pass the base weights with --base PATH")
        return found

    @property
    def tokenizer_spec(self) -> str | None:
        spec = self.config.get("tokenizer")
        if isinstance(spec, str) and spec.startswith(("hf:", "sp:")):
            found = self._resolve(spec[3:], "tokenizer", required=False)
            spec = f"{spec[:3]}{found}" if found is not None else spec
        return spec

    @property
    def architecture(self) -> str:
        preset = self.model_block.get("preset")
        return f"preset {preset}" if preset and not self.model_block.get("hf_path") else "the checkpoint's config.json"

    def base_hf_dir(self) -> Path | None:
        """The base model's HF directory, when the base is one (reference for tokenizer/generation)."""
        if self.explicit_base is not None:
            return self.explicit_base if self.explicit_base.is_dir() else None
        raw = self.model_block.get("hf_path")
        return self._resolve(raw, "model.hf_path", required=False) if raw else None

    def external_inputs(self) -> list[Path]:
        inputs = [self.explicit_base] if self.explicit_base is not None else []
        for key in ("hf_path", "seed_pt"):
            raw = self.model_block.get(key)
            found = self._resolve(raw, f"model.{key}", required=False) if raw else None
            inputs += [found] if found is not None else []
        return inputs

    def model_config(self):
        from fm9g.backends.presets import preset_config
        from fm9g.backends.seed_checkpoint import load_hf_config

        if (self.directory / "config.json").is_file():
            return load_hf_config(self.directory, trust_remote_code=self.trust_remote_code)
        if self.base_hf_dir() is not None:
            return load_hf_config(self.base_hf_dir(), trust_remote_code=self.trust_remote_code)
        if self.model_block.get("preset"):
            return preset_config(self.model_block["preset"])
        raise Fm9gError("no config.json and no model preset", where=str(self.directory),
                        fix="the checkpoint is incomplete; export a checkpoint written by fm9g train")

    def full_state(self) -> dict[str, Any]:
        from fm9g.backends.seed_checkpoint import SAFETENSORS_INDEX, load_hf_state_dict, read_safetensors

        weights = self._file("weights", "model.safetensors")
        if weights.is_file():
            return read_safetensors(weights)
        if (self.directory / SAFETENSORS_INDEX).is_file():
            return load_hf_state_dict(self.directory)
        raise Fm9gError(f"{weights.name} is missing", where=str(self.directory),
                        fix="the checkpoint is incomplete; pick another step")

    def adapter(self) -> tuple[dict[str, Any], dict[str, Any]]:
        from fm9g.backends.seed_checkpoint import read_safetensors
        from fm9g.core.schemas import read_json

        config_path = self._file("adapter_config", ADAPTER_CONFIG)
        if not config_path.is_file():
            raise Fm9gError(f"{config_path.name} is missing", where=str(self.directory),
                            fix="the LoRA checkpoint is incomplete; pick another step")
        return read_json(config_path), read_safetensors(self._file("adapter", ADAPTER_WEIGHTS))

    def base_state(self) -> dict[str, Any]:
        from fm9g.backends.seed_checkpoint import load_hf_state_dict, load_seed_pt, read_safetensors
        from fm9g.backends.seed_names import seed_to_hf

        base = self.explicit_base
        stored = self._file("base_weights", "base_model.safetensors")
        if base is None and stored.is_file():
            base = stored
        if base is None and self.model_block.get("hf_path"):
            base = self._resolve(self.model_block["hf_path"], "model.hf_path")
        if base is None and self.model_block.get("seed_pt"):
            base = self._resolve(self.model_block["seed_pt"], "model.seed_pt")
        if base is None:
            raise Fm9gError("the LoRA run's base weights are not stored anywhere (a bare preset is randomly "
                            "initialised)", where=str(self.directory / CHECKPOINT_MANIFEST),
                            fix="pass the base weights with --base HF_DIR|seed.pt|weights.safetensors")
        self.notes.append(f"base weights: {base}")
        if base.is_dir():
            return load_hf_state_dict(base)
        if base.suffix == ".safetensors":
            return read_safetensors(base)
        return seed_to_hf(load_seed_pt(base))

    def merged_state(self) -> dict[str, Any]:
        from fm9g.backends.lora_merge import merge_lora_pairs, peft_scale
        from fm9g.backends.seed_names import peft_lora_paths

        if self.weights != "lora":
            raise Fm9gError("not a LoRA checkpoint", where=str(self.directory), fix="drop --merge-lora")
        adapter_config, adapter_state = self.adapter()
        where = str(self._file("adapter", ADAPTER_WEIGHTS))
        pairs = peft_lora_paths(adapter_state, where=where)
        return merge_lora_pairs(self.base_state(), pairs, peft_scale(adapter_config, where=where), where=where)

    def write_adapter(self, stage: Path, fmt: str) -> str:
        """The LoRA adapter unmerged: PEFT's files, or OpenDelta keys + the seed's ``finetune`` block."""
        adapter_config, adapter_state = self.adapter()
        if fmt == "peft":
            hf_dir = self.base_hf_dir()
            if hf_dir is not None:
                adapter_config = {**adapter_config, "base_model_name_or_path": str(hf_dir.resolve())}
            write_json(stage / ADAPTER_CONFIG, adapter_config)
            shutil.copy2(self._file("adapter", ADAPTER_WEIGHTS), stage / ADAPTER_WEIGHTS)
            return "PEFT LoRA adapter"
        from fm9g.backends.lora_merge import LoraHyper
        from fm9g.backends.seed_checkpoint import save_seed_pt
        from fm9g.backends.seed_names import lora_layers_to_seed, lora_peft_to_seed

        where = str(self._file("adapter_config", ADAPTER_CONFIG))
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
            kind = source.write_adapter(stage, fmt)
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
