"""Where a run continues from: one checkpoint, read once, handing each component its part.

``fm9g train --resume DIR|auto`` finds the checkpoint (:meth:`ResumePoint.find`), which reads and
validates its manifest; the run sequence then asks it for what each component restores — the
stream state for the data, the stored base weights and the trained weights (or adapter) for the
model, the optimizer state, the RNG states — instead of each component opening the directory
itself, as torchtune's recipes and torchtitan's checkpointer do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fm9g.backends.models.build import load_into
from fm9g.backends.training import checkpoints
from fm9g.backends.training.optimizer_state import SavedOptimizer, is_partitioned
from fm9g.backends.weights.files import load_weights_only, read_safetensors
from fm9g.core.errors import Fm9gError


class ResumePoint:
    """A complete checkpoint directory and its validated manifest."""

    def __init__(self, directory: Path, manifest: dict[str, Any]):
        self.directory = directory
        self.manifest = manifest
        self._optimizer_header: Any = None

    @classmethod
    def open(cls, directory: str | Path) -> ResumePoint:
        """The checkpoint at ``directory``; an incomplete or invalid one is a clear error."""
        directory = Path(directory)
        manifest = checkpoints.read_manifest(directory)
        if manifest.get("optimizer") == "dropped":
            raise Fm9gError("this checkpoint's optimizer state was dropped (save_optimizer: latest), so it cannot "
                            "continue its run exactly", where=str(directory),
                            fix="resume the run's newest checkpoint, or export this one and train from it (model.hf_path)")
        return cls(directory, manifest)

    @classmethod
    def find(cls, resume: str | Path | None, save_dir: str | Path,
             warn: Callable[[str], None] | None = None) -> ResumePoint | None:
        """``--resume``: ``None`` (start fresh), ``auto`` (the latest intact checkpoint under
        ``save_dir``, or ``None`` when there is none; each newer one that is incomplete or corrupt is
        passed to ``warn`` and skipped) or a checkpoint directory (which must be intact)."""
        if not resume:
            return None
        if str(resume) == "auto":
            skipped: list[str] = []
            latest = checkpoints.latest_checkpoint(save_dir, skipped, resumable=True)
            for reason in skipped if warn is not None else ():
                warn(f"skipping a checkpoint: {reason}")
            return cls.open(latest) if latest is not None else None
        return cls.open(resume)

    @property
    def step(self) -> int:
        return int(self.manifest["step"])

    @property
    def tokens_seen(self) -> int:
        return int(self.manifest["tokens_seen"])

    @property
    def backend(self) -> str:
        return self.manifest.get("backend", "torch")

    @property
    def weights(self) -> str:
        """``full`` or ``lora``: what the checkpoint's weight files hold."""
        return self.manifest["weights"]

    def file(self, role: str) -> Path | None:
        """The checkpoint's file of ``role`` (the manifest's ``files``), ``None`` when it has none."""
        name = self.manifest["files"].get(role)
        return self.directory / name if name else None

    def changed_keys(self, config: dict[str, Any]) -> list[str]:
        """Top-level keys of ``config`` whose values differ from the train config the checkpoint stored."""
        if self.manifest["config_hash"] == checkpoints.config_hash(config):
            return []
        stored = self.manifest.get("config") or {}
        return sorted(key for key in set(config) | set(stored) if config.get(key) != stored.get(key))

    def stream_state(self) -> dict[str, Any]:
        """The data stream's state after the checkpoint's last step."""
        return checkpoints.read_json_file(self.file("stream_state"))

    def base_weights(self) -> Path | None:
        """The stored base weights of a LoRA run on a bare preset (``None`` when the run has none)."""
        return self.file("base_weights")

    def load_weights(self, model: torch.nn.Module, engine: Any | None) -> None:
        """The trained weights into ``model``: the LoRA adapter through the delta ``engine`` that wrapped
        the model, else the full weights (every tensor must fit)."""
        if engine is not None:
            engine.load(model, self.directory)
            return
        path = self.file("weights")
        if path is None:
            raise Fm9gError("the checkpoint holds LoRA weights but the run trains the full model",
                            where=str(self.directory), fix="resume it with the train config's delta block")
        load_into(model, read_safetensors(path), source=path)

    def optimizer_header(self) -> Any:
        """``optimizer.pt`` as loaded (the full state, or the bmtrain backend's partitioned header)."""
        if self._optimizer_header is None:
            self._optimizer_header = load_weights_only(self.file("optimizer"))
        return self._optimizer_header

    def optimizer(self) -> SavedOptimizer:
        """The optimizer state by parameter name and flat range, whichever backend wrote it."""
        return SavedOptimizer.read(self.directory, self.optimizer_header())

    def torch_optimizer_state(self) -> dict[str, Any]:
        """The optimizer state in the torch backend's format (as saved, or converted from bmtrain's)."""
        header = self.optimizer_header()
        return self.optimizer().torch_state_dict() if is_partitioned(header) else header

    def restore_rng(self, *, rank: int, world_size: int) -> None:
        """This rank's generator states (fresh ones from the seed when the world size changed)."""
        checkpoints.restore_rng(self.file("rng"), rank=rank, world_size=world_size)
