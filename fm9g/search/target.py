"""What a search minimizes, read from a proxy run's held-out evaluation record.

``TASK`` is that task's held-out loss; ``loss`` the token-weighted loss over every evaluated task;
``weighted_loss`` the tasks' losses weighted by the *manifest's* ``abs_weight`` (not the run's, so
that every run is scored by the same rule); ``chat:0.7,book:0.3`` a weighted sum of tasks' losses
(weights normalized to sum 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fm9g.core.errors import Fm9gError
from fm9g.search.space import parse_task_values


@dataclass(frozen=True)
class Target:
    text: str
    task_weights: dict[str, float] | None
    """Normalized weights over tasks; ``None`` for the token-weighted ``loss``."""

    def value(self, record: dict[str, Any], *, where: str) -> float:
        """The target's value in an evaluation record (``fm9g train``'s ``eval_log.jsonl`` line)."""
        if self.task_weights is None:
            if record.get("loss") is None:
                raise Fm9gError("the evaluation has no held-out loss", where=where,
                                fix="give the tasks held-out sets (eval_path, or fm9g prepare --split)")
            return float(record["loss"])
        total = 0.0
        for name, weight in self.task_weights.items():
            task = record.get("tasks", {}).get(name)
            if not task or task.get("loss") is None:
                raise Fm9gError(f"task '{name}' has no held-out loss in the evaluation", where=where,
                                fix="give it a held-out set (eval_path, or fm9g prepare --split and fm9g index)")
            total += weight * float(task["loss"])
        return total


def parse_target(text: str, task_names: list[str], manifest_weights: dict[str, float],
                 evaluated: list[str]) -> Target:
    """The target named by ``--target``; every task it needs must have a held-out set (``evaluated``)."""
    if text == "loss":
        weights = None
        needed = evaluated
    elif text == "weighted_loss":
        weights = {name: manifest_weights[name] for name in evaluated}
    elif text in task_names:
        weights = {text: 1.0}
    elif ":" not in text and "=" not in text:
        raise Fm9gError(f"unknown task '{text}'", where="--target",
                        fix=f"name a task ({', '.join(task_names)}), loss, weighted_loss or a sum like "
                            f"{task_names[0]}:0.7,{task_names[-1]}:0.3")
    else:
        weights = parse_task_values(text, task_names, option="--target")
    if weights is not None:
        if any(value < 0 for value in weights.values()) or sum(weights.values()) <= 0:
            raise Fm9gError(f"the target's task weights must be non-negative and not all 0: {text}", where="--target",
                            fix="write e.g. chat:0.7,book:0.3")
        total = sum(weights.values())
        weights = {name: value / total for name, value in weights.items() if value > 0}
        needed = list(weights)
    missing = [name for name in needed if name not in evaluated]
    if not needed or missing:
        raise Fm9gError(f"the target needs held-out loss of {', '.join(missing) or 'some task'}, which "
                        f"{'has' if len(missing) == 1 else 'have'} no held-out set", where=f"--target {text}",
                        fix="add eval_path to the manifest entry, or index a test split (fm9g prepare --split)")
    return Target(text, weights)
