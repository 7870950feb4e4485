"""Fixtures for the training tests: a small real mixture (two indexed byte-tokenized datasets + manifest)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from backend_helpers import build_mixture  # noqa: E402


@pytest.fixture(scope="session")
def mixture(tmp_path_factory) -> Path:
    """Directory with ``mix.json`` (max_length 128, batch 2, byte tokenizer) over indexed ``chat``/``book`` data."""
    return build_mixture(tmp_path_factory.mktemp("mixture"))
