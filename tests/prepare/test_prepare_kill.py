"""A real ``fm9g prepare --force`` killed with SIGKILL at any point leaves train, test and report of one run.

A mix (the new train split beside the old test split) would put test rows into training, so the
outputs after each kill must be exactly the previous run's or exactly the new run's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fm9g.prepare.prepare import prepare

pytestmark = pytest.mark.slow

ROWS = 60_000
FILES = ("train.jsonl", "test.jsonl", "prepare_report.json")


def _outputs(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in FILES}


def _assert_one_run(output: Path, runs: list[dict[str, bytes]]) -> None:
    got = _outputs(output)
    train = set(got["train.jsonl"].splitlines())
    test = set(got["test.jsonl"].splitlines())
    assert not train & test, f"{len(train & test)} test rows are also in train"
    assert got in runs, "the outputs are not those of one complete run"


def _kill_when(command: list[str], temp_of: Callable[[int], Path], ready: Callable[[Path], bool]) -> int:
    """Start ``command``; SIGKILL it as soon as ``ready(temp directory)`` holds (within 60 s); return
    its exit status (-SIGKILL, or 0 when it had just finished)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    temp = temp_of(process.pid)
    deadline = time.monotonic() + 60
    try:
        while not ready(temp):
            assert process.poll() is None, f"finished before it could be killed: {process.stderr.read()!r}"
            assert time.monotonic() < deadline, "the kill point was never reached"
            time.sleep(0.0005)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    return process.returncode


def _has_data(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def test_killed_forced_prepare_never_mixes_two_runs(tmp_path: Path) -> None:
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"input": f"q{i}", "output": f"a{i} " + "x" * 40}) + "\n" for i in range(ROWS)),
                   encoding="utf-8")
    output = tmp_path / "out"
    prepare(raw, output, "jsonl", test_size=0.5, seed=1, progress=False)
    old = _outputs(output)
    prepare(raw, tmp_path / "reference", "jsonl", test_size=0.5, seed=2, progress=False)
    new = _outputs(tmp_path / "reference")
    assert old["test.jsonl"] != new["test.jsonl"]
    old_test_inode = (output / "test.jsonl").stat().st_ino

    def test_replaced(_temp: Path) -> bool:  # the moment a new test split is visible in the output
        try:
            return (output / "test.jsonl").stat().st_ino != old_test_inode
        except FileNotFoundError:
            return False

    kill_points = {
        "staging": lambda temp: _has_data(temp / ".staging.jsonl"),
        "train": lambda temp: _has_data(temp / "train.jsonl"),
        "test": lambda temp: _has_data(temp / "test.jsonl"),
        "published test split": test_replaced,
    }
    command = [sys.executable, "-m", "fm9g", "prepare", "--adapter", "jsonl", "--input", str(raw), "--output",
               str(output), "--split", "test=0.5", "--seed", "2", "--force", "--no-progress"]
    for point, ready in kill_points.items():
        status = _kill_when(command, lambda pid: tmp_path / f".out.fm9g-tmp-{pid}", ready)
        assert status == -signal.SIGKILL or point == "published test split" and status == 0, (point, status)
        try:
            _assert_one_run(output, [old, new])
        except AssertionError as error:
            raise AssertionError(f"killed at {point}: {error}") from None
    # the last kill came after the new run was published
    assert _outputs(output) == new
    # the next run succeeds and removes every killed run's temporary directory
    prepare(raw, output, "jsonl", test_size=0.5, seed=1, force=True, progress=False)
    assert _outputs(output) == old
    assert not [path for path in tmp_path.iterdir() if ".fm9g-tmp-" in path.name]
