"""Admission of deploys: how many run at once, in the order they arrived.

Bringing containers up costs CPU (containerd, runc, the CNI plugins, and what a container does
first, such as initdb). Hundreds of deploys started together share the CPU so evenly that they
all finish late, together. Admitted first come first served, a few at a time (twice the CPUs),
the first ones finish in seconds. Much of a deploy is waiting, though (containerd, the network's
lock, health probes), and too few at a time leaves the host idle and the last one late: measured
with 200 deploys on 2 busy cores, 4 at a time finished the last after 361 s where all at once
took 197 s. So the limit starts low and grows by two with every deploy that ends (slow start:
it about triples per round of deploys), up to 32 per CPU, and starts low again once the queue
is empty. Once network changes shared their flushes, 200 one-container deploys all at once
finished in 51 s on 2 cores under heavy load, and capped at eight per CPU in 142 s: a deploy is
mostly waiting, so a high ceiling costs little and the slow start still lets the first ones in
alone. With the bridges made off the event loop and its lock, admitted this way the first was
RUNNING after 0.4-0.9 s and the last after 18-27 s (bench.burst, load 10-50 from other work),
about as soon as all at once: deploys then finish at a steady rate (8-10 a second, deciles
evenly spaced) and the median came at 0.55-0.7 of the last. At a steady rate no order brings
it under a half; a quarter would need the later ones to be slower, not the earlier ones
faster. A deploy keeps its slot until it ends or for ``hold`` seconds at most, so that one
waiting on a slow health check or a dependency's deadline does not hold back the deploys
behind it. A configured limit is fixed.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


def for_host(configured: int, hold: float) -> Admission:
    """``configured`` at a time if set; else from twice the CPUs up to 32 per CPU (slow start)."""
    if configured > 0:
        return Admission(configured, hold)
    cpus = len(os.sched_getaffinity(0))
    return Admission(max(2, 2 * cpus), hold, ceiling=max(2, 32 * cpus), growth=2)


class Admission:
    """At most ``limit`` holders at a time, FIFO; see the module docstring."""

    def __init__(self, limit: int, hold: float, *, ceiling: int = 0, growth: int = 1) -> None:
        self.start = limit
        self.growth = growth
        """How much the limit grows with each holder that ends (up to ``ceiling``)."""
        self.limit = limit
        """How many may hold a slot now: grows from ``start`` to ``ceiling`` while deploys end."""
        self.ceiling = max(limit, ceiling)
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
                self._release(grow=False)  # granted just as the caller was cancelled: pass it on
            raise
        finally:
            if future in self._waiting:
                self._waiting.remove(future)

    def _release(self, *, grow: bool = True) -> None:
        self._active -= 1
        if grow and self.limit < self.ceiling:
            self.limit = min(self.ceiling, self.limit + self.growth)
        while self._active < self.limit and self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(None)
                self._active += 1
        if self._active == 0 and not self._waiting:
            self.limit = self.start  # idle: the next burst starts low again
