"""Which dataset the next sample comes from: deterministic token-deficit scheduling.

``abs_weight`` is a target share of non-padding tokens, normalized over the datasets still active.
The next sample comes from the active dataset whose realized tokens lag furthest behind target,
``weight * total_active - tokens``, ties broken by manifest order. Because the choice uses
realized token counts (not expected sample lengths, the seed's ``abs_weight / avg_tokens``
sampling), the realized share stays within one sample's length of the target at every step.

Each dataset's progress is a handful of integers (:class:`DatasetProgress`): epoch, position in
the epoch's keyed permutation, token counters. That is the whole per-dataset stream state.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger("fm9g.mixer")

PLANNED_EXITS = frozenset({"zero weight", "exhausted", "max_epochs reached", "epoch limit reached"})
"""Reasons for leaving the mix that the manifest asked for (a zero weight, ``allow_repeat: false``
running out of rows, ``max_epochs``). Any other exit (no rows, every sample of an epoch dropped)
means the mixture is no longer what the manifest describes; the stream makes that an error."""


@dataclass
class DatasetProgress:
    """Where one dataset stands. ``tokens`` feeds the scheduler (reset when the mix changes);
    ``total_tokens`` and ``samples`` are cumulative for reports."""

    task_name: str
    nlines: int
    epoch: int = 0
    position: int = 0
    tokens: int = 0
    total_tokens: int = 0
    samples: int = 0
    epoch_tokens: int = 0
    active: bool = True
    left_at_batch: int | None = None
    left_reason: str | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DatasetProgress:
        fields = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        fields["counts"] = dict(fields.get("counts", {}))
        return cls(**fields)

    @property
    def epochs_done(self) -> float:
        """Passes over the data so far, fractional (2.5 = two full epochs and half of the third)."""
        return self.epoch + (self.position / self.nlines if self.nlines else 0.0)


@dataclass
class DatasetPolicy:
    """What the manifest says about repeating one dataset."""

    weight: float
    allow_repeat: bool = True
    max_epochs: int | None = None

    def may_start_epoch(self, epoch: int) -> bool:
        """May the dataset begin (0-based) epoch ``epoch``?"""
        if epoch == 0:
            return True
        if not self.allow_repeat:
            return False
        return self.max_epochs is None or epoch < self.max_epochs


class Scheduler:
    """Token-deficit choice over active datasets, and their epoch bookkeeping."""

    def __init__(self, policies: list[DatasetPolicy], progress: list[DatasetProgress], batch_index: int = 0):
        self.policies = policies
        self.progress = progress
        self._refresh_active()
        for index, (policy, state) in enumerate(zip(policies, progress)):
            if state.active and (policy.weight <= 0 or state.nlines == 0):
                self.leave(index, batch_index, "zero weight" if policy.weight <= 0 else "no rows")
            elif state.active and not policy.may_start_epoch(state.epoch):
                self.leave(index, batch_index, "epoch limit reached")

    def _refresh_active(self) -> None:
        """Cache what :meth:`choose` needs that changes only when a dataset leaves: the active
        indices, their normalized weights, and the sum of their token counters (kept up to date
        by :meth:`consume`)."""
        self._active = [index for index, state in enumerate(self.progress) if state.active]
        total_weight = sum(self.policies[index].weight for index in self._active)
        self._shares = [(index, self.policies[index].weight / total_weight) for index in self._active]
        self._active_tokens = sum(self.progress[index].tokens for index in self._active)

    def set_weights(self, weights: list[float]) -> None:
        """New target shares for the datasets, from the next sample on (online reweighting).

        The token counters that the deficit is measured on restart at 0, so the new shares hold
        for what is drawn from now on rather than for the whole run; which datasets are active does
        not change (one that left stays out, whatever its new weight)."""
        for policy, weight in zip(self.policies, weights):
            policy.weight = float(weight)
        for state in self.progress:
            state.tokens = 0
        self._refresh_active()

    def active(self) -> list[int]:
        return list(self._active)

    def choose(self) -> int | None:
        """The active dataset lagging furthest behind its target share, or ``None`` when none is left.

        ``lag = weight / total_weight * total_tokens - tokens``, the first of equal lags winning."""
        active = self._active
        if len(active) <= 1:
            return active[0] if active else None
        progress, total_tokens = self.progress, self._active_tokens
        best, best_lag = active[0], None
        for index, share in self._shares:
            lag = share * total_tokens - progress[index].tokens
            if best_lag is None or lag > best_lag:
                best, best_lag = index, lag
        return best

    def consume(self, index: int, tokens: int, status_name: str | None, batch_index: int) -> None:
        """Record one sample taken from dataset ``index`` (``tokens`` = 0 when it was dropped)."""
        state = self.progress[index]
        state.position += 1
        state.tokens += tokens
        state.total_tokens += tokens
        state.epoch_tokens += tokens
        if state.active:
            self._active_tokens += tokens
        if tokens:
            state.samples += 1
        if status_name is not None:
            state.counts[status_name] = state.counts.get(status_name, 0) + 1
        if state.position >= state.nlines:
            self._end_epoch(index, batch_index)

    def _end_epoch(self, index: int, batch_index: int) -> None:
        state, policy = self.progress[index], self.policies[index]
        if state.epoch_tokens == 0:
            self.leave(index, batch_index, "every sample of an epoch was dropped")
        elif policy.may_start_epoch(state.epoch + 1):
            state.epoch += 1
            state.position = 0
            state.epoch_tokens = 0
        else:
            state.epoch += 1
            state.position = 0
            self.leave(index, batch_index, "exhausted" if not policy.allow_repeat else "max_epochs reached")

    def leave(self, index: int, batch_index: int, reason: str) -> None:
        """Take a dataset out of the mix; the others' weights renormalize. Logged once."""
        state = self.progress[index]
        if not state.active:
            return
        state.active = False
        state.left_at_batch = batch_index
        state.left_reason = reason
        self._refresh_active()
        log.info("dataset '%s' left the mix at batch %d: %s", state.task_name, batch_index, reason)
