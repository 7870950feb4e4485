"""Learning-rate schedules: the seed's cosine with its 10% floor, wsd, linear, constant; no lr=0 step."""

from __future__ import annotations

import math

import pytest

from fm9g.backends.training.lr_schedule import SCHEDULES, lr_at


@pytest.mark.parametrize("name", SCHEDULES)
def test_warmup_is_linear_and_never_zero(name):
    lrs = [lr_at(s, lr=1.0, lr_scheduler=name, warmup_iters=4, train_iters=20) for s in range(20)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert min(lrs) > 0
    assert all(lr <= 1.0 + 1e-12 for lr in lrs)


def test_cosine_is_the_seeds_formula_with_a_ten_percent_floor():
    warmup, total = 10, 110
    for step in (10, 35, 60, 85, 109):
        progress = (step - warmup) / (total - warmup - 1)
        expected = 3e-4 * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
        assert lr_at(step, lr=3e-4, warmup_iters=warmup, train_iters=total) == pytest.approx(expected)
    assert lr_at(10, lr=1.0, warmup_iters=10, train_iters=110) == pytest.approx(1.0)
    assert lr_at(59, lr=1.0, warmup_iters=10, train_iters=109) == pytest.approx(0.55)
    assert lr_at(109, lr=1.0, warmup_iters=10, train_iters=110) == pytest.approx(0.1)
    assert lr_at(10_000, lr=1.0, warmup_iters=10, train_iters=110) == pytest.approx(0.1)


def test_wsd_is_stable_then_decays_over_the_last_drop_fraction():
    lrs = [lr_at(s, lr=1.0, lr_scheduler="wsd", warmup_iters=2, train_iters=100, drop_iters=0.2) for s in range(100)]
    assert lrs[2:80] == [1.0] * 78
    decay = lrs[80:]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert decay[-1] == pytest.approx(0.1)


def test_linear_and_constant():
    linear = [lr_at(s, lr=2.0, lr_scheduler="linear", train_iters=11) for s in range(11)]
    assert linear[0] == 2.0 and linear[-1] == pytest.approx(0.2)
    assert linear[5] == pytest.approx((2.0 + 0.2) / 2)
    assert linear[:3] == pytest.approx([2.0, 2.0 - 0.18, 2.0 - 0.36])
    assert {lr_at(s, lr=2.0, lr_scheduler="constant", train_iters=11) for s in range(11)} == {2.0}


def test_min_lr_ratio_and_unknown_name():
    assert lr_at(99, lr=1.0, lr_scheduler="linear", train_iters=100, min_lr_ratio=0.0) == 0.0
    assert lr_at(98, lr=1.0, lr_scheduler="linear", train_iters=100, min_lr_ratio=0.0) == pytest.approx(1 / 99)
    with pytest.raises(ValueError, match="cosine"):
        lr_at(0, lr=1.0, lr_scheduler="Cosine")
