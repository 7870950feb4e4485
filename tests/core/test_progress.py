"""Progress without a terminal: whole lines at most every N seconds and at the end; a bar on a terminal."""

from __future__ import annotations

import io
import time

import pytest
from tqdm import tqdm

from fm9g.core.progress import PlainProgress, default_seconds, format_eta, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_plain_lines_and_a_terminal_gets_tqdm() -> None:
    log = io.StringIO()
    lines = progress_bar(total=10, desc="mixing", unit=" samples", file=log, seconds=0)
    assert isinstance(lines, PlainProgress)
    with lines:
        for _ in range(10):
            lines.update(1)
    printed = log.getvalue().splitlines()
    assert len(printed) == 10 and "\r" not in log.getvalue()
    assert printed[0].startswith("mixing: 10% (1/10 samples), ") and "samples/s" in printed[0]
    assert printed[-1].startswith("mixing: 100% (10/10 samples)") and printed[-1].endswith("ETA 00:00:00")
    bar = progress_bar(total=10, desc="mixing", unit=" samples", file=Terminal())
    assert isinstance(bar, tqdm) and not bar.disable
    bar.close()
    assert isinstance(progress_bar(total=10, desc="x", unit="B", file=Terminal(), bar=False), PlainProgress)
    off = progress_bar(total=10, desc="x", unit="B", file=log, enabled=False)
    assert off.disable


def test_lines_are_throttled_and_end_with_a_last_one(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    log = io.StringIO()
    with progress_bar(total=None, desc="prepare", unit=" items", file=log, seconds=60) as lines:
        for _ in range(1000):
            clock[0] += 0.125  # 125 s in all: a line at 60 s and at 120 s, and the last one at the end
            lines.update(1)
    assert [line.split(" items, ")[0] for line in log.getvalue().splitlines()] == [
        "prepare: 480", "prepare: 960", "prepare: 1,000"]
    log = io.StringIO()
    with progress_bar(total=10, desc="mixing", unit=" samples", file=log, seconds=60) as lines:
        lines.update(10)
    assert log.getvalue() == ""  # shorter than one interval: no line, the command's result stands alone
    log = io.StringIO()
    with pytest.raises(RuntimeError):
        with progress_bar(total=None, desc="prepare", unit=" items", file=log, seconds=60) as lines:
            clock[0] += 61
            lines.update(5)
            lines.update(5)
            raise RuntimeError("bad input")
    assert len(log.getvalue().splitlines()) == 1  # the interval's line, none after the error
    log = io.StringIO()
    lines = progress_bar(total=4, desc="train", unit="step", file=log, seconds=3600, end_line=True,
                         line_format="step {n}/{total}: {raw_postfix} ETA {eta}")
    for step in range(4):
        lines.set_postfix_str(f"loss {step}")
        lines.update(1)
    lines.close()
    assert log.getvalue().splitlines() == ["step 4/4: loss 3 ETA 00:00:00"]  # the last step, once


def test_bytes_scale_and_the_eta_follows_the_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    lines = PlainProgress(total=10e9, desc="index", unit="B", unit_scale=True, file=io.StringIO(), seconds=60)
    clock[0] += 60
    lines.update(4.5e9)
    assert lines.line() == "index: 45% (4.50G/10.0GB), 75.0MB/s, elapsed 01:00, ETA 00:01:13"
    resumed = PlainProgress(total=100, initial=50, desc="train", unit="step", file=io.StringIO(), seconds=60)
    clock[0] += 10
    resumed.update(10)  # 10 steps in 10 s from step 50: 40 to go
    assert resumed.line().endswith("ETA 00:00:40")


def test_eta_and_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert format_eta(3723) == "01:02:03" and format_eta(3 * 86400) == "3.0 d"
    monkeypatch.setenv("FM9G_PROGRESS_SECONDS", "5")
    assert default_seconds() == 5
    monkeypatch.setenv("FM9G_PROGRESS_SECONDS", "soon")
    assert default_seconds() == 60
