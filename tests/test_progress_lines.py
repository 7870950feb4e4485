"""``fm9g prepare``, ``index`` and ``mix`` with their output in a log (a pipe): plain progress lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _fm9g(*args: str, cwd: Path, seconds: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("FM9G_PROGRESS_SECONDS", None)
    if seconds is not None:
        env["FM9G_PROGRESS_SECONDS"] = seconds
    result = subprocess.run([sys.executable, "-m", "fm9g", *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr
    return result


def _progress_lines(stderr: str, prefix: str) -> list[str]:
    assert "\r" not in stderr  # no bar redrawn in place
    return [line for line in stderr.splitlines() if line.startswith(prefix)]


def test_prepare_index_and_mix_print_plain_lines_without_a_terminal(tmp_path: Path) -> None:
    with open(tmp_path / "raw.jsonl", "w", encoding="utf-8") as handle:
        for number in range(400):
            handle.write(json.dumps({"input": f"question {number}", "output": f"answer {number} " * 5}) + "\n")
    every = _fm9g("prepare", "--adapter", "jsonl", "--input", "raw.jsonl", "--output", "prepared", cwd=tmp_path,
                  seconds="0")
    lines = _progress_lines(every.stderr, "prepare: ")
    assert len(lines) == 400 and lines[-1].startswith("prepare: 400 items, ") and "items/s" in lines[-1]
    default = _fm9g("prepare", "--adapter", "jsonl", "--input", "raw.jsonl", "--output", "prepared", "--force",
                    cwd=tmp_path, seconds=None)
    assert _progress_lines(default.stderr, "prepare: ") == []  # done before the first 60 s: no line
    quiet = _fm9g("prepare", "--adapter", "jsonl", "--input", "raw.jsonl", "--output", "prepared", "--force",
                  "--no-progress", cwd=tmp_path, seconds="0")
    assert _progress_lines(quiet.stderr, "prepare: ") == []

    indexed = _fm9g("index", "--input", "prepared/train.jsonl", "--output", "idx", "--workers", "1",
                    "--chunk-mb", "0.004", cwd=tmp_path, seconds="0")
    lines = _progress_lines(indexed.stderr, "index: ")
    assert len(lines) > 2 and lines[-1].startswith("index: 100% (") and lines[-1].endswith("ETA 00:00:00")

    (tmp_path / "mix.json").write_text(json.dumps({"max_length": 64, "datasets": [
        {"task_name": "qa", "path": "idx", "abs_weight": 1}]}), encoding="utf-8")
    mixed = _fm9g("mix", "--manifest", "mix.json", "--samples", "300", cwd=tmp_path, seconds="0")
    lines = _progress_lines(mixed.stderr, "mixing: ")
    assert len(lines) > 2 and lines[-1].startswith("mixing: 100% (300/300 samples)")
