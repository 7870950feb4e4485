"""SIGINT/SIGTERM during a run: recorded for the step boundary, a second one stops at once."""

from __future__ import annotations

import signal

import pytest

from fm9g.backends.training.stop_signals import stop_at_step_boundaries, stop_requested


def test_the_first_signal_waits_for_the_step_boundary_a_second_stops_at_once():
    previous = signal.getsignal(signal.SIGINT)
    reached = []
    with pytest.raises(KeyboardInterrupt), stop_at_step_boundaries():
        signal.raise_signal(signal.SIGINT)
        reached.append(stop_requested())
        signal.raise_signal(signal.SIGINT)
        reached.append("after the second signal")
    assert reached == [True]
    assert signal.getsignal(signal.SIGINT) is previous and not stop_requested()


def test_a_stop_pending_at_the_end_still_interrupts_and_an_ignored_signal_stays_ignored(capfd):
    with pytest.raises(KeyboardInterrupt), stop_at_step_boundaries():
        signal.raise_signal(signal.SIGINT)
    assert "fm9g train: Ctrl-C: stopping at the next step boundary" in capfd.readouterr().err
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_at_step_boundaries():
            signal.raise_signal(signal.SIGINT)
            assert not stop_requested()
    finally:
        signal.signal(signal.SIGINT, previous)
