"""An in-process event bus: the orchestrator publishes, WatchEvents subscribers consume.

Each subscriber has a bounded queue. A subscriber that falls behind is not silently dropped:
it receives one EVENTS_LOST event that says how many events it missed, then continues.
Published events are also kept in a bounded log (persisted when an ``EventLog`` is given), so
a subscriber may start from a past sequence: it first receives what followed that sequence.

WatchEvents reads an ``EventFeed``: on a daemon alone the bus itself (sequences are the bus's),
in a fleet every node's events through etcd (sequences are etcd revisions, see
``scheduler.storage.etcd.feed``).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Protocol

from scheduler.domain import Event, EventType
from scheduler.errors import OutOfRange
from scheduler.storage.events import DEFAULT_KEEP, EventLog, StoredEvent


class EventWatch(Protocol):
    """One watcher's events: those after its ``since`` first, then live ones."""

    def __aiter__(self) -> AsyncIterator[Event]: ...

    async def __anext__(self) -> Event:
        """The next event.

        Raises:
            OutOfRange: ``since`` lies outside what is kept (raised by the first call).
        """
        ...

    @property
    def position(self) -> int | None:
        """The sequence a heartbeat carries: resuming with it as ``since`` misses nothing.

        None while not known yet: no heartbeat is sent.
        """
        ...

    async def aclose(self) -> None:
        """Stop watching."""
        ...


class EventFeed(Protocol):
    """Where WatchEvents reads from."""

    def watch(self, environment: str = "", since: int | None = None) -> EventWatch:
        """The events (of one environment, or all) after ``since`` (None: live ones only)."""
        ...


class _BusWatch:
    """An ``EventWatch`` on the bus: its position is the latest sequence published."""

    def __init__(self, bus: EventBus, events: AsyncGenerator[Event]) -> None:
        self._bus = bus
        self._events = events

    def __aiter__(self) -> _BusWatch:
        return self

    async def __anext__(self) -> Event:
        return await anext(self._events)

    @property
    def position(self) -> int:
        return self._bus.last_sequence

    async def aclose(self) -> None:
        await self._events.aclose()


class _Subscriber:
    def __init__(self, environment: str, capacity: int) -> None:
        self.environment = environment
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=capacity)
        self.lost = 0


class EventBus:
    """Fan-out of events to subscribers, each filtered by environment, with a replay log."""

    def __init__(self, capacity: int = 1024, log: EventLog | None = None, keep: int = DEFAULT_KEEP) -> None:
        self._capacity = capacity
        self._subscribers: set[_Subscriber] = set()
        self._log = log
        self._kept: collections.deque[Event | StoredEvent] = collections.deque(log.recent() if log else (), maxlen=keep)
        self._last = self._kept[-1].sequence if self._kept else 0

    @property
    def last_sequence(self) -> int:
        """Sequence of the latest event published (0 before the first)."""
        return self._last

    def publish(self, event: Event) -> Event:
        """Stamp the event with the next sequence number, keep it, and deliver it to every subscriber."""
        self._last += 1
        stamped = replace(event, sequence=self._last)
        self._kept.append(stamped)
        if self._log is not None:
            self._log.append(stamped)
        for sub in self._subscribers:
            if sub.environment and sub.environment != stamped.environment:
                continue
            if sub.lost:
                # The gap must be reported in order: the marker goes in before the next event.
                if sub.queue.qsize() + 2 > self._capacity:
                    sub.lost += 1
                    continue
                sub.queue.put_nowait(_lost_marker(stamped.environment, sub.lost))
                sub.lost = 0
            if sub.queue.full():
                sub.lost += 1
                continue
            sub.queue.put_nowait(stamped)
        return stamped

    def replay(self, since: int, environment: str = "") -> list[Event]:
        """Kept events after sequence ``since`` (of one environment, or all), oldest first.

        Raises:
            OutOfRange: events after ``since`` are no longer kept, or ``since`` is in the future;
                the details give the oldest sequence kept (resume with since = oldest - 1).
        """
        oldest = self._kept[0].sequence if self._kept else self._last + 1
        if since < oldest - 1 or since > self._last:
            raise OutOfRange(
                f"since {since} is outside the event log, which holds sequences {oldest} to {self._last}; "
                "re-read state with GetEnvironment or ListEnvironments, then watch from the latest",
                reason="EVENTS_EXPIRED" if since < oldest - 1 else "SEQUENCE_IN_FUTURE",
                field="since",
                oldest_sequence=str(oldest),
                latest_sequence=str(self._last),
            )
        return [
            e if isinstance(e, Event) else e.event()
            for e in self._kept
            if e.sequence > since and (not environment or e.environment == environment)
        ]

    async def subscribe(self, environment: str = "", since: int | None = None) -> AsyncGenerator[Event]:
        """Yield events (of one environment, or all), replaying those after ``since`` first.

        The replay and the registration happen together, before the first event is awaited, so
        no event is missed or repeated between the two.

        Raises:
            OutOfRange: see :meth:`replay`.
        """
        backlog = self.replay(since, environment) if since is not None else []
        sub = _Subscriber(environment, self._capacity)
        self._subscribers.add(sub)
        try:
            for event in backlog:
                yield event
            while True:
                yield await sub.queue.get()
        finally:
            self._subscribers.discard(sub)

    def watch(self, environment: str = "", since: int | None = None) -> EventWatch:
        """``subscribe`` as an ``EventFeed``: what WatchEvents reads on a daemon alone."""
        return _BusWatch(self, self.subscribe(environment, since))

    def close(self) -> None:
        """Flush the persisted log."""
        if self._log is not None:
            self._log.close()

    @property
    def subscriber_count(self) -> int:
        """How many watchers are connected."""
        return len(self._subscribers)


def _lost_marker(environment: str, lost: int) -> Event:
    return Event(
        type=EventType.EVENTS_LOST,
        environment=environment,
        at=datetime.now(UTC),
        message=f"{lost} events were dropped because this watcher fell behind",
    )
