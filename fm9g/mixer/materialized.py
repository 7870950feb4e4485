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
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fm9g.core.atomic import PendingDirectory, write_json_atomic
from fm9g.core.errors import Fm9gError
from fm9g.mixer.packing import PackedBatch, positions_from_cu_seqlens

FORMAT = "fm9g-mixture"
STATE_FORMAT = "fm9g-materialized"
VERSION = 1
SHARD_TOKENS = 1 << 23
FIELDS = ("input_ids", "targets", "task_ids")


class MaterializedWriter:
    """Collects packed batches into shards inside a temporary directory; :meth:`finish` publishes it."""

    def __init__(self, directory: str | Path, *, capacity: int, force: bool = False):
        self.directory = Path(directory)
        if self.directory.exists() and not force:
            raise Fm9gError("output directory already exists", where=str(self.directory),
                            fix="pass --force to replace it, or choose another --output")
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
        """Write the metadata files and rename the directory into place (replacing an old one)."""
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
        self._shard_starts = np.cumsum([0] + [shard["batches"] for shard in self.description["shards"]])
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
