"""Packing samples into the seed's unpadded batch layout (what its training code consumes).

A global batch is one row of ``batch_size * max_length`` tokens holding whole samples (or
``segment`` windows) back to back. ``position_ids`` restart at 0 for each sample, ``cu_seqlens``
marks the boundaries so attention never crosses samples, and the padding tail is one extra
pseudo-sequence (as in the seed) whose positions continue 0, 1, 2, ... A sample that does not
fit starts the next batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from fm9g.mixer.samples import IGNORE_INDEX


@dataclass
class PackedBatch:
    """One packed global batch; every array is int32 of length ``batch_size * max_length``
    except ``cu_seqlens`` (``n_samples + 1``, plus one when there is a padding tail)."""

    index: int
    input_ids: np.ndarray
    targets: np.ndarray
    position_ids: np.ndarray
    task_ids: np.ndarray
    cu_seqlens: np.ndarray
    num_tokens: int


class Piece(NamedTuple):
    """A window ``[begin, end)`` of a chunk's flat ``src``/``tgt`` arrays, from task ``task``
    (a named tuple: one is made per packed sample, and tuples are the cheapest immutable records)."""

    task: int
    src: np.ndarray
    tgt: np.ndarray
    begin: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.begin


def pack(index: int, pieces: list[Piece], capacity: int, pad_id: int) -> PackedBatch:
    """Lay ``pieces`` out in one row of ``capacity`` tokens and pad the rest."""
    input_ids = np.full(capacity, pad_id, dtype=np.int32)
    targets = np.full(capacity, IGNORE_INDEX, dtype=np.int32)
    task_ids = np.full(capacity, -1, dtype=np.int32)
    position_ids = np.empty(capacity, dtype=np.int32)
    ramp = np.arange(capacity, dtype=np.int32)
    boundaries = [0]
    cursor = 0
    for piece in pieces:
        length = piece.end - piece.begin
        end = cursor + length
        input_ids[cursor:end] = piece.src[piece.begin : piece.end]
        targets[cursor:end] = piece.tgt[piece.begin : piece.end]
        task_ids[cursor:end] = piece.task
        position_ids[cursor:end] = ramp[:length]
        cursor = end
        boundaries.append(cursor)
    if cursor < capacity:
        position_ids[cursor:] = ramp[: capacity - cursor]
        boundaries.append(capacity)
    return PackedBatch(
        index=index,
        input_ids=input_ids,
        targets=targets,
        position_ids=position_ids,
        task_ids=task_ids,
        cu_seqlens=np.asarray(boundaries, dtype=np.int32),
        num_tokens=cursor,
    )


def positions_from_cu_seqlens(cu_seqlens: np.ndarray, capacity: int) -> np.ndarray:
    """``position_ids`` of a packed row rebuilt from its boundaries (0 at every boundary)."""
    cu_seqlens = np.asarray(cu_seqlens, dtype=np.int64)
    lengths = np.diff(cu_seqlens)
    return (np.arange(capacity, dtype=np.int64) - np.repeat(cu_seqlens[:-1], lengths)).astype(np.int32)
