"""N separate ``fm9g index --shard i/N`` processes, as a Slurm array runs them; one is killed with
SIGKILL mid-build and rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from shard_helpers import assert_same_rows, big_input, wait_for_temp_data

from fm9g.core.errors import Fm9gError
from fm9g.index.builder import BuildOptions, build_index
from fm9g.index.reader import IndexedDataset
from fm9g.index.sharded_reader import ShardedDataset
from fm9g.mixer.manifest import manifest_problems

pytestmark = pytest.mark.slow


def _task(source: Path, output: Path, shard: str, tokenizer: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fm9g", "index", "--input", str(source), "--output", str(output), "--shard", shard,
         "--tokenizer", tokenizer, "--workers", "1", "--chunk-mb", "0.25", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_shard_processes_one_killed_and_rerun_equal_one_index(tmp_path: Path, hf_tokenizer_dir: Path) -> None:
    source = big_input(tmp_path / "raw" / "big.jsonl", 4.5)
    output, tokenizer = tmp_path / "sharded", f"hf:{hf_tokenizer_dir}"
    tasks = [_task(source, output, f"{index}/3", tokenizer) for index in range(3)]
    victim = tasks[1]
    pid = wait_for_temp_data(output, "shard-00001-of-00003", lambda: victim.poll() is None)
    assert pid == victim.pid
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    for task in (tasks[0], tasks[2]):
        out, err = task.communicate(timeout=240)
        assert task.returncode == 0, err
        assert "built" in out
    assert not (output / "shard-00001-of-00003").exists() and not (output / "meta.json").exists()
    with pytest.raises(Fm9gError, match="1 of 3 shards are not complete"):
        ShardedDataset(output)
    problems = manifest_problems({"version": 1, "datasets": [{"task_name": "a", "path": "sharded", "abs_weight": 1}]},
                                 tmp_path)
    assert any("incomplete sharded index" in problem for problem in problems), problems

    rerun = _task(source, output, "1/3", tokenizer)
    out, err = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, err
    assert "sharded index complete" in out
    assert not list(output.glob(".shard-*"))  # the killed task's temp directory is gone
    again = _task(source, output, "0/3", tokenizer)
    assert "already complete, skipped" in again.communicate(timeout=120)[0]

    single = build_index([source], tmp_path / "one", BuildOptions(tokenizer=tokenizer, workers=2, progress=False))
    assert_same_rows(IndexedDataset(single.output), ShardedDataset(output))
