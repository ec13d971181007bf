"""An in-process event bus: the orchestrator publishes, WatchEvents subscribers consume.

Each subscriber has a bounded queue. A subscriber that falls behind is not silently dropped:
it receives one EVENTS_LOST event that says how many events it missed, then continues.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator
from dataclasses import replace
from datetime import UTC, datetime

from scheduler.domain import Event, EventType


class _Subscriber:
    def __init__(self, environment: str, capacity: int) -> None:
        self.environment = environment
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=capacity)
        self.lost = 0


class EventBus:
    """Fan-out of events to subscribers, each filtered by environment."""

    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = capacity
        self._subscribers: set[_Subscriber] = set()
        self._sequence = itertools.count(1)

    def publish(self, event: Event) -> Event:
        """Stamp the event with the next sequence number and deliver it to every subscriber."""
        stamped = replace(event, sequence=next(self._sequence))
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

    async def subscribe(self, environment: str = "") -> AsyncGenerator[Event]:
        """Yield events (of one environment, or all) until the consumer stops iterating."""
        sub = _Subscriber(environment, self._capacity)
        self._subscribers.add(sub)
        try:
            while True:
                yield await sub.queue.get()
        finally:
            self._subscribers.discard(sub)

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
