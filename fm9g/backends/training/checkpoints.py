"""Training checkpoints: ``<save>/step-<N:08d>/``, written atomically, with every file name defined here.

A checkpoint is assembled in a temporary sibling directory (:func:`fm9g.core.atomic.atomic_directory`)
and renamed into place; ``checkpoint.json`` is written last, so a directory without a valid one is
never a checkpoint and ``--resume auto`` takes the latest complete one. Files that several ranks
write (the bmtrain backend's per-rank optimizer slices) are first written into a staging directory
all ranks share (:func:`rank_staging`), then moved in by rank 0.

Files (the manifest's ``files`` maps each role to its name): ``checkpoint.json`` (the manifest:
step, tokens seen, the train config and its hash, backend, weights kind), ``config.json`` (HF
config), ``model.safetensors`` (full weights, float32, HF names) or the LoRA adapter (PEFT format,
written by the delta engine), ``optimizer.pt``, ``scheduler.json``, ``rng.pt``, ``stream_state.json``;
for a LoRA run on a bare preset (random base weights, reproducible from no file) also
``base_model.safetensors``, the base weights as trained (one file per run, hard-linked into every
checkpoint), so that ``fm9g export --merge-lora`` and resume on another device need nothing else.
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
from fm9g.backends.weights.files import load_weights_only
from fm9g.core.atomic import TMP_MARK, atomic_directory, atomic_path, write_json_atomic
from fm9g.core.errors import Fm9gError
from fm9g.core.schemas import schema_problems

FORMAT_VERSION = 1
MANIFEST = "checkpoint.json"
HF_CONFIG = "config.json"
FULL_WEIGHTS = "model.safetensors"
BASE_WEIGHTS = "base_model.safetensors"
OPTIMIZER = "optimizer.pt"
RNG = "rng.pt"
SCHEDULER = "scheduler.json"
STREAM_STATE = "stream_state.json"
LOCK = ".fm9g-train.lock"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")
_RANK_STAGING = ".ranks-"
_DELETING = ".deleting-"
HASHED_BYTES = 64 * 2**20
"""Files up to this size get a sha256 in the manifest (state, RNG, configs); larger ones (weights,
optimizer state) their size, which catches truncation without reading gigabytes at every resume."""


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def optimizer_rank_file(rank: int) -> str:
    """The file holding one rank's optimizer slices (the bmtrain backend's partitioned state)."""
    return f"optimizer.rank-{rank}.pt"


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a resolved train config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def rank_staging(save_dir: str | Path, step: int) -> Path:
    """The directory every rank writes its own checkpoint files into before rank 0 assembles the checkpoint."""
    return Path(save_dir) / f"{_RANK_STAGING}{step_dir_name(step)}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(save_dir: str | Path, *, step: int, tokens_seen: int, config: dict[str, Any], backend: str,
                     weights: str, write_files: Callable[[Path], dict[str, str]],
                     evaluation: dict[str, Any] | None = None) -> Path:
    """Write checkpoint ``step`` atomically and return its directory.

    ``evaluation``: the held-out evaluation of these weights (recorded in the manifest).

    ``write_files(directory)`` writes every file but the manifest into the temporary directory and
    returns ``{role: file name}``; the files are synced, the manifest written last, and the
    directory renamed into place. An existing checkpoint of the same step is replaced only once
    the new one is complete.
    """
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    with atomic_directory(save_dir / step_dir_name(step), replace=True) as temp:
        files = write_files(temp)
        for name in files.values():
            _fsync(temp / name)
        manifest = {"format_version": FORMAT_VERSION, "step": step, "tokens_seen": int(tokens_seen),
                    "config_hash": config_hash(config), "config": config, "backend": backend,
                    "weights": weights, "files": files, "checksums": {name: _checksum(temp / name)
                                                                      for name in files.values()},
                    "fm9g_version": __version__}
        if evaluation is not None:
            manifest["evaluation"] = evaluation
        write_json_atomic(temp / MANIFEST, manifest)
        _fsync(temp)
    _fsync(save_dir)
    return save_dir / step_dir_name(step)


def write_training_state(directory: Path, *, optimizer: Any, rng: dict[str, Any], scheduler: dict[str, Any],
                         stream: dict[str, Any], hf_config: Any, base_weights: Path | None) -> dict[str, str]:
    """The files every checkpoint holds besides the weights; returns ``{role: file name}``.

    ``optimizer`` and ``rng`` are ``torch.save``d (tensors only, so ``weights_only`` loads them);
    ``base_weights`` (a LoRA run's stored base, :func:`store_base_weights`) is hard-linked in."""
    torch.save(optimizer, directory / OPTIMIZER)
    torch.save(rng, directory / RNG)
    write_json_atomic(directory / SCHEDULER, scheduler)
    write_json_atomic(directory / STREAM_STATE, stream)
    hf_config.to_json_file(directory / HF_CONFIG)
    files = {"optimizer": OPTIMIZER, "rng": RNG, "scheduler": SCHEDULER, "stream_state": STREAM_STATE,
             "hf_config": HF_CONFIG}
    if base_weights is not None:
        _link_or_copy(base_weights, directory / BASE_WEIGHTS)
        files["base_weights"] = BASE_WEIGHTS
    return files


def _checksum(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    if size > HASHED_BYTES:
        return {"bytes": size}
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": size, "sha256": digest.hexdigest()}


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no extra disk for a file every checkpoint shares), or a copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


class SaveDirLock:
    """An exclusive lock on a save directory for the life of a run (rank 0 holds it), so a second
    run into the same directory is refused instead of interleaving its checkpoints and logs. The
    kernel releases it when the process dies, so a killed run leaves no stale lock."""

    def __init__(self, save_dir: str | Path):
        import fcntl

        path = Path(save_dir) / LOCK
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise Fm9gError(f"another fm9g train (pid {holder}) is writing into this save directory",
                            where=str(save_dir), fix="wait for it to finish, or choose another 'save'") from None
        self.handle.truncate(0)
        self.handle.write(f"{os.getpid()}\n")
        self.handle.flush()

    def release(self) -> None:
        self.handle.close()


def check_save_dir(save_dir: str | Path, resuming: bool, *, is_main: bool) -> None:
    """A fresh run needs a save directory without checkpoints; temporaries of killed runs are removed."""
    save_dir = Path(save_dir)
    if not resuming and latest_checkpoint(save_dir) is not None:
        raise Fm9gError("the save directory already holds checkpoints", where=str(save_dir),
                        fix="resume with --resume auto, or choose another 'save' directory")
    if is_main:
        remove_stale_temporaries(save_dir)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The validated ``checkpoint.json`` of a checkpoint directory; a clear error if incomplete."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise Fm9gError(f"not a complete checkpoint (no {MANIFEST})", where=str(directory),
                        fix="pass a step-NNNNNNNN directory written by fm9g train")
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
    for name, recorded in manifest.get("checksums", {}).items():  # every file is present (checked above)
        if _checksum(directory / name) != recorded:
            raise Fm9gError(f"{name} is corrupt: its size or checksum differs from the manifest's",
                            where=str(directory / name), fix="resume from another checkpoint (--resume auto skips it)")
    return manifest


