import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scheduler.domain import Event, EventType
from scheduler.errors import OutOfRange
from scheduler.orchestrator.events import EventBus
from scheduler.storage.events import SqliteEventLog


def _event(env: str, kind: EventType = EventType.CONTAINER_STARTED) -> Event:
    return Event(kind, env, datetime.now(UTC))


async def _take(iterator, count: int) -> list[Event]:
    return [await asyncio.wait_for(anext(iterator), 1) for _ in range(count)]


async def test_subscribers_get_their_environment_in_order_with_sequence_numbers() -> None:
    bus = EventBus()
    only_a = bus.subscribe("a")
    everything = bus.subscribe("")
    # Subscriptions register when first iterated.
    first_a = asyncio.ensure_future(anext(only_a))
    first_all = asyncio.ensure_future(anext(everything))
    await asyncio.sleep(0)
    bus.publish(_event("a", EventType.ENVIRONMENT_CREATED))
    bus.publish(_event("b"))
    bus.publish(_event("a", EventType.ENVIRONMENT_RUNNING))
    got_a = [await first_a, *await _take(only_a, 1)]
    got_all = [await first_all, *await _take(everything, 2)]
    assert [e.type for e in got_a] == [EventType.ENVIRONMENT_CREATED, EventType.ENVIRONMENT_RUNNING]
    assert [e.environment for e in got_all] == ["a", "b", "a"]
    assert [e.sequence for e in got_all] == [1, 2, 3]
    await only_a.aclose()
    await everything.aclose()
    assert bus.subscriber_count == 0


async def test_a_slow_watcher_is_told_how_many_events_it_lost() -> None:
    bus = EventBus(capacity=3)
    slow = bus.subscribe("")
    first = asyncio.ensure_future(anext(slow))
    await asyncio.sleep(0)
    for _ in range(10):
        bus.publish(_event("a"))
    bus_events = [await first, *await _take(slow, 2)]  # the three that fitted
    bus.publish(_event("a"))  # room again: the gap is reported before this one
    bus_events += await _take(slow, 2)
    kinds = [e.type for e in bus_events]
    assert kinds[3] is EventType.EVENTS_LOST and kinds[4] is EventType.CONTAINER_STARTED
    assert "7 events were dropped" in bus_events[3].message
    # Nothing after the marker is older than what came before it.
    sequences = [e.sequence for e in bus_events if e.type is not EventType.EVENTS_LOST]
    assert sequences == sorted(sequences)
    await slow.aclose()


async def test_a_subscriber_from_a_past_sequence_gets_the_missed_events_then_live_ones() -> None:
    bus = EventBus(keep=5)
    for name in ("a", "b", "a"):
        bus.publish(Event(EventType.ENVIRONMENT_CREATED, name, datetime.now(UTC)))
    resumed = bus.subscribe("a", since=1)
    first = await anext(resumed)
    bus.publish(Event(EventType.ENVIRONMENT_RUNNING, "a", datetime.now(UTC)))
    second = await anext(resumed)
    assert (first.sequence, second.sequence) == (3, 4)
    await resumed.aclose()


async def test_a_sequence_older_than_the_log_is_out_of_range_naming_the_oldest() -> None:
    bus = EventBus(keep=3)
    for _ in range(6):
        bus.publish(Event(EventType.ENVIRONMENT_CREATED, "a", datetime.now(UTC)))
    assert [e.sequence for e in bus.replay(3)] == [4, 5, 6]
    with pytest.raises(OutOfRange) as err:
        bus.replay(2)
    assert err.value.details["oldest_sequence"] == "4" and err.value.reason == "EVENTS_EXPIRED"
    with pytest.raises(OutOfRange):
        bus.replay(7)


async def test_the_log_persists_and_sequences_continue_after_a_restart(tmp_path: Path) -> None:
    bus = EventBus(log=SqliteEventLog(tmp_path / "events.db", keep=4))
    for _ in range(6):
        bus.publish(Event(EventType.ENVIRONMENT_CREATED, "a", datetime.now(UTC), message="m"))
    bus.close()
    again = EventBus(log=SqliteEventLog(tmp_path / "events.db", keep=4))
    assert [e.sequence for e in again.replay(2)] == [3, 4, 5, 6]
    assert again.publish(Event(EventType.ENVIRONMENT_DELETED, "a", datetime.now(UTC))).sequence == 7
    again.close()
