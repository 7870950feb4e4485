"""Learning-rate schedules with the seed's names, as pure functions of the step.

``lr_at(step, ...)`` is the learning rate of optimizer step ``step`` (0-based). Warmup is linear
and reaches ``lr`` after ``warmup_iters`` steps; its first step already runs at ``lr/warmup_iters``
(the seed's first step ran at lr = 0 because it stepped the scheduler after the optimizer; fm9g
does not copy that). After warmup, ``progress`` runs from 0 (first step after warmup) to 1 (the last step).

* ``cosine`` — the seed's: ``lr·(0.1 + 0.45·(1 + cos(π·progress)))``, i.e. down to a 10% floor;
* ``wsd`` — warmup, stable at ``lr``, then a linear decay to the floor over the last
  ``drop_iters`` fraction of ``train_iters``;
* ``linear`` — linear decay to the floor; ``constant`` — ``lr`` after warmup.

The floor is ``min_lr_ratio·lr`` (0.1 by default, the seed's). Being stateless, a schedule
resumes exactly from the step number alone.
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "wsd", "constant", "linear")


def lr_at(step: int, *, lr: float, lr_scheduler: str = "cosine", warmup_iters: int = 0,
          train_iters: int = 1, drop_iters: float = 0.1, min_lr_ratio: float = 0.1) -> float:
    """The learning rate of 0-based optimizer step ``step``."""
    if lr_scheduler not in SCHEDULES:
        raise ValueError(f"unknown lr_scheduler {lr_scheduler!r}; known: {', '.join(SCHEDULES)}")
    if step < warmup_iters:
        return lr * (step + 1) / warmup_iters
    if lr_scheduler == "constant":
        return lr
    floor = min_lr_ratio * lr
    if lr_scheduler == "wsd":
        decay_steps = max(1, round(drop_iters * train_iters)) if drop_iters > 0 else 0
        decay_start = max(warmup_iters, train_iters - decay_steps)
        if step < decay_start or decay_steps == 0:
            return lr
        progress = min(1.0, (step - decay_start + 1) / max(1, train_iters - decay_start))
        return lr - (lr - floor) * progress
    span = max(1, train_iters - warmup_iters - 1)  # the last step reaches the floor
    progress = min(1.0, (step - warmup_iters) / span)
    if lr_scheduler == "linear":
        return lr - (lr - floor) * progress
    return lr * (min_lr_ratio + (1 - min_lr_ratio) / 2 * (1 + math.cos(math.pi * progress)))


def schedule_from_config(config: dict) -> "Schedule":
    """The schedule a resolved train config describes."""
    return Schedule(lr=config["lr"], lr_scheduler=config["lr_scheduler"], warmup_iters=config["warmup_iters"],
                    train_iters=config["train_iters"], drop_iters=config["drop_iters"],
                    min_lr_ratio=config["min_lr_ratio"])


class Schedule:
    """A bound schedule: ``schedule(step) -> lr``; ``state_dict()`` is what ``scheduler.json`` holds."""

    def __init__(self, **settings):
        self.settings = settings

    def __call__(self, step: int) -> float:
        return lr_at(step, **self.settings)

    def state_dict(self, step: int) -> dict:
        return {**self.settings, "next_step": step, "last_lr": self(step - 1) if step > 0 else None}
