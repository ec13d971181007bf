"""The etcd store beyond the contract: the event replay log, the fleet's event feed (every node's
log through one watch, sequences that are revisions, a resume from ``since``, OUT_OF_RANGE once
compacted), and the etcd leader dying while the store is in use."""

import asyncio
import contextlib
import dataclasses
from datetime import UTC, datetime

import pytest

from scheduler.domain import Event, EventType
from scheduler.errors import OutOfRange, SchedulerError
from scheduler.orchestrator.events import EventBus
from scheduler.storage.etcd import Compacted, EtcdClient, EtcdOptions
from scheduler.storage.etcd.compactor import Compactor
from scheduler.storage.etcd.events import EtcdEventLog
from scheduler.storage.etcd.feed import EtcdEventFeed, FleetWatch
from scheduler.storage.etcd.store import EtcdStateStore
from tests.unit.storage.factories import full_environment

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(etcd_cluster):
    c = EtcdClient(EtcdOptions(etcd_cluster.endpoints))
    yield c
    await c.close()


def _event(env: str) -> Event:
    return Event(EventType.ENVIRONMENT_CREATED, env, datetime.now(UTC))


async def test_the_event_log_survives_a_restart_bounded_and_in_order(client, etcd_prefix):
    log = await EtcdEventLog.open(client, etcd_prefix, keep=5)
    bus = EventBus(log=log, keep=5)
    for i in range(8):
        bus.publish(_event(f"env-{i}"))
    bus.close()
    await log.drain()
    reopened = await EtcdEventLog.open(client, etcd_prefix, keep=5)
    assert [(e.sequence, e.environment) for e in reopened.recent()] == [(i + 1, f"env-{i}") for i in range(3, 8)]
    assert len((await client.list_prefix(etcd_prefix)).kvs) == 5
    # A bus on the reopened log goes on from the last sequence, and replays from it.
    again = EventBus(log=reopened, keep=5)
    assert again.publish(_event("env-8")).sequence == 9
    assert [e.sequence for e in again.replay(6)] == [7, 8, 9]
    await reopened.drain()


async def _take(watch: FleetWatch, count: int) -> list[Event]:
    async with asyncio.timeout(20):
        return [await anext(watch) for _ in range(count)]


def _kind_event(env: str, kind: EventType = EventType.ENVIRONMENT_CREATED) -> Event:
    return Event(kind, env, datetime.now(UTC))


async def test_the_fleet_feed_merges_the_nodes_logs_by_revision_resumes_and_expires(client, etcd_prefix):
    logs = [await EtcdEventLog.open(client, f"{etcd_prefix}events/n{i}/") for i in range(2)]
    buses = [EventBus(log=log) for log in logs]
    feed = EtcdEventFeed(client, f"{etcd_prefix}events/")
    start = await client.revision()
    everything, shop = feed.watch(since=start), feed.watch("shop", since=start)
    try:
        buses[0].publish(_kind_event("shop"))
        buses[1].publish(_kind_event("web"))
        await logs[0].drain()  # n0's write lands before n1's next one
        buses[1].publish(_kind_event("shop", EventType.ENVIRONMENT_RUNNING))
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

        # A watch of live events only has no position to resume from until it has started.
        live = feed.watch()
        assert live.position is None
        await live.aclose()

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
        fresh.publish(_kind_event("shop", EventType.ENVIRONMENT_STOPPED))
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

        # Writes of other keys move a watcher's position on too (etcd's progress answers), so
        # an idle watcher's heartbeat does not fall behind the history kept.
        idle = EtcdEventFeed(client, f"{etcd_prefix}events/", progress_every=0.2).watch(since=late.sequence)
        waiting = asyncio.create_task(anext(idle))
        elsewhere = await client.put(f"{etcd_prefix}elsewhere", b"x")
        async with asyncio.timeout(20):
            while (idle.position or 0) < elsewhere:
                await asyncio.sleep(0.05)
        assert not waiting.done()  # no event came: only the position moved
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await idle.aclose()
    finally:
        await everything.aclose()
        await shop.aclose()
        for bus in buses:
            bus.close()


async def test_killing_the_etcd_leader_keeps_reads_answering_and_loses_no_acknowledged_write(etcd_cluster, etcd_prefix):
    probe = EtcdClient(EtcdOptions(etcd_cluster.endpoints))
    leader = await probe.leader()
    assert leader is not None
    victim = etcd_cluster.member_at(leader.endpoint)
    # The store talks to the leader first: the member that dies is the one it uses.
    ordered = (victim.endpoint, *(e for e in etcd_cluster.endpoints if e != victim.endpoint))
    store = EtcdStateStore(EtcdClient(EtcdOptions(ordered, dial_timeout=2.0)), etcd_prefix, owns_client=True)
    acked: dict[str, int] = {}  # environment -> last generation whose write was acknowledged
    failed_writes: dict[str, str] = {}  # a failed write may still have landed (its answer was lost)
    reads = {"ok": 0, "failed": []}
    stop = asyncio.Event()

    async def write(i: int) -> None:
        name = f"w-{i:03d}"
        try:
            env = await store.create(full_environment(name))
            acked[name] = env.generation
            env = await store.put(dataclasses.replace(env, generation=env.generation + 1), expected_revision=1)
            acked[name] = env.generation
        except SchedulerError as err:
            failed_writes[name] = str(err)

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            await write(i)
            i += 1

    async def reader() -> None:
        while not stop.is_set():
            try:
                names = list(acked)
                if names and (await store.get(names[0])).name != names[0]:
                    reads["failed"].append(f"get {names[0]} returned another environment")
                await store.list(10, "")
                reads["ok"] += 1
            except SchedulerError as err:
                reads["failed"].append(str(err))
            await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(writer()), asyncio.create_task(reader())]
    try:
        async with asyncio.timeout(60):
            while len(acked) < 5:
                await asyncio.sleep(0.05)
            etcd_cluster.kill(victim)
            reads_before = reads["ok"]
            acked_before = len(acked)
            new_leader = None
            while new_leader is None:
                new_leader = await probe.leader()
                await asyncio.sleep(0.1)
            assert new_leader.member_id != leader.member_id
            # Writes resume after the election, reads went on answering through it.
            while len(acked) < acked_before + 10 or reads["ok"] < reads_before + 10:
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    try:
        assert reads["failed"] == [], reads
        # Every acknowledged write is there, as acknowledged (a failed one may have landed too).
        for name, generation in acked.items():
            stored = (await store.get(name)).generation
            assert stored == generation or (name in failed_writes and stored == generation + 1), (name, failed_writes)
        assert set(acked) <= {e.name async for e in store.iterate()}
        assert len(failed_writes) <= 2, failed_writes  # at most the writes in flight at the kill
    finally:
        await store.close()
        await probe.close()
        etcd_cluster.restart(victim)


async def test_the_compactor_drops_history_one_interval_behind(client, etcd_prefix):
    key = f"{etcd_prefix}k"
    first = await client.put(key, b"1")
    await client.put(key, b"1b")
    compactor = Compactor(client, 3600)
    target = await compactor.tick(0)  # the first tick only notes where the history is
    assert compactor.compacted == 0 and target > first
    assert (await client.range(key, revision=first)).kvs[0].value == b"1"
    await client.put(key, b"2")
    await compactor.tick(target)
    assert compactor.compacted == target
    with pytest.raises(Compacted):
        await client.range(key, revision=first)
    assert (await client.get(key)).value == b"2"
    await compactor.tick(first)  # behind what is compacted already: nothing to do, no error
