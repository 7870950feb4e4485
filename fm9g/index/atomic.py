"""Write-then-rename helpers: an interrupted run never leaves output that looks complete.

A directory is built under a hidden sibling name ``.NAME.fm9g-tmp-PID`` and renamed into place at
the end; files are written as ``.NAME.fm9g-tmp-PID`` beside their final name. Leftovers of killed
runs (whose PID is gone) are removed the next time the same output is written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from fm9g.core.errors import Fm9gError

TMP_MARK = ".fm9g-tmp-"


def temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: Path) -> None:
    """Delete temp siblings of ``path`` left by processes that no longer run."""
    prefix = f".{path.name}{TMP_MARK}"
    if not path.parent.is_dir():
        return
    for candidate in path.parent.iterdir():
        if not candidate.name.startswith(prefix):
            continue
        pid_text = candidate.name[len(prefix):].removesuffix("-old")
        if pid_text.isdigit() and (int(pid_text) == os.getpid() or not _pid_alive(int(pid_text))):
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                candidate.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(final: Path, *, replace: bool) -> Iterator[Path]:
    """Yield a fresh temp directory; on success it replaces ``final`` (which must not exist unless
    ``replace``); on any error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final)
    temp = temp_sibling(final)
    temp.mkdir()
    try:
        yield temp
        if final.exists():
            if not replace:
                raise Fm9gError("output appeared while building", where=str(final), fix="rerun with --force")
            old = final.with_name(f".{final.name}{TMP_MARK}{os.getpid()}-old")
            os.rename(final, old)
            os.rename(temp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(final: Path, mode: str = "wb") -> Iterator:
    """Open a temp file beside ``final``; rename it into place when the block succeeds."""
    final = Path(final)
    temp = temp_sibling(final)
    handle = open(temp, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    try:
        with handle:
            yield handle
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
