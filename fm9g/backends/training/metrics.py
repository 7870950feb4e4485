"""Per-step training logs: JSONL files, and the run's experiment trackers (TensorBoard by default).

Tags: ``Loss/train``, ``Loss/train/<task_name>``, ``Optimizer/lr``, ``Optimizer/scale``,
``Optimizer/grad_norm``, ``Throughput/tokens_per_s``, ``Mixture/weight/<task_name>`` (online
reweighting: the weights each step's data was drawn with); held-out evaluations add ``Loss/eval``
(token-weighted over tasks), ``Loss/eval_weighted`` (weighted by the mixture's weights),
``Perplexity/eval``, ``Loss/eval/<task_name>`` and ``Perplexity/eval/<task_name>``. The JSONL
logs (``<save>/train_log.jsonl``, ``<save>/eval_log.jsonl``) hold one object per step or
evaluation with the same numbers. On resume from step N every log drops what a killed run wrote
after step N, so the logs of a resumed run read like an uninterrupted one.

The tags go to every tracker the train config's ``report_to`` selects (:mod:`.trackers`:
``tensorboard`` — event files in ``<save>/tensorboard`` with the seed's tags —, ``mlflow``,
``wandb`` or a plugin's), each getting the same finite values at the same steps.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from fm9g.backends.training.trackers import DEFAULT_REPORT_TO, TrackerRun, open_trackers
from fm9g.core.atomic import write_text_atomic

LOG_NAME = "train_log.jsonl"
EVAL_LOG_NAME = "eval_log.jsonl"


class MetricsLog:
    """The step records of a run (written by rank 0)."""

    def __init__(self, save_dir: str | Path, *, resume_step: int = 0, report_to: Any = DEFAULT_REPORT_TO,
                 config: dict[str, Any] | None = None, mixture: dict[str, Any] | None = None):
        """``report_to``: the train config's tracker entries; ``config`` and ``mixture`` (the resolved
        train config and :func:`~fm9g.backends.training.trackers.mixture_plan`) are handed to them."""
        save_dir = Path(save_dir)
        self.path = save_dir / LOG_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.eval_path = save_dir / EVAL_LOG_NAME
        for path in (self.path, self.eval_path):
            _truncate_jsonl(path, keep_through_step=resume_step)
        run = TrackerRun(save_dir=save_dir.resolve(), name=save_dir.resolve().name, config=config or {},
                         mixture=mixture or {}, resume_step=resume_step)
        self.trackers = open_trackers(report_to, run)
        self.handle = open(self.path, "a", encoding="utf-8")
        self.eval_handle = open(self.eval_path, "a", encoding="utf-8")

    def log_step(self, record: dict[str, Any]) -> None:
        """``record``: step (1-based), loss, lr, grad_norm, scale, tokens, tokens_per_s, task_loss {name: loss}."""
        step = record["step"]
        scalars = {"Loss/train": record["loss"], "Optimizer/lr": record["lr"],
                   "Optimizer/scale": record["scale"], "Optimizer/grad_norm": record["grad_norm"],
                   "Throughput/tokens_per_s": record["tokens_per_s"]}
        for name, value in record.get("task_loss", {}).items():
            scalars[f"Loss/train/{name}"] = value
        for name, value in record.get("mixture_weights", {}).items():
            scalars[f"Mixture/weight/{name}"] = value
        self._scalars(scalars, step)
        self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.handle.flush()

    def log_eval(self, record: dict[str, Any]) -> None:
        """``record``: step, loss (token-weighted), weighted_loss (by mixture weight), perplexity,
        tasks {name: {loss, perplexity, tokens, samples}}."""
        step = record["step"]
        scalars = {"Loss/eval": record["loss"], "Loss/eval_weighted": record["weighted_loss"],
                   "Perplexity/eval": record["perplexity"]}
        for name, task in record["tasks"].items():
            scalars[f"Loss/eval/{name}"] = task["loss"]
            scalars[f"Perplexity/eval/{name}"] = task["perplexity"]
        self._scalars(scalars, step)
        self.eval_handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.eval_handle.flush()

    def _scalars(self, scalars: dict[str, float | None], step: int) -> None:
        finite = {tag: float(value) for tag, value in scalars.items() if value is not None and math.isfinite(value)}
        for tracker in self.trackers:
            tracker.log_scalars(finite, step)

    def flush(self, step: int) -> None:
        """Make everything logged through ``step`` durable (called before each checkpoint)."""
        for tracker in self.trackers:
            tracker.flush(step)
        for handle in (self.handle, self.eval_handle):
            handle.flush()
            os.fsync(handle.fileno())

    def close(self) -> None:
        """Close every tracker (each one, even when another fails) and the JSONL files."""
        try:
            for tracker in self.trackers:
                try:
                    tracker.close()
                except Exception as error:  # noqa: BLE001 - one tracker's failure must not lose the others' runs
                    print(f"fm9g train: warning: closing a tracker failed: {type(error).__name__}: {error}",
                          file=sys.stderr)
        finally:
            self.handle.close()
            self.eval_handle.close()


def _truncate_jsonl(path: Path, *, keep_through_step: int) -> None:
    """Keep only complete lines whose step is <= ``keep_through_step`` (rewritten atomically)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= keep_through_step:
            kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL training log."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
