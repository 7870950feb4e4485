"""A real ``fm9g index`` process killed with SIGKILL mid-build leaves nothing that reads as complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from index_helpers import write_jsonl

from fm9g.core.errors import Fm9gError
from fm9g.index.builder import BuildOptions, build_index
from fm9g.index.reader import IndexedDataset

pytestmark = pytest.mark.slow


def _big_input(path: Path, megabytes: int) -> Path:
    line = json.dumps({"input": "问题是什么？" * 3, "output": "这是一个很长的回答，" * 60 + " and some English words"},
                      ensure_ascii=False) + "\n"
    path.write_text(line * (megabytes * 1_000_000 // len(line.encode())), encoding="utf-8")
    return path


def _start_and_kill(source: Path, output: Path, tokenizer: str, *extra: str) -> Path:
    """Start fm9g index, SIGKILL it once its temp directory holds data; return the temp directory."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fm9g", "index", "--input", str(source), "--output", str(output), "--workers", "1",
         "--chunk-mb", "0.25", "--tokenizer", tokenizer, "--no-progress", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    temp = output.with_name(f".{output.name}.fm9g-tmp-{process.pid}")
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            data = temp / "data.jsonl"
            if data.exists() and data.stat().st_size > 0:
                break
            assert process.poll() is None, f"finished before it could be killed: {process.communicate()}"
            time.sleep(0.005)
        else:
            pytest.fail("the index process never started writing")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    return temp


def test_killed_build_leaves_no_complete_directory(tmp_path: Path, hf_tokenizer_dir: Path) -> None:
    source = _big_input(tmp_path / "big.jsonl", 6)
    output = tmp_path / "idx"
    temp = _start_and_kill(source, output, f"hf:{hf_tokenizer_dir}")
    assert not output.exists()
    with pytest.raises(Fm9gError, match="not found"):
        IndexedDataset(output)
    assert temp.is_dir() and temp.name.startswith(".")
    with pytest.raises(Fm9gError):
        IndexedDataset(temp)  # the half-written temp directory does not read as an index either
    # the next run succeeds and removes the dead run's leftovers
    build_index([source], output, BuildOptions(workers=2, progress=False))
    IndexedDataset(output).verify()
    assert not temp.exists()
    assert not _leftovers(tmp_path)


def test_killed_forced_rebuild_keeps_the_old_index(tmp_path: Path, hf_tokenizer_dir: Path) -> None:
    output = tmp_path / "idx"
    small = write_jsonl(tmp_path / "small.jsonl", [{"input": "", "output": "old"}])
    build_index([small], output, BuildOptions(workers=1, progress=False))
    source = _big_input(tmp_path / "big.jsonl", 6)
    _start_and_kill(source, output, f"hf:{hf_tokenizer_dir}", "--force")
    ds = IndexedDataset(output)
    ds.verify()
    assert len(ds) == 1 and ds[0]["output"] == "old"
    assert _leftovers(tmp_path)  # the killed run's temp directory, until the next run
    build_index([small], output, BuildOptions(workers=1, force=True, progress=False))
    assert not _leftovers(tmp_path)


def _leftovers(root: Path) -> list[Path]:
    """Every temporary file or directory of an interrupted write under ``root``."""
    return [path for path in root.rglob("*") if ".fm9g-tmp-" in path.name]
