"""The shares a search may try, and its seeded draws of weight vectors.

A task's share is bounded below by its ``--min-share`` and above by its ``--max-share`` and by the
epochs its dataset may make over the token budget (the proxy's, or ``--budget-tokens``: the full
run's, so that the proposal keeps its datasets within their epochs at the size it will be used): with ``allow_repeat: false`` one epoch,
with ``max_epochs: E`` E epochs, so a share s is feasible only if s × budget ≤ E × tokens per
epoch (tokens per epoch estimated as ``fm9g mix``'s plan does, through the task's transform). Every
bound is a box constraint on the simplex, so the feasible set is convex: a mean of feasible
vectors is feasible. Constraints that leave no vector (bounds that cross, minimums above 1,
maximums below 1) are refused with one line saying which.

Draws are Dirichlet(concentration × manifest shares) (RegMix draws around the natural token
distribution the same way), accepted when inside the bounds, from one seeded generator in fixed
blocks: the first K vectors do not depend on how many are asked for, so a search can grow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fm9g.core.errors import Fm9gError
from fm9g.mixer.manifest import Manifest
from fm9g.mixer.plan import allowed_epochs

DRAW_BLOCK = 1024
MAX_DRAW_BLOCKS = 2000
"""At most 2,048,000 candidate draws: constraints that accept fewer than one in that many are refused."""
ALPHA_FLOOR = 0.05
"""The least Dirichlet parameter, so a task with a tiny (or zero) manifest weight is still explored."""


def parse_task_values(text: str | None, task_names: list[str], *, option: str) -> dict[str, float]:
    """``chat:0.7,book:0.3`` (or ``=``) as {task: value}; an unknown task or a bad number is an error."""
    if not text:
        return {}
    values: dict[str, float] = {}
    for item in text.split(","):
        name, sep, raw = item.strip().replace("=", ":").rpartition(":")
        if not sep or not name:
            raise Fm9gError(f"'{item}' is not TASK:VALUE", where=option, fix="write e.g. chat:0.7,book:0.3")
        if name not in task_names:
            raise Fm9gError(f"unknown task '{name}'", where=option, fix=f"the manifest's tasks: {', '.join(task_names)}")
        try:
            values[name] = float(raw)
        except ValueError:
            raise Fm9gError(f"'{raw}' is not a number", where=f"{option} {item}", fix="write e.g. chat:0.7") from None
    return values


@dataclass(frozen=True)
class SearchSpace:
    """The tasks, the manifest's shares and each task's lower and upper share bound."""

    task_names: list[str]
    base: np.ndarray
    """The manifest's shares (abs_weight normalized)."""
    lower: np.ndarray
    upper: np.ndarray
    natural: np.ndarray
    """Size-proportional shares (tokens per epoch normalized): the 'natural' mixture."""
    budget_tokens: float
    tokens_per_epoch: np.ndarray
    reasons: list[str]
    """Why each upper bound is what it is, for the report."""

    def feasible(self, weights: np.ndarray) -> np.ndarray:
        """Which rows of ``weights`` (shares) satisfy every bound (to 1e-9)."""
        weights = np.atleast_2d(weights)
        return np.all((weights >= self.lower - 1e-9) & (weights <= self.upper + 1e-9), axis=1)

    def as_json(self) -> dict[str, Any]:
        return {"tasks": self.task_names, "manifest_shares": self.base.tolist(), "lower": self.lower.tolist(),
                "upper": self.upper.tolist(), "natural_shares": self.natural.tolist(),
                "budget_tokens": self.budget_tokens, "tokens_per_epoch": self.tokens_per_epoch.tolist(),
                "upper_reasons": self.reasons}


