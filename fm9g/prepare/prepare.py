"""``fm9g prepare``: run an adapter over a raw file and write ``train.jsonl`` / ``test.jsonl``.

Records are written as the seed writes them: ``json.dumps(record, ensure_ascii=False)``, one per
line. ``--split test=F --seed S`` reproduces the seed's ``datasets`` call
``train_test_split(test_size=F, seed=S)`` exactly: ``n_test = ceil(F × n)`` over all raw items,
``np.random.default_rng(S).permutation(n)``, test = its first ``n_test`` entries, train = the rest,
each in permutation order; the adapter's filters (e.g. medical-o1's language) apply after the split,
as in the seed's script. To do that without holding records in memory, adapter results are staged
on disk (one line per raw item) and read back in permutation order through their offsets.

The output directory (``train.jsonl``, ``test.jsonl``, ``prepare_report.json``) is built under a
temporary name and published by one directory rename (:func:`fm9g.core.atomic.atomic_directory`),
so a killed ``--force`` run leaves the previous run's files or the new ones (or, killed between
the two renames that swap them, none), never a mix: a new train split beside the old test split
would put test rows into training. Hence ``--output``
names a directory of its own; ``--force`` replaces only a directory fm9g wrote.

A run that keeps no record fails, naming the adapters that fit the data
(:mod:`fm9g.prepare.diagnose`). A record holding a lone surrogate (JSON ``"\\ud800"``, which
Python reads but UTF-8 cannot hold and ``fm9g index`` rejects) is dropped and counted as
``lone_surrogate``.
"""

from __future__ import annotations

import errno
import json
import math
import os
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from fm9g import __version__
from fm9g.core.atomic import atomic_directory, check_replaceable, write_json_atomic
from fm9g.core.errors import Fm9gError
from fm9g.core.plugins import registry, validate_options
from fm9g.core.protocols import Skipped
from fm9g.prepare.diagnose import check_not_compressed, no_records_error
from fm9g.prepare.raw_input import ReadFailure, iter_json, iter_text_lines

TRAIN_FILE = "train.jsonl"
TEST_FILE = "test.jsonl"
REPORT_FILE = "prepare_report.json"
STAGING_FILE = ".staging.jsonl"
"""Adapter results, one line per raw item, kept in the unpublished directory while the split is written."""
DEFAULT_SEED = 3014
"""The seed's split seed (``train_test_split(test_size=0.05, seed=3014)``)."""


@dataclass
class PrepareResult:
    report: dict[str, Any]
    first_dropped: dict[str, str] = field(default_factory=dict)


def parse_split(text: str) -> float | int:
    """``test=0.05`` (a fraction) or ``test=500`` (a count) → the test size; ``0.05`` alone works too."""
    name, sep, value = text.partition("=")
    if not sep:
        name, value = "test", text
    if name.strip() != "test":
        raise Fm9gError(f"unknown split '{name}'", where="--split", fix="write --split test=0.05 (or test=COUNT)")
    try:
        size: float | int = int(value) if value.strip().isdigit() else float(value)
    except ValueError:
        raise Fm9gError(f"'{value}' is not a number", where="--split", fix="write --split test=0.05") from None
    if isinstance(size, float) and not 0.0 < size < 1.0 or isinstance(size, int) and size < 1:
        raise Fm9gError(f"test size {value} out of range", where="--split",
                        fix="a fraction between 0 and 1, or a count of at least 1")
    return size


def split_indices(n: int, test_size: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) item indices exactly as ``datasets.Dataset.train_test_split(test_size, seed=seed)``."""
    n_test = math.ceil(test_size * n) if isinstance(test_size, float) else int(test_size)
    n_train = n - n_test
    if n_train <= 0:
        raise Fm9gError(f"a test split of {test_size} leaves no training records out of {n}", where="--split",
                        fix="use a smaller test size")
    permutation = np.random.default_rng(seed).permutation(n)
    return permutation[n_test:], permutation[:n_test]


def prepare(input_path: str | os.PathLike[str], output_dir: str | os.PathLike[str], adapter_name: str,
            options: dict[str, Any] | None = None, *, test_size: float | int | None = None,
            seed: int = DEFAULT_SEED, force: bool = False, progress: bool | None = None) -> PrepareResult:
    """Convert one raw file into records; see the module docstring for the split and the output."""
    source = Path(input_path)
    output = Path(output_dir)
    info, options = resolve_adapter(adapter_name, options)
    check_input(source)
    _check_output(source, output, force)
    with atomic_directory(output, replace=output.exists()) as temp:
        reader = iter_text_lines(source) if info.obj.input_kind == "text" else iter_json(source)
        staged = stage(reader, info.obj, options, temp / STAGING_FILE, progress)
        check_kept(source, info.obj.name, staged.items, staged.records, staged.dropped)
        kept, outputs = write_splits(temp, [staged.path], np.frombuffer(staged.offsets, dtype=np.int64),
                                     np.array([0, staged.items], dtype=np.int64), test_size, seed)
        staged.path.unlink()
        report = make_report(str(source), info, options, staged.items, kept, staged.dropped, test_size, seed, outputs)
        write_json_atomic(temp / REPORT_FILE, report)
    first = {reason: describe_item(str(source), where) for reason, where in staged.first_dropped.items()}
    return PrepareResult(report, first)


def resolve_adapter(adapter_name: str, options: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    """The adapter's registry entry and its options, validated against its schema."""
    info = registry().info("adapter", adapter_name, where="--adapter")
    return info, validate_options(info.obj, options, where="adapter options")


