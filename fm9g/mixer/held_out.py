"""Each task's held-out set and the packed batches that evaluate a model on it.

Where a task's held-out set comes from, first match wins: an eval manifest (the mix schema, the
training mixture's task names, each entry's ``path`` an indexed dataset), the training entry's
``eval_path``, or the test split that ``fm9g index`` builds at ``<index>/test`` when the records it
indexes came from ``fm9g prepare --split``. A task without one is not evaluated (and said so).

The batches are a pure function of (held-out data, transforms, tokenizer, max_length, batch_size,
seed, token limit): every row of each set in row order, through the *task's training* transform
(its transform and oversize rule), packed as training packs (whole samples or ``segment`` windows
back to back, ``position_ids`` restarting per sample), each set starting a new batch. Nothing here
reads or changes the training stream: the sets are opened afresh, and a transform's randomness
comes from a per-row generator keyed by the held-out set, never from a global RNG.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fm9g.core.errors import Fm9gError
from fm9g.core.protocols import Tokenizer
from fm9g.mixer.manifest import DatasetSpec, Manifest
from fm9g.mixer.packing import PackedBatch, Piece, pack
from fm9g.mixer.permutation import epoch_key
from fm9g.mixer.samples import (DROPPED, IGNORE_INDEX, STATUS_NAMES, TRANSFORM_FAILED, encode_flat,
                                finish_chunk, prepare_chunk, windows)
from fm9g.mixer.sources import open_dataset, read_records
from fm9g.mixer.transforms import bind_transform

HELD_OUT_DIR = "test"
"""Where ``fm9g index`` puts the indexed test split inside the training index directory."""
ROWS_PER_CHUNK = 256
CACHE_BYTES = 1 << 30
"""Held-out batches up to this size (1 GiB: about 60 M tokens) are built once per run and reused."""


@dataclass(frozen=True)
class HeldOutSet:
    """One task's held-out indexed dataset and the training entry whose transform evaluates it."""

    task_id: int
    """The task's index among the training mixture's task names (the batches' ``task_ids``)."""
    spec: DatasetSpec
    path: Path
    origin: str
    """``eval manifest``, ``eval_path`` or ``test split``: for the run header."""
    rows: int


@dataclass
class HeldOutPlan:
    """The held-out sets of a run, the mixture weights their weighted total uses, and notes for the user."""

    sets: list[HeldOutSet]
    task_names: list[str]
    """The training mixture's task names, in its order (task ids index into it)."""
    notes: list[str] = field(default_factory=list)

    @property
    def weights(self) -> dict[str, float]:
        """Each evaluated task's mixture weight (``abs_weight``), for the mixture-weighted total."""
        return {held.spec.task_name: held.spec.abs_weight for held in self.sets}

    def describe(self) -> list[str]:
        """One line per task for the run header."""
        found = [f"{held.spec.task_name}: {held.rows:,} rows ({held.origin}, {held.path})" for held in self.sets]
        return found + self.notes


def _meta_fingerprint(path: Path) -> str | None:
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = meta.get("tokenizer_fingerprint") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def find_held_out(manifest: Manifest, *, eval_manifest: Manifest | None = None,
                  tokenizer_fingerprint: str | None = None, task_names: list[str] | None = None) -> HeldOutPlan:
    """Each training task's held-out set (see the module docstring for where it comes from).

    ``manifest`` gives each task's transform, oversize rule and weight: the training manifest, or,
    for a materialized mixture (whose ``task_names`` are given), its eval manifest. An eval
    manifest entry whose task is not in the training mixture, or a set indexed with a different
    tokenizer than the training one, is an error; an empty set is skipped and noted."""
    names = list(task_names) if task_names is not None else manifest.task_names
    chosen: dict[str, tuple[Path, str]] = {}
    if eval_manifest is not None:
        for entry in eval_manifest.datasets:
            if entry.task_name not in names:
                raise Fm9gError(f"the eval manifest's task '{entry.task_name}' is not in the training mixture "
                                f"(tasks: {', '.join(names)})", where=f"{eval_manifest.source}: {entry.where}.task_name",
                                fix="name each held-out set after the training task it evaluates")
            chosen[entry.task_name] = (entry.path, "eval manifest")
    for spec in manifest.datasets:
        if spec.task_name in chosen:
            continue
        if spec.eval_path is not None:
            chosen[spec.task_name] = (spec.eval_path, "eval_path")
        elif (spec.path / HELD_OUT_DIR / "data.jsonl").is_file():
            chosen[spec.task_name] = (spec.path / HELD_OUT_DIR, "test split")
    sets, notes = [], []
    for spec in manifest.datasets:
        if spec.task_name not in names:
            raise Fm9gError(f"task '{spec.task_name}' is not in the training mixture (tasks: {', '.join(names)})",
                            where=f"{manifest.source}: {spec.where}.task_name",
                            fix="name each held-out set after the training task it evaluates")
        if spec.task_name not in chosen:
            notes.append(f"{spec.task_name}: no held-out set (not evaluated)")
            continue
        path, origin = chosen[spec.task_name]
        held_fingerprint = _meta_fingerprint(path)
        if tokenizer_fingerprint and held_fingerprint and held_fingerprint != tokenizer_fingerprint:
            raise Fm9gError(f"the held-out set of task '{spec.task_name}' was indexed with tokenizer "
                            f"{held_fingerprint} but training uses {tokenizer_fingerprint}", where=str(path),
                            fix="index the held-out records with the training tokenizer (fm9g index --tokenizer ...)")
        rows = len(open_dataset(path))
        if rows == 0:
            notes.append(f"{spec.task_name}: the held-out set {path} has no rows (skipped)")
            continue
        sets.append(HeldOutSet(names.index(spec.task_name), spec, path, origin, rows))
    return HeldOutPlan(sets, names, notes)


