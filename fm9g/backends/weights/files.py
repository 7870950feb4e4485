"""Weight files: seed ``.pt``, safetensors and Hugging Face directories, read and written with clear errors.

Every library failure becomes one ``Fm9gError`` naming the file, so a user sees "truncated",
"holds Python objects" or "no weights found" instead of a traceback:

- :func:`load_weights_only` is the one ``torch.load`` in fm9g: ``weights_only=True`` (a file that
  holds Python objects other than tensors is refused, since unpickling it would run its code),
  memory-mapped when the file allows it;
- :func:`load_seed_pt` / :func:`save_seed_pt`: the seed's flat ``{name: tensor}`` ``.pt`` files;
- :func:`read_safetensors` / :func:`load_hf_state_dict` / :func:`load_hf_config`: one safetensors
  file, or an HF directory (one file or sharded; ``pytorch_model.bin`` as a fallback).
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fm9g.core.atomic import atomic_file
from fm9g.core.errors import Fm9gError

if TYPE_CHECKING:
    import torch

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN_FILE = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (library errors can run to many lines)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_weights_only(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, memory-mapped when the file allows it.

    A file holding Python objects other than tensors and plain containers is refused (loading it
    would execute code from the file); a truncated or corrupt file is a clear error."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise Fm9gError("file not found", where=str(path), fix="check the path")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise Fm9gError(
            "refused: the file holds Python objects other than tensors "
            f"(weights_only=True load failed: {first_line(error)})",
            where=str(path),
            fix="save a plain {name: tensor} dict, e.g. torch.save(model.state_dict(), path)",
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as error:
        raise Fm9gError(
            f"not a readable torch checkpoint ({first_line(error)})",
            where=str(path),
            fix="the file is truncated or corrupt; copy or save it again",
        ) from None


def _require_tensor_dict(loaded: Any, path: Path, *, allow_empty: bool = False) -> dict[str, torch.Tensor]:
    import torch

    if not isinstance(loaded, Mapping):
        raise Fm9gError(
            f"expected a {{name: tensor}} dict, found {type(loaded).__name__}",
            where=str(path),
            fix="save a plain state dict with torch.save(model.state_dict(), path)",
        )
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise Fm9gError(
                f"entry '{key}' holds a {type(value).__name__}, not a tensor",
                where=str(path),
                fix="the file must be a flat {name: tensor} dict (no nested optimizer or step entries)",
            )
    if not loaded and not allow_empty:
        raise Fm9gError("the file holds no tensors", where=str(path), fix="pass a model checkpoint")
    return dict(loaded)


def load_seed_pt(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A seed bmtrain ``.pt`` (``{seed name: tensor}``), loaded with ``weights_only=True``."""
    path = Path(path)
    return _require_tensor_dict(load_weights_only(path), path)


def save_seed_pt(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``torch.save`` a flat state dict, atomically (a temporary file beside ``path``, then renamed)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as handle:
        torch.save({name: tensor.contiguous() for name, tensor in state_dict.items()}, handle)


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor in one safetensors file; a truncated or corrupt file is a clear error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise Fm9gError("file not found", where=str(path), fix="check the path")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise Fm9gError(
            f"cannot read safetensors file ({first_line(error)})",
            where=str(path),
            fix="the file is truncated or corrupt; copy or export it again",
        ) from None


def _read_index(index_path: Path) -> list[Path]:
    from fm9g.core.schemas import read_json

    index = read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise Fm9gError("no 'weight_map' in the shard index", where=str(index_path),
                        fix="the index is corrupt; re-save the model")
    return [index_path.parent / name for name in sorted(set(weight_map.values()))]


def load_hf_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of an HF model directory: one or sharded safetensors, else ``pytorch_model.bin``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise Fm9gError("not a directory", where=str(directory), fix="pass a Hugging Face model directory")
    if (directory / SAFETENSORS_FILE).is_file():
        return read_safetensors(directory / SAFETENSORS_FILE)
    if (directory / SAFETENSORS_INDEX).is_file():
        state: dict[str, torch.Tensor] = {}
        for shard in _read_index(directory / SAFETENSORS_INDEX):
            state.update(read_safetensors(shard))
        return state
    if (directory / TORCH_BIN_FILE).is_file():
        return _require_tensor_dict(load_weights_only(directory / TORCH_BIN_FILE), directory / TORCH_BIN_FILE)
    if (directory / TORCH_BIN_INDEX).is_file():
        state = {}
        for shard in _read_index(directory / TORCH_BIN_INDEX):
            state.update(_require_tensor_dict(load_weights_only(shard), shard))
        return state
    raise Fm9gError(
        f"no weights found (looked for {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, {TORCH_BIN_FILE})",
        where=str(directory),
        fix="pass a directory written by save_pretrained",
    )


def load_hf_config(source: str | os.PathLike, *, trust_remote_code: bool = False):
    """``AutoConfig`` of an HF directory (its ``config.json``), with a clear error when it cannot load."""
    from transformers import AutoConfig

    source = Path(source)
    if not (source / "config.json").is_file():
        raise Fm9gError("no config.json", where=str(source), fix="pass a Hugging Face model directory")
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as error:
        fix = ("it needs the model's own code: pass --trust-remote-code if you trust it, or use a preset"
               if "trust_remote_code" in str(error) or "model type" in str(error) else "fix or replace config.json")
        raise Fm9gError(f"cannot load config.json ({first_line(error)})", where=str(source), fix=fix) from None