def check_input(source: Path) -> None:
    if not source.is_file():
        raise Fm9gError("input file not found" if not source.exists() else "input is not a file", where=str(source),
                        fix="check the --input path")
    check_not_compressed(source)


def check_kept(source: Path, adapter_name: str, items: int, records: int, dropped: Counter) -> None:
    """Refuse a run that read no item, or kept no record (naming the adapters that fit the data)."""
    if items == 0 and not dropped:
        raise Fm9gError("the input holds no items", where=str(source), fix="check that it is the right file")
    if records == 0:
        raise no_records_error(source, adapter_name, sum(dropped.values()), dropped)


def make_report(source: str, info: Any, options: dict[str, Any], items: int, kept: dict[str, int], dropped: Counter,
                test_size: float | int | None, seed: int, outputs: Sequence[str]) -> dict[str, Any]:
    return {
        "input": source,
        "adapter": info.obj.name,
        "adapter_distribution": f"{info.distribution} {info.version}",
        "options": options,
        "items": items,
        "kept": sum(kept.values()),
        "dropped": dict(sorted(dropped.items())),
        "split": {"test_size": test_size, "seed": seed, **kept} if test_size else None,
        "outputs": sorted(outputs),
        "fm9g_version": __version__,
    }


def describe_item(source: str, where: tuple[str, int]) -> str:
    """``("line", 12)`` → ``FILE:12`` (a line the reader could not read); ``("item", 3)`` → ``FILE item 3``."""
    kind, number = where
    return f"{source}:{number}" if kind == "line" else f"{source} item {number}"


def _check_output(source: Path, output: Path, force: bool) -> None:
    """The output directory is replaced whole: it may exist only empty, or with ``--force`` as a
    directory fm9g wrote; it must not hold the input, the current directory or the home directory."""
    if output.resolve() in source.resolve().parents:
        raise Fm9gError(f"the input {source} lies inside the output directory, which prepare replaces whole",
                        where=str(output), fix="choose an --output directory of its own")
    if not output.exists():
        return
    if not output.is_dir():
        raise Fm9gError("output exists and is not a directory", where=str(output), fix="remove it or choose another --output")
    if not force and any(output.iterdir()):
        raise Fm9gError("output directory already exists", where=str(output),
                        fix="pass --force to replace it (train.jsonl, test.jsonl and the report are written together)")
    check_replaceable(output, option="--force" if force else "--output")


@dataclass
class Staged:
    """Adapter results staged in ``path``: one line per raw item (an empty line for a dropped one)."""

    path: Path
    items: int
    records: int
    offsets: array
    """``items + 1`` line offsets into ``path``."""
    dropped: Counter
    first_dropped: dict[str, tuple[str, int]]
    """Per drop reason, the first: ``("line", number)`` of an unreadable line, ``("item", number)`` of an item."""


def stage(reader: Iterable[Any], adapter: Any, options: dict[str, Any], staging: Path,
          progress: bool | None) -> Staged:
    """Run the adapter over the raw items of ``reader`` into ``staging`` (unreadable lines are counted
    as drops and left out: they are no item)."""
    offsets = array("q", [0])
    records = 0
    dropped: Counter = Counter()
    first: dict[str, tuple[str, int]] = {}
    items = _items(reader, dropped, first)
    with open(staging, "wb") as out, _progress(progress) as bar:
        position = 0
        for number, result in enumerate(adapter.records(items, options)):
            line = b"\n"
            if not isinstance(result, Skipped):
                try:
                    line = json.dumps(result, ensure_ascii=False).encode("utf-8") + b"\n"
                    records += 1
                except UnicodeEncodeError:  # a lone surrogate ("\\ud800"), which fm9g index would reject
                    result = Skipped("lone_surrogate")
            if isinstance(result, Skipped):
                dropped[result.reason] += 1
                first.setdefault(result.reason, ("item", number + 1))
            out.write(line)
            position += len(line)
            offsets.append(position)
            bar.update(1)
        out.flush()
        os.fsync(out.fileno())
    return Staged(staging, len(offsets) - 1, records, offsets, dropped, first)