@dataclass
class HeldOutCounts:
    """What one pass over a task's held-out set used: rows read, samples kept, skips by reason."""

    rows: int = 0
    samples: int = 0
    skipped: Counter = field(default_factory=Counter)

    def as_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "samples": self.samples, "skipped": dict(sorted(self.skipped.items()))}


class HeldOutBatches:
    """The packed evaluation batches of a :class:`HeldOutPlan`, numbered from 0 across all sets.

    Iterating yields every global batch (each rank picks its own share); after a full pass,
    :attr:`counts` holds each task's rows, samples and skips. ``max_target_tokens`` > 0 stops each
    set after the sample whose target tokens reach that many (the last sample is kept whole)."""

    def __init__(self, plan: HeldOutPlan, *, tokenizer: Tokenizer, max_length: int, batch_size: int, seed: int,
                 max_target_tokens: int = 0, trust_scripts: bool = False, source: str = "eval",
                 cache_bytes: int = CACHE_BYTES):
        self.plan, self.tokenizer = plan, tokenizer
        self.max_length, self.capacity = max_length, max_length * batch_size
        self.seed, self.max_target_tokens, self.source = seed, max_target_tokens, source
        self._transforms = [bind_transform(held.spec.transform, trust_scripts=trust_scripts,
                                           where=f"{source}: {held.spec.where}") for held in plan.sets]
        self.counts: dict[str, HeldOutCounts] = {}
        self.cache_bytes, self._cache = cache_bytes, None

    def __iter__(self) -> Iterator[PackedBatch]:
        """Every batch in order; the first complete pass is kept in memory when it fits
        ``cache_bytes``, so later evaluations of the run skip reading and tokenizing."""
        if self._cache is not None:
            yield from self._cache
            return
        kept: list[PackedBatch] | None = []
        size = 0
        for batch in self._build():
            if kept is not None:
                size += sum(array.nbytes for array in (batch.input_ids, batch.targets, batch.position_ids,
                                                       batch.task_ids, batch.cu_seqlens))
                if size <= self.cache_bytes:
                    kept.append(batch)
                else:
                    kept = None
            yield batch
        self._cache = kept

    def _build(self) -> Iterator[PackedBatch]:
        index = 0
        self.counts = {}
        for held, transform in zip(self.plan.sets, self._transforms):
            pieces: list[Piece] = []
            used = 0
            for piece in self._pieces(held, transform):
                if used + piece.length > self.capacity:
                    yield pack(index, pieces, self.capacity, self.tokenizer.pad_id)
                    index, pieces, used = index + 1, [], 0
                pieces.append(piece)
                used += piece.length
            if pieces:
                yield pack(index, pieces, self.capacity, self.tokenizer.pad_id)
                index += 1

    def _pieces(self, held: HeldOutSet, transform: Any) -> Iterator[Piece]:
        """The set's samples in row order, as the windows they are packed as."""
        spec, counts = held.spec, HeldOutCounts()
        self.counts[spec.task_name] = counts
        dataset = open_dataset(held.path)
        base_key = epoch_key(self.seed, f"held-out:{spec.task_name}", 0)[0]
        targets_seen = 0
        for start in range(0, held.rows, ROWS_PER_CHUNK):
            rows = np.arange(start, min(start + ROWS_PER_CHUNK, held.rows), dtype=np.int64)
            prepared = prepare_chunk(read_records(dataset, rows.tolist()), rows, epoch=0, start=start,
                                     nlines=held.rows, transform=transform, base_key=base_key)
            chunk = finish_chunk(prepared, encode_flat(self.tokenizer, prepared.texts), self.tokenizer,
                                 max_length=self.max_length, oversize_rule=spec.oversize_rule)
            for k in range(len(chunk)):
                counts.rows += 1
                status = int(chunk.status[k])
                if status in DROPPED:
                    self._count_skip(held, counts, chunk, k, status)
                    continue
                begin, kept = int(chunk.offsets[k]), int(chunk.kept[k])
                counts.samples += 1
                for window in windows(begin, kept, self.max_length):
                    yield Piece(held.task_id, chunk.src, chunk.tgt, *window)
                targets_seen += int(np.count_nonzero(chunk.tgt[begin:begin + kept] != IGNORE_INDEX))
                if self.max_target_tokens and targets_seen >= self.max_target_tokens:
                    return

    def _count_skip(self, held: HeldOutSet, counts: HeldOutCounts, chunk: Any, k: int, status: int) -> None:
        """Count a dropped sample; a failing transform stops the evaluation beyond the dataset's
        ``max_transform_errors``, as it stops training."""
        counts.skipped[STATUS_NAMES[status]] += 1
        if status in TRANSFORM_FAILED:
            failed = sum(counts.skipped[STATUS_NAMES[failure]] for failure in TRANSFORM_FAILED)
            if failed > held.spec.max_transform_errors:
                raise Fm9gError(
                    f"the transform of task '{held.spec.task_name}' failed on held-out row {int(chunk.rows[k])}: "
                    f"{chunk.errors.get(k, 'failed')}", where=str(held.path),
                    fix="fix the transform or the row, or raise the dataset's max_transform_errors")
