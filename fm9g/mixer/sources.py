"""Per-dataset sample sources: tokenized samples in the order of each epoch's keyed permutation.

A dataset's row order is known in advance (``permutation[position]``), so its samples can be
tokenized ahead of need, a chunk of positions at a time: in this process, by a background
tokenizing thread (the default with the ``hf`` tokenizer, see :class:`PrefetchThread`), or in
worker processes. Each sample is a pure function of (dataset row, epoch, seed, transform,
tokenizer), so the stream never depends on the number of workers, the thread or the chunk sizes;
only *consumed* positions go into the stream state.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from fm9g.core.protocols import Tokenizer, TransformFn
from fm9g.mixer.permutation import KeyedPermutation, epoch_key
from fm9g.mixer.samples import (Chunk, FlatTokens, PreparedChunk, encode_deferred, encode_flat, finish_chunk,
                                prepare_chunk)
from fm9g.mixer.transforms import TransformRef, bind_transform

FIRST_CHUNK = 16
MAX_CHUNK = 256
AHEAD = 2
THREAD_AHEAD = 1
"""Chunks start small (a fast first batch) and double up to ``MAX_CHUNK`` rows; with worker
processes up to ``AHEAD`` chunks per dataset are in flight, with the prefetch thread ``THREAD_AHEAD``.
256 rows keep the tokenizer's per-call cost negligible while bounding what is tokenized ahead and
never consumed when a run stops (measured on the bench corpus: 128 and 512 rows were both slower,
and so were a second tokenizing thread and prefetching only once half a chunk was consumed)."""


def open_dataset(path: str | os.PathLike) -> Any:
    """Open an indexed dataset directory with the index reader, which reads the seed's directories and
    sharded indexes too (one dataset with one row numbering over all its shards)."""
    from fm9g.index.sharded_reader import open_indexed

    return open_indexed(path)


def rows_used(spec: Any, dataset: Any) -> int:
    """How many of the dataset's rows the mixture draws from: all, or its first ``max_rows``."""
    return len(dataset) if spec.max_rows is None else min(len(dataset), spec.max_rows)


@dataclass(frozen=True)
class ChunkTask:
    """Everything that determines a chunk; picklable, so a worker process can build it."""

    path: str
    task_name: str
    seed: int
    epoch: int
    start: int
    count: int
    nlines: int
    transform: TransformRef
    trust_scripts: bool
    tokenizer_spec: str
    max_length: int
    oversize_rule: str


class ChunkBuilder:
    """Builds chunks; caches the opened dataset, bound transform and tokenizer per source.

    A build has three phases: :meth:`prepare` (read and transform the rows), :meth:`encode`
    (tokenize: the expensive part, mostly outside the GIL) and :meth:`finish` (arrays, masks,
    statuses). :meth:`build` runs them in a row; the prefetch pipeline runs only :meth:`encode`
    in its background thread."""

    def __init__(self, dataset: Any = None, transform: TransformFn | None = None, tokenizer: Tokenizer | None = None):
        self.dataset = dataset
        self.transform = transform
        self.tokenizer = tokenizer

    def _load(self, task: ChunkTask) -> None:
        if self.dataset is None:
            self.dataset = open_dataset(task.path)
        if self.transform is None:
            self.transform = bind_transform(task.transform, trust_scripts=task.trust_scripts)
        if self.tokenizer is None:
            from fm9g.tokenizers import load_tokenizer

            self.tokenizer = load_tokenizer(task.tokenizer_spec)

    def prepare(self, task: ChunkTask) -> PreparedChunk:
        self._load(task)
        keys = epoch_key(task.seed, task.task_name, task.epoch)
        rows = KeyedPermutation(task.nlines, keys).take(np.arange(task.start, task.start + task.count))
        records = read_records(self.dataset, rows.tolist())
        return prepare_chunk(records, rows, epoch=task.epoch, start=task.start, nlines=task.nlines,
                             transform=self.transform, base_key=keys[0])

    def encode(self, texts: list[str]) -> Callable[[], FlatTokens]:
        return encode_deferred(self.tokenizer, texts)

    def finish(self, task: ChunkTask, prepared: PreparedChunk, tokens: FlatTokens) -> Chunk:
        return finish_chunk(prepared, tokens, self.tokenizer, max_length=task.max_length,
                            oversize_rule=task.oversize_rule)

    def build(self, task: ChunkTask) -> Chunk:
        prepared = self.prepare(task)
        return self.finish(task, prepared, encode_flat(self.tokenizer, prepared.texts))


