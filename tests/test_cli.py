"""The ``fm9g`` console entry point, run as a real subprocess (``python -m fm9g``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fm9g


def fm9g_run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fm9g", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_version() -> None:
    result = fm9g_run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"fm9g {fm9g.__version__}"


def test_help_lists_the_commands_in_order() -> None:
    result = fm9g_run("--help")
    assert result.returncode == 0
    commands = ["plugins", "validate", "schema"]
    positions = [result.stdout.find(f"\n    {name} ") for name in commands]
    assert all(position >= 0 for position in positions), result.stdout
    assert positions == sorted(positions), "commands are listed by ORDER"
    assert "--debug" in result.stdout and "--version" in result.stdout
    no_command = fm9g_run()
    assert no_command.returncode == 0 and no_command.stdout == result.stdout


def test_user_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = fm9g_run("schema", "mixx")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("fm9g schema: error: unknown schema 'mixx'")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "did you mean 'mix'?" in result.stderr


def test_debug_shows_the_traceback() -> None:
    for args in (("--debug", "schema", "mixx"), ("schema", "mixx", "--debug")):
        result = fm9g_run(*args)
        assert result.returncode == 2
        assert "Traceback (most recent call last)" in result.stderr
        assert "UnknownName" in result.stderr
        assert result.stderr.rstrip().splitlines()[-1].startswith("fm9g schema: error: unknown schema 'mixx'")


def test_unknown_command_is_a_usage_error() -> None:
    result = fm9g_run("tran")
    assert result.returncode == 2
    assert "invalid choice: 'tran'" in result.stderr and "Traceback" not in result.stderr


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("fm9g")
    assert script.exists(), "pip install -e . provides the fm9g console script"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("fm9g ")


def test_closed_stdout_is_not_an_error(tmp_path: Path) -> None:
    """``fm9g ... | head`` must not end in an internal error when the reader goes away."""
    files = [str(tmp_path / f"missing-{i:05d}.json") for i in range(5000)]
    process = subprocess.Popen([sys.executable, "-m", "fm9g", "validate", *files],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = process.stdout.read(len(files[0]) + 2)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0
    assert first == (files[0] + ": ").encode() and stderr == ""


def test_sigterm_stops_a_parallel_index_run_like_ctrl_c(tmp_path: Path) -> None:
    """SIGTERM (Slurm, ``kill``) gives the one-line "interrupted" of Ctrl-C: no worker prints a
    traceback, no worker outlives the run, and no half-built index is left."""
    import json
    import os
    import signal
    import time

    line = json.dumps({"input": "q" * 40, "output": "word " * 120}) + "\n"
    (tmp_path / "big.jsonl").write_text(line * 200_000)
    process = subprocess.Popen([sys.executable, "-m", "fm9g", "index", "--input", str(tmp_path / "big.jsonl"),
                                "--output", str(tmp_path / "idx"), "--tokenizer", "byte", "--workers", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".idx.fm9g-tmp-*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the index run ended before it could be interrupted"
    time.sleep(0.3)  # the workers are tokenizing
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip() == "fm9g index: interrupted"
    assert not (tmp_path / "idx").exists() and not list(tmp_path.glob(".idx.fm9g-tmp-*"))
