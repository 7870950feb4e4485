"""Reading and writing weight files (seed ``.pt``, safetensors, HF directories) and building models from them.

Everything here turns library failures into one-line ``Fm9gError``s that name the file and, for
key or shape problems, the parameter:

- :func:`load_seed_pt` loads a seed bmtrain ``.pt`` with ``weights_only=True`` (a file holding other
  Python objects is refused) and checks it is a flat ``{name: tensor}`` dict.
- :func:`read_safetensors` / :func:`load_hf_state_dict` read one file or a (sharded) HF directory;
  truncated or corrupt files are reported, not crashed on.
- :func:`materialize_model` builds a transformers model on the meta device and assigns the given
  tensors (no random init, no double memory), after checking every key and shape.
- :func:`load_seed_pt_into_model` is the trainer's entry point: seed ``.pt`` + config -> model.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fm9g.core.errors import Fm9gError

if TYPE_CHECKING:
    import torch

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN_FILE = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
MAX_LISTED = 5


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` memory-mapped when the file allows it, with clear errors."""
    import torch

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
            f"(weights_only=True load failed: {_first_line(error)})",
            where=str(path),
            fix="save a plain {name: tensor} dict, e.g. torch.save(model.state_dict(), path)",
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as error:
        raise Fm9gError(
            f"not a readable torch checkpoint ({_first_line(error)})",
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
    return _require_tensor_dict(_torch_load(path), path)


def save_seed_pt(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``torch.save`` a flat state dict to a temporary file beside ``path``, then rename it into place."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        torch.save({name: tensor.contiguous() for name, tensor in state_dict.items()}, temp_name)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


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
            f"cannot read safetensors file ({_first_line(error)})",
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
        return _require_tensor_dict(_torch_load(directory / TORCH_BIN_FILE), directory / TORCH_BIN_FILE)
    if (directory / TORCH_BIN_INDEX).is_file():
        state = {}
        for shard in _read_index(directory / TORCH_BIN_INDEX):
            state.update(_require_tensor_dict(_torch_load(shard), shard))
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
        raise Fm9gError(f"cannot load config.json ({_first_line(error)})", where=str(source), fix=fix) from None


def meta_model(config, *, trust_remote_code: bool = False):
    """The causal-LM for ``config`` with every tensor on the meta device (costs no memory, no init)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def _tied_duplicates(model) -> set[str]:
    """State-dict names that share their tensor with an earlier name (e.g. a tied ``lm_head.weight``)."""
    seen: dict[int, str] = {}
    duplicates: set[str] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            duplicates.add(name)
        else:
            seen[id(tensor)] = name
    return duplicates


def _listing(names: list[str], display: Callable[[str], str]) -> str:
    shown = ", ".join(f"'{display(name)}'" for name in names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    model,
    *,
    where: str,
    display: Callable[[str], str] = lambda name: name,
    architecture: str = "the model",
) -> None:
    """Raise ``Fm9gError`` naming the key for any missing, unexpected or wrongly shaped tensor.

    ``display`` maps an HF name back to the name the user's file uses (e.g. the seed's)."""
    expected = model.state_dict()
    optional = _tied_duplicates(model)
    fix = "check that --preset/--config describes the model this checkpoint was trained as"
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected:
        raise Fm9gError(f"unexpected key(s) for {architecture}: {_listing(unexpected, display)}",
                        where=where, fix=fix)
    for name, tensor in state_dict.items():
        want = tuple(expected[name].shape)
        if tuple(tensor.shape) != want:
            raise Fm9gError(
                f"'{display(name)}' has shape {tuple(tensor.shape)} but {architecture} expects {want}",
                where=where,
                fix=fix,
            )
    missing = sorted(set(expected) - set(state_dict) - optional)
    if missing:
        raise Fm9gError(f"missing key(s) for {architecture}: {_listing(missing, display)}", where=where, fix=fix)


def _materialize_meta_buffers(model) -> None:
    """Give non-persistent buffers left on the meta device (rotary ``inv_freq``) their real values.

    They are not in any state dict; transformers computes them in the owning module's init, which
    ``_init_weights`` re-runs for exactly those modules."""
    import torch

    owners = []
    for module in model.modules():
        names = [name for name, buffer in module.named_buffers(recurse=False) if buffer is not None and buffer.is_meta]
        for name in names:
            buffer = getattr(module, name)
            persistent = name not in module._non_persistent_buffers_set
            module.register_buffer(name, torch.empty_like(buffer, device="cpu"), persistent=persistent)
        if names:
            owners.append(module)
    with torch.no_grad():
        for module in owners:
            model._init_weights(module)
    leftover = [name for name, tensor in model.state_dict(keep_vars=True).items() if tensor.is_meta]
    if leftover:
        raise Fm9gError(f"tensors left uninitialized: {leftover[:MAX_LISTED]}", where="model construction",
                        fix="this architecture is not supported by fm9g's converters")


def materialize_model(
    config,
    state_dict: Mapping[str, torch.Tensor],
    *,
    where: str,
    display: Callable[[str], str] = lambda name: name,
    architecture: str | None = None,
    trust_remote_code: bool = False,
):
    """A model for ``config`` holding exactly ``state_dict``'s tensors (their dtype; checked first).

    Built on the meta device, then ``load_state_dict(assign=True)``, so a 7B preset costs no random
    init and no second copy of the weights."""
    model = meta_model(config, trust_remote_code=trust_remote_code)
    architecture = architecture or f"{type(model).__name__} config"
    check_state_dict(state_dict, model, where=where, display=display, architecture=architecture)
    tied = _tied_duplicates(model)
    model.load_state_dict(dict(state_dict), strict=False, assign=True)
    if tied:
        model.tie_weights()
    _materialize_meta_buffers(model)
    dtypes = {tensor.dtype for tensor in state_dict.values() if tensor.is_floating_point()}
    if len(dtypes) == 1:
        model.config.dtype = dtypes.pop()
    return model.eval()


def load_seed_pt_into_model(path: str | os.PathLike, config):
    """A seed bmtrain ``.pt`` as a ready transformers model for ``config`` (e.g. ``preset_config("fm9g-7b")``).

    Names map per FACTS.md; missing/unexpected keys and shape mismatches name the seed key."""
    from fm9g.backends.seed_names import hf_name_to_seed, seed_to_hf

    seed_state = load_seed_pt(path)
    return materialize_model(config, seed_to_hf(seed_state), where=str(path), display=hf_name_to_seed)


def convert_pt_to_hf(
    input_pt: str | os.PathLike,
    output: str | os.PathLike,
    *,
    preset: str | None = None,
    config_dir: str | os.PathLike | None = None,
    lora_ckpt: str | os.PathLike | None = None,
    lora_config: str | os.PathLike | None = None,
    tokenizer: str | None = None,
    force: bool = False,
    max_shard_size: str | int = "5GB",
    dtype: str = "keep",
    trust_remote_code: bool = False,
):
    """A seed ``.pt`` (optionally with a seed LoRA folded in) -> an HF directory.

    The architecture comes from ``preset`` or from ``config_dir``'s config.json; ``config_dir`` is
    also the reference for tokenizer files and generation_config.json (never for weights or shard
    indexes). Returns an :class:`fm9g.backends.export.ExportReport`."""
    from fm9g.backends.export import (ExportReport, cast_state, check_output_free, copy_remote_code,
                                      refuse_nested, save_model_dir, staged_directory)
    from fm9g.backends.export_tokenizer import write_tokenizer
    from fm9g.backends.lora_merge import merge_seed_lora_file
    from fm9g.backends.presets import preset_config
    from fm9g.backends.seed_names import hf_name_to_seed, seed_to_hf

    if (preset is None) == (config_dir is None):
        raise Fm9gError("give exactly one of --preset and --config", where="fm9g convert pt2hf",
                        fix="e.g. --preset fm9g-7b, or --config DIR holding the model's config.json")
    if (lora_ckpt is None) != (lora_config is None):
        raise Fm9gError("--lora-ckpt and --lora-config go together", where="fm9g convert pt2hf",
                        fix="pass the LoRA checkpoint and the train config it was trained with")
    input_pt, output = Path(input_pt), Path(output)
    reference = Path(config_dir) if config_dir is not None else None
    refuse_nested(output, [p for p in (input_pt, reference, lora_ckpt and Path(lora_ckpt)) if p is not None])
    check_output_free(output, force)
    config = preset_config(preset) if preset else load_hf_config(reference, trust_remote_code=trust_remote_code)
    architecture = f"preset {preset}" if preset else f"{reference}/config.json"
    seed_state = load_seed_pt(input_pt)
    notes = []
    if lora_ckpt is not None:
        seed_state = merge_seed_lora_file(seed_state, lora_ckpt, lora_config, naming="seed")
        notes.append(f"merged LoRA {lora_ckpt} (r/alpha from {lora_config})")
    state = cast_state(seed_to_hf(seed_state), dtype)
    model = materialize_model(config, state, where=str(input_pt), display=hf_name_to_seed, architecture=architecture,
                              trust_remote_code=trust_remote_code)
    with staged_directory(output, force=force) as stage:
        note, special_ids = write_tokenizer(tokenizer, stage, fallback_dir=reference)
        save_model_dir(model, stage, max_shard_size=max_shard_size, special_ids=special_ids, reference_dir=reference)
        copy_remote_code(config, reference, stage)
    return ExportReport(output=output, kind="HF model", notes=[note, *notes])


def convert_hf_to_pt(
    input_dir: str | os.PathLike,
    output_pt: str | os.PathLike,
    *,
    force: bool = False,
    dtype: str = "keep",
    trust_remote_code: bool = False,
):
    """An HF directory -> a seed ``.pt`` (``{seed name: tensor}``), checked against its config.json first."""
    from fm9g.backends.export import ExportReport, cast_state, check_output_free, refuse_nested
    from fm9g.backends.seed_names import hf_to_seed

    input_dir, output_pt = Path(input_dir), Path(output_pt)
    refuse_nested(output_pt, [input_dir])
    if output_pt.is_dir():
        raise Fm9gError("output is a directory", where=str(output_pt), fix="give a file name such as 7b.pt")
    check_output_free(output_pt, force)
    config = load_hf_config(input_dir, trust_remote_code=trust_remote_code)
    state = load_hf_state_dict(input_dir)
    check_state_dict(state, meta_model(config, trust_remote_code=trust_remote_code), where=str(input_dir),
                     architecture=f"{input_dir}/config.json")
    save_seed_pt(hf_to_seed(cast_state(state, dtype)), output_pt)
    return ExportReport(output=output_pt, kind="seed .pt", notes=[f"{len(state)} tensors"])