def latest_checkpoint(save_dir: str | Path, skipped: list[str] | None = None, *,
                      resumable: bool = False) -> Path | None:
    """The complete, intact checkpoint with the highest step under ``save_dir`` (``None`` if there is
    none); each newer one passed over for being incomplete or corrupt (or, with ``resumable``,
    without optimizer state) is described in ``skipped``."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return None
    for path in reversed(_step_dirs(save_dir)):
        try:
            manifest = read_manifest(path)
        except Fm9gError as error:
            if skipped is not None:
                skipped.append(str(error))
            continue
        if resumable and manifest.get("optimizer") == "dropped":
            if skipped is not None:
                skipped.append(f"{path}: its optimizer state was dropped (save_optimizer: latest)")
            continue
        return path
    return None


def remove_stale_temporaries(save_dir: str | Path) -> None:
    """Delete what killed runs left behind: half-assembled checkpoints, rank staging, base-weight temps."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return
    for pattern in (f".step-*{TMP_MARK}*", f"{_RANK_STAGING}step-*", f".{BASE_WEIGHTS}{TMP_MARK}*", f"{_DELETING}step-*"):
        for path in save_dir.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def checkpoint_metric(manifest: dict[str, Any], metric: str) -> float | None:
    """A checkpoint's held-out ``metric`` (``loss``, ``weighted_loss`` or a task name: that task's
    loss), or ``None`` when its step was not evaluated."""
    evaluation = manifest.get("evaluation")
    if not isinstance(evaluation, dict):
        return None
    value = evaluation.get(metric) if metric in ("loss", "weighted_loss") else \
        (evaluation.get("tasks", {}).get(metric) or {}).get("loss")
    return float(value) if isinstance(value, (int, float)) else None


