"""A sharded indexed dataset read as one: global row ``i`` is row ``i - start[k]`` of shard ``k``.

Opening checks that the aggregate ``meta.json`` exists (it is written only once every shard is
complete), that it belongs to the directory's plan, and that every listed shard is there with the
row count, size and checksum the aggregate recorded; each shard is then opened with
:class:`~fm9g.index.reader.IndexedDataset`, which checks its index against its data. Row access
is a binary search over the shards' first rows (a few comparisons for thousands of shards) and one
``pread`` in that shard, so random access stays independent of the number of rows.
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fm9g.core.errors import Fm9gError
from fm9g.index.format import META_FILE
from fm9g.index.reader import IndexedDataset
from fm9g.index.shards import PLAN_FILE, SHARDED_FORMAT, missing_shards, read_plan


def _fix(directory: Path, count: int | str = "N") -> str:
    return (f"run the missing tasks (fm9g index --shard I/{count} with the same --input and options), then "
            f"fm9g index --finalize {directory}")


def incomplete(directory: Path) -> str | None:
    """Why the sharded index ``directory`` does not read as complete (no aggregate ``meta.json`` yet), or ``None``."""
    if (directory / META_FILE).is_file():
        return None
    plan = read_plan(directory)
    missing = missing_shards(directory, plan)
    if not missing:
        return "incomplete sharded index: every shard is complete but the aggregate meta.json was not written"
    listed = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
    return f"incomplete sharded index: {len(missing)} of {plan['count']} shards are not complete ({listed})"


class ShardedDataset:
    """Records of a sharded indexed dataset directory, by global row number."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._open(check_checksum=True)

    def _open(self, *, check_checksum: bool) -> None:
        problem = incomplete(self.path)
        if problem is not None:
            raise Fm9gError(problem, where=str(self.path), fix=_fix(self.path, read_plan(self.path)["count"]))
        plan = read_plan(self.path)
        meta_path = self.path / META_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise Fm9gError(f"unreadable {META_FILE} ({error})", where=str(meta_path), fix=_fix(self.path, plan["count"])) from None
        sharded = meta.get("sharded") if isinstance(meta, dict) else None
        if not isinstance(sharded, dict) or sharded.get("format") != SHARDED_FORMAT or sharded.get("plan_id") != plan["plan_id"]:
            raise Fm9gError(f"{META_FILE} is not the aggregate of this directory's {PLAN_FILE}", where=str(meta_path),
                            fix=f"fm9g index --finalize {self.path}")
        self.meta: dict[str, Any] = meta
        self.tokenizer_spec: str | None = meta.get("tokenizer")
        self.shards: list[IndexedDataset] = []
        for listed in meta["shards"]:
            self.shards.append(self._open_shard(listed, check_checksum))
        counts = np.array([len(shard) for shard in self.shards], dtype=np.int64)
        self._starts = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        if int(self._starts[-1]) != meta.get("nlines"):
            raise Fm9gError(f"the shards hold {int(self._starts[-1])} rows but {META_FILE} says nlines={meta.get('nlines')}",
                            where=str(meta_path), fix=f"fm9g index --finalize {self.path}")

    def _open_shard(self, listed: dict[str, Any], check_checksum: bool) -> IndexedDataset:
        folder = self.path / listed["name"]
        if not folder.is_dir():
            raise Fm9gError(f"shard {listed['name']} is missing", where=str(folder), fix=_fix(self.path))
        shard = IndexedDataset(folder, check_checksum=check_checksum)
        if shard.meta.get("data_checksum") != listed["data_checksum"] or len(shard) != listed["nlines"]:
            raise Fm9gError(f"shard {listed['name']} is not the one the aggregate {META_FILE} lists (rebuilt since?)",
                            where=str(folder), fix=f"fm9g index --finalize {self.path}")
        return shard

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def starts(self) -> np.ndarray:
        """The global row number of each shard's first row, then the total (count + 1 numbers)."""
        return self._starts

    def locate(self, i: int) -> tuple[int, int]:
        """(shard number, row in that shard) of global row ``i`` (negative counts from the end)."""
        index = operator.index(i)
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"row {i} out of range for {self.path} ({n} rows)")
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return shard, index - int(self._starts[shard])

    def raw(self, i: int) -> bytes:
        shard, row = self.locate(i)
        return self.shards[shard].raw(row)

    def __getitem__(self, i: int) -> dict[str, Any]:
        shard, row = self.locate(i)
        return self.shards[shard][row]

    def read_many(self, indices: Iterable[int]) -> list[dict[str, Any]]:
        """The parsed records of ``indices``, in the order given."""
        return [self[i] for i in indices]

    def group_rows(self, rows: Sequence[int]) -> list[tuple[IndexedDataset, list[int], list[int]]]:
        """``rows`` (global row numbers) grouped by shard: ``(shard, places in rows, the rows in that
        shard)`` for each shard holding some, so a reader can gather each shard's rows at once (the
        mixer's hot path reads each group with one numpy take of offsets and ``pread`` calls)."""
        positions = np.asarray(rows, dtype=np.int64)
        if positions.size == 0:
            return []
        n = len(self)
        if positions.min() < -n or positions.max() >= n:
            bad = int(positions[(positions < -n) | (positions >= n)][0])
            raise IndexError(f"row {bad} out of range for {self.path} ({n} rows)")
        positions = np.where(positions < 0, positions + n, positions)
        shards = np.searchsorted(self._starts, positions, side="right") - 1
        order = np.argsort(shards, kind="stable")
        bounds = np.flatnonzero(np.diff(shards[order])) + 1
        groups = []
        for places in np.split(order, bounds):
            shard = int(shards[places[0]])
            groups.append((self.shards[shard], places.tolist(), (positions[places] - self._starts[shard]).tolist()))
        return groups

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for shard in self.shards:
            yield from shard

    def verify(self) -> None:
        """Every shard's full check (reads all the data)."""
        for shard in self.shards:
            shard.verify()

    # ------------------------------------------------------------------ pickling (worker processes)
    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = Path(state["path"])
        self._open(check_checksum=False)

    def close(self) -> None:
        for shard in self.shards:
            shard.close()

    def __repr__(self) -> str:
        return f"ShardedDataset({str(self.path)!r}, {len(self)} rows in {len(self.shards)} shards)"


def open_indexed(path: str | os.PathLike[str]) -> IndexedDataset | ShardedDataset:
    """An indexed dataset directory, sharded or not (fm9g's or the seed's), as one dataset."""
    if (Path(path) / PLAN_FILE).is_file():
        return ShardedDataset(path)
    return IndexedDataset(path)
