"""Streaming readers for raw inputs: JSON arrays, JSON Lines, concatenated JSON values, text lines.

Nothing loads a whole file. A JSON array (or a pretty-printed object) is parsed value by value with
``json.JSONDecoder.raw_decode`` over a sliding window of decoded text that grows only while one
value is incomplete (up to ``max_value_bytes``). JSON Lines are parsed line by line, and a bad line
becomes a :class:`ReadFailure` (counted by the caller) instead of stopping the run. A syntax error
inside an array cannot be skipped safely and is an :class:`Fm9gError` naming ``file:line:col``.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from fm9g.core.errors import Fm9gError

BOM = b"\xef\xbb\xbf"
_BLOCK = 1 << 20
_WHITESPACE = " \t\n\r"
_PEEK = 1 << 16


@dataclass(frozen=True)
class ReadFailure:
    """An input line that could not be read as an item (counted and reported, not fatal)."""

    reason: str
    where: str
    detail: str = ""
    line: int = 0
    """The line's number (from 1) in the byte range read, which is the file's number for a whole file."""


def detect_layout(path: Path) -> str:
    """``"array"``, ``"lines"`` (JSON Lines; also a one-line single object), ``"concatenated"``
    (a pretty-printed object or several) or ``"empty"``."""
    with open(path, "rb") as handle:
        head = handle.read(_PEEK)
        if head.startswith(BOM):
            head = head[len(BOM):]
        stripped = head.lstrip()
        if not stripped:
            rest = handle.read(1)
            if not rest:
                return "empty"
            stripped = rest
        if stripped.startswith(b"["):
            return "array"
        handle.seek(0)
        for raw in handle:
            line = raw.removeprefix(BOM).strip()
            if not line:
                continue
            try:
                json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                return "concatenated" if line.startswith(b"{") else "lines"
            return "lines"
    return "empty"


class _Window:
    """Decoded text of a binary file in a sliding window, with positions for error messages."""

    def __init__(self, handle: BinaryIO, path: Path, max_value_bytes: int):
        self.handle = handle
        self.path = path
        self.max_value_bytes = max_value_bytes
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.text = ""
        self.pos = 0
        self.eof = False
        self.lines_before = 0
        self.bytes_read = 0
        self._first = True

    def fill(self) -> bool:
        """Append one block (dropping what was consumed); False at end of file."""
        if self.eof:
            return False
        block = self.handle.read(_BLOCK)
        start_byte = self.bytes_read
        self.bytes_read += len(block)
        if self._first:
            if block.startswith(BOM):
                block = block[len(BOM):]
                start_byte += len(BOM)
            self._first = False
        try:
            decoded = self.decoder.decode(block, final=not block)
        except UnicodeDecodeError as error:
            raise Fm9gError(f"not valid UTF-8 at byte {start_byte + error.start}", where=str(self.path),
                            fix="re-encode the file as UTF-8") from None
        self.lines_before += self.text.count("\n", 0, self.pos)
        self.text = self.text[self.pos:] + decoded
        self.pos = 0
        if not block:
            self.eof = True
        return bool(block) or bool(decoded)

    def peek(self) -> str | None:
        """Skip whitespace; the next character, or None at end of file."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.fill():
                return None

    def where(self, index: int | None = None) -> str:
        index = self.pos if index is None else index
        line = self.lines_before + self.text.count("\n", 0, index) + 1
        column = index - self.text.rfind("\n", 0, index)
        return f"{self.path}:{line}:{column}"

    def value(self, decoder: json.JSONDecoder) -> Any:
        """Decode the JSON value starting at ``pos`` (after :meth:`peek`), reading more as needed."""
        while True:
            try:
                value, end = decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as error:
                maybe_truncated = error.msg.startswith("Unterminated string") or error.pos >= len(self.text) - 8
                if maybe_truncated and not self.eof and self._may_grow():
                    self.fill()
                    continue
                raise Fm9gError(f"invalid JSON: {error.msg}", where=self.where(error.pos),
                                fix="fix the syntax; JSON Lines inputs may skip bad lines, arrays cannot") from None
            scalar = not isinstance(value, (dict, list, str))
            if scalar and end > len(self.text) - 64 and not self.eof and self._may_grow():
                self.fill()  # a number near the end of the window may continue in the next block
                continue
            self.pos = end
            return value

    def _may_grow(self) -> bool:
        if len(self.text) - self.pos > self.max_value_bytes:
            raise Fm9gError(f"a JSON value longer than {self.max_value_bytes >> 20} MiB (or malformed JSON)",
                            where=self.where(), fix="check the file; split huge records")
        return True


