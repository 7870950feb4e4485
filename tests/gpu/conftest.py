"""GPU tests: skipped without CUDA. Measured numbers go to ``$OUT/gpu_results.json`` when ``OUT`` is set.

Run them all with ``tests/gpu/run.sh`` (writes ``$OUT/gpu-tests.xml`` and the benchmark's output too).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))

if not torch.cuda.is_available():
    collect_ignore_glob = ["test_*.py"]

_RESULTS: dict = {}


@pytest.fixture(scope="session")
def record():
    """``record(name, value)`` keeps a measured value for ``$OUT/gpu_results.json``."""
    def keep(name: str, value) -> None:
        _RESULTS[name] = value
    return keep


def pytest_sessionfinish(session, exitstatus):
    out = os.environ.get("OUT")
    if out and _RESULTS:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gpu_results.json").write_text(json.dumps(_RESULTS, indent=2), encoding="utf-8")


@pytest.fixture(scope="session")
def gpu_mixture(tmp_path_factory) -> Path:
    from backend_helpers import build_mixture

    return build_mixture(tmp_path_factory.mktemp("gpu_mixture"), max_length=256, batch_size=4)
