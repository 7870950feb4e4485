"""The training loop: fetch packed batches, forward, token-mean loss, backward, clip, AdamW step, log, save.

One optimizer step consumes ``grad_accum`` packed global batches on each of the W ranks (rank r
gets b ≡ r mod W), i.e. ``W·grad_accum`` global batches. Its loss is the sum of token losses over
all of them divided by their number of target tokens — the same on one process with
``grad_accum = W·k`` as on W processes with ``k``. FSDP averages gradients over ranks, so each rank
backpropagates ``local_sum · W / global_count``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from fm9g.backends.data import DeviceBatch, take, to_device
from fm9g.backends.logging import RunLogger
from fm9g.backends.loss import IGNORE_INDEX, token_loss


@dataclass
class TrainState:
    step: int = 0
    tokens_seen: int = 0


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    tokens: int
    target_tokens: int
    task_loss: dict[str, float] = field(default_factory=dict)
    batches: list[list[int]] = field(default_factory=list)
    """Global batch indices each rank trained on in this step."""
    scale: float = 1.0
    """Loss scale of the step (1 without loss scaling)."""


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(tensor)
    return tensor


def _all_gather_indices(indices: list[int], device: torch.device) -> list[list[int]]:
    local = torch.tensor(indices, dtype=torch.int64, device=device)
    if not _distributed():
        return [indices]
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return [t.tolist() for t in gathered]


class TorchCollectives:
    """Sums and gathers over ``torch.distributed`` (no-ops in one process). Other backends
    (bmtrain, which keeps its own NCCL communicator) pass an object with the same two methods."""

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over ranks (may reuse ``tensor``)."""
        return _all_reduce(tensor)

    def all_gather_ints(self, values: list[int], device: torch.device) -> list[list[int]]:
        """Every rank's ``values`` (all ranks pass lists of one length), in rank order."""
        return _all_gather_indices(values, device)


class TorchOptimization:
    """Backward, clipping and the optimizer step for a plain torch optimizer (the torch backend).

    Other backends pass an object with the same interface (``backward``, ``clip``, ``step``,
    ``scale``), e.g. bmtrain's ``OptimManager`` with loss scaling."""

    scale = 1.0

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip(self, max_norm: float) -> float:
        """Clip the gradient norm to ``max_norm`` (0: no clipping); return the norm before clipping."""
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm if max_norm > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        return float(grad_norm)

    def step(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, batches: list[DeviceBatch], *,
               lr: float, clip_grad: float, task_names: list[str], world_size: int = 1,
               autocast_dtype: torch.dtype | None = None, optimization: Any = None,
               collectives: Any = None) -> StepResult:
    """One optimizer step over this rank's micro-batches ``batches``.

    ``optimization`` (default: :class:`TorchOptimization` over ``optimizer``) does backward, clip
    and step; ``collectives`` (default: :class:`TorchCollectives`) sums and gathers across ranks.
    """
    optimization = optimization or TorchOptimization(model, optimizer)
    comm = collectives or TorchCollectives()
    device = batches[0].input_ids.device
    counts = torch.tensor([float(sum(int((b.targets != IGNORE_INDEX).sum()) for b in batches)),
                           float(sum(b.num_tokens for b in batches))], dtype=torch.float64, device=device)
    global_targets, global_tokens = (int(x) for x in comm.all_reduce(counts).tolist())
    denominator = max(global_targets, 1)
    totals = torch.zeros(1 + 2 * len(task_names), dtype=torch.float64, device=device)
    for batch in batches:
        autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype
                    else contextlib.nullcontext())
        with autocast:
            logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
        losses = token_loss(logits, batch.targets, batch.task_ids, len(task_names))
        optimization.backward(losses.total * (world_size / denominator))
        totals += torch.cat([losses.total.detach().double().reshape(1), losses.task_sum, losses.task_count])
    grad_norm = optimization.clip(clip_grad)
    scale = float(optimization.scale)  # the loss scale this step's gradients were computed with
    optimization.step(lr)
    totals = comm.all_reduce(totals).tolist()
    sums, task_counts = totals[1:1 + len(task_names)], totals[1 + len(task_names):]
    task_loss = {name: s / c for name, s, c in zip(task_names, sums, task_counts) if c > 0}
    batch_indices = comm.all_gather_ints([b.index for b in batches], device)
    return StepResult(totals[0] / denominator, grad_norm, global_tokens, global_targets, task_loss,
                      batch_indices, scale)


