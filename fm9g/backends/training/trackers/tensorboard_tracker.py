"""The ``tensorboard`` tracker (the default): tensorboardX event files in ``<save>/tensorboard``.

On resume from step N the first event file purges what a killed run logged after N, so the curves of
a resumed run read like an uninterrupted one. View them with ``tensorboard --logdir <save>/tensorboard``
(``pip install 'fm9g[viewer]'``; writing needs only tensorboardX).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import fm9g
from fm9g.backends.training.trackers import TrackerRun

TENSORBOARD_DIR = "tensorboard"


class TensorBoardSession:
    def __init__(self, directory: Path, resume_step: int):
        self.directory = directory
        self.writer = self._open_writer(resume_step, purge_step=resume_step + 1 if resume_step else None)

    def _open_writer(self, step: int, purge_step: int | None = None) -> Any:
        """A SummaryWriter whose event file name is unique to this process and step (files sort by step)."""
        from tensorboardX import SummaryWriter

        return SummaryWriter(logdir=str(self.directory), purge_step=purge_step,
                             filename_suffix=f".{step:010d}.{os.getpid()}")

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def flush(self, step: int) -> None:
        """tensorboardX writes events from a queue in a background thread and its ``flush`` does not
        wait for that queue, so the writer is closed (which drains it) and a new event file opened."""
        self.writer.close()
        self.writer = self._open_writer(step)

    def close(self) -> None:
        self.writer.close()


class TensorBoardLogger:
    name = "tensorboard"
    description = "TensorBoard event files in <save>/tensorboard (tensorboardX); the default"
    options_schema = {"type": "object", "properties": {}, "additionalProperties": False}

    def open(self, run: TrackerRun, options: dict[str, Any]) -> TensorBoardSession:
        return TensorBoardSession(run.save_dir / TENSORBOARD_DIR, run.resume_step)


@fm9g.hookimpl
def register_loggers(register) -> None:
    register(TensorBoardLogger())
