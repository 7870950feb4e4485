"""Training logs survive a SIGKILL right after a checkpoint flush, and a resume drops what came after."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fm9g.backends.training.metrics import MetricsLog, read_log

KILLED_AFTER_FLUSH = textwrap.dedent("""
    import os, signal, sys
    from fm9g.backends.training.metrics import MetricsLog
    logger = MetricsLog(sys.argv[1])
    for step in range(1, 6):
        logger.log_step({"step": step, "loss": 1.0 / step, "lr": 0.1, "grad_norm": 1.0, "scale": 1.0,
                         "tokens_per_s": 10.0, "task_loss": {"chat": 2.0 / step}})
        if step == 4:
            logger.flush(step)
            os.kill(os.getpid(), signal.SIGKILL)
""")


def _scalar_steps(directory, tag):
    events = EventAccumulator(str(directory / "tensorboard"))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def test_everything_logged_before_a_flush_survives_sigkill_and_resume_truncates(tmp_path):
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_FLUSH, str(tmp_path)])
    assert killed.returncode == -9
    assert _scalar_steps(tmp_path, "Loss/train") == [1, 2, 3, 4]
    assert _scalar_steps(tmp_path, "Loss/train/chat") == [1, 2, 3, 4]
    assert [record["step"] for record in read_log(tmp_path / "train_log.jsonl")] == [1, 2, 3, 4]

    logger = MetricsLog(tmp_path, resume_step=2)
    for step in (3, 4):
        logger.log_step({"step": step, "loss": 0.5, "lr": 0.1, "grad_norm": 1.0, "scale": 1.0,
                         "tokens_per_s": 10.0})
    logger.close()
    assert _scalar_steps(tmp_path, "Loss/train") == [1, 2, 3, 4]
    assert [record["loss"] for record in read_log(tmp_path / "train_log.jsonl")][2:] == [0.5, 0.5]