def run_loop(*, model: torch.nn.Module, optimizer: torch.optim.Optimizer, stream: Any, state: TrainState,
             config: dict[str, Any], task_names: list[str], schedule: Callable[[int], float],
             device: torch.device, world_size: int, logger: Any, save: Callable[[TrainState], None],
             progress: Any = None, autocast_dtype: torch.dtype | None = None,
             inspect: Callable[[str], None] | None = None, optimization: Any = None,
             collectives: Any = None) -> TrainState:
    """Train from ``state.step`` to ``config['train_iters']`` (or until the data runs out); return the state.

    ``optimization`` / ``collectives``: see :func:`train_step` (defaults: torch optimizer, torch.distributed).
    """
    comm = collectives or TorchCollectives()
    batches: Iterator[Any] = iter(stream)
    accumulation = config.get("grad_accum", 1)
    train_iters, save_iters = config["train_iters"], config["save_iters"]
    last_saved = state.step
    while state.step < train_iters:
        started = time.perf_counter()
        micro = take(batches, accumulation)
        running = torch.tensor([0.0 if micro is None else 1.0], device=device)
        if comm.all_reduce(running).item() < world_size:  # some rank's data ran out: every rank stops
            if inspect:
                inspect(f"data exhausted after {state.step} steps; stopping")
            break
        lr = schedule(state.step)
        result = train_step(model, optimizer, [to_device(b, device) for b in micro], lr=lr,
                            clip_grad=config["clip_grad"], task_names=task_names, world_size=world_size,
                            autocast_dtype=autocast_dtype, optimization=optimization, collectives=comm)
        elapsed = time.perf_counter() - started
        state.step += 1
        state.tokens_seen += result.tokens
        record = {"step": state.step, "loss": result.loss, "lr": lr, "grad_norm": result.grad_norm,
                  "scale": result.scale, "tokens": result.tokens, "target_tokens": result.target_tokens,
                  "tokens_seen": state.tokens_seen, "tokens_per_s": result.tokens / max(elapsed, 1e-9),
                  "task_loss": result.task_loss, "batches": result.batches}
        if state.step % config.get("log_iters", 1) == 0 or state.step == train_iters:
            logger.log_step(record)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{result.loss:.4f}", lr=f"{lr:.3g}", tok_s=f"{record['tokens_per_s']:.0f}")
        if inspect and config.get("inspect_iters") and state.step % config["inspect_iters"] == 0:
            tasks = " ".join(f"{k}={v:.4f}" for k, v in result.task_loss.items())
            inspect(f"step {state.step}: loss {result.loss:.4f} lr {lr:.3g} grad_norm {result.grad_norm:.3f} {tasks}")
        if save_iters and state.step % save_iters == 0:
            logger.flush(state.step)  # the logs up to a checkpoint survive a crash after it
            save(state)
            last_saved = state.step
    if state.step != last_saved:
        logger.flush(state.step)
        save(state)
    return state


def run_training(run: Any, *, is_main: bool, save_dir: Any, stream: Any, state: TrainState, config: dict[str, Any],
                 **loop_arguments: Any) -> TrainState:
    """:func:`run_loop` with the run's logger and progress bar (rank 0 only), both closed (and the
    stream too) however it ends. ``run`` is the :class:`~fm9g.backends.run_context.RunContext`."""
    logger = RunLogger(save_dir, resume_step=state.step, enabled=is_main)
    progress = run.progress(total=config["train_iters"], initial=state.step) if is_main else None
    try:
        return run_loop(stream=stream, state=state, config=config, logger=logger, progress=progress,
                        inspect=run.message if is_main else None, **loop_arguments)
    finally:
        if progress is not None:
            progress.close()
        logger.close()
        if hasattr(stream, "close"):
            stream.close()


def training_result(state: TrainState, save_dir: Any) -> dict[str, Any]:
    """What a backend's ``train`` returns: the final step, tokens seen and the latest checkpoint."""
    from fm9g.backends.checkpoints import latest_checkpoint

    latest = latest_checkpoint(save_dir)
    return {"step": state.step, "tokens_seen": state.tokens_seen, "checkpoint": str(latest) if latest else None}
