"""N separate ``fm9g prepare --shard i/N`` processes (a Slurm array's tasks), one SIGKILLed mid-shard:
the killed shard never reads as complete, nothing is merged, and its rerun completes a prepare equal
byte for byte to the one-process prepare."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prepare_shard_helpers import assert_same_prepare

from fm9g.core.errors import Fm9gError
from fm9g.core.sharding import PLAN_FILE
from fm9g.prepare.prepare import prepare
from fm9g.prepare.shards import finalize_prepare, missing_shards

pytestmark = pytest.mark.slow


def _big_jsonl(path: Path, megabytes: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        written = row = 0
        while written < megabytes * 1_000_000:
            line = json.dumps({"q": f"问题 {row}", "a": f"回答 {row}，" + "很长的回答，" * 30}, ensure_ascii=False) + "\n"
            handle.write(line)
            written += len(line.encode())
            row += 1
    return path


def _task(source: Path, output: Path, index: int) -> list[str]:
    return [sys.executable, "-m", "fm9g", "prepare", "--adapter", "jsonl", "--map", "input=q,output=a",
            "--input", str(source), "--output", str(output), "--split", "test=0.05", "--seed", "11",
            "--shard", f"{index}/3", "--no-progress"]


def _wait_for_staged_items(output: Path, name: str, process: subprocess.Popen, seconds: float = 120) -> None:
    """Return once the task's temp directory of shard ``name`` holds staged items (it is mid-shard)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for temp in output.glob(f".{name}.fm9g-tmp-*") if output.is_dir() else ():
            items = temp / "items.jsonl"
            if items.exists() and items.stat().st_size > 0:
                return
        assert process.poll() is None, "the task finished before it could be killed"
        time.sleep(0.0005)
    raise AssertionError(f"shard {name} never started staging")


def test_shard_processes_one_killed_and_rerun_equal_one_process(tmp_path: Path) -> None:
    source = _big_jsonl(tmp_path / "raw" / "big.jsonl", 24)
    output = tmp_path / "sharded"
    victim = subprocess.Popen(_task(source, output, 1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_staged_items(output, "shard-00001-of-00003", victim)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    for index in (0, 2):
        subprocess.run(_task(source, output, index), check=True, capture_output=True, timeout=300)
    plan = json.loads((output / PLAN_FILE).read_text(encoding="utf-8"))
    assert missing_shards(output, plan) == [1]
    assert not (output / "train.jsonl").exists() and not (output / "prepare_report.json").exists()
    with pytest.raises(Fm9gError, match="1 of 3 shards are not complete: 1"):
        finalize_prepare(output)
    rerun = subprocess.run(_task(source, output, 1), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "prepared" in rerun.stdout and "test)" in rerun.stdout
    prepare(source, tmp_path / "one", "jsonl", {"map": {"input": "q", "output": "a"}}, test_size=0.05, seed=11,
            progress=False)
    assert_same_prepare(tmp_path / "one", output)
