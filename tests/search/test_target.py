"""--target: what a search minimizes, scored from an evaluation record as fm9g train logs it."""

from __future__ import annotations

import pytest

from fm9g.core.errors import Fm9gError
from fm9g.search.target import parse_target

NAMES = ["chat", "book"]
WEIGHTS = {"chat": 0.6, "book": 0.2}
RECORD = {"loss": 2.5, "tasks": {"chat": {"loss": 2.0}, "book": {"loss": 4.0}}}


@pytest.mark.parametrize(("text", "value"), [
    ("chat", 2.0), ("book", 4.0), ("loss", 2.5), ("weighted_loss", 0.75 * 2.0 + 0.25 * 4.0),
    ("chat:3,book:1", 0.75 * 2.0 + 0.25 * 4.0), ("book=1", 4.0)])
def test_targets_score_a_record(text, value):
    assert parse_target(text, NAMES, WEIGHTS, NAMES).value(RECORD, where="log") == pytest.approx(value)


def test_weighted_loss_uses_the_manifests_weights_not_the_runs():
    record = {**RECORD, "weighted_loss": 99.0}
    assert parse_target("weighted_loss", NAMES, WEIGHTS, NAMES).value(record, where="log") == pytest.approx(2.5)


@pytest.mark.parametrize(("text", "evaluated", "message"), [
    ("book", ["chat"], "needs held-out loss of book"),
    ("chat:1,book:1", ["chat"], "needs held-out loss of book"),
    ("chat:-1,book:1", NAMES, "must be non-negative"),
    ("medical", NAMES, "unknown task 'medical'"),
])
def test_targets_without_held_out_sets_or_bad_weights_are_refused(text, evaluated, message):
    with pytest.raises(Fm9gError, match=message):
        parse_target(text, NAMES, WEIGHTS, evaluated)
