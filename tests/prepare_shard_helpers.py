"""Helpers for the sharded-prepare tests: raw inputs whose shard cuts fall everywhere, and the
comparison of a sharded prepare with the one-process prepare of the same input."""

from __future__ import annotations

import json
import random
from pathlib import Path

OUTPUTS = ("train.jsonl", "test.jsonl")


def jsonl_input(path: Path, *, rows: int = 3000, seed: int = 1) -> Path:
    """JSON Lines with a BOM, bad lines, blank lines, items the adapter drops and no final newline."""
    rng = random.Random(seed)
    lines = []
    for row in range(rows):
        lines.append(json.dumps({"q": f"问题{row}" * rng.randint(0, 3), "a": "answer " * rng.randint(0, 5)},
                                ensure_ascii=False))
        if row % 97 == 3:
            lines.append("{not json")
        if row % 50 == 1:
            lines.append("")
        if row % 71 == 9:
            lines.append(json.dumps({"q": "no answer"}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\ufeff" + "\n".join(lines)).encode())
    return path


def text_input(path: Path, *, rows: int = 2000) -> Path:
    """CRLF text with blank lines (dropped by the txt adapter) and a line that is not UTF-8."""
    lines = [f"line {row} 的文字".encode() if row % 7 else b"   " for row in range(rows)]
    lines[777] = b"\xff\xfe broken"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    return path


def alpaca_input(path: Path, *, rows: int = 500) -> Path:
    """A pretty-printed JSON array (cannot be cut: it goes whole to one shard)."""
    items = [{"instruction": f"指令 {row}", "input": "x" if row % 3 else "", "output": f"output {row}"}
             for row in range(rows)]
    items[5] = {"instruction": 3}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


def assert_same_prepare(one: Path, sharded: Path) -> None:
    """train.jsonl and test.jsonl byte for byte, and the report but for its ``sharded`` entry."""
    for name in OUTPUTS:
        assert (one / name).exists() == (sharded / name).exists(), name
        if (one / name).exists():
            assert (one / name).read_bytes() == (sharded / name).read_bytes(), name
    report = json.loads((sharded / "prepare_report.json").read_text(encoding="utf-8"))
    assert report.pop("sharded")["count"] >= 1
    assert report == json.loads((one / "prepare_report.json").read_text(encoding="utf-8"))
    assert not list(sharded.glob("shard-*")) and not list(sharded.glob(".*tmp*"))
