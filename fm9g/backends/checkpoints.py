"""Training checkpoints (contract 3): ``<save>/step-<N:08d>/``, written atomically.

Everything goes into a temporary sibling directory first; ``checkpoint.json`` is written last,
then the directory is renamed into place. A directory without a valid ``checkpoint.json`` is
therefore never a checkpoint, and ``--resume auto`` takes the latest complete one.

Files: ``checkpoint.json`` (schemas/checkpoint.schema.json), ``config.json`` (HF config),
``model.safetensors`` (full weights, float32, HF names) or ``adapter_model.safetensors`` +
``adapter_config.json`` (LoRA, PEFT format), ``optimizer.pt``, ``scheduler.json``, ``rng.pt``,
``stream_state.json``; for a LoRA run on a bare preset (random base weights, reproducible from no
file) also ``base_model.safetensors``, the base weights as trained (float32, HF names; one file
written per run and hard-linked into every checkpoint), so that ``fm9g export --merge-lora`` and
resume on another device need nothing else. Tensors load with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fm9g import __version__
from fm9g.core.errors import Fm9gError
from fm9g.core.schemas import schema_problems

FORMAT_VERSION = 1
MANIFEST = "checkpoint.json"
BASE_WEIGHTS = "base_model.safetensors"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a resolved train config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _write_json(path: Path, document: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(save_dir: str | Path, *, step: int, tokens_seen: int, config: dict[str, Any],
                    weights: str, write_weights: Callable[[Path], dict[str, str]],
                    optimizer_state: dict[str, Any], scheduler_state: dict[str, Any],
                    rng_state: dict[str, Any], stream_state: dict[str, Any],
                    hf_config: Any | None = None, backend: str = "torch",
                    base_weights: Path | None = None) -> Path:
    """Write checkpoint ``step`` atomically and return its directory.

    ``write_weights(directory)`` writes the weight files and returns ``{role: file name}``.
    ``base_weights`` (a LoRA run's stored base, see :func:`store_base_weights`) is linked in as
    ``base_model.safetensors``. An existing checkpoint of the same step is replaced only after the
    new one is complete.
    """
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    final = save_dir / step_dir_name(step)
    temp = save_dir / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    files = dict(write_weights(temp))
    if base_weights is not None:
        _link_or_copy(Path(base_weights), temp / BASE_WEIGHTS)
        files["base_weights"] = BASE_WEIGHTS
    if hf_config is not None:
        hf_config.to_json_file(temp / "config.json")
        files["hf_config"] = "config.json"
    torch.save(optimizer_state, temp / "optimizer.pt")
    torch.save(rng_state, temp / "rng.pt")
    _write_json(temp / "scheduler.json", scheduler_state)
    _write_json(temp / "stream_state.json", stream_state)
    files.update(optimizer="optimizer.pt", rng="rng.pt", scheduler="scheduler.json", stream_state="stream_state.json")
    for name in files.values():
        with open(temp / name, "rb") as handle:
            os.fsync(handle.fileno())
    manifest = {"format_version": FORMAT_VERSION, "step": step, "tokens_seen": int(tokens_seen),
                "config_hash": config_hash(config), "config": config, "backend": backend,
                "weights": weights, "files": files, "fm9g_version": __version__}
    _write_json(temp / MANIFEST, manifest)
    _fsync_dir(temp)
    if final.exists():
        trash = save_dir / f".old-{step_dir_name(step)}-{os.getpid()}"
        os.rename(final, trash)
        os.rename(temp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(temp, final)
    _fsync_dir(save_dir)
    return final


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no extra disk for a file every checkpoint shares), or a copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def start_run(save_dir: str | Path, resume: str | Path | None, *, is_main: bool) -> dict[str, Any] | None:
    """What every backend checks before training: the manifest of the resume point (or ``None``), a
    save directory without checkpoints when starting fresh, and no temporaries of killed runs."""
    save_dir = Path(save_dir)
    manifest = read_manifest(resume) if resume else None
    if manifest is None and latest_checkpoint(save_dir) is not None:
        raise Fm9gError("the save directory already holds checkpoints", where=str(save_dir),
                        fix="resume with --resume auto, or choose another 'save' directory")
    if is_main:
        remove_stale_temporaries(save_dir)
    return manifest


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The validated ``checkpoint.json`` of a checkpoint directory; a clear error if incomplete."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise Fm9gError("not a complete checkpoint (no checkpoint.json)", where=str(directory),
                        fix="pass a step-NNNNNNNN directory written by fm9g train, or --resume auto")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise Fm9gError(f"unreadable checkpoint manifest: {error}", where=str(path)) from None
    problems = schema_problems(manifest, "checkpoint")
    if problems:
        raise Fm9gError(f"invalid checkpoint manifest: {problems[0]}", where=str(path))
    missing = [name for name in manifest.get("files", {}).values() if not (directory / name).is_file()]
    if missing:
        raise Fm9gError(f"checkpoint is missing {', '.join(missing)}", where=str(directory))
    return manifest


def latest_checkpoint(save_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under ``save_dir`` (``None`` if there is none)."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return None
    candidates = sorted(
        (int(match.group(1)), path) for path in save_dir.iterdir()
        if path.is_dir() and (match := _STEP_DIR.match(path.name))
    )
    for _, path in reversed(candidates):
        try:
            read_manifest(path)
        except Fm9gError:
            continue
        return path
    return None


def remove_stale_temporaries(save_dir: str | Path) -> None:
    """Delete temporary checkpoint directories a killed process left behind."""
    save_dir = Path(save_dir)
    if save_dir.is_dir():
        for path in save_dir.glob(".tmp-step-*"):
            shutil.rmtree(path, ignore_errors=True)
        for path in save_dir.glob(f".tmp-{BASE_WEIGHTS}-*"):
            path.unlink(missing_ok=True)


def read_state_json(directory: str | Path, name: str) -> Any:
    """A JSON file of a checkpoint directory (``stream_state.json``, ``scheduler.json``)."""
    return json.loads((Path(directory) / name).read_text(encoding="utf-8"))


def load_tensors(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_full_weights(state: dict[str, torch.Tensor], directory: Path) -> dict[str, str]:
    """Every parameter as float32 in ``model.safetensors`` (shared storage is copied, as safetensors needs)."""
    from safetensors.torch import save_file

    save_file(float32_tensors(state), str(directory / "model.safetensors"), metadata={"format": "pt"})
    return {"weights": "model.safetensors"}


def float32_tensors(state: dict[str, torch.Tensor], round_to: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Contiguous float32 CPU copies (through ``round_to`` first) of a state dict's floating tensors;
    tensors sharing storage (tied embeddings) become separate, as safetensors needs."""
    seen: set[int] = set()
    tensors = {}
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu")
        if tensor.is_floating_point():
            tensor = tensor.to(round_to).to(torch.float32)
        tensor = tensor.contiguous()
        if tensor.data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.data_ptr())
        tensors[name] = tensor
    return tensors


