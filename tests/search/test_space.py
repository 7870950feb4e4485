"""The search space: seeded Dirichlet draws inside the share bounds, and impossible bounds refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from backend_helpers import build_mixture

from fm9g.core.errors import Fm9gError
from fm9g.mixer.manifest import load_manifest
from fm9g.search.space import build_space, draw_weights, parse_task_values


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = build_mixture(tmp_path_factory.mktemp("space"))
    document = json.loads((root / "mix.json").read_text())
    document["datasets"].append({"task_name": "extra", "path": "idx/book", "abs_weight": 0.2, "max_epochs": 2})
    document["datasets"][1]["allow_repeat"] = False
    (root / "mix3.json").write_text(json.dumps(document))
    return load_manifest(root / "mix3.json")


SIZES = [3000.0, 2000.0, 2000.0]


def space(manifest, budget=4000.0, **bounds):
    return build_space(manifest, SIZES, budget, min_shares=bounds.get("low", {}), max_shares=bounds.get("high", {}))


def test_draws_are_a_function_of_the_seed_and_a_longer_draw_extends_a_shorter(manifest):
    searched = space(manifest, budget=1000.0)
    first = draw_weights(searched, 20, seed=3, concentration=1.0)
    assert np.array_equal(first, draw_weights(searched, 20, seed=3, concentration=1.0))
    assert np.array_equal(first, draw_weights(searched, 50, seed=3, concentration=1.0)[:20])
    assert not np.allclose(first, draw_weights(searched, 20, seed=4, concentration=1.0))
    assert np.allclose(first.sum(axis=1), 1.0)


def test_a_larger_concentration_stays_nearer_the_manifest_weights(manifest):
    searched = space(manifest, budget=1000.0)
    wide = draw_weights(searched, 400, seed=0, concentration=1.0)
    narrow = draw_weights(searched, 400, seed=0, concentration=30.0)
    assert np.abs(narrow - searched.base).mean() < 0.5 * np.abs(wide - searched.base).mean()


def test_epoch_limits_and_share_bounds_hold_in_every_draw(manifest):
    # book: allow_repeat false → at most 1 epoch of 2000 tokens over 8000 = 0.25; extra: 2 epochs → 0.5
    searched = space(manifest, budget=8000.0, low={"chat": 0.3}, high={"chat": 0.6})
    assert searched.upper.tolist() == pytest.approx([0.6, 0.25, 0.5])
    assert "allow_repeat false" in searched.reasons[1] and "max_epochs 2" in searched.reasons[2]
    draws = draw_weights(searched, 300, seed=1, concentration=1.0)
    assert np.all(draws >= searched.lower - 1e-12) and np.all(draws <= searched.upper + 1e-12)
    assert draws[:, 0].min() < 0.35 and draws[:, 0].max() > 0.55  # the draws use the room they have


@pytest.mark.parametrize(("budget", "bounds", "message"), [
    (4000.0, {"low": {"chat": 0.7, "book": 0.5}}, "the minimum shares sum to 1.2, more than 1"),
    (4000.0, {"low": {"book": 0.6}}, "task 'book' needs a share of at least 0.6 but may have at most 0.5"),
    (8000.0, {"high": {"chat": 0.2}}, "the largest shares the tasks may have sum to 0.95, less than 1"),
    (4000.0, {"high": {"chat": 1.5}}, "share 1.5 for task 'chat' is not between 0 and 1"),
], ids=["minimums-over-1", "minimum-above-epoch-limit", "maximums-under-1", "not-a-fraction"])
def test_impossible_bounds_are_refused_with_one_line(manifest, budget, bounds, message):
    with pytest.raises(Fm9gError) as raised:
        space(manifest, budget=budget, **bounds)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_bounds_that_almost_no_draw_meets_are_refused(manifest):
    searched = space(manifest, budget=1000.0, low={"chat": 0.99999})
    with pytest.raises(Fm9gError, match=r"accept only \d of 2,048,000 Dirichlet draws"):
        draw_weights(searched, 4, seed=0, concentration=1.0)


def test_task_values_are_parsed_and_checked():
    assert parse_task_values("chat:0.7, book=0.3", ["chat", "book"], option="--target") == {"chat": 0.7, "book": 0.3}
    with pytest.raises(Fm9gError, match="unknown task 'boo'"):
        parse_task_values("boo:1", ["chat", "book"], option="--target")
    with pytest.raises(Fm9gError, match="'x' is not a number"):
        parse_task_values("chat:x", ["chat", "book"], option="--target")