def _items(reader: Iterable[Any], dropped: Counter, first: dict[str, tuple[str, int]]) -> Iterator[Any]:
    for item in reader:
        if isinstance(item, ReadFailure):
            dropped[item.reason] += 1
            first.setdefault(item.reason, ("line", item.line))
            continue
        yield item


def write_splits(directory: Path, stagings: Sequence[Path], offsets: np.ndarray, item_starts: np.ndarray,
                 test_size: float | int | None, seed: int) -> tuple[dict[str, int], list[str]]:
    """Write ``train.jsonl`` (and ``test.jsonl`` with a test size) into ``directory`` from staging
    files that hold the raw items in order: file ``k`` items ``item_starts[k]`` to ``item_starts[k+1]``,
    its line offsets at ``offsets[item_starts[k] + k:][:items + 1]`` (each file's offsets, one after
    another). Return the records written per split and the file names."""
    n = int(item_starts[-1])
    orders: dict[str, np.ndarray | None] = {TRAIN_FILE: None}
    if test_size:
        train, test = split_indices(n, test_size, seed)
        orders = {TRAIN_FILE: train, TEST_FILE: test}
    kept = {}
    for name, order in orders.items():
        with open(directory / name, "wb") as out:
            kept[name.split(".")[0]] = _copy_in_order(stagings, offsets, item_starts, order, out)
            out.flush()
            os.fsync(out.fileno())
    return kept, list(orders)


GATHER_BLOCK = 1 << 20
"""Items whose places are looked up at once while writing a split (8 MB of int64 per array)."""


def _copy_in_order(stagings: Sequence[Path], offsets: np.ndarray, item_starts: np.ndarray,
                   order: np.ndarray | None, out: IO[bytes]) -> int:
    """Copy the staged records of every item (in order), or of those of ``order`` in that order; count them."""
    written = 0
    if order is None:
        out.flush()
        for number, staging in enumerate(stagings):
            ends = offsets[item_starts[number] + number:item_starts[number + 1] + number + 1]
            written += _copy_kept_runs(staging, ends, out)
        return written
    descriptors = [os.open(staging, os.O_RDONLY) for staging in stagings]
    try:
        pread = os.pread
        for begin in range(0, len(order), GATHER_BLOCK):
            block = order[begin:begin + GATHER_BLOCK]
            files = np.searchsorted(item_starts, block, side="right") - 1
            places = block + files  # each file's offsets carry one extra entry, its end
            starts = offsets[places]
            sizes = offsets[places + 1] - starts
            keep = sizes > 1  # a dropped item is staged as an empty line
            for file, start, size in zip(files[keep].tolist(), starts[keep].tolist(), sizes[keep].tolist()):
                out.write(pread(descriptors[file], size, start))
            written += int(keep.sum())
    finally:
        for descriptor in descriptors:
            os.close(descriptor)
    return written


def _copy_kept_runs(staging: Path, ends: np.ndarray, out: IO[bytes]) -> int:
    """Copy a staging file's records in order, without its empty lines (dropped items), as runs of
    consecutive records (in the kernel where it can: ``os.copy_file_range``); return the records
    copied. ``ends`` are the file's ``items + 1`` line offsets."""
    keep = np.diff(ends) > 1
    if not keep.any():
        return 0
    edges = np.flatnonzero(np.diff(np.concatenate(([False], keep, [False])).astype(np.int8)))
    source = os.open(staging, os.O_RDONLY)
    try:
        for first, stop in zip(edges[0::2].tolist(), edges[1::2].tolist()):
            _copy_range(source, out.fileno(), int(ends[first]), int(ends[stop]), staging)
    finally:
        os.close(source)
    return int(keep.sum())


def _copy_range(source: int, target: int, position: int, end: int, where: Path) -> None:
    """Append bytes ``[position, end)`` of ``source`` to ``target`` (both descriptors)."""
    while position < end:
        try:
            copied = os.copy_file_range(source, target, end - position, position)
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            block = os.pread(source, min(end - position, 1 << 22), position)
            copied = os.write(target, block) if block else 0
        if copied == 0:
            raise Fm9gError("the staged records ended early (file truncated?)", where=str(where), fix="rerun the prepare")
        position += copied


def _progress(enabled: bool | None):
    """tqdm's counter on a terminal (always with ``True``), a plain line now and then in a log, nothing with ``False``."""
    from fm9g.core.progress import progress_bar

    return progress_bar(total=None, unit=" items", desc="prepare", enabled=enabled is not False,
                        bar=True if enabled else None)
