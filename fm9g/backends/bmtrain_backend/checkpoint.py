"""Checkpoints of the ``bmtrain`` backend in the torch backend's layout, so either backend resumes or
exports the other's checkpoints.

BMTrain (ZeRO-3) keeps every parameter as a flat slice ``[start, end)`` of the flattened full tensor
on each rank (``DistributedParameter._start_partition`` / ``_end_partition``; inside a ``Block`` the
offsets are into the parameter as well). Its optimizers keep, per local slice, ``step`` (int),
``exp_avg``, ``exp_avg_sq`` and, for bf16 parameters, the float32 master ``_param_fp32``.

What is written:

* ``model.safetensors`` / the LoRA adapter: full float32 tensors under the plain HF (or PEFT)
  names, assembled from the **float32 master** slices (not from the bf16 working copy, which is
  what ``bmt.save`` would gather) by summing zero-padded slices over ranks;
* ``optimizer.rank-<r>.pt``: rank r's optimizer slices, written by each rank straight from the
  GPU (or host, with offload) tensors, one storage at a time — no rank ever holds the full optimizer
  state, which for the 7B would be 61 GB;
* ``optimizer.pt``: a small header (``format``, world size, rank files, param groups with names,
  the loss-scaler state).

:class:`~fm9g.backends.training.optimizer_state.SavedOptimizer` reads either backend's optimizer
state and hands out any ``[start, end)`` range of any parameter; :func:`restore_optimizer` loads a
rank's slices from it, so a run resumes with another world size or from the torch backend. The
functions here do not touch BMTrain itself: they are plain torch (tested on CPU).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import torch

from fm9g.backends.training.checkpoints import optimizer_rank_file
from fm9g.backends.training.optimizer_state import PARTITIONED_FORMAT, SavedOptimizer
from fm9g.backends.training.resume import ResumePoint

_BMTRAIN_SEGMENT = re.compile(r"(^|\.)_module(?=\.|$)")


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
            "rank_files": [optimizer_rank_file(r) for r in range(world_size)], "param_groups": groups, "manager": manager}


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


def master_from_weights(resume: ResumePoint) -> Callable[[str, tuple[int, int]], torch.Tensor | None]:
    """``master_of`` for a checkpoint whose weights file holds the float32 master (the torch backend's).

    Full weights: ``model.safetensors`` by HF name. LoRA (PEFT): the adapter, whose keys drop the
    adapter name (``.lora_A.default.weight`` is saved as ``.lora_A.weight``)."""
    from safetensors import safe_open

    full = resume.weights == "full"
    path = resume.file("weights" if full else "adapter")

    def master_of(name: str, span: tuple[int, int]) -> torch.Tensor | None:
        if path is None or not path.is_file():
            return None
        key = name if full else name.replace(".default.", ".")
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            if key not in handle.keys():
                return None
            return handle.get_tensor(key).reshape(-1)[span[0]:span[1]].float()

    return master_of
