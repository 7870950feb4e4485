"""``run_fm9g``: the real ``fm9g`` CLI in a subprocess, for tests of more than one stage's commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_fm9g(*args: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m fm9g ARGS``; with ``check``, fail the test on a non-zero exit, showing stderr."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, "-m", "fm9g", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"fm9g {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result
