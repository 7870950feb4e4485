"""Online reweighting: the mixture's weights follow per-task losses during the run.

Every ``every`` steps the weights take one multiplicative step and are mixed with the uniform
distribution, then bounded to ``[min_share, max_share]``:

* ``doremi`` (Xie et al., 2023): ``log w += step_size · max(held-out loss − reference loss, 0)`` per
  task — weight moves to the tasks the model is furthest behind a reference model on (the held-out
  losses of that step's evaluation against the reference run's final ones, or fixed reference
  losses; a task without a held-out set gets no excess);
* ``odm`` (online data mixing, Albalak et al., 2023): ``log w += step_size · mean training loss``
  of each task over the last ``every`` steps — a multiplicative-weights (Hedge/EXP3-style) rule
  that samples more of what is still hard. fm9g sees every task's loss every step, so the
  bandit's importance weighting is not needed.

Both read only all-reduced losses, so every rank computes the same weights; the new weights go
into the stream (:meth:`fm9g.mixer.stream.MixtureStream.set_weights`), whose state carries them,
and this rule's own state (log-weights, the current window's sums) is saved in each checkpoint as
``mixing.json``: a resumed run changes its weights exactly as the uninterrupted one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fm9g.core.errors import Fm9gError

STATE_FILE = "mixing.json"


def bounded_shares(weights: list[float], low: float, high: float) -> list[float]:
    """``weights`` normalized to sum 1 with every share in ``[low, high]``: shares above ``high`` are
    fixed at it (else those below ``low`` at that), the others renormalized, until none is out."""
    count = len(weights)
    if low * count > 1 + 1e-12 or high * count < 1 - 1e-12:
        raise Fm9gError(f"shares between {low} and {high} cannot sum to 1 over {count} tasks",
                        where="train config: mixing.online", fix="lower min_share or raise max_share")
    total = sum(weights)
    shares = [w / total for w in weights]
    fixed: dict[int, float] = {}
    for _ in range(count + 1):
        free = [i for i in range(count) if i not in fixed]
        free_total = sum(shares[i] for i in free)
        budget = 1.0 - sum(fixed.values())
        scaled = {i: shares[i] / free_total * budget if free_total > 0 else budget / len(free) for i in free}
        above = {i: high for i, value in scaled.items() if value > high}
        clipped = above or {i: low for i, value in scaled.items() if value < low}  # the larger ones first
        if not clipped:
            return [fixed.get(i, scaled.get(i, 0.0)) for i in range(count)]
        fixed.update(clipped)
    return [fixed[i] for i in range(count)]


class OnlineMixing:
    """The weight rule of a run's ``mixing.online`` block, with its state."""

    def __init__(self, options: dict[str, Any], task_names: list[str], weights: dict[str, float]):
        self.options, self.task_names = options, list(task_names)
        self.method, self.every = options["method"], options["every"]
        total = sum(weights.values())
        self.log_weights = {name: math.log(max(weights[name] / total, 1e-30)) for name in task_names}
        self.window_sums = {name: 0.0 for name in task_names}
        self.window_steps = {name: 0 for name in task_names}
        self.weights = {name: weights[name] / total for name in task_names}
        """The shares in effect (the stream's weights normalized)."""
        self.reference = self._reference() if self.method == "doremi" else None
        bounded_shares([1.0] * len(task_names), options["min_share"], options["max_share"])  # feasible at all

    def _reference(self) -> dict[str, float]:
        """Each task's reference held-out loss: given, or the reference run's last evaluation."""
        if self.options.get("reference"):
            fixed = dict(self.options["reference"])
            unknown = sorted(set(fixed) - set(self.task_names))
            if unknown:
                raise Fm9gError(f"reference losses for tasks not in the mixture: {', '.join(unknown)}",
                                where="train config: mixing.online.reference", fix="name the mixture's tasks")
            return fixed
        path = self.options.get("reference_log")
        if not path:
            raise Fm9gError("doremi needs the losses of a reference run", where="train config: mixing.online",
                            fix="give reference: {task: loss} or reference_log: REF_RUN/eval_log.jsonl")
        try:
            records = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, ValueError) as error:
            raise Fm9gError(f"cannot read the reference run's eval log: {error}",
                            where="train config: mixing.online.reference_log") from None
        if not records:
            raise Fm9gError("the reference run's eval log is empty", where=f"train config: mixing.online.reference_log {path}",
                            fix="train the reference run with eval_iters first")
        return {name: task["loss"] for name, task in records[-1]["tasks"].items() if task.get("loss") is not None}

    def observe(self, task_loss: dict[str, float]) -> None:
        """One step's per-task training losses (odm's reward)."""
        for name, value in task_loss.items():
            if name in self.window_sums and math.isfinite(value):
                self.window_sums[name] += value
                self.window_steps[name] += 1

    def update(self, step: int, evaluation: dict[str, Any] | None) -> dict[str, float] | None:
        """The new weights when ``step`` is an update step (``None`` otherwise)."""
        if step % self.every:
            return None
        if self.method == "doremi":
            if evaluation is None or evaluation.get("step") != step:
                raise Fm9gError(f"step {step}: doremi needs this step's held-out evaluation",
                                where="train config: mixing.online.every", fix="make every a multiple of eval_iters")
            reference = self.reference
            signal = {name: max((task["loss"] or 0.0) - reference.get(name, task["loss"] or 0.0), 0.0)
                      for name, task in evaluation["tasks"].items()}
        else:
            signal = {name: self.window_sums[name] / self.window_steps[name]
                      for name in self.task_names if self.window_steps[name]}
        step_size, smoothing = self.options["step_size"], self.options["smoothing"]
        for name in self.task_names:
            self.log_weights[name] += step_size * signal.get(name, 0.0)
        top = max(self.log_weights.values())
        raw = [math.exp(self.log_weights[name] - top) for name in self.task_names]
        total = sum(raw)
        mixed = [(1 - smoothing) * value / total + smoothing / len(raw) for value in raw]
        shares = bounded_shares(mixed, self.options["min_share"], self.options["max_share"])
        self.weights = dict(zip(self.task_names, shares))
        self.window_sums = {name: 0.0 for name in self.task_names}
        self.window_steps = {name: 0 for name in self.task_names}
        return dict(self.weights)

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method, "log_weights": self.log_weights, "weights": self.weights,
                "window_sums": self.window_sums, "window_steps": self.window_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("method") != self.method or set(state.get("weights", {})) != set(self.task_names):
            raise Fm9gError("the checkpoint's online-mixing state is for another method or other tasks",
                            where=STATE_FILE, fix="resume with the run's own mixing.online settings")
        self.log_weights, self.weights = dict(state["log_weights"]), dict(state["weights"])
        self.window_sums, self.window_steps = dict(state["window_sums"]), dict(state["window_steps"])


class StreamReweighting:
    """:class:`OnlineMixing` applied to the training stream: what the loop calls each step."""

    def __init__(self, mixing: OnlineMixing, stream: Any):
        self.mixing, self.stream = mixing, stream

    @property
    def weights(self) -> dict[str, float]:
        """The weights the stream draws with now (the next step's data)."""
        return dict(self.mixing.weights)

    def after_step(self, step: int, task_loss: dict[str, float], evaluation: dict[str, Any] | None) -> None:
        """Observe a finished step; at an update step, give the stream its new weights."""
        self.mixing.observe(task_loss)
        weights = self.mixing.update(step, evaluation)
        if weights is not None:
            self.stream.set_weights(weights)