def _step_dirs(save_dir: Path) -> list[Path]:
    """The ``step-*`` directories under ``save_dir``, by step."""
    steps = {}
    for path in save_dir.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir():
            steps[int(match.group(1))] = path
    return [steps[step] for step in sorted(steps)]


def prune_checkpoints(save_dir: str | Path, keep: int, *, keep_best: int = 0, best_metric: str = "loss") -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints and the ``keep_best`` ones with the lowest
    held-out ``best_metric``; return the deleted directories.

    The newest intact checkpoint that can resume (what ``--resume auto`` takes) is always kept,
    whatever its rank among the step directories. Each one goes by a rename to a hidden name first,
    so a crash during the deletion leaves either the whole checkpoint or a hidden leftover that the
    next run removes — never a ``step-*`` directory missing files."""
    save_dir = Path(save_dir)
    steps = _step_dirs(save_dir)
    kept = set(steps[-keep:]) | {latest_checkpoint(save_dir, resumable=True)}
    if keep_best:
        scored = []
        for path in steps:
            try:
                value = checkpoint_metric(read_manifest(path), best_metric)
            except Fm9gError:
                continue
            if value is not None:
                scored.append((value, path))
        kept |= {path for _, path in sorted(scored)[:keep_best]}
    deleted = []
    for path in steps:
        if path in kept:
            continue
        hidden = path.with_name(f"{_DELETING}{path.name}")
        os.rename(path, hidden)
        shutil.rmtree(hidden, ignore_errors=True)
        deleted.append(path)
    return deleted


def drop_optimizer_state(save_dir: str | Path, *, keep: Path) -> list[Path]:
    """Remove the optimizer state from every checkpoint under ``save_dir`` but ``keep`` (the newest);
    return the checkpoints changed. They stay complete for ``fm9g eval``/``export`` and record
    ``"optimizer": "dropped"``, which ``--resume`` refuses and ``--resume auto`` passes over. The
    manifest is rewritten (atomically) before the files go, so a crash in between leaves only
    unlisted files behind, never a manifest naming a missing file."""
    changed = []
    for path in _step_dirs(Path(save_dir)):
        if path == keep:
            continue
        try:
            manifest = read_manifest(path)
        except Fm9gError:
            continue
        roles = [role for role in manifest.get("files", {}) if role.startswith("optimizer")]
        if not roles:
            continue
        names = [manifest["files"].pop(role) for role in roles]
        for name in names:
            manifest.get("checksums", {}).pop(name, None)
        manifest["optimizer"] = "dropped"
        write_json_atomic(path / MANIFEST, manifest)
        for name in names:
            (path / name).unlink(missing_ok=True)
        changed.append(path)
    return changed


def read_json_file(path: str | Path) -> Any:
    """A JSON file of a checkpoint directory (``stream_state.json``, ``scheduler.json``)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_full_weights(state: dict[str, torch.Tensor], directory: Path) -> dict[str, str]:
    """Every parameter as float32 in ``model.safetensors`` (shared storage is copied, as safetensors needs)."""
    from safetensors.torch import save_file

    save_file(float32_tensors(state), str(directory / FULL_WEIGHTS), metadata={"format": "pt"})
    return {"weights": FULL_WEIGHTS}


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
    return bool(config["delta"]) and not model.get("hf_path") and not model.get("seed_pt")


def store_base_weights(state: dict[str, torch.Tensor], save_dir: str | Path,
                       dtype: torch.dtype = torch.float32) -> Path:
    """Write a LoRA run's base weights once, as ``<save>/base_model.safetensors`` (float32, rounded
    through ``dtype`` first: the precision the frozen base trains in), atomically; return the path."""
    from safetensors.torch import save_file

    final = Path(save_dir) / BASE_WEIGHTS
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(final) as temp:
        save_file(float32_tensors(state, round_to=dtype), str(temp), metadata={"format": "pt"})
    return final


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


def restore_rng(path: str | Path, *, rank: int, world_size: int) -> None:
    """This rank's generator states from a checkpoint's ``rng.pt``; with another world size than the
    checkpoint's, fresh ones from the run's seed (as at a start)."""
    rng = load_weights_only(path)
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
