"""Fixtures for the training tests: a small real mixture (two indexed byte-tokenized datasets + manifest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from backend_helpers import build_mixture  # noqa: E402


@pytest.fixture(scope="session")
def mixture(tmp_path_factory) -> Path:
    """Directory with ``mix.json`` (max_length 128, batch 2, byte tokenizer) over indexed ``chat``/``book`` data."""
    return build_mixture(tmp_path_factory.mktemp("mixture"))


def write_train_config(directory: Path, manifest: Path, name: str = "train.json", **fields) -> Path:
    """A train config in ``directory`` over ``manifest`` (written relative to the config file)."""
    config = {"data": {"manifest": os.path.relpath(manifest, directory)}, "model": {"preset": "tiny-llama"},
              "save": "run", "train_iters": 8, "save_iters": 4, "batch_size": 2, "max_length": 128,
              "lr": 2e-3, "warmup_iters": 2}
    config.update(fields)
    path = directory / name
    path.write_text(json.dumps(config, indent=1), encoding="utf-8")
    return path


def fm9g_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fm9g", *args]


def run_fm9g(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(fm9g_command(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
