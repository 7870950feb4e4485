"""Fixtures for mixer tests (the helpers live in ``mixer_helpers.py``, importable by name)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mixer_helpers import numbered_records, write_manifest, write_seed_dataset


@pytest.fixture
def seed_dataset() -> Callable[..., Path]:
    return write_seed_dataset


@pytest.fixture
def make_mix(tmp_path: Path) -> Callable[..., Path]:
    """``make_mix({"a": (rows, weight), ...}, **settings)`` -> manifest path over fresh datasets."""

    def make(spec: dict[str, tuple[int, float]], *, dataset_options: dict[str, dict] | None = None, **settings: Any) -> Path:
        datasets = []
        for task, (rows, weight) in spec.items():
            write_seed_dataset(tmp_path / "idx" / task, numbered_records(task, rows))
            entry = {"task_name": task, "path": f"idx/{task}", "abs_weight": weight}
            entry.update((dataset_options or {}).get(task, {}))
            datasets.append(entry)
        settings.setdefault("max_length", 64)
        return write_manifest(tmp_path / "mix.json", datasets, **settings)

    return make
