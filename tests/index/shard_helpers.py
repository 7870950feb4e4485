"""Helpers for the sharded-index tests: inputs whose cuts fall everywhere, and comparisons with one index."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fm9g.index.reader import IndexedDataset
from fm9g.index.sharded_reader import ShardedDataset

AGGREGATED = ("language", "nlines", "nbytes", "length_distribute", "avg_token_per_line", "total_tokens", "skipped", "record_forms",
              "normalized", "tokenizer", "tokenizer_fingerprint", "token_count_method", "data_sample")
"""The aggregate meta.json fields that must equal the one-process index's."""


def mixed_inputs(directory: Path, *, rows: int = 400, seed: int = 7) -> list[Path]:
    """Three JSONL files: Chinese-heavy with bad lines and CRLF, English without a final newline, and
    an empty one between them, so a shard's share mixes languages and its cuts land mid-file."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    first, empty, last = directory / "a.jsonl", directory / "b.jsonl", directory / "c.jsonl"
    lines = []
    for row in range(rows):
        lines.append(json.dumps({"input": f"问题{row}" * rng.randint(0, 4),
                                 "output": "回答，很长的回答。" * rng.randint(1, 40)}, ensure_ascii=False))
        if row % 97 == 5:
            lines.append("{not json")
        if row % 131 == 7:
            lines.append(json.dumps({"input": "no output"}))
    first.write_bytes(("\r\n".join(lines[: rows // 2]) + "\r\n" + "\n".join(lines[rows // 2:]) + "\n").encode())
    empty.write_bytes(b"")
    english = [json.dumps({"input": "", "output": " ".join(["word"] * rng.randint(1, 80)) + f" {row}"})
               for row in range(rows // 2)]
    last.write_text("\n".join(english), encoding="utf-8")  # no final newline
    return [first, empty, last]


def assert_same_rows(single: IndexedDataset, sharded: ShardedDataset) -> None:
    """Row for row (bytes) and token for token, and the aggregate statistics equal the one index's."""
    assert len(sharded) == len(single)
    assert [sharded.raw(i) for i in range(len(sharded))] == [single.raw(i) for i in range(len(single))]
    if single.token_counts is not None:
        counts = np.concatenate([np.asarray(shard.token_counts) for shard in sharded.shards])
        assert np.array_equal(counts, np.asarray(single.token_counts))
    for key in AGGREGATED:
        assert sharded.meta[key] == single.meta[key], key


def tree(directory: Path) -> dict[str, bytes]:
    """Every file of a sharded index (the checksum cache aside, which records inodes) by relative path."""
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*"))
            if path.is_file() and path.name != ".fm9g-verified.json"}


def big_input(path: Path, megabytes: float) -> Path:
    """A JSONL file of distinct records, big enough that indexing it takes a killable while."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        written, row = 0, 0
        while written < megabytes * 1_000_000:
            line = json.dumps({"input": f"问题 {row} 是什么？", "output": f"回答 {row}，" + "这是一个很长的回答，" * 40
                               + " and some English words"}, ensure_ascii=False) + "\n"
            handle.write(line)
            written += len(line.encode())
            row += 1
    return path


def wait_for_temp_data(output: Path, name: str, alive: Callable[[], bool], *, seconds: float = 120) -> int:
    """The PID in the name of the temp directory of shard ``name`` once it holds data (the task is
    mid-build); fails when ``alive()`` turns false first or after ``seconds``."""
    deadline = time.monotonic() + seconds
    prefix = f".{name}.fm9g-tmp-"
    while time.monotonic() < deadline:
        for temp in output.glob(f"{prefix}*") if output.is_dir() else ():
            data = temp / "data.jsonl"
            if data.exists() and data.stat().st_size > 0:
                return int(temp.name[len(prefix):])
        assert alive(), "the task finished before it could be killed"
        time.sleep(0.005)
    raise AssertionError(f"shard {name} never started writing")
