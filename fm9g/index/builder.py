"""``fm9g index``: JSONL records → an indexed dataset directory in the seed's layout (its tooling reads it).

The input is cut into newline-aligned chunks that worker processes validate and tokenize in
parallel; the main process consumes results in order, copies good lines byte for byte into
``data.jsonl`` (bad lines are skipped and counted, so the index always matches the data), hashes
them, and appends offsets to the text ``index`` and to a scratch file that becomes ``index.h5``.
Everything happens in a temporary directory renamed into place at the end. Memory stays flat:
at most ``2 × workers`` chunks are in flight, and offsets go to disk as they are produced.
"""

from __future__ import annotations

import gc
import glob
import hashlib
import multiprocessing
import os
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fm9g.core.atomic import OUTPUT_MARKER, atomic_directory, check_replaceable, write_json_atomic
from fm9g.core.errors import Fm9gError
from fm9g.core.sharding import line_end_after
from fm9g.index.checksum import VERIFIED_FILE
from fm9g.index.chunks import BOM, ChunkResult, ChunkTask, init_worker, process_chunk
from fm9g.index.format import (
    DATA_FILE, FORMAT_VERSION, INDEX_H5_FILE, INDEX_TEXT_FILE, META_FILE, length_distribution, merge_votes,
)
from fm9g.index.meta import meta_from_tallies

_COPY_ROWS = 1 << 20
_PEEK_BYTES = 1 << 16
_MIN_CHUNK, _MAX_CHUNK = 256 << 10, 2 << 20
"""Chunk size bounds: at least 8 chunks per worker for small inputs, and at most 2 MiB so a
worker's memory (chunk bytes, parsed records, encodings) stays flat however big the input is."""
_PARTIAL_INDEX = ".index.partial"
"""The text index is written under this name and renamed last, so a killed build has no index."""


@dataclass
class BuildOptions:
    """Options of ``fm9g index`` (see its ``--help``)."""

    tokenizer: str | None = None
    language: str | None = None
    workers: int | None = None
    strict: bool = False
    force: bool = False
    chunk_bytes: int | None = None
    max_line_bytes: int = 64 << 20
    progress: bool | None = None


