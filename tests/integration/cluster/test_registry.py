"""Nodes registering under leases in a real 3-member etcd cluster: listing, drain, loss, name clash."""

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from scheduler.cluster.node import Node, Resources
from scheduler.cluster.registry import EtcdFleet, NodeRegistry
from scheduler.errors import AlreadyExists, NotFound

pytestmark = pytest.mark.integration

TTL = 2
CAPACITY = Resources(cpu_millis=4000, memory_bytes=8 * 1024**3, ports=100, environments=20)


def node(name: str, **labels: str) -> Node:
    return Node(
        name, f"10.77.0.{ord(name[-1]) % 200}:7000", CAPACITY, labels=labels, pool="10.90.0.0/16",
        port_range=(20000, 20099), started_at=datetime.now(UTC),
    )  # fmt: skip


async def until(check: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # type: ignore[misc]
            await asyncio.sleep(0.2)
    assert await check(), what  # type: ignore[misc]


async def test_nodes_list_each_other_with_allocations_and_drain_marks(client, etcd_prefix) -> None:
    allocated = {"a": Resources(), "b": Resources()}
    a = NodeRegistry(client, etcd_prefix, node("a", **{"node.disk": "ssd"}), TTL, lambda: allocated["a"])
    b = NodeRegistry(client, etcd_prefix, node("b"), TTL, lambda: allocated["b"])
    fleet = EtcdFleet(client, etcd_prefix)
    await a.join()
    await b.join()
    try:
        nodes = await fleet.nodes()
        assert [n.name for n in nodes] == ["a", "b"]
        assert nodes[0].labels == {"node.disk": "ssd"} and nodes[0].capacity == CAPACITY and not nodes[0].draining

        allocated["b"] = Resources(cpu_millis=500, memory_bytes=1024, ports=1, environments=1)
        b.changed()

        async def b_reports() -> bool:
            return (await fleet.nodes())[1].allocated == allocated["b"]

        await until(b_reports, "node b's allocation is written")

        drained = await fleet.drain("b")
        assert drained.name == "b" and drained.draining
        assert [n.draining for n in await fleet.nodes()] == [False, True]
        with pytest.raises(NotFound, match="node 'nope' not found"):
            await fleet.drain("nope")
        undrained = await fleet.undrain("b")
        assert undrained.name == "b" and not undrained.draining
        assert [n.draining for n in await fleet.nodes()] == [False, False]
        assert not (await fleet.undrain("b")).draining  # undraining an eligible node changes nothing
        with pytest.raises(NotFound, match="node 'nope' not found"):
            await fleet.undrain("nope")
    finally:
        await a.close()
        await b.close()
    # A clean shutdown revokes the lease: the record goes at once, not after the TTL.
    assert await fleet.nodes() == []


async def test_a_crashed_node_drops_out_after_its_lease_and_its_name_waits_for_that(client, etcd_prefix) -> None:
    fleet = EtcdFleet(client, etcd_prefix)
    crashed = NodeRegistry(client, etcd_prefix, node("c"), TTL, Resources)
    await crashed.join()
    # A crash: keep-alives stop, nothing is revoked.
    assert crashed._task is not None
    crashed._task.cancel()
    await crashed.lease.close(revoke=False)
    assert [n.name for n in await fleet.nodes()] == ["c"]
    loop = asyncio.get_running_loop()
    started = loop.time()
    successor = NodeRegistry(client, etcd_prefix, node("c"), TTL, Resources)
    await successor.join()  # waits for the crashed one's lease to lapse, then takes the name
    try:
        assert loop.time() - started >= 1.0
        assert [n.name for n in await fleet.nodes()] == ["c"]
        clash = NodeRegistry(client, etcd_prefix, node("c"), TTL, Resources)
        with pytest.raises(AlreadyExists, match="node name 'c' is held by a live daemon"):
            await clash.join()
    finally:
        await successor.close()


async def test_a_node_whose_lease_was_lost_registers_again(client, etcd_prefix) -> None:
    fleet = EtcdFleet(client, etcd_prefix)
    registry = NodeRegistry(client, etcd_prefix, node("d"), TTL, Resources)
    await registry.join()
    try:
        first = registry.lease.id
        await client.revoke(first)  # what etcd does to a lease nobody kept alive (a partition)

        async def back() -> bool:
            with contextlib.suppress(AssertionError):
                return registry.lease.id != first and [n.name for n in await fleet.nodes()] == ["d"]
            return False

        await until(back, "the node registered again under a new lease")
    finally:
        await registry.close()
