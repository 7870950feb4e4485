"""SIGTERM and Ctrl-C stop a training run between optimizer steps, never in the middle of one.

A handler that raises ``KeyboardInterrupt`` (Python's Ctrl-C, ``fm9g.cli``'s SIGTERM) raises it at
whatever bytecode the main thread runs next. During training that is often library code that
holds a lock shared with a background thread: tensorboardX's ``multiprocessing.Queue.put``
(several times a step), the prefetch thread's futures. Raised inside ``Condition.__enter__`` it
leaves the lock held; inside ``Condition.notify`` it leaves a woken waiter in the list that swallows
the next notify. Either way the cleanup that follows waits forever (a SIGTERM'd ``fm9g train``
stuck in tensorboardX's ``close``, its queue feeder asleep on the shutdown sentinel). So while a
run trains, the first signal only records the request and the loop raises ``KeyboardInterrupt``
itself at the next step boundary (every rank at the same one, through the step's collective); a
second signal raises at once, for a run stuck in a step.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: list[int] = []
"""Signals recorded since :func:`stop_at_step_boundaries` began (appended by its handler only)."""


def stop_requested() -> bool:
    """Whether SIGTERM or Ctrl-C arrived while the run deferred them."""
    return bool(_received)


def raise_if_stop_requested() -> None:
    """End the run here (a point where no lock is held) if a stop was requested."""
    if _received:
        raise KeyboardInterrupt


def _record_or_raise(signum: int, frame) -> None:
    if _received:
        raise KeyboardInterrupt
    _received.append(signum)
    if int(os.environ.get("RANK", "0")) == 0:
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        notice = f"\nfm9g train: {name}: stopping at the next step boundary (send it again to stop at once)\n"
        os.write(2, notice.encode())  # not sys.stderr: the signal may have come in the middle of a write to it


@contextmanager
def stop_at_step_boundaries() -> Iterator[None]:
    """Defer SIGINT and SIGTERM, where their handler raises (a Python function, not ignored or the
    default action), to :func:`raise_if_stop_requested` and the loop's step boundary; a stop still
    pending when the run returns raises ``KeyboardInterrupt`` then. Outside the main thread, which
    alone runs signal handlers, it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    deferred = [number for number, handler in previous.items() if callable(handler)]
    _received.clear()
    for number in deferred:
        signal.signal(number, _record_or_raise)
    try:
        yield
        raise_if_stop_requested()
    finally:
        for number in deferred:
            signal.signal(number, previous[number])
        _received.clear()
