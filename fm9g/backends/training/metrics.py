"""Per-step training logs: TensorBoard (tensorboardX, the seed's tags) and a JSONL file beside it.

Tags: ``Loss/train``, ``Loss/train/<task_name>``, ``Optimizer/lr``, ``Optimizer/scale``,
``Optimizer/grad_norm``, ``Throughput/tokens_per_s``. The JSONL log (``<save>/train_log.jsonl``)
holds one object per step with the same numbers. On resume from step N both logs drop what a
killed run wrote after step N, so the logs of a resumed run read like an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from fm9g.core.atomic import write_text_atomic

LOG_NAME = "train_log.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLog:
    """The step records of a run (written by rank 0)."""

    def __init__(self, save_dir: str | Path, *, resume_step: int = 0):
        self.path = Path(save_dir) / LOG_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_jsonl(self.path, keep_through_step=resume_step)
        self.tb_dir = Path(save_dir) / TENSORBOARD_DIR
        # purge_step drops events a killed run logged after the checkpoint we resume from.
        self.writer = self._open_writer(resume_step, purge_step=resume_step + 1 if resume_step else None)
        self.handle = open(self.path, "a", encoding="utf-8")

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
        for tag, value in scalars.items():
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)
        self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.handle.flush()

    def flush(self, step: int) -> None:
        """Make everything logged through ``step`` durable (called before each checkpoint).

        tensorboardX writes events from a queue in a background thread and its ``flush`` does not
        wait for that queue, so the writer is closed (which drains it) and a new event file opened.
        """
        self.writer.close()
        self.writer = self._open_writer(step)
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.writer.close()
        self.handle.close()


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
