"""WatchEvents' fleet feed on a real 3-member etcd: every node's event log through one watch,
sequences that are etcd revisions, a resume from ``since``, and OUT_OF_RANGE once compacted."""

import asyncio
from datetime import UTC, datetime

import pytest

from scheduler.domain import Event, EventType
from scheduler.errors import OutOfRange
from scheduler.orchestrator.events import EventBus
from scheduler.storage.etcd import EtcdClient, EtcdOptions
from scheduler.storage.etcd.events import EtcdEventLog
from scheduler.storage.etcd.feed import EtcdEventFeed, FleetWatch

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(etcd_cluster):
    c = EtcdClient(EtcdOptions(etcd_cluster.endpoints))
    yield c
    await c.close()


async def _take(watch: FleetWatch, count: int) -> list[Event]:
    async with asyncio.timeout(20):
        return [await anext(watch) for _ in range(count)]


def _event(env: str, kind: EventType = EventType.ENVIRONMENT_CREATED) -> Event:
    return Event(kind, env, datetime.now(UTC))


async def test_the_fleet_feed_merges_the_nodes_logs_by_revision_resumes_and_expires(client, etcd_prefix):
    logs = [await EtcdEventLog.open(client, f"{etcd_prefix}events/n{i}/") for i in range(2)]
    buses = [EventBus(log=log) for log in logs]
    feed = EtcdEventFeed(client, f"{etcd_prefix}events/")
    start = await client.revision()
    everything, shop = feed.watch(since=start), feed.watch("shop", since=start)
    try:
        buses[0].publish(_event("shop"))
        buses[1].publish(_event("web"))
        await logs[0].drain()  # n0's write lands before n1's next one
        buses[1].publish(_event("shop", EventType.ENVIRONMENT_RUNNING))
        await logs[1].drain()
        seen = await _take(everything, 3)
        assert sorted(e.environment for e in seen) == ["shop", "shop", "web"]
        assert [e.type for e in seen if e.environment == "shop"] == [
            EventType.ENVIRONMENT_CREATED,
            EventType.ENVIRONMENT_RUNNING,
        ]
        # Each event's sequence is the revision its key was written at, whichever node wrote it.
        sequences = [e.sequence for e in seen]
        assert sequences == sorted(sequences) and len(set(sequences)) == 3 and sequences[0] > start
        written = [kv.mod_revision for kv in (await client.list_prefix(f"{etcd_prefix}events/")).kvs]
        assert sorted(written) == sequences
        assert [e.sequence for e in await _take(shop, 2)] == [e.sequence for e in seen if e.environment == "shop"]
        assert everything.position == sequences[-1]

        # Resumed from the sequence of the first event: exactly the ones after it.
        resumed = feed.watch(since=sequences[0])
        assert [e.sequence for e in await _take(resumed, 2)] == sequences[1:]
        await resumed.aclose()

        future = feed.watch(since=await client.revision() + 100)
        with pytest.raises(OutOfRange) as ahead:
            await anext(future)
        assert ahead.value.reason == "SEQUENCE_IN_FUTURE" and ahead.value.details["field"] == "since"

        # Once the history is compacted, a since before it is OUT_OF_RANGE, naming the oldest
        # revision kept; resuming from just before that works, and live watchers go on.
        compacted = await client.revision()
        await client.compact(compacted)
        expired = feed.watch(since=start)
        with pytest.raises(OutOfRange) as gone:
            await anext(expired)
        assert gone.value.reason == "EVENTS_EXPIRED"
        assert gone.value.details == {"field": "since", "oldest_sequence": str(compacted)}
        again = feed.watch(since=compacted - 1)
        fresh = EventBus(log=await EtcdEventLog.open(client, f"{etcd_prefix}events/n0/"))
        fresh.publish(_event("shop", EventType.ENVIRONMENT_STOPPED))
        # The reopened log goes on from n0's last sequence: a new key, a new revision. The watch
        # from compacted - 1 first replays the event written at the compacted revision, if any.
        replayed = await _take(again, 2 if sequences[-1] == compacted else 1)
        late = replayed[-1]
        assert [e.sequence for e in replayed[:-1]] == [s for s in sequences if s >= compacted]
        assert late.type is EventType.ENVIRONMENT_STOPPED and late.sequence > compacted
        assert [e.sequence for e in await _take(everything, 1)] == [late.sequence]
        assert [e.sequence for e in await _take(shop, 1)] == [late.sequence]
        await again.aclose()
        fresh.close()
    finally:
        await everything.aclose()
        await shop.aclose()
        for bus in buses:
            bus.close()
