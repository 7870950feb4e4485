"""Checkpoints of the ``bmtrain`` backend in the torch backend's layout (contract 3), and back.

BMTrain (ZeRO-3) keeps every parameter as a flat slice ``[start, end)`` of the flattened full tensor
on each rank (``DistributedParameter._start_partition`` / ``_end_partition``; inside a ``Block`` the
offsets are into the parameter as well). Its optimizers keep, per local slice, ``step`` (int),
``exp_avg``, ``exp_avg_sq`` and, for bf16 parameters, the float32 master ``_param_fp32``.

What is written, so that either backend resumes or exports the other's checkpoints:

* ``model.safetensors`` / the LoRA adapter: full float32 tensors under the plain HF (or PEFT)
  names, assembled from the **float32 master** slices (not from the bf16 working copy, which is
  what ``bmt.save`` would gather) by summing zero-padded slices over ranks;
* ``optimizer.rank-<r>.pt``: rank r's optimizer slices, written by each rank straight from the
  GPU (or host, with offload) tensors, one storage at a time — no rank ever holds the full optimizer
  state, which for the 7B would be 61 GB;
* ``optimizer.pt``: a small header (``format``, world size, rank files, param groups with names,
  the loss-scaler state).

:class:`SavedOptimizer` reads either format (this one, or the torch backend's full FQN-keyed state
dict) and hands out any ``[start, end)`` range of any parameter, so a run resumes with another world
size or the other backend. The functions here that do not touch BMTrain are plain torch (tested on CPU).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from fm9g.core.errors import Fm9gError

PARTITIONED_FORMAT = "fm9g-bmtrain-partitioned/1"
HEADER_FILE = "optimizer.pt"
_GROUP_KEYS = ("lr", "betas", "eps", "weight_decay", "params")
"""Param-group settings both backends understand (the torch optimizer fills in its own defaults)."""
_BMTRAIN_SEGMENT = re.compile(r"(^|\.)_module(?=\.|$)")


def rank_file(rank: int) -> str:
    return f"optimizer.rank-{rank}.pt"


def hf_parameter_name(name: str) -> str:
    """The plain HF (or PEFT) name of a parameter of a BMTrain-wrapped model.

    ``bmt.Block`` reports its inner module's parameters under the block's own prefix, so names are
    already the HF ones (``model.layers.0.self_attn.q_proj.weight``); a ``_module`` segment, which
    a Block's inner module would add if reached through attribute paths, is dropped.
    """
    return _BMTRAIN_SEGMENT.sub("", name).lstrip(".")


def partition(parameter: torch.Tensor) -> tuple[int, int] | None:
    """This rank's ``[start, end)`` of the flattened full parameter, or ``None`` if it holds none."""
    start = getattr(parameter, "_start_partition", None)
    end = getattr(parameter, "_end_partition", None)
    if start is None or end is None:
        if getattr(parameter, "_original_shape", None) is None:  # a plain (unpartitioned) tensor
            return (0, parameter.numel()) if parameter.numel() else None
        return None
    start, end = int(start), int(end)
    return (start, end) if end > start else None


def full_shape(parameter: torch.Tensor) -> tuple[int, ...]:
    return tuple(getattr(parameter, "_original_shape", parameter.shape))


def named_trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """``(hf name, parameter)`` of the trainable parameters, in ``model.parameters()`` order."""
    return [(hf_parameter_name(name), p) for name, p in model.named_parameters() if p.requires_grad]


# --------------------------------------------------------------------------- reading either format


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
    def open(cls, directory: str | Path) -> "SavedOptimizer":
        directory = Path(directory)
        header = _load(directory / HEADER_FILE)
        if isinstance(header, dict) and header.get("format") == PARTITIONED_FORMAT:
            return cls._from_partitioned(directory, header)
        if isinstance(header, dict) and isinstance(header.get("state"), dict) and "param_groups" in header:
            return cls._from_torch(header)
        raise Fm9gError("unrecognized optimizer state", where=str(directory / HEADER_FILE),
                        fix="resume from a checkpoint written by fm9g train")

    @classmethod
    def _from_torch(cls, state_dict: dict[str, Any]) -> "SavedOptimizer":
        pieces, shapes = {}, {}
        for name, entry in state_dict["state"].items():
            if not isinstance(name, str):
                raise Fm9gError("the optimizer state is keyed by index, not by parameter name",
                                where=HEADER_FILE, fix="resume from a checkpoint written by fm9g train")
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
            for param, entry in _load(path)["params"].items():
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
                            f"[{start}, {end}) this rank needs", where=HEADER_FILE,
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
        groups = [{k: (tuple(v) if k == "betas" else v) for k, v in group.items() if k in _GROUP_KEYS}
                  for group in self.param_groups]
        return {"state": state, "param_groups": groups}


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zipfile-format file: plain load
        return torch.load(path, map_location="cpu", weights_only=True)


def is_partitioned(state: Any) -> bool:
    return isinstance(state, dict) and state.get("format") == PARTITIONED_FORMAT


# --------------------------------------------------------------------------- writing (every rank)


