"""Observation use cases of the service: logs, metrics and the event stream."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from scheduler import bounds, errors
from scheduler.cluster.base import Fleet
from scheduler.domain import (
    ContainerSample,
    Event,
    EventType,
    LogLine,
    LogQuery,
)
from scheduler.orchestrator.events import EventFeed
from scheduler.orchestrator.ledger import Ledger
from scheduler.orchestrator.logs import read_logs
from scheduler.orchestrator.orchestrator import Orchestrator
from scheduler.service.views import (
    check_name,
)

DEFAULT_HEARTBEAT = timedelta(seconds=15)
MIN_HEARTBEAT = timedelta(seconds=1)


class Observation:
    """Logs, metrics and events of environments; a part of :class:`EnvironmentService`."""

    _ledger: Ledger
    _orchestrator: Orchestrator
    _feed: EventFeed
    _closing: asyncio.Event
    _fleet: Fleet | None

    async def logs(self, name: str, query: LogQuery) -> AsyncIterator[LogLine]:
        """Yield log lines of an environment's containers (and follow them if asked)."""
        check_name(name)
        bounds.check_logs(query)
        env = await self._ledger.get(name)
        if self._fleet is not None:
            await self._fleet.check_local(env)
        unknown = [s for s in query.services if s not in {svc.name for svc in env.spec.services}]
        if unknown:
            raise errors.InvalidArgument.of(
                [errors.FieldViolation("services", f"environment {name!r} has no service {unknown[0]!r}")]
            )
        async for line in read_logs(self._ledger, self._orchestrator.logs_dir, name, query, self._closing):
            yield line

    async def metrics(self, name: str, *, window: timedelta | None = None) -> builtins.list[ContainerSample]:
        """Sample every running container twice over ``window`` to get CPU as a rate."""
        check_name(name)
        if window is not None:
            if window <= timedelta(0):
                raise errors.InvalidArgument.of([errors.FieldViolation("window", "must be positive")])
            bounds.check_duration(window, "window", bounds.MAX_METRICS_WINDOW)
        env = await self._ledger.get(name)
        if self._fleet is not None:
            await self._fleet.check_local(env)
        return await self._orchestrator.sample_metrics(env, window or timedelta(seconds=1))

    async def watch(
        self, name: str, *, since: int | None = None, heartbeat: timedelta | None = None
    ) -> AsyncIterator[Event]:
        """Yield events (of one environment or all) after ``since``, then live ones, until shutdown.

        While nothing happens for ``heartbeat``, a HEARTBEAT event carries the position to resume
        from. Sequences are the feed's: the daemon's own, or etcd revisions in a fleet.
        """
        if name:
            check_name(name)
        heartbeat = heartbeat or DEFAULT_HEARTBEAT
        if heartbeat < MIN_HEARTBEAT:
            raise errors.InvalidArgument.of(
                [errors.FieldViolation("heartbeat_interval", f"must be at least {MIN_HEARTBEAT.total_seconds():g}s")]
            )
        subscription = self._feed.watch(name, since)
        closing = asyncio.ensure_future(self._closing.wait())
        upcoming: asyncio.Future[Event] | None = None
        try:
            while True:
                if upcoming is None:
                    upcoming = asyncio.ensure_future(anext(subscription))
                waiting: set[asyncio.Future[object]] = {upcoming, closing}  # type: ignore[arg-type]
                done, _ = await asyncio.wait(
                    waiting, timeout=heartbeat.total_seconds(), return_when=asyncio.FIRST_COMPLETED
                )
                if closing in done:
                    return
                if not done:
                    if (position := subscription.position) is not None:
                        yield Event(EventType.HEARTBEAT, name, datetime.now(UTC), sequence=position)
                    continue
                event = upcoming.result()
                upcoming = None
                yield event
        finally:
            # The generator must be idle before it can be closed, whether we return or are cancelled.
            for future in (upcoming, closing):
                if future is not None and not future.done():
                    future.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await future
            await subscription.aclose()
