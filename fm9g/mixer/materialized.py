"""A materialized mixture: the packed global stream written to disk by ``fm9g mix --output DIR``.

Layout (all written into a temporary sibling directory that is renamed into place at the end by
:class:`fm9g.core.atomic.PendingDirectory`, so an interrupted run never leaves a directory that
looks complete)::

    DIR/mixture.json          format, settings, task names, shard list, totals
    DIR/stream_state.json     the MixtureStream state after the last batch (continue mixing from it)
    DIR/mix_report.json       the realized-mixture report
    DIR/shard-00000/input_ids.npy   int32 [batches, batch_size*max_length]
                    targets.npy     int32 [batches, batch_size*max_length]
                    task_ids.npy    int16 [batches, batch_size*max_length]  (-1 on padding)
                    cu_seqlens.npy  int32, every batch's boundaries back to back
                    cu_offsets.npy  int64 [batches+1], where each batch's boundaries start

:class:`MaterializedStream` reads it with the same iteration and state API as
:class:`fm9g.mixer.stream.MixtureStream` (rank r of W takes batches start+r, start+r+W, ...).
Opening one checks every listed shard (:func:`check_shard`): a truncated copy, a shard from another
mixture or tokenizer, or a hand-edited array would otherwise train on garbage or fail mid-run.
A mixture of no batches is never written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fm9g.core.atomic import PendingDirectory, check_replaceable, write_json_atomic
from fm9g.core.errors import Fm9gError
from fm9g.mixer.packing import PackedBatch, positions_from_cu_seqlens
from fm9g.mixer.samples import IGNORE_INDEX

FORMAT = "fm9g-mixture"
STATE_FORMAT = "fm9g-materialized"
VERSION = 1
SHARD_TOKENS = 1 << 23
FIELDS = ("input_ids", "targets", "task_ids")
DTYPES = {"input_ids": np.int32, "targets": np.int32, "task_ids": np.int16, "cu_seqlens": np.int32,
          "cu_offsets": np.int64}


class MaterializedWriter:
    """Collects packed batches into shards inside a temporary directory; :meth:`finish` publishes it."""

    def __init__(self, directory: str | Path, *, capacity: int, force: bool = False):
        self.directory = Path(directory)
        if self.directory.exists() and not force:
            raise Fm9gError("output directory already exists", where=str(self.directory),
                            fix="pass --force to replace it, or choose another --output")
        if force:
            check_replaceable(self.directory)  # --force replaces only a directory fm9g wrote
        self._pending = PendingDirectory(self.directory, replace=force)
        self.temporary = self._pending.path
        self.capacity = capacity
        self.shard_batches = max(1, SHARD_TOKENS // capacity)
        self.shards: list[dict[str, Any]] = []
        self.batches = 0
        self.tokens = 0
        self._reset()

    def _reset(self) -> None:
        self._rows: dict[str, list[np.ndarray]] = {field: [] for field in FIELDS}
        self._cu: list[np.ndarray] = []

    def add(self, batch: PackedBatch) -> None:
        self._rows["input_ids"].append(batch.input_ids)
        self._rows["targets"].append(batch.targets)
        self._rows["task_ids"].append(batch.task_ids.astype(np.int16))
        self._cu.append(batch.cu_seqlens)
        self.batches += 1
        self.tokens += batch.num_tokens
        if len(self._cu) >= self.shard_batches:
            self._flush()

    def _flush(self) -> None:
        if not self._cu:
            return
        name = f"shard-{len(self.shards):05d}"
        shard = self.temporary / name
        shard.mkdir()
        for field in FIELDS:
            np.save(shard / f"{field}.npy", np.stack(self._rows[field]))
        offsets = np.zeros(len(self._cu) + 1, dtype=np.int64)
        np.cumsum([len(cu) for cu in self._cu], out=offsets[1:])
        np.save(shard / "cu_seqlens.npy", np.concatenate(self._cu).astype(np.int32))
        np.save(shard / "cu_offsets.npy", offsets)
        self.shards.append({"name": name, "batches": len(self._cu)})
        self._reset()

    def finish(self, *, settings: dict[str, Any], final_state: dict[str, Any], report: dict[str, Any]) -> Path:
        """Write the metadata files and rename the directory into place (replacing an old one);
        a mixture without a batch is refused (and nothing is published)."""
        if self.batches == 0:
            self.abort()
            raise Fm9gError("the stream gave no batch, so there is no mixture to write", where=str(self.directory),
                            fix="see the realized mixture above for why no dataset gave a sample")
        self._flush()
        description = {
            "format": FORMAT, "version": VERSION, **settings, "capacity": self.capacity,
            "batches": self.batches, "num_tokens": self.tokens, "shards": self.shards,
        }
        for name, document in (("stream_state.json", final_state), ("mix_report.json", report),
                               ("mixture.json", description)):
            write_json_atomic(self.temporary / name, document)
        return self._pending.publish()

    def abort(self) -> None:
        self._pending.discard()


class MaterializedStream:
    """Iterator of this rank's :class:`PackedBatch` es from a materialized mixture directory."""

    def __init__(self, directory: str | Path, rank: int = 0, world_size: int = 1, state: dict[str, Any] | None = None):
        self.directory = Path(directory)
        description_path = self.directory / "mixture.json"
        if not description_path.is_file():
            raise Fm9gError("not a materialized mixture (no mixture.json)", where=str(self.directory),
                            fix="write one with fm9g mix --manifest mix.json --output DIR")
        self.description = json.loads(description_path.read_text(encoding="utf-8"))
        if self.description.get("format") != FORMAT:
            raise Fm9gError("mixture.json is not an fm9g mixture description", where=str(description_path))
        if world_size < 1 or not 0 <= rank < world_size:
            raise Fm9gError(f"rank {rank} is not in [0, world_size={world_size})")
        self.rank, self.world_size = rank, world_size
        self.task_names: list[str] = list(self.description["task_names"])
        self.max_length = int(self.description["max_length"])
        self.batch_size = int(self.description["batch_size"])
        self.capacity = int(self.description["capacity"])
        self.total_batches = int(self.description["batches"])
        shards = self.description.get("shards")
        if not isinstance(shards, list) or not all(
                isinstance(shard, dict) and isinstance(shard.get("name"), str) and "/" not in shard["name"]
                and isinstance(shard.get("batches"), int) for shard in shards):
            raise Fm9gError("mixture.json lists no shards as [{\"name\": ..., \"batches\": ...}]",
                            where=str(description_path), fix=REWRITE)
        self._shard_starts = np.cumsum([0] + [shard["batches"] for shard in shards])
        if int(self._shard_starts[-1]) != self.total_batches:
            raise Fm9gError(f"the shards hold {int(self._shard_starts[-1])} batches but mixture.json says "
                            f"{self.total_batches}", where=str(description_path), fix=REWRITE)
        for shard in self.description["shards"]:
            check_shard(self.directory / shard["name"], shard["batches"], capacity=self.capacity,
                        vocab_size=self.description.get("vocab_size"), tasks=len(self.task_names))
        self._arrays: dict[int, dict[str, np.ndarray]] = {}
        self._tokenizer = None
        self._next_batch = 0
        if state is not None:
            if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
                raise Fm9gError("not a materialized-stream state", where="stream state",
                                fix="pass the dict MaterializedStream.state_dict() returned")
            if state.get("batches") != self.total_batches:
                raise Fm9gError(f"the saved state belongs to a mixture of {state.get('batches')} batches, "
                                f"this one has {self.total_batches}", where=str(self.directory))
            self._next_batch = int(state["next_batch"])
        self._finished = False

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from fm9g.tokenizers import load_tokenizer

            self._tokenizer = load_tokenizer(self.description["tokenizer"])
        return self._tokenizer

    def state_dict(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "version": VERSION, "next_batch": self._next_batch,
                "batches": self.total_batches}

    def _shard(self, index: int) -> dict[str, np.ndarray]:
        arrays = self._arrays.get(index)
        if arrays is None:
            folder = self.directory / self.description["shards"][index]["name"]
            arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r")
                      for name in (*FIELDS, "cu_seqlens", "cu_offsets")}
            self._arrays = {index: arrays}
        return arrays

    def batch(self, index: int) -> PackedBatch:
        """Global batch ``index`` (random access)."""
        if not 0 <= index < self.total_batches:
            raise IndexError(f"batch {index} outside [0, {self.total_batches})")
        shard = int(np.searchsorted(self._shard_starts, index, side="right") - 1)
        arrays = self._shard(shard)
        row = index - int(self._shard_starts[shard])
        begin, end = int(arrays["cu_offsets"][row]), int(arrays["cu_offsets"][row + 1])
        cu_seqlens = np.array(arrays["cu_seqlens"][begin:end], dtype=np.int32)
        task_ids = arrays["task_ids"][row].astype(np.int32)
        return PackedBatch(
            index=index,
            input_ids=np.array(arrays["input_ids"][row], dtype=np.int32),
            targets=np.array(arrays["targets"][row], dtype=np.int32),
            position_ids=positions_from_cu_seqlens(cu_seqlens, self.capacity),
            task_ids=task_ids,
            cu_seqlens=cu_seqlens,
            num_tokens=int(np.count_nonzero(task_ids >= 0)),
        )

    def __iter__(self) -> MaterializedStream:
        return self

    def __next__(self) -> PackedBatch:
        if self._finished or self._next_batch >= self.total_batches:
            self._finished = True
            raise StopIteration
        group_start = self._next_batch
        own = group_start + self.rank
        self._next_batch = min(group_start + self.world_size, self.total_batches)
        if own >= self.total_batches:
            self._finished = True
            raise StopIteration
        return self.batch(own)

    def __len__(self) -> int:
        return self.total_batches