def optimizer_partition(named: list[tuple[str, torch.nn.Parameter]], optimizer: torch.optim.Optimizer,
                        *, rank: int, world_size: int) -> dict[str, Any]:
    """This rank's optimizer slices (tensors stay where they are; ``torch.save`` copies one at a time)."""
    params = {}
    for name, parameter in named:
        span = partition(parameter)
        state = optimizer.state.get(parameter)
        if span is None or not state:
            continue
        entry = {"start": span[0], "end": span[1], "shape": list(full_shape(parameter)), "step": int(state["step"]),
                 "exp_avg": state["exp_avg"].detach().reshape(-1), "exp_avg_sq": state["exp_avg_sq"].detach().reshape(-1)}
        if "_param_fp32" in state:
            entry["master"] = state["_param_fp32"].detach().reshape(-1)
        params[name] = entry
    return {"format": PARTITIONED_FORMAT, "rank": rank, "world_size": world_size, "params": params}


def optimizer_header(named: list[tuple[str, torch.nn.Parameter]], optimizer: torch.optim.Optimizer, *,
                     world_size: int, manager: dict[str, Any]) -> dict[str, Any]:
    groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    if len(groups) != 1:
        raise ValueError("the bmtrain backend uses one parameter group")
    groups[0]["params"] = [name for name, _ in named]
    return {"format": PARTITIONED_FORMAT, "world_size": world_size,
            "rank_files": [rank_file(r) for r in range(world_size)], "param_groups": groups, "manager": manager}


def assemble(local: torch.Tensor | None, span: tuple[int, int] | None, numel: int,
             all_reduce: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> torch.Tensor:
    """The full flat float32 tensor from every rank's ``local`` slice (zero-padded, summed over ranks).

    Every rank must call this for the same parameters in the same order (it is a collective)."""
    full = torch.zeros(numel, dtype=torch.float32, device=device)
    if local is not None and span is not None:
        full[span[0]:span[1]] = local.detach().reshape(-1).to(device, torch.float32)
    return all_reduce(full)


def gather_weights(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, trainable_only: bool,
                   all_reduce: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                   keep: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """``(hf name, full float32 CPU tensor)`` of every (trainable) parameter, from the fp32 master.

    A collective: every rank iterates it to the end; only ranks with ``keep`` get the tensors
    (the others get ``None`` values, nothing is copied to their host memory)."""
    for name, parameter in model.named_parameters():
        if trainable_only and not parameter.requires_grad:
            continue
        state = optimizer.state.get(parameter) or {}
        local = state.get("_param_fp32", parameter.detach())
        full = assemble(local, partition(parameter), _numel(full_shape(parameter)), all_reduce, device)
        yield hf_parameter_name(name), (full.view(full_shape(parameter)).cpu() if keep else None)


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


# --------------------------------------------------------------------------- restoring (every rank)


def restore_optimizer(optimizer: torch.optim.Optimizer, named: list[tuple[str, torch.nn.Parameter]],
                      saved: SavedOptimizer,
                      master_of: Callable[[str, tuple[int, int]], torch.Tensor | None] | None = None) -> int:
    """Load the slices this rank owns into a BMTrain optimizer (its native ``load_state_dict``).

    ``master_of(name, span)`` supplies the float32 master slice when the checkpoint has none (a
    torch-backend checkpoint, whose weights file is the master). Returns how many parameters got state.
    """
    params = optimizer.param_groups[0]["params"]
    by_id = {id(p): name for name, p in named}
    native: dict[int, dict[str, Any]] = {}
    for index, parameter in enumerate(params):
        name, span = by_id[id(parameter)], partition(parameter)
        if span is None:
            continue
        piece = saved.local(name, *span)
        if piece is None:
            continue
        entry = {"step": piece["step"], "exp_avg": piece["exp_avg"], "exp_avg_sq": piece["exp_avg_sq"]}
        if parameter.dtype != torch.float32:
            master = piece.get("master")
            if master is None and master_of is not None:
                master = master_of(name, span)
            if master is not None:
                entry["_param_fp32"] = master.reshape(-1).float().clone()
        native[index] = entry
    settings = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    saved_group = saved.param_groups[0] if saved.param_groups else {}
    for key in ("betas", "eps", "weight_decay"):
        if key in saved_group:
            settings[key] = tuple(saved_group[key]) if key == "betas" else saved_group[key]
    optimizer.load_state_dict({"state": native, "param_groups": [{**settings, "params": list(range(len(params)))}]})
    return len(native)


def master_from_weights(directory: str | Path, weights: str) -> Callable[[str, tuple[int, int]], torch.Tensor | None]:
    """``master_of`` for a checkpoint whose weights file holds the float32 master (the torch backend's).

    Full weights: ``model.safetensors`` by HF name. LoRA (PEFT): ``adapter_model.safetensors``, whose
    keys drop the adapter name (``.lora_A.default.weight`` is saved as ``.lora_A.weight``)."""
    from safetensors import safe_open

    path = Path(directory) / ("model.safetensors" if weights == "full" else "adapter_model.safetensors")

    def master_of(name: str, span: tuple[int, int]) -> torch.Tensor | None:
        if not path.is_file():
            return None
        key = name if weights == "full" else name.replace(".default.", ".")
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            if key not in handle.keys():
                return None
            return handle.get_tensor(key).reshape(-1)[span[0]:span[1]].float()

    return master_of
