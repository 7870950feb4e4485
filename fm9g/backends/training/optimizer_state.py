"""A checkpoint's optimizer state, as either backend wrote it, addressed by parameter name and flat range.

Two formats reach a resume: the torch backend's full state dict keyed by parameter name
(``torch.distributed.checkpoint``'s ``full_state_dict``), and the bmtrain backend's partitioned
state — ``optimizer.pt`` a small header (format, world size, rank files, param groups with names,
the loss-scaler state) and ``optimizer.rank-<r>.pt`` rank r's flat slices of every parameter's
``exp_avg``, ``exp_avg_sq`` and float32 master. :class:`SavedOptimizer` reads either and hands out
any ``[start, end)`` range of any parameter, or the whole state in the torch format, so a run
resumes with another world size or on the other backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fm9g.backends.training.checkpoints import OPTIMIZER
from fm9g.backends.weights.files import load_weights_only
from fm9g.core.errors import Fm9gError

PARTITIONED_FORMAT = "fm9g-bmtrain-partitioned/1"
GROUP_KEYS = ("lr", "betas", "eps", "weight_decay", "params")
"""Param-group settings both backends understand (the torch optimizer fills in its own defaults)."""


class SavedOptimizer:
    """A checkpoint's optimizer state, addressed by parameter name and flat range.

    ``pieces[name]`` is a list of ``(start, end, entry)``; ``entry`` holds flat ``exp_avg`` /
    ``exp_avg_sq`` (and ``master``, float32) for ``[start, end)`` and ``step``. The torch format
    gives one piece ``[0, numel)`` per parameter; the partitioned format one per rank file.
    """

    def __init__(self, pieces: dict[str, list[tuple[int, int, dict[str, Any]]]], param_groups: list[dict],
                 manager: dict[str, Any] | None, shapes: dict[str, tuple[int, ...]]):
        self.pieces, self.param_groups, self.manager, self.shapes = pieces, param_groups, manager, shapes

    @classmethod
    def read(cls, directory: str | Path, header: Any) -> SavedOptimizer:
        """The optimizer state of checkpoint ``directory`` whose ``optimizer.pt`` holds ``header``."""
        directory = Path(directory)
        if is_partitioned(header):
            return cls._from_partitioned(directory, header)
        if isinstance(header, dict) and isinstance(header.get("state"), dict) and "param_groups" in header:
            return cls._from_torch(header)
        raise Fm9gError("unrecognized optimizer state", where=str(directory / OPTIMIZER),
                        fix="resume from a checkpoint written by fm9g train")

    @classmethod
    def _from_torch(cls, state_dict: dict[str, Any]) -> "SavedOptimizer":
        pieces, shapes = {}, {}
        for name, entry in state_dict["state"].items():
            if not isinstance(name, str):
                raise Fm9gError("the optimizer state is keyed by index, not by parameter name",
                                where=OPTIMIZER, fix="resume from a checkpoint written by fm9g train")
            exp_avg = entry["exp_avg"]
            shapes[name] = tuple(exp_avg.shape)
            pieces[name] = [(0, exp_avg.numel(), {"step": int(round(float(entry["step"]))),
                                                  "exp_avg": exp_avg.reshape(-1),
                                                  "exp_avg_sq": entry["exp_avg_sq"].reshape(-1)})]
        return cls(pieces, state_dict["param_groups"], None, shapes)

    @classmethod
    def _from_partitioned(cls, directory: Path, header: dict[str, Any]) -> "SavedOptimizer":
        pieces: dict[str, list] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for name in header["rank_files"]:
            path = directory / name
            if not path.is_file():
                raise Fm9gError(f"checkpoint is missing {name}", where=str(directory),
                                fix="copy every optimizer.rank-N.pt of the checkpoint, or resume another one")
            for param, entry in load_weights_only(path)["params"].items():
                pieces.setdefault(param, []).append((entry["start"], entry["end"], entry))
                shapes[param] = tuple(entry["shape"])
        for entries in pieces.values():
            entries.sort(key=lambda piece: piece[0])
        return cls(pieces, header["param_groups"], header.get("manager"), shapes)

    def names(self) -> list[str]:
        return list(self.pieces)

    def local(self, name: str, start: int, end: int) -> dict[str, Any] | None:
        """``step``, ``exp_avg``, ``exp_avg_sq`` (and ``master`` when saved) for ``[start, end)`` of ``name``."""
        pieces = self.pieces.get(name)
        if not pieces:
            return None
        covering = [(s, e, entry) for s, e, entry in pieces if s < end and e > start]
        covered = sum(min(e, end) - max(s, start) for s, e, _ in covering)
        if covered != end - start:
            raise Fm9gError(f"the optimizer state of '{name}' covers {covered} of the {end - start} values "
                            f"[{start}, {end}) this rank needs", where=OPTIMIZER,
                            fix="resume with the same model the checkpoint was trained with")
        result: dict[str, Any] = {"step": covering[0][2]["step"]}
        keys = ["exp_avg", "exp_avg_sq"] + (["master"] if all("master" in c[2] for c in covering) else [])
        for key in keys:
            parts = [entry[key][max(start, s) - s:min(end, e) - s] for s, e, entry in covering]
            result[key] = torch.cat(parts).float().clone() if len(parts) > 1 else parts[0].float().clone()
        return result

    def torch_state_dict(self) -> dict[str, Any]:
        """The full state in the torch backend's format (``set_optimizer_state_dict(full_state_dict=True)``)."""
        state = {}
        for name in self.pieces:
            shape = self.shapes[name]
            numel = 1
            for size in shape:
                numel *= size
            entry = self.local(name, 0, numel)
            state[name] = {"step": torch.tensor(float(entry["step"])), "exp_avg": entry["exp_avg"].view(shape),
                           "exp_avg_sq": entry["exp_avg_sq"].view(shape)}
        groups = [{k: (tuple(v) if k == "betas" else v) for k, v in group.items() if k in GROUP_KEYS}
                  for group in self.param_groups]
        return {"state": state, "param_groups": groups}


def is_partitioned(state: Any) -> bool:
    return isinstance(state, dict) and state.get("format") == PARTITIONED_FORMAT
