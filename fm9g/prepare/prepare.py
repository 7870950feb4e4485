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

import json
import math
import os
from array import array
from collections import Counter
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
    info = registry().info("adapter", adapter_name, where="--adapter")
    adapter = info.obj
    options = validate_options(adapter, options, where="adapter options")
    if not source.is_file():
        raise Fm9gError("input file not found" if not source.exists() else "input is not a file", where=str(source),
                        fix="check the --input path")
    check_not_compressed(source)
    _check_output(source, output, force)
    with atomic_directory(output, replace=output.exists()) as temp:
        staging = temp / STAGING_FILE
        dropped: Counter = Counter()
        first_dropped: dict[str, str] = {}
        n, records, offsets = _stage(source, adapter, options, staging, dropped, first_dropped, progress)
        if n == 0 and not dropped:
            raise Fm9gError("the input holds no items", where=str(source), fix="check that it is the right file")
        if records == 0:
            raise no_records_error(source, adapter.name, sum(dropped.values()), dropped)
        outputs = {TRAIN_FILE: None}
        if test_size:
            train, test = split_indices(n, test_size, seed)
            outputs = {TRAIN_FILE: train, TEST_FILE: test}
        kept = {name.split(".")[0]: _write_in_order(staging, offsets, order, temp / name)
                for name, order in outputs.items()}
        staging.unlink()
        report = {
            "input": str(source),
            "adapter": adapter.name,
            "adapter_distribution": f"{info.distribution} {info.version}",
            "options": options,
            "items": n,
            "kept": sum(kept.values()),
            "dropped": dict(sorted(dropped.items())),
            "split": {"test_size": test_size, "seed": seed, **kept} if test_size else None,
            "outputs": sorted(outputs),
            "fm9g_version": __version__,
        }
        write_json_atomic(temp / REPORT_FILE, report)
    return PrepareResult(report, first_dropped)


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


def _stage(source: Path, adapter: Any, options: dict[str, Any], staging: Path, dropped: Counter,
           first_dropped: dict[str, str], progress: bool | None) -> tuple[int, int, array]:
    """Run the adapter over the input into ``staging``, one line per raw item (an empty line for a
    dropped one); return (items, records kept, line offsets). Drops are counted in ``dropped``."""
    offsets = array("q", [0])
    records = 0
    items = _items(source, adapter.input_kind, dropped, first_dropped)
    with open(staging, "wb") as stage, _progress(progress) as bar:
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
                first_dropped.setdefault(result.reason, f"{source} item {number + 1}")
            stage.write(line)
            position += len(line)
            offsets.append(position)
            bar.update(1)
    return len(offsets) - 1, records, offsets


def _items(source: Path, kind: str, dropped: Counter, first_dropped: dict[str, str]):
    """The raw items for the adapter; unreadable lines are counted in ``dropped`` and left out."""
    reader = iter_text_lines(source) if kind == "text" else iter_json(source)
    for item in reader:
        if isinstance(item, ReadFailure):
            dropped[item.reason] += 1
            first_dropped.setdefault(item.reason, item.where)
            continue
        yield item


def _write_in_order(staging: Path, offsets: array, order: np.ndarray | None, target: Path) -> int:
    """Write staged records (all in file order, or those of ``order`` in that order) to ``target``,
    flushed to disk before the directory is published; count them."""
    with open(target, "wb") as out:
        written = _copy_in_order(staging, offsets, order, out)
        out.flush()
        os.fsync(out.fileno())
    return written


def _copy_in_order(staging: Path, offsets: array, order: np.ndarray | None, out: IO[bytes]) -> int:
    written = 0
    with open(staging, "rb") as stage:
        if order is None:
            for line in stage:
                if line != b"\n":
                    out.write(line)
                    written += 1
            return written
        descriptor = stage.fileno()
        for index in order.tolist():
            start = offsets[index]
            line = os.pread(descriptor, offsets[index + 1] - start, start)
            if line != b"\n":
                out.write(line)
                written += 1
    return written


def _progress(enabled: bool | None):
    """tqdm's counter on a terminal (always with ``True``), a plain line now and then in a log, nothing with ``False``."""
    from fm9g.core.progress import progress_bar

    return progress_bar(total=None, unit=" items", desc="prepare", enabled=enabled is not False,
                        bar=True if enabled else None)
