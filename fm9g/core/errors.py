"""Errors a user can cause. The CLI prints them as one line (what, where, how to fix) and exits 2."""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable


class Fm9gError(Exception):
    """A problem with the user's input or environment, worth one clear line rather than a traceback.

    ``where`` names the file, line or JSON path; ``fix`` says what to do about it.
    """

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.fix = fix

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.fix:
            text += f" ({self.fix})"
        return text


class ValidationFailed(Fm9gError):
    """A document failed its JSON Schema; ``problems`` holds every error, one line each."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__("; ".join(problems) if len(problems) == 1 else f"{len(problems)} problems")

    def __str__(self) -> str:
        return "\n".join(f"{self.source}: {problem}" for problem in self.problems)


class UnknownName(Fm9gError):
    """A name (plugin, preset, command option) that is not among the known ones."""

    def __init__(self, kind: str, name: str, known: Iterable[str], *, where: str | None = None):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        listing = ", ".join(known) if known else "none"
        super().__init__(
            f"unknown {kind} '{name}'",
            where=where,
            fix=f"{hint}known {kind}s: {listing}",
        )
        self.kind = kind
        self.name = name
        self.known = known


_OS_ERRORS = {
    errno.EACCES: ("permission denied", "check the permissions, or choose a path you may write"),
    errno.EPERM: ("operation not permitted", "check the permissions, or choose another path"),
    errno.EROFS: ("read-only file system", "write the output to a writable file system"),
    errno.ENOSPC: ("no space left on the device", "free disk space there, or write the output elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota, or write the output elsewhere"),
    errno.EEXIST: ("already exists", "remove it, or choose another path"),
    errno.ENOTDIR: ("a part of the path is a file, not a directory", "check the path"),
    errno.EISDIR: ("is a directory where a file is needed", "name a file"),
    errno.ELOOP: ("too many levels of symbolic links (a symlink loop)", "fix or remove the symlink"),
    errno.ENOENT: ("not found", "check the path"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter path"),
}


def os_error(error: OSError) -> Fm9gError:
    """An operating-system error (permission, read-only file system, disk full, ...) as one clear
    line naming the path, in place of a traceback."""
    message, fix = _OS_ERRORS.get(error.errno, (error.strerror or type(error).__name__, None))
    paths = [str(path) for path in (error.filename, error.filename2) if path is not None]
    return Fm9gError(message, where=" -> ".join(paths) or None, fix=fix)
