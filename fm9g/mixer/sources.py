"""Per-dataset sample sources: tokenized samples in the order of each epoch's keyed permutation.

A dataset's row order is known in advance (``permutation[position]``), so its samples can be
tokenized ahead of need, a chunk of positions at a time, in this process or in worker processes.
A chunk is a pure function of its :class:`ChunkTask`, so the stream never depends on the number of
workers or the chunk sizes; only *consumed* positions go into the stream state.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from fm9g.core.protocols import Tokenizer, TransformFn
from fm9g.mixer.permutation import KeyedPermutation, epoch_key
from fm9g.mixer.samples import Chunk, build_chunk
from fm9g.mixer.transforms import TransformRef, bind_transform

FIRST_CHUNK = 16
MAX_CHUNK = 512
AHEAD = 2
"""Chunks start small (a fast first batch) and double up to ``MAX_CHUNK`` rows; with workers,
up to ``AHEAD`` chunks per dataset are in flight."""


def open_dataset(path: str | os.PathLike) -> Any:
    """Open an indexed dataset directory with the index reader (contract 1)."""
    from fm9g.index.reader import IndexedDataset

    return IndexedDataset(path)


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
    """Builds chunks; caches the opened dataset, bound transform and tokenizer per source."""

    def __init__(self, dataset: Any = None, transform: TransformFn | None = None, tokenizer: Tokenizer | None = None):
        self.dataset = dataset
        self.transform = transform
        self.tokenizer = tokenizer

    def build(self, task: ChunkTask) -> Chunk:
        if self.dataset is None:
            self.dataset = open_dataset(task.path)
        if self.transform is None:
            self.transform = bind_transform(task.transform, trust_scripts=task.trust_scripts)
        if self.tokenizer is None:
            from fm9g.tokenizers import load_tokenizer

            self.tokenizer = load_tokenizer(task.tokenizer_spec)
        keys = epoch_key(task.seed, task.task_name, task.epoch)
        permutation = KeyedPermutation(task.nlines, keys)
        rows = permutation.take(np.arange(task.start, task.start + task.count))
        records = self.dataset.read_many(rows.tolist())
        return build_chunk(
            records,
            rows,
            epoch=task.epoch,
            start=task.start,
            nlines=task.nlines,
            transform=self.transform,
            tokenizer=self.tokenizer,
            max_length=task.max_length,
            oversize_rule=task.oversize_rule,
            base_key=keys[0],
        )


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


class SampleSource:
    """Samples of one dataset at (epoch, position), built in chunks and optionally ahead of time."""

    def __init__(self, template: ChunkTask, builder: ChunkBuilder, executor: Executor | None = None):
        self.template = template
        self.builder = builder
        self.executor = executor
        self.current: Chunk | None = None
        self.pending: deque[tuple[int, int, int, Future | None]] = deque()
        self.chunk_size = FIRST_CHUNK

    def _task(self, epoch: int, start: int, count: int) -> ChunkTask:
        return ChunkTask(**{**self.template.__dict__, "epoch": epoch, "start": start, "count": count})

    def _next_range(self, epoch: int, start: int) -> tuple[int, int, int]:
        count = min(self.chunk_size, self.template.nlines - start)
        self.chunk_size = min(self.chunk_size * 2, MAX_CHUNK)
        return epoch, start, count

    def _submit(self, epoch: int, start: int, count: int) -> None:
        future = self.executor.submit(build_in_worker, self._task(epoch, start, count)) if self.executor else None
        self.pending.append((epoch, start, count, future))

    def _fill_ahead(self, epoch: int, after: int) -> None:
        if self.executor is None:
            return
        while len(self.pending) < AHEAD:
            last_epoch, last_start, last_count, _ = self.pending[-1] if self.pending else (epoch, after, 0, None)
            next_start = last_start + last_count
            if next_start >= self.template.nlines:
                return
            self._submit(*self._next_range(last_epoch, next_start))

    def get(self, epoch: int, position: int) -> tuple[Chunk, int]:
        """The chunk holding (epoch, position) and the sample's index in it."""
        chunk = self.current
        if chunk is None or chunk.epoch != epoch or not chunk.start <= position < chunk.start + len(chunk):
            chunk = self.current = self._obtain(epoch, position)
        self._fill_ahead(epoch, chunk.start + len(chunk))
        return chunk, position - chunk.start

    def _obtain(self, epoch: int, position: int) -> Chunk:
        while self.pending:
            pending_epoch, start, count, future = self.pending.popleft()
            if pending_epoch == epoch and start <= position < start + count:
                return future.result() if future is not None else self.builder.build(self._task(epoch, start, count))
            if future is not None:
                future.cancel()
        _, start, count = self._next_range(epoch, position)
        return self.builder.build(self._task(epoch, position, count))

    def sample_at(self, epoch: int, position: int) -> Chunk:
        """A one-sample chunk for (epoch, position), leaving the prefetch queue alone (used on resume)."""
        return self.builder.build(self._task(epoch, position, 1))
