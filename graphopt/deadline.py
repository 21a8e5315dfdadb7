"""A cooperative time limit for long computations (``graphopt compress --time-limit``).

A search cannot stop a candidate it has started from the outside: the first pruning level of a 600M-parameter
model collects activation statistics and solves per-layer least squares for minutes. So the long loops check a
deadline themselves: :func:`check` is called once per calibration batch (:func:`graphopt.calibrate.data.track`),
per group or layer in pruning's error curves and reconstruction, per layer in low-rank planning, and per
sensitivity run of INT8's float fallbacks. Inside :func:`limit` a passed deadline raises
:class:`TimeLimitReached`; outside one (the default) :func:`check` costs a context-variable read.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from graphopt.errors import GraphoptError

__all__ = ["TimeLimitReached", "check", "limit", "remaining"]

_DEADLINE: ContextVar[float | None] = ContextVar("graphopt_deadline", default=None)


class TimeLimitReached(GraphoptError):
    """The deadline of the enclosing :func:`limit` passed while work was running (exit code 1: the goal was
    not reached in the time given)."""

    exit_code = 1


@contextmanager
def limit(at: float | None) -> Iterator[None]:
    """Run the block with a deadline: ``at`` in :func:`time.monotonic` seconds (None: no deadline; an inner
    :func:`limit` never extends an outer one)."""
    outer = _DEADLINE.get()
    if at is not None and outer is not None:
        at = min(at, outer)
    token = _DEADLINE.set(at if at is not None else outer)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def remaining() -> float | None:
    """Seconds left before the deadline (negative once it passed), None without one."""
    at = _DEADLINE.get()
    return None if at is None else at - time.monotonic()


def check(where: str = "") -> None:
    """Raise :class:`TimeLimitReached` when the enclosing deadline has passed.

    Args:
        where: what was running, for the message (e.g. ``"activation statistics"``).

    Raises:
        TimeLimitReached: the deadline passed.
    """
    at = _DEADLINE.get()
    if at is not None and time.monotonic() > at:
        raise TimeLimitReached("the time limit passed" + (f" during {where}" if where else ""))
