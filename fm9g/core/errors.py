"""Errors a user can cause. The CLI prints them as one line (what, where, how to fix) and exits 2."""

from __future__ import annotations

import difflib
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
