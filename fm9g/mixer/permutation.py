"""Keyed pseudo-random permutations of ``[0, n)`` computed on the fly, in O(1) memory.

Each dataset visits its rows in a fresh order every epoch. Storing a shuffled index (8 bytes a
row) or a bitset of used rows (the seed's way) makes the resume state grow with the data; instead
row ``position`` of an epoch is ``permutation[position]`` where the permutation is a Feistel
network over the next power of two, keyed by a hash of ``(seed, task_name, epoch)``. Values that
land outside ``[0, n)`` are fed through the network again ("cycle walking"), which keeps the map a
bijection on ``[0, n)``. The domain is at most ``2n``, so on average fewer than two passes are needed.

The network is unbalanced when the bit width is odd: a round maps halves of widths ``(a, c)`` to
``(c, a)`` via ``(L, R) -> (R, L xor F(R))``, which is invertible whatever the widths.
"""

from __future__ import annotations

import hashlib

import numpy as np

ROUNDS = 6
MASK64 = (1 << 64) - 1
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def epoch_key(seed: int, task_name: str, epoch: int) -> tuple[int, ...]:
    """Round keys for one dataset's epoch: a BLAKE2b hash of ``(seed, task_name, epoch)``.

    A cryptographic hash (not Python's ``hash``) so that every process and machine agrees.
    """
    digest = hashlib.blake2b(
        f"fm9g-permutation\0{seed}\0{task_name}\0{epoch}".encode("utf-8"), digest_size=8 * ROUNDS
    ).digest()
    return tuple(int.from_bytes(digest[8 * i : 8 * i + 8], "little") for i in range(ROUNDS))


def _mix_int(z: int) -> int:
    """splitmix64's finalizer on a Python int (64-bit arithmetic)."""
    z = ((z ^ (z >> 30)) * _MIX1) & MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & MASK64
    return z ^ (z >> 31)


def _mix_array(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on a uint64 array (numpy wraps modulo 2**64, as intended)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    return z ^ (z >> np.uint64(31))


class KeyedPermutation:
    """A bijection of ``[0, n)``; ``perm[i]`` and ``perm.take(array)`` give the same values."""

    __slots__ = ("n", "keys", "bits", "left_bits", "right_bits")

    def __init__(self, n: int, keys: tuple[int, ...]):
        if n < 0:
            raise ValueError(f"permutation size must be >= 0, got {n}")
        self.n = n
        self.keys = keys
        self.bits = max(2, (max(n, 1) - 1).bit_length())
        self.left_bits = self.bits // 2
        self.right_bits = self.bits - self.left_bits

    @classmethod
    def for_epoch(cls, n: int, seed: int, task_name: str, epoch: int) -> KeyedPermutation:
        return cls(n, epoch_key(seed, task_name, epoch))

    def _encrypt_int(self, x: int) -> int:
        left_bits, right_bits = self.left_bits, self.right_bits
        left, right = x >> right_bits, x & ((1 << right_bits) - 1)
        for key in self.keys:
            mixed = _mix_int(right ^ key) & ((1 << left_bits) - 1)
            left, right = right, left ^ mixed
            left_bits, right_bits = right_bits, left_bits
        return (left << right_bits) | right

    def __getitem__(self, position: int) -> int:
        if not 0 <= position < self.n:
            raise IndexError(f"position {position} outside [0, {self.n})")
        value = self._encrypt_int(position)
        while value >= self.n:
            value = self._encrypt_int(value)
        return value

    def __len__(self) -> int:
        return self.n

    def _encrypt_array(self, x: np.ndarray) -> np.ndarray:
        left_bits, right_bits = self.left_bits, self.right_bits
        left, right = x >> np.uint64(right_bits), x & np.uint64((1 << right_bits) - 1)
        for key in self.keys:
            mixed = _mix_array(right ^ np.uint64(key)) & np.uint64((1 << left_bits) - 1)
            left, right = right, left ^ mixed
            left_bits, right_bits = right_bits, left_bits
        return (left << np.uint64(right_bits)) | right

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The rows at ``positions`` (any int array of values in ``[0, n)``), as int64."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= self.n):
            raise IndexError(f"positions outside [0, {self.n})")
        values = self._encrypt_array(positions.astype(np.uint64))
        limit = np.uint64(self.n)
        outside = values >= limit
        while outside.any():
            values[outside] = self._encrypt_array(values[outside])
            outside = values >= limit
        return values.astype(np.int64)