def build_space(manifest: Manifest, tokens_per_epoch: list[float], budget_tokens: float, *,
                min_shares: dict[str, float], max_shares: dict[str, float]) -> SearchSpace:
    """The bounds of each task's share; raise :class:`Fm9gError` when no weight vector meets them."""
    names = manifest.task_names
    weights = np.array([spec.abs_weight for spec in manifest.datasets], dtype=float)
    sizes = np.array(tokens_per_epoch, dtype=float)
    lower = np.array([min_shares.get(name, 0.0) for name in names])
    upper = np.ones(len(names))
    reasons = []
    for i, (name, spec) in enumerate(zip(names, manifest.datasets)):
        limit, reason = 1.0, "none"
        if name in max_shares:
            limit, reason = max_shares[name], f"--max-share {max_shares[name]:g}"
        epochs = allowed_epochs(spec)
        if np.isfinite(epochs):
            fits = epochs * sizes[i] / budget_tokens if budget_tokens > 0 else 1.0
            if fits < limit:
                rule = "allow_repeat false: 1 epoch" if not spec.allow_repeat else f"max_epochs {spec.max_epochs}"
                limit, reason = fits, (f"{rule} × {sizes[i]:,.0f} tokens an epoch over a budget of "
                                       f"{budget_tokens:,.0f} tokens")
        upper[i] = limit
        reasons.append(reason)
    for name, value in {**min_shares, **max_shares}.items():
        if not 0 <= value <= 1:
            raise Fm9gError(f"share {value:g} for task '{name}' is not between 0 and 1", where="--min-share/--max-share",
                            fix="give shares as fractions, e.g. chat:0.2")
    for i, name in enumerate(names):
        if lower[i] > upper[i] + 1e-12:
            raise Fm9gError(f"task '{name}' needs a share of at least {lower[i]:g} but may have at most {upper[i]:.4g} "
                            f"({reasons[i]})", where="--min-share",
                            fix="lower its --min-share, or (for an epoch limit) raise max_epochs or shorten the proxy run")
    if lower.sum() > 1 + 1e-12:
        raise Fm9gError(f"the minimum shares sum to {lower.sum():.4g}, more than 1", where="--min-share",
                        fix="lower them so that they sum to at most 1")
    if upper.sum() < 1 - 1e-12:
        binding = "; ".join(f"{name} ≤ {upper[i]:.4g} ({reasons[i]})" for i, name in enumerate(names))
        raise Fm9gError(f"the largest shares the tasks may have sum to {upper.sum():.4g}, less than 1: {binding}",
                        where="--max-share / max_epochs / allow_repeat",
                        fix="raise --max-share or max_epochs, allow_repeat, or give the proxy fewer train_iters")
    return SearchSpace(names, weights / weights.sum(), lower, upper, sizes / sizes.sum() if sizes.sum() else sizes,
                       budget_tokens, sizes, reasons)


def draw_weights(space: SearchSpace, count: int, *, seed: int, concentration: float,
                 center: np.ndarray | None = None) -> np.ndarray:
    """``count`` share vectors inside the bounds, Dirichlet around ``center`` (default the manifest's
    shares); the same ``seed`` gives the same vectors, and the first K of any longer draw."""
    if concentration <= 0:
        raise Fm9gError(f"--concentration must be positive, got {concentration:g}", where="--concentration",
                        fix="give e.g. 1 (wide) to 20 (close to the manifest's weights)")
    center = space.base if center is None else center
    alpha = np.maximum(concentration * len(space.task_names) * center, ALPHA_FLOOR)
    rng = np.random.default_rng(seed)
    accepted: list[np.ndarray] = []
    have, drawn = 0, 0
    for _ in range(MAX_DRAW_BLOCKS):
        if have >= count:
            break
        block = rng.dirichlet(alpha, size=DRAW_BLOCK)
        drawn += DRAW_BLOCK
        kept = block[space.feasible(block)]
        accepted.append(kept)
        have += len(kept)
    if have < count:
        raise Fm9gError(f"the share bounds accept only {have} of {drawn:,} Dirichlet draws (needed {count})",
                        where="--min-share/--max-share", fix="loosen the bounds, or change --concentration")
    return np.concatenate(accepted)[:count]
