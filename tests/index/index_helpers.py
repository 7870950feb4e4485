"""Helpers for the index tests: the seed's own index writer and reader logic.

``seed_index_text`` / ``seed_read_all`` restate, line for line, what the seed's
``build_index_from_jsonl`` / ``IndexedDatasetBuilder`` write and what its ``IndexedDataset`` reads
(``_build_index_txt`` + ``safe_read``), so tests can check fm9g against them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py


def write_jsonl(path: Path, records: list[Any], *, newline: str = "\n") -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + newline for r in records), encoding="utf-8")
    return path


def seed_index_text(data_path: Path) -> bytes:
    """What the seed writes as ``index`` for ``data.jsonl``: 0, every line end, one per line."""
    offset = 0
    bounds = [offset]
    with open(data_path, "rb") as fin:
        for line in fin:
            offset += len(line)
            bounds.append(offset)
    return "".join(f"{s}\n" for s in bounds).encode()


def seed_write_dir(directory: Path, records: list[dict], *, h5: bool = True, text: bool = True) -> Path:
    """A directory as the seed's tooling writes it (no meta.json)."""
    directory.mkdir(parents=True)
    write_jsonl(directory / "data.jsonl", records)
    content = seed_index_text(directory / "data.jsonl")
    bounds = [int(x) for x in content.split()]
    if text:
        (directory / "index").write_bytes(content)
    if h5:
        with h5py.File(directory / "index.h5", "w") as hf:
            hf.create_dataset("index", data=bounds)
    return directory


def seed_read_all(directory: Path) -> list[dict]:
    """Every record through the seed reader's logic: text bounds, seek + read, json.loads."""
    with open(directory / "index") as fin:
        bounds = [int(line) for line in fin]
    records = []
    for key in range(len(bounds) - 1):
        offset, size = bounds[key], bounds[key + 1] - bounds[key]
        with open(directory / "data.jsonl", "rb", buffering=0) as fin:
            fin.seek(offset)
            records.append(json.loads(fin.read(size)))
    with h5py.File(directory / "index.h5", "r") as hf:
        assert list(hf["index"][()]) == bounds
    return records
