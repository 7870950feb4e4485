"""The training loop: fetch packed batches, forward, token-mean loss, backward, clip, AdamW step, log, save.

One optimizer step consumes ``grad_accum`` packed global batches on each of the W ranks (rank r
gets b ≡ r mod W), i.e. ``W·grad_accum`` global batches. Its loss is the sum of token losses over
all of them divided by their number of target tokens — the same on one process with
``grad_accum = W·k`` as on W processes with ``k``. FSDP and BMTrain average gradients over ranks,
so each rank backpropagates ``local_sum · W / global_count``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from fm9g.backends.training.batches import DeviceBatch, take, to_device
from fm9g.backends.training.collectives import Collectives
from fm9g.backends.training.loss import IGNORE_INDEX, batch_loss
from fm9g.backends.training.stop_signals import stop_requested
from fm9g.core.errors import Fm9gError


@dataclass
class TrainState:
    step: int = 0
    tokens_seen: int = 0
    evaluation: dict[str, Any] | None = None
    """The latest held-out evaluation record (its ``step`` says when it was made)."""


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
    skipped: bool = False
    """The loss or gradient norm was not finite, so the parameters were not updated."""


class Optimization(Protocol):
    """Backward, clipping and the optimizer step of one backend (loss scaling included, if any)."""

    scale: float

    def backward(self, loss: torch.Tensor) -> None: ...

    def clip(self, max_norm: float) -> float:
        """Clip the gradient norm to ``max_norm`` (0: no clipping); return the norm before clipping."""

    def step(self, lr: float) -> None:
        """Update the parameters at learning rate ``lr`` and zero the gradients."""

    def skip(self) -> None:
        """Zero the gradients without an update (a step whose loss or gradients are not finite)."""

    @property
    def handles_overflow(self) -> bool:
        """True when a loss scaler skips overflowing steps itself (an infinite norm is then expected)."""


class TorchOptimization:
    """:class:`Optimization` for a plain torch optimizer (the torch backend, FSDP2 included)."""

    scale = 1.0

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip(self, max_norm: float) -> float:
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

    def skip(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    handles_overflow = False


@dataclass
class Trainer:
    """Everything one optimizer step needs: the model, how to step it, how ranks talk."""

    model: torch.nn.Module
    optimization: Optimization
    collectives: Collectives
    task_names: list[str]
    clip_grad: float
    autocast_dtype: torch.dtype | None = None
    """bf16 autocast over float32 master weights on a GPU; ``None``: run in the weights' dtype."""

    def step(self, batches: list[DeviceBatch], lr: float) -> StepResult:
        """One optimizer step over this rank's micro-batches ``batches``."""
        comm, tasks = self.collectives, len(self.task_names)
        device = batches[0].input_ids.device
        counts = torch.tensor([float(sum(int((b.targets != IGNORE_INDEX).sum()) for b in batches)),
                               float(sum(b.num_tokens for b in batches))], dtype=torch.float64, device=device)
        global_targets, global_tokens = (int(x) for x in comm.all_reduce(counts).tolist())
        denominator = max(global_targets, 1)
        totals = torch.zeros(1 + 2 * tasks, dtype=torch.float64, device=device)
        for batch in batches:
            losses = batch_loss(self.model, batch, tasks, self.autocast_dtype)
            self.optimization.backward(losses.total * (comm.world_size / denominator))
            totals += torch.cat([losses.total.detach().double().reshape(1), losses.task_sum, losses.task_count])
        grad_norm = self.optimization.clip(self.clip_grad)
        scale = float(self.optimization.scale)  # the loss scale this step's gradients were computed with
        totals = comm.all_reduce(totals).tolist()
        loss = totals[0] / denominator
        skipped = not math.isfinite(loss) or (not math.isfinite(grad_norm) and not self.optimization.handles_overflow)
        if skipped:  # every rank sees the same all-reduced loss and norm, so every rank skips
            self.optimization.skip()
        else:
            self.optimization.step(lr)
        sums, task_counts = totals[1:1 + tasks], totals[1 + tasks:]
        task_loss = {name: s / c for name, s, c in zip(self.task_names, sums, task_counts) if c > 0}
        batch_indices = comm.all_gather_ints([b.index for b in batches])
        return StepResult(loss, grad_norm, global_tokens, global_targets, task_loss, batch_indices, scale, skipped)


@dataclass(frozen=True)
class LoopSettings:
    """The train config's keys that pace the loop."""

    train_iters: int
    save_iters: int
    grad_accum: int
    log_iters: int
    inspect_iters: int
    max_nonfinite_steps: int
    """How many steps with a non-finite loss or gradient norm may be skipped before the run stops."""
    eval_iters: int = 0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LoopSettings:
        return cls(config["train_iters"], config["save_iters"], config["grad_accum"], config["log_iters"],
                   config["inspect_iters"], config["max_nonfinite_steps"], config["eval_iters"])