def stores_base_weights(config: dict[str, Any]) -> bool:
    """A LoRA run whose base weights no file reproduces: a preset without ``seed_pt`` (random init)."""
    model = config["model"]
    return bool(config.get("delta")) and not model.get("hf_path") and not model.get("seed_pt")


def store_base_weights(state: dict[str, torch.Tensor], save_dir: str | Path,
                       dtype: torch.dtype = torch.float32) -> Path:
    """Write a LoRA run's base weights once, as ``<save>/base_model.safetensors`` (float32, rounded
    through ``dtype`` first: the precision the frozen base trains in), atomically; return the path."""
    from safetensors.torch import save_file

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    final = save_dir / BASE_WEIGHTS
    temp = save_dir / f".tmp-{BASE_WEIGHTS}-{os.getpid()}"
    save_file(float32_tensors(state, round_to=dtype), str(temp), metadata={"format": "pt"})
    os.replace(temp, final)
    return final


def base_weights_of(directory: str | Path, manifest: dict[str, Any]) -> Path | None:
    """The stored base weights of a checkpoint (``None`` when it has none)."""
    name = manifest.get("files", {}).get("base_weights")
    return Path(directory) / name if name else None


def load_full_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "model.safetensors"))


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states, as tensors ``weights_only`` can load."""
    version, words, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(directory: str | Path, *, rank: int, world_size: int) -> None:
    """This rank's generator states from ``rng.pt``; with another world size than the checkpoint's,
    fresh ones from the run's seed (as at a start)."""
    rng = load_tensors(Path(directory) / "rng.pt")
    ranks = rng.get("ranks", [rng])
    if len(ranks) == world_size:
        restore_rng_state(ranks[rank])
    else:
        torch.manual_seed(int(rng.get("seed", 0)) + rank)


def restore_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(int(w) for w in python["words"].tolist()), python["gauss"]))
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
