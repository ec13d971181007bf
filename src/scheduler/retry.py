"""One way to retry an operation that failed transiently (a runtime call, an iptables commit).

Callers say which failures are transient and how long to wait between tries; everything else is
raised at once, and the last try's failure is raised as it is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def linear(attempts: int, step: float) -> list[float]:
    """Waits ``step``, ``2*step``, ... between ``attempts`` tries."""
    return [step * (i + 1) for i in range(attempts - 1)]


def exponential(attempts: int, initial: float, maximum: float, multiplier: float = 2.0) -> list[float]:
    """Waits ``initial``, ``initial*multiplier``, ... capped at ``maximum``, between ``attempts`` tries."""
    out, delay = [], initial
    for _ in range(attempts - 1):
        out.append(delay)
        delay = min(maximum, delay * multiplier)
    return out


async def retry(
    attempt: Callable[[], Awaitable[T]],
    transient: Callable[[Exception], bool],
    delays: Sequence[float],
    *,
    deadline: float | None = None,
) -> T:
    """Run ``attempt``; after a failure ``transient`` accepts, wait the next delay and run it again.

    ``len(delays) + 1`` tries in all. A failure that is not transient, or the last one, is raised;
    so is one whose next wait would end past ``deadline`` (a ``time.monotonic()`` value).
    """
    for delay in delays:
        try:
            return await attempt()
        except Exception as err:
            if not transient(err) or (deadline is not None and deadline - time.monotonic() <= delay):
                raise
        await asyncio.sleep(delay)
    return await attempt()