class LoopReport(Protocol):
    """Where the loop's numbers go (rank 0 writes them, the other ranks' report does nothing)."""

    def step(self, record: dict[str, Any], *, log: bool) -> None:
        """One step's record: into the metrics log when ``log``, onto the progress bar always."""

    def message(self, text: str) -> None: ...

    def evaluation(self, record: dict[str, Any]) -> None:
        """A held-out evaluation's record: into the metrics log and onto the terminal."""

    def flush(self, step: int) -> None:
        """Make everything logged through ``step`` durable (before a checkpoint)."""


def run_loop(trainer: Trainer, stream: Iterable[Any], state: TrainState, settings: LoopSettings, *,
             schedule: Callable[[int], float], save: Callable[[TrainState], None], report: LoopReport,
             evaluate: Callable[[int], dict[str, Any]] | None = None, mixing: Any = None) -> TrainState:
    """Train from ``state.step`` to ``settings.train_iters`` (or until the data runs out); return the state.

    ``evaluate(step)`` (held-out loss, a collective) runs every ``eval_iters`` steps and after the
    last one, before that step's checkpoint, which records it. ``mixing`` (online reweighting,
    :class:`fm9g.backends.training.online_mixing.StreamReweighting`) sees each step's task losses
    and that evaluation, and may change the stream's weights before the checkpoint."""

    def evaluate_now() -> None:
        state.evaluation = evaluate(state.step)
        report.evaluation(state.evaluation)

    evaluating = evaluate is not None and settings.eval_iters > 0
    comm, device = trainer.collectives, trainer.collectives.device
    batches = iter(stream)
    first_step = last_saved = state.step
    nonfinite = 0
    while state.step < settings.train_iters:
        started = time.perf_counter()
        micro = take(batches, settings.grad_accum)
        running, stopping = comm.all_reduce(torch.tensor(
            [0.0 if micro is None else 1.0, 1.0 if stop_requested() else 0.0], device=device)).tolist()
        if stopping:  # SIGTERM or Ctrl-C on some rank: every rank stops here, between steps
            raise KeyboardInterrupt
        if running < comm.world_size:  # some rank's data ran out: every rank stops
            if state.step == first_step:
                raise Fm9gError(f"the data gave no batch for step {state.step + 1}: nothing would be trained",
                                where="train config: data",
                                fix="check the mixture (fm9g mix --manifest ...), its datasets and their epochs")
            report.message(f"data exhausted after {state.step} steps; stopping")
            break
        lr = schedule(state.step)
        result = trainer.step([to_device(b, device) for b in micro], lr)
        elapsed = time.perf_counter() - started
        state.step += 1
        state.tokens_seen += result.tokens
        record = {"step": state.step, "loss": result.loss, "lr": lr, "grad_norm": result.grad_norm,
                  "scale": result.scale, "tokens": result.tokens, "target_tokens": result.target_tokens,
                  "tokens_seen": state.tokens_seen, "tokens_per_s": result.tokens / max(elapsed, 1e-9),
                  "task_loss": result.task_loss, "batches": result.batches}
        if mixing is not None:
            record["mixture_weights"] = mixing.weights
        report.step(record, log=state.step % settings.log_iters == 0 or state.step == settings.train_iters)
        if result.skipped:
            nonfinite += 1
            if nonfinite > settings.max_nonfinite_steps:
                raise Fm9gError(f"step {state.step}: the loss ({result.loss}) or gradient norm ({result.grad_norm}) "
                                f"is not finite, at lr {lr:.3g}; training stopped before saving it",
                                where="train config", fix="lower lr or check the data; max_nonfinite_steps N "
                                                          "skips up to N such steps instead")
            report.message(f"step {state.step}: non-finite loss or gradient norm; update skipped "
                           f"({nonfinite} of at most {settings.max_nonfinite_steps})")
        if settings.inspect_iters and state.step % settings.inspect_iters == 0:
            tasks = " ".join(f"{k}={v:.4f}" for k, v in result.task_loss.items())
            report.message(f"step {state.step}: loss {result.loss:.4f} lr {lr:.3g} "
                           f"grad_norm {result.grad_norm:.3f} {tasks}")
        if evaluating and (state.step % settings.eval_iters == 0 or state.step == settings.train_iters):
            evaluate_now()
        if mixing is not None:
            mixing.after_step(state.step, result.task_loss, state.evaluation)
        if settings.save_iters and state.step % settings.save_iters == 0:
            report.flush(state.step)  # the logs up to a checkpoint survive a crash after it
            save(state)
            last_saved = state.step
    if evaluating and state.step > first_step and (state.evaluation or {}).get("step") != state.step:
        evaluate_now()  # the data ran out before train_iters: the last step is evaluated too
    if state.step != last_saved:
        report.flush(state.step)
        save(state)
    return state
