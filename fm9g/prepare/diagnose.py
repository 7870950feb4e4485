"""Why ``fm9g prepare`` kept no record, said so that the user can act on it.

A compressed input is recognised by its magic bytes before any adapter runs (an adapter would
only see undecodable lines, and ``txt`` would even keep some as garbage records). When a run
keeps nothing, every other registered adapter is tried on the first :data:`PROBE_ITEMS` items and
the ones that keep records are named; JSON adapters come first, and text adapters (which keep
any non-blank line) are named only when the file is not binary and does not read as JSON objects.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections import Counter
from pathlib import Path
from typing import Any

from fm9g.core.errors import Fm9gError
from fm9g.core.plugins import registry, validate_options
from fm9g.core.protocols import Skipped
from fm9g.prepare.raw_input import ReadFailure, iter_json, iter_text_lines

PROBE_ITEMS = 100
_COMPRESSED = (
    (re.compile(rb"\x1f\x8b"), "gzip", "gunzip -k"),
    (re.compile(rb"BZh[1-9]1AY&SY"), "bzip2", "bunzip2 -k"),
    (re.compile(rb"\xfd7zXZ\x00"), "xz", "unxz -k"),
    (re.compile(rb"\x28\xb5\x2f\xfd"), "zstd", "unzstd"),
    (re.compile(rb"PK\x03\x04"), "zip", "unzip"),
)
"""Magic bytes of compressed files; none of them starts a UTF-8 text, JSON or JSON Lines file."""


def check_not_compressed(source: Path) -> None:
    """Raise :class:`Fm9gError` when ``source`` is a compressed file (gzip, bzip2, xz, zstd, zip)."""
    with open(source, "rb") as handle:
        head = handle.read(16)
    for magic, name, command in _COMPRESSED:
        if magic.match(head):
            raise Fm9gError(f"this is a {name}-compressed file, not text or JSON", where=str(source),
                            fix=f"decompress it first ({command} {source}) and pass the decompressed file to --input")


def no_records_error(source: Path, adapter_name: str, items: int, dropped: Counter) -> Fm9gError:
    """The error for a run whose adapter kept none of the ``items``, naming the adapters that fit."""
    reasons = ", ".join(f"{reason} {count:,}" for reason, count in dropped.most_common(3))
    message = f"adapter {adapter_name} kept no record of {items:,} items (dropped: {reasons or 'none'})"
    binary = _looks_binary(source)
    fits, first = _probe(source, adapter_name, binary)
    if fits:
        named = " or ".join(f"{name} (kept {kept} of the first {probed} items)" for name, kept, probed in fits)
        fix = f"the data fits adapter {named}: rerun with --adapter {fits[0][0]}"
    elif binary:
        fix = "it holds NUL bytes, so it is binary (or UTF-16/32 text): pass a UTF-8 text, JSON or JSON Lines file"
    elif isinstance(first, dict):
        fields = ", ".join(list(first)[:8])
        fix = (f"no registered adapter keeps its first items, whose fields are {fields}: map them with --adapter "
               "jsonl --map input=FIELD,output=FIELD, or write an adapter (docs/plugins.md)")
    else:
        fix = "no registered adapter keeps its first items: check that it is the right file, or write an adapter"
    return Fm9gError(message, where=str(source), fix=fix)


def _probe(source: Path, exclude: str, binary: bool) -> tuple[list[tuple[str, int, int]], Any]:
    """(name, kept, items probed) of every other adapter that keeps records, best first; and the
    first JSON item of the file (None when it reads as no JSON). Text adapters count only for a
    file that is neither binary nor JSON objects: they would keep any line of those."""
    json_items = _first_items(source, "json")
    first = json_items[0] if json_items else None
    found: dict[str, list[tuple[str, int, int]]] = {"json": [], "text": []}
    for info in registry().all("adapter"):
        adapter = info.obj
        kind = adapter.input_kind
        if info.name == exclude or kind not in found or kind == "text" and binary:
            continue
        items = json_items if kind == "json" else _first_items(source, kind)
        try:
            options = validate_options(adapter, {}, where="adapter options")
            kept = sum(not isinstance(result, Skipped) for result in adapter.records(iter(items), options))
        except Exception:  # noqa: BLE001 - a plugin failing on foreign data must not hide the user's error
            continue
        if kept:
            found[kind].append((info.name, kept, len(items)))
    text_fits = [] if binary or any(isinstance(item, dict) for item in json_items) else found["text"]
    return sorted(found["json"], key=lambda fit: -fit[1]) or text_fits, first


def _first_items(source: Path, kind: str) -> list[Any]:
    """Up to :data:`PROBE_ITEMS` readable items of ``source`` as an adapter of ``kind`` reads them."""
    reader = iter_text_lines(source) if kind == "text" else iter_json(source)
    items: list[Any] = []
    with contextlib.closing(reader):
        try:
            for item in itertools.islice(reader, PROBE_ITEMS):
                if not isinstance(item, ReadFailure):
                    items.append(item)
        except Fm9gError:  # e.g. an array that breaks off: probe what was read
            pass
    return items


def _looks_binary(source: Path) -> bool:
    with open(source, "rb") as handle:
        return b"\x00" in handle.read(1 << 16)