REWRITE = "write the mixture again with fm9g mix --output, or restore the directory from an intact copy"


def _array(folder: Path, name: str) -> np.ndarray:
    path = folder / f"{name}.npy"
    if not path.is_file():
        raise Fm9gError("a shard file of the mixture is missing", where=str(path), fix=REWRITE)
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise Fm9gError(f"not a readable .npy array ({error})", where=str(path), fix=REWRITE) from None
    if array.dtype != DTYPES[name]:
        raise Fm9gError(f"dtype {array.dtype}, expected {np.dtype(DTYPES[name])}", where=str(path), fix=REWRITE)
    return array


def _outside(array: np.ndarray, low: int, high: int | None, allowed: int | None = None) -> int | None:
    """The first value of ``array`` outside ``[low, high)`` (``high`` None: unbounded) other than
    ``allowed``, or ``None``; read a block of rows at a time, so memory stays bounded."""
    rows = max(1, (1 << 22) // max(array.shape[-1] if array.ndim > 1 else 1, 1))
    for begin in range(0, len(array), rows):
        block = np.asarray(array[begin:begin + rows])
        bad = (block < low) | (block >= high) if high is not None else block < low
        if allowed is not None:
            bad &= block != allowed
        if bad.any():
            return int(block[bad].flat[0])
    return None


def check_shard(folder: Path, batches: int, *, capacity: int, vocab_size: int | None, tasks: int) -> None:
    """Raise :class:`Fm9gError` naming the file and the problem unless ``folder`` holds the
    ``batches`` packed rows ``mixture.json`` lists: every array present with its dtype and shape,
    token ids in ``[0, vocab_size)`` (non-negative when no vocabulary size is recorded), targets
    such ids or -100, task ids below the number of tasks (or -1, padding), and every batch's
    ``cu_seqlens`` increasing from 0 to ``capacity``."""
    if not folder.is_dir():
        raise Fm9gError("a shard listed in mixture.json is missing", where=str(folder), fix=REWRITE)
    arrays = {name: _array(folder, name) for name in DTYPES}
    for name in FIELDS:
        if arrays[name].shape != (batches, capacity):
            raise Fm9gError(f"shape {arrays[name].shape}, expected ({batches}, {capacity}) (batches, capacity)",
                            where=str(folder / f"{name}.npy"), fix=REWRITE)
    offsets, cu_seqlens = np.asarray(arrays["cu_offsets"]), arrays["cu_seqlens"]
    for name, array, expected in (("cu_offsets", offsets, f"({batches + 1},)"), ("cu_seqlens", cu_seqlens, "(n,)")):
        if array.ndim != 1 or (name == "cu_offsets" and len(array) != batches + 1):
            raise Fm9gError(f"shape {array.shape}, expected {expected}", where=str(folder / f"{name}.npy"), fix=REWRITE)
    if offsets[0] != 0 or offsets[-1] != len(cu_seqlens) or np.any(np.diff(offsets) < 2):
        raise Fm9gError(f"batch boundaries do not index cu_seqlens.npy ({len(cu_seqlens)} entries) from 0 to its "
                        "end, at least two per batch", where=str(folder / "cu_offsets.npy"), fix=REWRITE)
    bounds = np.asarray(cu_seqlens, dtype=np.int64)
    starts, ends = offsets[:-1], offsets[1:] - 1
    steps = np.diff(bounds)
    steps[ends[:-1]] = 1  # the step from one batch's last boundary to the next batch's first
    if np.any(bounds[starts] != 0) or np.any(bounds[ends] != capacity) or np.any(steps <= 0):
        raise Fm9gError(f"a batch's boundaries do not increase from 0 to the capacity {capacity}",
                        where=str(folder / "cu_seqlens.npy"), fix=REWRITE)
    vocabulary = f"a token id below vocab_size {vocab_size}" if vocab_size is not None else "a non-negative token id"
    for name, high, allowed, expected in (
            ("input_ids", vocab_size, None, vocabulary), ("targets", vocab_size, IGNORE_INDEX, f"{vocabulary} or -100"),
            ("task_ids", tasks, -1, f"a task id below {tasks} (the mixture's task count) or -1")):
        value = _outside(arrays[name], 0, high, allowed)
        if value is not None:
            raise Fm9gError(f"holds {value}, expected {expected}", where=str(folder / f"{name}.npy"), fix=REWRITE)
