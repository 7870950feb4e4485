"""Write-then-rename helpers: an interrupted run never leaves output that looks complete.

Every output fm9g publishes (indexed datasets, prepared records, mixtures, reports) goes through
this module. A directory is built under a hidden sibling name ``.NAME.fm9g-tmp-PID`` and renamed
into place at the end; a file is written as ``.NAME.fm9g-tmp-PID`` beside its final name, flushed
to disk and renamed over it. Temps are made with plain ``open``/``mkdir``, so outputs get the
usual umask permissions (``tempfile.mkstemp``/``mkdtemp`` would make them private to the owner).
Leftovers of killed runs (whose PID is gone) are removed the next time the same output is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from fm9g.core.errors import Fm9gError

TMP_MARK = ".fm9g-tmp-"
OUTPUT_MARKER = ".fm9g-output"
"""A file in every directory :class:`PendingDirectory` publishes: what ``--force`` may replace."""


def temp_sibling(path: Path) -> Path:
    """The hidden temp name of ``path`` for this process: same directory, so the rename is atomic."""
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
    """Delete temp siblings of ``path`` left by processes that no longer run (or by this one)."""
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


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only be read by setting it,
    which would race with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def readable_as_umask(directory: Path) -> None:
    """Give every file under ``directory`` at least the permissions the umask allows new files
    (``0666 & ~umask``): on a shared cluster the group reads what a run wrote, as with any other tool."""
    wanted = 0o666 & ~current_umask()
    for root, _, names in os.walk(directory):
        for name in names:
            _widen(Path(root) / name, wanted)


def _widen(path: Path, wanted: int) -> None:
    mode = path.lstat().st_mode
    if stat.S_ISREG(mode) and (mode & wanted) != wanted:
        os.chmod(path, (mode | wanted) & 0o7777)


class PendingDirectory:
    """A fresh temp directory beside ``final`` that :meth:`publish` renames into place and
    :meth:`discard` removes; for writers whose output is filled across several calls (a plain
    ``with`` block uses :func:`atomic_directory`)."""

    def __init__(self, final: str | os.PathLike[str], *, replace: bool):
        self.final = Path(final)
        self.replace = replace
        self.final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.final)
        self.path = temp_sibling(self.final)
        self.path.mkdir()
        (self.path / OUTPUT_MARKER).write_text("written by fm9g; --force may replace this directory\n",
                                                encoding="utf-8")

    def publish(self) -> Path:
        """Rename the temp directory to ``final``; an existing ``final`` is replaced whole only when
        ``replace`` was given (another process may have created it meanwhile). Files inside get the
        permissions the user's umask gives (libraries such as safetensors create them 0600)."""
        readable_as_umask(self.path)
        if self.final.exists():
            if not self.replace:
                raise Fm9gError("output appeared while building", where=str(self.final), fix="rerun with --force")
            old = self.final.with_name(f".{self.final.name}{TMP_MARK}{os.getpid()}-old")
            os.rename(self.final, old)
            os.rename(self.path, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.path, self.final)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def check_replaceable(path: str | os.PathLike[str], *, option: str = "--force") -> None:
    """Refuse to let ``option`` replace a directory fm9g did not write.

    ``--force`` deletes what is there, so it may replace only an empty directory, a file, or a
    directory holding :data:`OUTPUT_MARKER` (every directory fm9g publishes holds one) — never the
    current directory, one of its parents, or the home directory."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return
    resolved, cwd = path.resolve(), Path.cwd().resolve()
    if resolved == cwd or cwd.is_relative_to(resolved) or resolved == Path.home().resolve():
        raise Fm9gError(f"{option} would delete {resolved}, which holds the current or home directory",
                        where=str(path), fix="name a new directory for the output")
    if any(path.iterdir()) and not (path / OUTPUT_MARKER).is_file():
        raise Fm9gError(f"{option} replaces only directories fm9g wrote, and this one has no {OUTPUT_MARKER}",
                        where=str(path), fix="choose a new output directory, or delete this one yourself")


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike[str], *, replace: bool) -> Iterator[Path]:
    """Yield a fresh temp directory; on success it replaces ``final`` (which must not exist unless
    ``replace``); on any error it is removed."""
    pending = PendingDirectory(final, replace=replace)
    try:
        yield pending.path
        pending.publish()
    except BaseException:
        pending.discard()
        raise


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside ``final`` (text modes are UTF-8); when the block succeeds, flush and
    fsync it and rename it over ``final``, so a crash leaves the old file or the new one, never a
    torn one. On any error the temp file is removed and ``final`` is untouched."""
    final = Path(final)
    remove_stale_temps(final)
    temp = temp_sibling(final)
    try:
        with open(temp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_file`; return the path."""
    with atomic_file(path, "w") as handle:
        handle.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], document: Any) -> Path:
    """Write ``document`` as indented UTF-8 JSON (non-ASCII kept readable, trailing newline)."""
    return write_text_atomic(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """:func:`atomic_file` for libraries that write by file name (safetensors' ``save_file``): yield the
    temp path beside ``final``; when the block succeeds the file is fsynced and renamed over ``final``,
    on any error it is removed."""
    final = Path(final)
    remove_stale_temps(final)
    temp = temp_sibling(final)
    try:
        yield temp
        _widen(temp, 0o666 & ~current_umask())
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
