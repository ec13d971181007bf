"""The etcd client against a real 3-member etcd cluster: KV, CAS, leases, watches, elections, failover."""

import asyncio
import contextlib

import pytest

from scheduler.storage.etcd import (
    Compare,
    Election,
    EtcdClient,
    EtcdOptions,
    EventKind,
    Lease,
    Put,
    WatchBatch,
    watch_prefix,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(etcd_cluster):
    c = EtcdClient(EtcdOptions(etcd_cluster.endpoints, dial_timeout=2.0, retry_deadline=20.0))
    yield c
    await c.close()


async def _next(stream, timeout=20.0) -> WatchBatch:
    return await asyncio.wait_for(anext(stream), timeout)


async def test_put_get_delete_and_a_paged_prefix_range(client, etcd_prefix):
    for i in range(7):
        await client.put(f"{etcd_prefix}k{i}", f"v{i}".encode())
    await client.put(etcd_prefix.rstrip("/") + "-outside", b"x")
    first = await client.range(etcd_prefix, prefix=True, limit=3)
    assert [kv.key for kv in first.kvs] == [f"{etcd_prefix}k{i}" for i in range(3)] and first.more
    rest = await client.range(etcd_prefix, prefix=True, start=first.kvs[-1].key + "\0", limit=10)
    assert [kv.value for kv in rest.kvs] == [f"v{i}".encode() for i in range(3, 7)] and not rest.more
    assert [kv.key async for kv in client.iterate(etcd_prefix, page_size=2)] == [f"{etcd_prefix}k{i}" for i in range(7)]
    assert (await client.get(f"{etcd_prefix}k3")).value == b"v3"
    assert await client.get(f"{etcd_prefix}missing") is None
    assert (await client.get(f"{etcd_prefix}k0", serializable=True)) is not None
    assert await client.delete(etcd_prefix, prefix=True) == 7
    assert (await client.list_prefix(etcd_prefix)).kvs == ()
    assert await client.get(etcd_prefix.rstrip("/") + "-outside") is not None
    await client.delete(etcd_prefix.rstrip("/") + "-outside")


async def test_cas_creates_only_if_absent_and_updates_only_at_the_read_revision(client, etcd_prefix):
    key = f"{etcd_prefix}doc"
    created = await client.cas(key, b"one", 0)
    assert created.succeeded and created.current.value == b"one" and created.current.version == 1
    again = await client.cas(key, b"other", 0)
    assert not again.succeeded and again.current.value == b"one"
    updated = await client.cas(key, b"two", created.current.mod_revision)
    assert updated.succeeded and updated.current.mod_revision > created.current.mod_revision
    stale = await client.cas(key, b"stale", created.current.mod_revision)
    assert not stale.succeeded and stale.current.value == b"two"
    assert not (await client.cas_delete(key, created.current.mod_revision)).succeeded
    assert (await client.cas_delete(key, updated.current.mod_revision)).succeeded
    assert await client.get(key) is None
    # A multi-key transaction applies all of its writes or none.
    result = await client.txn(
        [Compare.absent(f"{etcd_prefix}a")], [Put(f"{etcd_prefix}a", b"1"), Put(f"{etcd_prefix}b", b"2")]
    )
    assert result.succeeded
    result = await client.txn([Compare.absent(f"{etcd_prefix}a")], [Put(f"{etcd_prefix}c", b"3")])
    assert not result.succeeded and await client.get(f"{etcd_prefix}c") is None


async def test_revoking_a_kept_lease_deletes_its_keys_and_an_unkept_one_expires(client, etcd_prefix):
    # (That keep-alives hold a lease past its TTL, even through a member's death, is the failover test's.)
    lease = await Lease.grant(client, 2)
    await client.put(f"{etcd_prefix}node", b"alive", lease=lease.id)
    assert (await client.get(f"{etcd_prefix}node")).lease == lease.id
    assert await client.time_to_live(lease.id) > 0
    await lease.close()
    assert lease.lost.is_set()
    assert await client.get(f"{etcd_prefix}node") is None
    # A lease nobody keeps alive expires, and its keys go with it.
    lease_id, _ = await client.grant(1)
    await client.put(f"{etcd_prefix}gone", b"x", lease=lease_id)
    async with asyncio.timeout(20):
        while await client.get(f"{etcd_prefix}gone") is not None:
            await asyncio.sleep(0.2)
    assert await client.time_to_live(lease_id) == -1


async def test_watch_yields_a_snapshot_then_changes_and_relists_after_a_compaction(client, etcd_prefix):
    await client.put(f"{etcd_prefix}a", b"1")
    stream = watch_prefix(client, etcd_prefix)
    try:
        snapshot = await _next(stream)
        assert [kv.key for kv in snapshot.snapshot] == [f"{etcd_prefix}a"]
        await client.put(f"{etcd_prefix}b", b"2")
        await client.delete(f"{etcd_prefix}a")
        seen = []
        while len(seen) < 2:
            seen += [(e.kind, e.kv.key) for e in (await _next(stream)).events]
        assert seen == [(EventKind.PUT, f"{etcd_prefix}b"), (EventKind.DELETE, f"{etcd_prefix}a")]
    finally:
        await stream.aclose()
    # Resuming from a revision that was compacted away re-lists instead of missing changes.
    old = (await client.get(f"{etcd_prefix}b")).mod_revision
    for i in range(3):
        last = await client.put(f"{etcd_prefix}b", str(i).encode())
    await client.compact(last)
    stream = watch_prefix(client, etcd_prefix, start_revision=old)
    try:
        batch = await _next(stream)
        assert batch.snapshot is not None and batch.revision >= last
        assert [(kv.key, kv.value) for kv in batch.snapshot] == [(f"{etcd_prefix}b", b"2")]
        await client.put(f"{etcd_prefix}c", b"3")
        batch = await _next(stream)
        assert [(e.kind, e.kv.key) for e in batch.events] == [(EventKind.PUT, f"{etcd_prefix}c")]
    finally:
        await stream.aclose()


async def test_election_has_one_leader_at_a_time_and_passes_on_resign(client, etcd_prefix):
    election = Election(client, f"{etcd_prefix}leader")
    assert await election.leader() is None
    async with await Lease.grant(client, 5) as a, await Lease.grant(client, 5) as b:
        first = await election.campaign(a.id, b"node-a")
        second = asyncio.create_task(election.campaign(b.id, b"node-b"))
        observed = election.observe()
        try:
            assert (await asyncio.wait_for(anext(observed), 20)).value == b"node-a"
            await asyncio.sleep(1)
            assert not second.done()  # b waits while a leads
            assert (await election.leader()).value == b"node-a"
            await election.resign(first)
            leader_b = await asyncio.wait_for(second, 20)
            assert leader_b.lease == b.id
            assert (await asyncio.wait_for(anext(observed), 20)).value == b"node-b"
            assert (await election.leader()).value == b"node-b"
        finally:
            second.cancel()
            with contextlib.suppress(BaseException):
                await second
            await observed.aclose()


async def test_calls_watches_and_leases_fail_over_when_the_member_in_use_dies(client, etcd_cluster, etcd_prefix):
    stream = watch_prefix(client, etcd_prefix)
    member = etcd_cluster.member_at(client.stubs().endpoint)
    lease = await Lease.grant(client, 10, interval=0.3)
    try:
        await client.put(f"{etcd_prefix}node", b"alive", lease=lease.id)
        await _next(stream)  # the snapshot; the watch and the keep-alives now stream from the current member
        etcd_cluster.kill(member)
        renewals = lease.renewals
        for i in range(5):
            await client.put(f"{etcd_prefix}k{i}", b"x")
        assert client.stubs().endpoint != member.endpoint
        keys = []
        while len(keys) < 5:
            keys += [e.kv.key for e in (await _next(stream)).events]
        assert keys == [f"{etcd_prefix}k{i}" for i in range(5)]
        assert len((await client.list_prefix(etcd_prefix)).kvs) == 6
        # The keep-alives go on through another member.
        async with asyncio.timeout(30):
            while lease.renewals < renewals + 3:
                await asyncio.sleep(0.1)
        assert not lease.lost.is_set()
        assert await client.time_to_live(lease.id) > 0
        assert (await client.get(f"{etcd_prefix}node")).lease == lease.id
    finally:
        await lease.close()
        await stream.aclose()
        etcd_cluster.restart(member)
