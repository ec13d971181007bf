"""Admission of deploys: how many run at once, in the order they arrived.

Bringing containers up costs CPU (containerd, runc, the CNI plugins, and what a container does
first, such as initdb). Hundreds of deploys started together share the CPU so evenly that they
all finish late, together. Admitting a few at a time (twice the CPUs), first come first served,
finishes the first ones in seconds and the last no later. A deploy keeps its slot until it ends
or for ``hold`` seconds at most, so that one waiting on a slow health check or a dependency's
deadline does not hold back the deploys behind it.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


def cpu_limit(configured: int = 0) -> int:
    """``configured`` if set, else twice the CPUs this process may run on (at least 2)."""
    if configured > 0:
        return configured
    return max(2, 2 * len(os.sched_getaffinity(0)))


class Admission:
    """At most ``limit`` holders at a time, FIFO; see the module docstring."""

    def __init__(self, limit: int, hold: float) -> None:
        self.limit = limit
        self.hold = hold
        self._active = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def active(self) -> int:
        """Slots held now."""
        return self._active

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot."""
        return sum(1 for f in self._waiting if not f.done())

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the body, or until ``hold`` seconds passed, whichever ends first."""
        await self._acquire()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._release()

        timer = asyncio.get_running_loop().call_later(self.hold, release)
        try:
            yield
        finally:
            timer.cancel()
            release()

    async def _acquire(self) -> None:
        if self._active < self.limit and not self.waiting:
            self._active += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # granted just as the caller was cancelled: pass it on
            raise
        finally:
            if future in self._waiting:
                self._waiting.remove(future)

    def _release(self) -> None:
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(None)  # the slot passes on: the count stays
                return
        self._active -= 1
