"""A deposed placement leader cannot write: its writes are fenced on its election key (real etcd)."""

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from scheduler.cluster.leader import Leader
from scheduler.cluster.node import Node, Resources
from scheduler.cluster.placement import Strategy
from scheduler.cluster.registry import EtcdFleet, NodeRegistry
from scheduler.domain import Environment, EnvironmentSpec, ServiceSpec
from scheduler.errors import FailedPrecondition
from scheduler.orchestrator.ledger import Ledger
from scheduler.storage.etcd import Election, Lease
from scheduler.storage.etcd.store import EtcdStateStore

pytestmark = pytest.mark.integration

CAPACITY = Resources(cpu_millis=8000, memory_bytes=8 * 1024**3, ports=100, environments=20)


def env(name: str) -> Environment:
    spec = EnvironmentSpec("web", (ServiceSpec("web", "nginx"),))
    return Environment(name, f"uid-{name}", spec, created_at=datetime.now(UTC))


async def test_a_store_fenced_on_a_deposed_leader_key_refuses_the_write(client, etcd_prefix) -> None:
    store = EtcdStateStore(client, etcd_prefix)
    stored = await store.create(env("fenced"))
    election = Election(client, f"{etcd_prefix}leader")
    async with await Lease.grant(client, 10) as first, await Lease.grant(client, 10) as second:
        term = await election.campaign(first.id, b"a")
        written = await store.fenced(term.key, term.revision).put(
            replace(stored, node="a"), expected_revision=stored.revision
        )
        assert written.node == "a" and written.revision == 2
        await election.resign(term)
        successor = await election.campaign(second.id, b"b")
        with pytest.raises(FailedPrecondition, match="deposed") as refused:
            await store.fenced(term.key, term.revision).put(
                replace(written, node="stale"), expected_revision=written.revision
            )
        assert refused.value.reason == "FENCED"
        assert (await store.get("fenced")).node == "a"  # nothing of the stale write landed
        moved = await store.fenced(successor.key, successor.revision).put(
            replace(written, node="b"), expected_revision=written.revision
        )
        assert moved.node == "b" and (await store.get("fenced")).revision == 3


async def test_a_leader_whose_key_is_taken_over_places_nothing_and_steps_down(client, etcd_prefix) -> None:
    store = EtcdStateStore(client, etcd_prefix)
    ledger = await Ledger.open(store)
    fleet = EtcdFleet(client, etcd_prefix, local="a")
    registry = NodeRegistry(client, etcd_prefix, Node("a", "a:1", CAPACITY), 10, Resources)
    await registry.join()
    leader = Leader(
        fleet, registry, ledger, store, "a", grace=timedelta(seconds=20), strategy=Strategy.SPREAD, interval=0.2
    )
    campaign = asyncio.create_task(leader.run())
    rival = await Lease.grant(client, 10)
    try:
        await ledger.create(env("first"))
        async with asyncio.timeout(20):
            while (await store.get("first")).node != "a":
                await asyncio.sleep(0.1)
        assert leader.leading
        # Depose it behind its back, as a lapsed lease would, while it still believes it leads:
        # its key goes and another candidate's becomes the leader key.
        held = await fleet.election.leader()
        assert held is not None and held.value == b"a"
        await client.delete(held.key)
        await fleet.election.campaign(rival.id, b"rival")
        await ledger.create(env("second"))
        async with asyncio.timeout(20):
            while leader.leading:
                await asyncio.sleep(0.1)
        assert (await store.get("second")).node == ""  # the deposed leader's placement was refused
        assert [a.env for a in leader.placed] == ["first"]
    finally:
        campaign.cancel()
        await asyncio.gather(campaign, return_exceptions=True)
        await rival.close()
        await registry.close()