def iter_json(path: Path, *, max_value_bytes: int = 256 << 20) -> Iterator[Any | ReadFailure]:
    """Every JSON value of a JSON array, JSON Lines or concatenated-JSON file, in order."""
    layout = detect_layout(path)
    if layout == "empty":
        return
    if layout == "lines":
        yield from iter_json_lines(path)
        return
    decoder = json.JSONDecoder()
    with open(path, "rb") as handle:
        window = _Window(handle, path, max_value_bytes)
        if layout == "array":
            yield from _iter_array(window, decoder)
        else:
            while window.peek() is not None:
                yield window.value(decoder)


def _iter_array(window: _Window, decoder: json.JSONDecoder) -> Iterator[Any]:
    window.peek()
    window.pos += 1  # the opening bracket
    first = True
    while True:
        char = window.peek()
        if char is None:
            raise Fm9gError("the JSON array is not closed (file truncated?)", where=window.where(),
                            fix="check that the file was copied completely")
        if char == "]":
            window.pos += 1
            break
        if not first:
            if char != ",":
                raise Fm9gError(f"invalid JSON: expected ',' or ']' but found {char!r}", where=window.where(),
                                fix="fix the syntax")
            window.pos += 1
            if window.peek() is None:
                continue
        yield window.value(decoder)
        first = False
    if window.peek() is not None:
        raise Fm9gError("extra data after the JSON array", where=window.where(),
                        fix="a file holds one array, one object, or one JSON value per line")


def iter_json_lines(path: Path, start: int = 0, end: int | None = None) -> Iterator[Any | ReadFailure]:
    """The JSON value of every non-blank line of JSON Lines in the byte range ``[start, end)`` (whole
    lines: ``start`` at a line start, ``end`` after a newline or at the end of the file); a line
    that is not JSON or not UTF-8 becomes a :class:`ReadFailure` numbered within the range."""
    for number, raw in _numbered_lines(path, start, end):
        line = raw.strip()
        if not line:
            continue
        try:
            yield json.loads(line)
        except UnicodeDecodeError:
            yield ReadFailure("invalid_utf8", f"{path}:{number}", line=number)
        except json.JSONDecodeError as error:
            yield ReadFailure("invalid_json", f"{path}:{number}", error.msg, line=number)


def iter_text_lines(path: Path, start: int = 0, end: int | None = None) -> Iterator[str | ReadFailure]:
    """Lines of a text file (or of its byte range ``[start, end)`` of whole lines) without their line
    endings (``\\n`` or ``\\r\\n``); a line that is not UTF-8 becomes a :class:`ReadFailure`."""
    for number, raw in _numbered_lines(path, start, end):
        raw = raw.removesuffix(b"\n").removesuffix(b"\r")
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            yield ReadFailure("invalid_utf8", f"{path}:{number}", line=number)


def _numbered_lines(path: Path, start: int, end: int | None) -> Iterator[tuple[int, bytes]]:
    """``(number from 1, raw line)`` of the byte range; the file's BOM is dropped from its first line."""
    with open(path, "rb") as handle:
        handle.seek(start)
        position = start
        for number, raw in enumerate(handle, start=1):
            if end is not None and position >= end:
                return
            position += len(raw)
            if position - len(raw) == 0:
                raw = raw.removeprefix(BOM)
            yield number, raw