HUGE = float(1 << 63)


def _holds_huge_float(value: Any) -> bool:
    """Whether a parsed record holds a float of magnitude >= 2**63: orjson turns integers beyond
    64 bits into floats where ``json`` keeps them exact, so such a record is re-read with ``json``."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            continue
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float) and not -HUGE < item < HUGE:
            return True
    return False


def read_records(dataset: Any, rows: list[int]) -> list[Any]:
    """The parsed records of ``rows`` (the stream's hot path, one chunk at a time).

    Line offsets are gathered with one numpy take from the reader's ``offsets`` and the lines read
    with ``os.pread`` on one descriptor; lines are decoded with orjson (several times faster than
    ``json``). A line orjson rejects or reads differently from ``json`` (NaN, a BOM, lone
    surrogates; integers beyond 64 bits, which orjson makes floats), or a short read, goes through
    the reader's own ``ds[i]``, which gives ``json``'s result or raises the reader's error for a
    bad line or a truncated file. A sharded index's rows are read so, shard by shard
    (``group_rows``); readers without ``offsets``/``data_path`` get ``read_many``."""
    group_rows = getattr(dataset, "group_rows", None)
    if group_rows is not None:  # a sharded index: each shard's rows through this path
        gathered: list[Any] = [None] * len(rows)
        for shard, places, local_rows in group_rows(rows):
            for place, record in zip(places, read_records(shard, local_rows)):
                gathered[place] = record
        return gathered
    offsets, data_path = getattr(dataset, "offsets", None), getattr(dataset, "data_path", None)
    if offsets is None or data_path is None:
        return dataset.read_many(rows)
    positions = np.asarray(rows, dtype=np.int64)
    starts = np.asarray(offsets[positions], dtype=np.int64)
    sizes = (np.asarray(offsets[positions + 1], dtype=np.int64) - starts).tolist()
    loads, pread = orjson.loads, os.pread
    records = []
    descriptor = os.open(data_path, os.O_RDONLY)
    try:
        for row, start, size in zip(rows, starts.tolist(), sizes):
            line = pread(descriptor, size, start)
            if len(line) == size:
                try:
                    record = loads(line)
                except orjson.JSONDecodeError:
                    pass
                else:
                    if not _holds_huge_float(record):
                        records.append(record)
                        continue
            records.append(dataset[row])
    finally:
        os.close(descriptor)
    return records


def init_worker() -> None:
    """Worker processes tokenize single-threaded: the workers themselves are the parallelism, and
    letting each one start a thread per core on top would oversubscribe the machine."""
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


_WORKER_BUILDERS: dict[tuple[str, str, str], ChunkBuilder] = {}


def build_in_worker(task: ChunkTask) -> Chunk:
    """Entry point for worker processes: one cached builder per (dataset, transform, tokenizer)."""
    key = (task.path, repr(task.transform), task.tokenizer_spec)
    builder = _WORKER_BUILDERS.get(key)
    if builder is None:
        builder = _WORKER_BUILDERS[key] = ChunkBuilder()
    return builder.build(task)


class PrefetchThread:
    """One background thread that tokenizes chunks ahead of need, in submission order.

    It runs only the tokenizer (:meth:`ChunkBuilder.encode`): ``tokenizers`` works on its own
    thread pool with the GIL released, so while it runs, the stream's Python work — reading and
    transforming the next rows, turning the last batch's ids into arrays, scheduling, packing,
    the caller's own step — proceeds in the stream's thread instead of leaving a core idle.
    Reading and transforms stay in the stream's thread, so user transform code never runs
    concurrently. Fork-safe: a process forked from the stream's starts its own thread on first use.
    """

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._pid: int | None = None

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        if self._executor is None or self._pid != os.getpid():
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="fm9g-mixer-tokenize")
            self._pid = os.getpid()
        return self._executor.submit(function, *args)

    def shutdown(self) -> None:
        if self._executor is not None and self._pid == os.getpid():
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None


@dataclass
class _Pending:
    """A chunk in flight: a worker process's future ``Chunk``, or the prefetch thread's future
    tokens of ``prepared``; neither when it is to be built on demand."""

    epoch: int
    start: int
    count: int
    future: Future | None = None
    prepared: PreparedChunk | None = None
    pid: int = 0


class SampleSource:
    """Samples of one dataset at (epoch, position), built in chunks and optionally ahead of time:
    in worker processes (``executor``) or tokenized by the stream's :class:`PrefetchThread`
    (``thread``). ``may_start_epoch(e)`` says whether prefetching may run on into epoch ``e``."""

    def __init__(self, template: ChunkTask, builder: ChunkBuilder, executor: Executor | None = None,
                 thread: PrefetchThread | None = None, may_start_epoch: Callable[[int], bool] | None = None):
        self.template = template
        self.builder = builder
        self.executor = executor
        self.thread = thread
        self.may_start_epoch = may_start_epoch or (lambda epoch: epoch == 0)
        self.ahead = AHEAD if executor is not None else THREAD_AHEAD if thread is not None else 0
        self.current: Chunk | None = None
        self.pending: deque[_Pending] = deque()
        self.chunk_size = FIRST_CHUNK

    def _task(self, epoch: int, start: int, count: int) -> ChunkTask:
        return ChunkTask(**{**self.template.__dict__, "epoch": epoch, "start": start, "count": count})

    def _next_range(self, epoch: int, start: int) -> tuple[int, int, int]:
        count = min(self.chunk_size, self.template.nlines - start)
        self.chunk_size = min(self.chunk_size * 2, MAX_CHUNK)
        return epoch, start, count

    def _start(self, epoch: int, start: int, count: int) -> _Pending:
        """Set a chunk going in a worker process or the prefetch thread."""
        task = self._task(epoch, start, count)
        if self.executor is not None:
            return _Pending(epoch, start, count, self.executor.submit(build_in_worker, task))
        if self.thread is not None:
            prepared = self.builder.prepare(task)
            future = self.thread.submit(self.builder.encode, prepared.texts)
            prepared.texts = []
            return _Pending(epoch, start, count, future, prepared, os.getpid())
        return _Pending(epoch, start, count)

    def _complete(self, pending: _Pending) -> Chunk:
        """The chunk of a pending entry: waits for it, or builds it here, now, if it was never
        started (a chunk nobody prefetched: the first of a dataset, or after a jump)."""
        task = self._task(pending.epoch, pending.start, pending.count)
        if pending.future is None or (pending.prepared is not None and pending.pid != os.getpid()):
            return self.builder.build(task)  # never started, or started by the thread of the process we forked from
        if pending.prepared is None:
            return pending.future.result()
        return self.builder.finish(task, pending.prepared, pending.future.result()())

    def _fill_ahead(self, epoch: int, after: int) -> None:
        while len(self.pending) < self.ahead:
            last = self.pending[-1] if self.pending else _Pending(epoch, after, 0)
            next_epoch, next_start = last.epoch, last.start + last.count
            if next_start >= self.template.nlines:
                next_epoch, next_start = next_epoch + 1, 0
                if not self.may_start_epoch(next_epoch):
                    return
            self.pending.append(self._start(*self._next_range(next_epoch, next_start)))

    def get(self, epoch: int, position: int) -> tuple[Chunk, int]:
        """The chunk holding (epoch, position) and the sample's index in it."""
        chunk = self.current
        if chunk is None or chunk.epoch != epoch or not chunk.start <= position < chunk.start + len(chunk):
            chunk = self.current = self._obtain(epoch, position)
        if len(self.pending) < self.ahead:
            self._fill_ahead(epoch, chunk.start + len(chunk))
        return chunk, position - chunk.start

    def _obtain(self, epoch: int, position: int) -> Chunk:
        while self.pending:
            pending = self.pending.popleft()
            if pending.epoch == epoch and pending.start <= position < pending.start + pending.count:
                return self._complete(pending)
            if pending.future is not None:
                pending.future.cancel()
        return self._complete(_Pending(*self._next_range(epoch, position)))

    def sample_at(self, epoch: int, position: int) -> Chunk:
        """A one-sample chunk for (epoch, position), leaving the prefetch queue alone (used on resume)."""
        return self.builder.build(self._task(epoch, position, 1))

    def stop_prefetching(self) -> None:
        """Forget chunks in flight; later chunks are built in this thread, on demand."""
        self.executor = None
        self.thread = None
        self.ahead = 0
        self.pending.clear()
