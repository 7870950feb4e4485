"""Progress of a long command: a tqdm bar on a terminal, plain lines in a log (nohup, Slurm, a pipe).

tqdm hides its bar when the output is not a terminal, so a job that writes to a log file would show
nothing between its header and its result. :func:`progress_bar` gives a tqdm bar on a terminal (or
when asked) and otherwise a :class:`PlainProgress`: the same ``update`` / ``set_postfix_str`` /
``close`` calls, printed as one whole line at most every ``seconds`` (``FM9G_PROGRESS_SECONDS``,
default 60) and once at the end of a run that printed any: ``index: 45% (4.50G/10.0GB), 75.0MB/s, elapsed 01:00, ETA 00:01:13``.
``fm9g train``, ``index``, ``prepare`` and ``mix`` all report through it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

SECONDS_VARIABLE = "FM9G_PROGRESS_SECONDS"
DEFAULT_SECONDS = 60.0

LINE_WITH_TOTAL = "{desc}: {percentage:.0f}% ({n_fmt}/{total_fmt}{unit}), {rate_fmt}{postfix}, elapsed {elapsed}, ETA {eta}"
LINE_WITHOUT_TOTAL = "{desc}: {n_fmt}{unit}, {rate_fmt}{postfix}, elapsed {elapsed}"
"""The default lines; ``{postfix}`` is ``", " + postfix`` when there is one."""


def default_seconds() -> float:
    """``$FM9G_PROGRESS_SECONDS`` (a number of seconds, 0 for a line at every update), else 60."""
    raw = os.environ.get(SECONDS_VARIABLE, "")
    try:
        return max(0.0, float(raw)) if raw.strip() else DEFAULT_SECONDS
    except ValueError:
        return DEFAULT_SECONDS


def format_eta(seconds: float) -> str:
    """``HH:MM:SS`` under a day, ``N.N d`` beyond (a line in a log is read long after it is written)."""
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    return time.strftime("%H:%M:%S", time.gmtime(max(0.0, seconds)))


class PlainProgress:
    """tqdm's counting as whole lines: at most one every ``seconds``, and a last one when ``total`` is
    reached or on :meth:`close` (not when a ``with`` block raised) if the count moved since the line
    before. A run shorter than ``seconds`` prints no line at all, so that its result (or its one-line
    error) stands alone, unless ``end_line`` asks for the last one anyway."""

    disable = False
    """Shown (as lines): what tqdm's attribute of that name says of a bar."""

    def __init__(self, *, total: float | None, desc: str, unit: str, file: TextIO, seconds: float,
                 initial: float = 0, unit_scale: bool = False, unit_divisor: int = 1000,
                 line_format: str | None = None, end_line: bool = False):
        self.total, self.desc, self.unit, self.file, self.seconds = total, desc, unit, file, seconds
        self.n = self.initial = initial
        self.unit_scale, self.unit_divisor = unit_scale, unit_divisor
        self.line_format = line_format or (LINE_WITH_TOTAL if total else LINE_WITHOUT_TOTAL)
        self.postfix = ""
        self.end_line = end_line
        self.started = self.last_line = time.monotonic()
        self.printed_n: float | None = initial
        self.lines_printed = 0
        self.closed = False

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        if exc_type is not None:  # the command's error is the last word, not a progress line
            self.closed = True
        self.close()

    def update(self, count: float = 1) -> None:
        self.n += count
        now = time.monotonic()
        if now - self.last_line >= self.seconds or (self.total and self.n >= self.total and self._ending()):
            self._print(now)

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **values: Any) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in {**(ordered_dict or {}), **values}.items())

    def close(self) -> None:
        if not self.closed and self._ending():
            self._print(time.monotonic())
        self.closed = True

    def _ending(self) -> bool:
        """Whether the end deserves a line: the count moved since the last one, and lines were shown."""
        return self.printed_n != self.n and (self.end_line or self.lines_printed > 0)

    def line(self, now: float | None = None) -> str:
        """The current state as one line (what is printed)."""
        elapsed = (now if now is not None else time.monotonic()) - self.started
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        remaining = (self.total - self.n) / rate if rate and self.total else 0.0
        unit = self.unit if self.unit_scale else f" {self.unit.strip()}"
        rate_fmt = f"{self._amount(rate) if rate is not None else '?'}{unit}/s"
        return self.line_format.format(
            desc=self.desc, n=self.n, total=self.total, n_fmt=self._amount(self.n),
            total_fmt=self._amount(self.total) if self.total else "?", unit=self.unit,
            percentage=100.0 * self.n / self.total if self.total else 0.0, rate_fmt=rate_fmt,
            postfix=f", {self.postfix}" if self.postfix else "", raw_postfix=self.postfix,
            elapsed=tqdm.format_interval(elapsed), eta=format_eta(remaining))

    def _amount(self, value: float) -> str:
        if self.unit_scale:
            return tqdm.format_sizeof(value, divisor=self.unit_divisor)
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"

    def _print(self, now: float) -> None:
        self.last_line, self.printed_n = now, self.n
        self.lines_printed += 1
        print(self.line(now), file=self.file, flush=True)


def progress_bar(*, total: float | None, desc: str, unit: str, enabled: bool = True, bar: bool | None = None,
                 file: TextIO | None = None, seconds: float | None = None, initial: float = 0,
                 unit_scale: bool = False, line_format: str | None = None, end_line: bool = False,
                 **tqdm_options: Any) -> Any:
    """A progress display over ``total`` units (``None``: unknown) on ``file`` (default stderr).

    ``enabled=False`` shows nothing. Otherwise ``bar`` picks tqdm's bar (``True``), plain lines at most
    every ``seconds`` (default :func:`default_seconds`) and at the end (``False``), or the bar on a
    terminal and lines elsewhere (``None``). ``line_format`` replaces the line's format (fields: desc,
    n, total, n_fmt, total_fmt, unit, percentage, rate_fmt, postfix, raw_postfix, elapsed, eta);
    ``end_line`` prints the last line even of a run too short for any other (see :class:`PlainProgress`).
    """
    file = file if file is not None else sys.stderr
    if not enabled:
        return tqdm(total=total, disable=True)
    if bar if bar is not None else _is_terminal(file):
        return tqdm(total=total, desc=desc, unit=unit, file=file, initial=initial, unit_scale=unit_scale,
                    dynamic_ncols=True, **tqdm_options)
    return PlainProgress(total=total, desc=desc, unit=unit, file=file, initial=initial, unit_scale=unit_scale,
                         seconds=default_seconds() if seconds is None else seconds, line_format=line_format,
                         end_line=end_line, unit_divisor=tqdm_options.get("unit_divisor", 1000))


def _is_terminal(file: TextIO) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # a closed or file-like object without a terminal
        return False