@dataclass
class BuildSummary:
    output: Path
    meta: dict[str, Any]
    input_bytes: int
    seconds: float
    workers: int
    first_bad: dict[str, str] = field(default_factory=dict)

    @property
    def megabytes_per_second(self) -> float:
        return self.input_bytes / 1e6 / self.seconds if self.seconds > 0 else float("inf")


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def expand_inputs(patterns: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files named or matched by glob patterns, each pattern's matches sorted, duplicates dropped."""
    files: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        path = Path(text)
        if path.is_dir():
            raise Fm9gError("is a directory", where=text, fix=f"name a file or a glob such as {text}/*.jsonl")
        matches = [Path(text)] if path.exists() else [Path(m) for m in sorted(glob.glob(text))]
        matches = [m for m in matches if m.is_file()]
        if not matches:
            raise Fm9gError("no such file (or nothing matches the pattern)", where=text, fix="check the --input path")
        files.extend(m for m in matches if m not in files)
    return files


def check_apart(inputs: list[Path], output: Path) -> None:
    """The output directory must be neither an input's directory (the seed's rule) nor hold an input."""
    target = output.resolve()
    for source in inputs:
        if source.resolve().parent == target:
            raise Fm9gError(
                f"the output directory is the directory of the input {source}",
                where=str(output), fix="choose another --output (the index writes its own data.jsonl there)")
        if target in source.resolve().parents:
            raise Fm9gError(f"the input {source} lies inside the output directory", where=str(output),
                            fix="choose an --output outside the input's directories")


def _check_output(inputs: list[Path], output: Path, force: bool) -> None:
    check_apart(inputs, output)
    if not output.exists():
        return
    if not force:
        raise Fm9gError("output already exists", where=str(output), fix="pass --force to replace it")
    if not output.is_dir():
        raise Fm9gError("output exists and is not a directory", where=str(output), fix="remove it or choose another --output")
    known = {DATA_FILE, INDEX_TEXT_FILE, INDEX_H5_FILE, META_FILE}
    entries = {entry.name for entry in output.iterdir()}
    if entries and not entries & known:
        raise Fm9gError("refusing to replace a directory that is not an indexed dataset", where=str(output),
                        fix="remove it yourself or choose another --output")
    if not entries or OUTPUT_MARKER in entries:
        check_replaceable(output)  # fm9g wrote it (or it is empty): still never the current or home directory
    elif not entries <= known | {VERIFIED_FILE}:
        # an index of the seed's tooling (or of fm9g before the marker) holds only these; --force would delete the rest
        extra = sorted(entries - known - {VERIFIED_FILE})[0]
        raise Fm9gError(f"refusing to replace a directory that holds more than an index ({extra})",
                        where=str(output), fix="remove it yourself or choose another --output")


def peek(path: Path) -> None:
    """Reject JSON that is not JSON Lines (an array, a pretty-printed object) with a clear message."""
    with open(path, "rb") as handle:
        head = handle.read(_PEEK_BYTES)
    if head.startswith(BOM):
        head = head[len(BOM):]
    first_line = head.lstrip().split(b"\n", 1)[0].strip()
    if first_line.startswith(b"["):
        raise Fm9gError("this is a JSON array, not JSON Lines (one record per line)", where=f"{path}:1",
                        fix=f"convert it first: fm9g prepare --adapter jsonl --input {path} --output DIR")
    if first_line == b"{":
        raise Fm9gError("this looks like pretty-printed JSON, not JSON Lines (one record per line)",
                        where=f"{path}:1", fix=f"convert it first: fm9g prepare --adapter jsonl --input {path} --output DIR")


Piece = tuple[Path, int, int]
"""A newline-aligned byte range ``[start, end)`` of one input file: a whole file, or a shard's part of one."""


def whole_files(files: Sequence[Path]) -> list[Piece]:
    return [(path, 0, path.stat().st_size) for path in files]


def _plan(pieces: Sequence[Piece], chunk_bytes: int) -> Iterator[ChunkTask]:
    """Newline-aligned chunks of every piece (a line longer than a chunk makes a longer chunk)."""
    number = 0
    for path, start, stop in pieces:
        with open(path, "rb") as handle:
            while start < stop:
                end = line_end_after(handle, start + chunk_bytes, stop) if start + chunk_bytes < stop else stop
                yield ChunkTask(number, str(path), start, end, want_sample=number == 0)
                number += 1
                start = end


class _Assembler:
    """Consumes chunk results in order and writes the directory's files."""

    def __init__(self, directory: Path, files: list[Path], options: BuildOptions):
        self.directory = directory
        self.options = options
        self.data = open(directory / DATA_FILE, "wb")
        self.index_text = open(directory / _PARTIAL_INDEX, "w", encoding="ascii", newline="\n")
        self.offsets_scratch = open(directory / ".offsets.bin", "wb")
        self.tokens_scratch = open(directory / ".tokens.bin", "wb") if options.tokenizer else None
        self.hasher = hashlib.blake2b()
        self.nlines = 0
        self.nbytes = 0
        self.skipped: Counter = Counter()
        self.normalized: Counter = Counter()
        self.first_bad: dict[str, str] = {}
        self.sample: dict[str, Any] | None = None
        self.votes: list[list[int]] = []
        self.conversations = 0
        self.buckets = {"tokens": Counter(), "zh": Counter(), "en": Counter()}
        self.totals = {"tokens": 0, "zh": 0, "en": 0}
        """Integer sums (order-independent, so the result does not depend on chunking); the seed's
        estimate factors (0.7 per character, 1.5 per word) are applied once at the end."""
        self.line_base = self.path_start = 0
        self.current_path: str | None = None
        self.sources = [str(path) for path in files]

    def consume(self, result: ChunkResult) -> None:
        task = result.task
        if task.path != self.current_path:
            self.current_path, self.line_base, self.path_start = task.path, 0, task.start
        if result.skipped:
            self._note_bad(result)
        self.line_base += result.input_lines
        self.skipped.update(result.skipped)
        self.normalized.update(result.normalized)
        if self.sample is None and result.sample is not None:
            self.sample = result.sample
        self.votes = merge_votes(self.votes, result.votes)
        self.conversations += result.messages
        payload = result.data
        if payload is None:
            with open(task.path, "rb", buffering=0) as handle:
                payload = os.pread(handle.fileno(), task.end - task.start, task.start)
        self.data.write(payload)
        self.hasher.update(payload)
        lengths = result.line_lengths
        if lengths.size:
            starts = self.nbytes + np.concatenate(([0], np.cumsum(lengths[:-1])))
            self.index_text.write("\n".join(map(str, starts.tolist())) + "\n")
            self.offsets_scratch.write(starts.astype(np.int64).tobytes())
        self.nbytes += len(payload)
        self.nlines += lengths.size
        self._tally(result)

    def _note_bad(self, result: ChunkResult) -> None:
        local, reason, detail = result.first_bad
        where = f"{result.task.path}:{_lines_before(result.task.path, self.path_start) + self.line_base + local + 1}"
        if self.options.strict:
            raise Fm9gError(f"bad line ({reason}{': ' + detail if detail else ''})", where=where,
                            fix="fix or remove the line, or run without --strict to skip and count bad lines")
        for bad_reason in result.skipped:
            self.first_bad.setdefault(bad_reason, where if bad_reason == reason else result.task.path)

    def _tally(self, result: ChunkResult) -> None:
        if result.tokens is not None:
            self.tokens_scratch.write(result.tokens.tobytes())
            per_line = result.tokens.sum(axis=1, dtype=np.int64)
            self.buckets["tokens"].update(length_distribution(per_line))
            self.totals["tokens"] += int(per_line.sum())
            return
        self.buckets["zh"].update(length_distribution(0.7 * result.chars))
        self.buckets["en"].update(length_distribution(1.5 * (result.spaces + 1)))
        self.totals["zh"] += int(result.chars.sum())
        self.totals["en"] += int((result.spaces + 1).sum())

    def tallies(self) -> dict[str, Any]:
        """The sums meta.json's statistics come from (JSON): a shard's add up with the others' to the whole's."""
        return {"nlines": self.nlines, "nbytes": self.nbytes, "skipped": dict(self.skipped),
                "normalized": dict(self.normalized), "votes": self.votes,
                "buckets": {key: dict(counter) for key, counter in self.buckets.items()}, "totals": dict(self.totals),
                "record_forms": {"input_output": self.nlines - self.conversations, "messages": self.conversations}}

    def finish(self, tokenizer: Any) -> dict[str, Any]:
        """Close the data files, write index.h5 and meta.json; return the meta document."""
        self.index_text.write(f"{self.nbytes}\n")
        for handle in (self.data, self.index_text, self.offsets_scratch, self.tokens_scratch):
            if handle is not None:
                handle.close()
        self._write_h5(tokenizer)
        os.rename(self.directory / _PARTIAL_INDEX, self.directory / INDEX_TEXT_FILE)
        meta = meta_from_tallies(
            self.tallies(), language=self.options.language, tokenizer=self.options.tokenizer,
            tokenizer_fingerprint=tokenizer.fingerprint if tokenizer is not None else None, data_sample=self.sample,
            data_checksum=f"blake2b:{self.hasher.hexdigest()}", sources=self.sources)
        write_json_atomic(self.directory / META_FILE, meta)
        return meta

    def _write_h5(self, tokenizer: Any) -> None:
        import h5py

        offsets_path = self.directory / ".offsets.bin"
        tokens_path = self.directory / ".tokens.bin"
        with h5py.File(self.directory / INDEX_H5_FILE, "w") as h5:
            index = h5.create_dataset("index", shape=(self.nlines + 1,), dtype="int64")
            offsets = np.memmap(offsets_path, dtype=np.int64, mode="r") if self.nlines else np.zeros(0, np.int64)
            for begin in range(0, self.nlines, _COPY_ROWS):
                end = min(begin + _COPY_ROWS, self.nlines)
                index[begin:end] = offsets[begin:end]
            index[self.nlines] = self.nbytes
            del offsets
            h5.attrs["format_version"] = FORMAT_VERSION
            if tokenizer is not None:
                tokens = h5.create_dataset("tokens", shape=(self.nlines, 2), dtype="int32")
                counts = (np.memmap(tokens_path, dtype=np.int32, mode="r", shape=(self.nlines, 2)) if self.nlines
                          else np.zeros((0, 2), np.int32))
                for begin in range(0, self.nlines, _COPY_ROWS):
                    tokens[begin:begin + _COPY_ROWS] = counts[begin:begin + _COPY_ROWS]
                del counts
                h5.attrs["tokenizer"] = self.options.tokenizer
                h5.attrs["tokenizer_fingerprint"] = tokenizer.fingerprint
        offsets_path.unlink()
        tokens_path.unlink(missing_ok=True)


def _results(tasks: Iterator[ChunkTask], workers: int, initargs: tuple) -> Iterator[ChunkResult]:
    """Chunk results in task order; a pool of ``workers`` processes with a bounded window."""
    if workers == 1:
        init_worker(*initargs[:3], False)
        for task in tasks:
            yield process_chunk(task)
        return
    context = multiprocessing.get_context("fork")
    gc.freeze()  # the workers' garbage collector then leaves the parent's objects (and their pages) alone
    try:
        pool = context.Pool(workers, initializer=init_worker, initargs=initargs)
    finally:
        gc.unfreeze()
    with pool:
        pending: deque = deque()
        for task in tasks:
            pending.append(pool.apply_async(process_chunk, (task,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def build_index(inputs: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str],
                options: BuildOptions | None = None) -> BuildSummary:
    """Build the indexed dataset directory ``output`` from JSONL ``inputs`` (files or globs)."""
    options = options or BuildOptions()
    output = Path(output)
    files = expand_inputs(inputs)
    _check_output(files, output, options.force)
    for path in files:
        peek(path)
    with atomic_directory(output, replace=options.force) as temp:
        summary, assembler = assemble(whole_files(files), temp, files, options)
        if assembler.nlines == 0:
            raise _no_records(files, summary.input_bytes, assembler)
    summary.output = output
    return summary


def assemble(pieces: Sequence[Piece], directory: Path, files: list[Path],
             options: BuildOptions) -> tuple[BuildSummary, _Assembler]:
    """Index ``pieces`` into the (temporary, unpublished) ``directory``; zero records make an empty index.
    ``files`` are the inputs meta.json names as its sources."""
    tokenizer = None
    if options.tokenizer:
        from fm9g.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(options.tokenizer)
    workers = max(1, options.workers or default_workers())
    total_bytes = sum(stop - start for _, start, stop in pieces)
    chunk_bytes = options.chunk_bytes or int(min(_MAX_CHUNK, max(_MIN_CHUNK, total_bytes // (workers * 8) + 1)))
    initargs = (options.tokenizer, options.max_line_bytes, options.language is None, True)
    started = time.perf_counter()
    assembler = _Assembler(directory, files, options)
    try:
        results = _results(_plan(pieces, chunk_bytes), workers, initargs)
        with _progress(total_bytes, options.progress) as bar:
            for result in results:
                assembler.consume(result)
                bar.update(result.task.end - result.task.start)
                elapsed = max(time.perf_counter() - started, 1e-9)
                bar.set_postfix_str(f"{assembler.nlines / elapsed:,.0f} rec/s", refresh=False)
        meta = assembler.finish(tokenizer)
    finally:
        for handle in (assembler.data, assembler.index_text, assembler.offsets_scratch, assembler.tokens_scratch):
            if handle is not None and not handle.closed:
                handle.close()
    summary = BuildSummary(directory, meta, total_bytes, time.perf_counter() - started, workers, assembler.first_bad)
    return summary, assembler


def _lines_before(path: str, position: int) -> int:
    """Newlines in ``path`` before byte ``position`` (for the line number of a bad line in a shard's
    part of a file; read only when a bad line is reported)."""
    count = done = 0
    with open(path, "rb") as handle:
        while done < position:
            block = handle.read(min(8 << 20, position - done))
            if not block:
                break
            count += block.count(b"\n")
            done += len(block)
    return count


def _no_records(files: list[Path], total_bytes: int, assembler: _Assembler) -> Fm9gError:
    names = ", ".join(str(path) for path in files)
    if total_bytes == 0 or not assembler.skipped:
        return Fm9gError("the input is empty: no records to index", where=names,
                         fix="check that the file holds one JSON record per line")
    counts = ", ".join(f"{reason} {count}" for reason, count in sorted(assembler.skipped.items()))
    first = next(iter(assembler.first_bad.values()), names)
    return Fm9gError(f"no valid records (skipped: {counts}; first at {first})", where=names,
                     fix='each line must be a JSON object with string "input" and "output"')


def _progress(total: int, enabled: bool | None):
    """tqdm's bar on a terminal (always with ``True``), a plain line now and then in a log, nothing with ``False``."""
    from fm9g.core.progress import progress_bar

    return progress_bar(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc="index",
                        enabled=enabled is not False, bar=True if enabled else None)
