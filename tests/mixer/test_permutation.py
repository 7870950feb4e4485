"""Keyed permutations: bijections of [0, n), scalar and vector forms agree, keys change the order."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fm9g.mixer.permutation import KeyedPermutation, epoch_key


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 5000), seed=st.integers(0, 2**63), epoch=st.integers(0, 100))
def test_is_a_bijection_and_scalar_matches_vector(n, seed, epoch):
    permutation = KeyedPermutation.for_epoch(n, seed, "task", epoch)
    rows = permutation.take(np.arange(n))
    assert sorted(rows.tolist()) == list(range(n))
    for position in range(0, n, max(1, n // 17)):
        assert permutation[position] == rows[position]


def test_large_domain_spot_checks_without_materializing():
    permutation = KeyedPermutation.for_epoch(10**9 + 7, 42, "big", 0)
    positions = np.arange(0, 10**9, 10**6)
    rows = permutation.take(positions)
    assert len(set(rows.tolist())) == len(rows) and rows.max() < 10**9 + 7


def test_keys_depend_on_seed_task_and_epoch():
    base = KeyedPermutation.for_epoch(1000, 1, "a", 0).take(np.arange(1000)).tolist()
    for other in ((2, "a", 0), (1, "b", 0), (1, "a", 1)):
        assert KeyedPermutation.for_epoch(1000, *other).take(np.arange(1000)).tolist() != base
    assert epoch_key(1, "a", 0) == epoch_key(1, "a", 0)


def test_order_looks_shuffled():
    rows = KeyedPermutation.for_epoch(10000, 0, "t", 0).take(np.arange(10000))
    correlation = np.corrcoef(np.arange(10000), rows)[0, 1]
    assert abs(correlation) < 0.05
    assert np.mean(np.abs(np.diff(rows))) > 2000
