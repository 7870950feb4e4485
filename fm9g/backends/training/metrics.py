"""Per-step training logs: TensorBoard (tensorboardX, the seed's tags) and JSONL files beside it.

Tags: ``Loss/train``, ``Loss/train/<task_name>``, ``Optimizer/lr``, ``Optimizer/scale``,
``Optimizer/grad_norm``, ``Throughput/tokens_per_s``, ``Mixture/weight/<task_name>`` (online
reweighting: the weights each step's data was drawn with); held-out evaluations add ``Loss/eval``
(token-weighted over tasks), ``Loss/eval_weighted`` (weighted by the mixture's weights),
``Perplexity/eval``, ``Loss/eval/<task_name>`` and ``Perplexity/eval/<task_name>``. The JSONL
logs (``<save>/train_log.jsonl``, ``<save>/eval_log.jsonl``) hold one object per step or
evaluation with the same numbers. On resume from step N every log drops what a killed run wrote
after step N, so the logs of a resumed run read like an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from fm9g.core.atomic import write_text_atomic

LOG_NAME = "train_log.jsonl"
EVAL_LOG_NAME = "eval_log.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLog:
    """The step records of a run (written by rank 0)."""

    def __init__(self, save_dir: str | Path, *, resume_step: int = 0):
        self.path = Path(save_dir) / LOG_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.eval_path = Path(save_dir) / EVAL_LOG_NAME
        for path in (self.path, self.eval_path):
            _truncate_jsonl(path, keep_through_step=resume_step)
        self.tb_dir = Path(save_dir) / TENSORBOARD_DIR
        # purge_step drops events a killed run logged after the checkpoint we resume from.
        self.writer = self._open_writer(resume_step, purge_step=resume_step + 1 if resume_step else None)
        self.handle = open(self.path, "a", encoding="utf-8")
        self.eval_handle = open(self.eval_path, "a", encoding="utf-8")

    def _open_writer(self, step: int, purge_step: int | None = None):
        """A SummaryWriter whose event file name is unique to this process and step (files sort by step)."""
        from tensorboardX import SummaryWriter

        return SummaryWriter(logdir=str(self.tb_dir), purge_step=purge_step,
                             filename_suffix=f".{step:010d}.{os.getpid()}")

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
        for tag, value in scalars.items():
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)

    def flush(self, step: int) -> None:
        """Make everything logged through ``step`` durable (called before each checkpoint).

        tensorboardX writes events from a queue in a background thread and its ``flush`` does not
        wait for that queue, so the writer is closed (which drains it) and a new event file opened.
        """
        self.writer.close()
        self.writer = self._open_writer(step)
        for handle in (self.handle, self.eval_handle):
            handle.flush()
            os.fsync(handle.fileno())

    def close(self) -> None:
        self.writer.close()
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
