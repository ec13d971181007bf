"""Three scheduler nodes on a real 3-member etcd cluster, each with its own containerd.

Environments created through one node land on all three by capacity (and labels) and serve a
page from each; a node killed (its daemon and its containerd, SIGKILL) has its environments run
on the others within a bounded time, PostgreSQL with the rows of its last backup; when the node
comes back it removes its stale containers instead of running them twice; a drained node gives
its environments away.
"""

from __future__ import annotations

import time
import urllib.parse

import grpc
import pytest

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from tests.support.fleet import (
    MIB,
    NODE_MEMORY,
    Fleet,
    all_envs,
    database,
    fetch,
    rows,
    running,
    toolbox,
    url,
    wait_until,
)
from tests.support.processes import shims_of

pytestmark = pytest.mark.integration

STATELESS = 5
ROWS = ["first row", "zweite Zeile"]
NODES = {"n0", "n1", "n2"}


def test_a_fleet_places_by_capacity_survives_a_killed_node_and_drains(fleet: Fleet) -> None:
    first = fleet.nodes[0]
    stub = fleet.stub(0)
    nodes = stub.ListNodes(pb.ListNodesRequest(), timeout=10).nodes
    assert [n.name for n in nodes] == ["n0", "n1", "n2"] and sum(n.leader for n in nodes) == 1
    assert nodes[1].capacity.memory_bytes == NODE_MEMORY and nodes[1].labels["node.disk"] == "ssd"

    # One PostgreSQL environment (on an ssd node, by label), then stateless ones, all created
    # through n0: spread by load, they land on all three nodes.
    started = time.monotonic()
    stub.CreateEnvironment(pb.CreateEnvironmentRequest(name="shop", spec=database()), timeout=30)
    names = [f"web{i}" for i in range(STATELESS)]
    for name in names:
        stub.CreateEnvironment(pb.CreateEnvironmentRequest(name=name, spec=toolbox(name)), timeout=30)
    every = ["shop", *names]
    envs = wait_until(lambda: running(stub, every, NODES), "every environment runs", 240)
    print(f"\nplacement and deploy of {len(every)} environments over 3 nodes: {time.monotonic() - started:.1f} s")
    by_node = {n: sorted(e.name for e in envs.values() if e.node == n) for n in sorted(NODES)}
    assert all(by_node.values()), by_node
    assert envs["shop"].node in ("n1", "n2"), by_node  # the only nodes labelled node.disk=ssd
    for name in names:
        assert fetch(url(envs[name], 8080)) == f"hello from {name}"
    for value in ROWS:
        fetch(url(envs["shop"], 8080) + "/items?" + urllib.parse.urlencode({"value": value}), "POST")
    assert rows(envs["shop"]) == ROWS

    # 2 GiB per node: an environment asking 3 GiB fits nowhere, and the error says what.
    with pytest.raises(grpc.RpcError) as refused:
        stub.CreateEnvironment(pb.CreateEnvironmentRequest(name="huge", spec=toolbox("huge", 3072 * MIB)), timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "bytes of memory" in (refused.value.details() or "")

    # The database's node backs it up (into the fleet's shared backup directory).
    owner = envs["shop"].node
    victim = fleet.node(owner)
    survivor = {"n1": "n2", "n2": "n1"}[owner]
    lost = by_node[owner]
    assert len(lost) >= 2, by_node  # the database and a stateless environment
    backup = victim.stub().BackupEnvironment(pb.BackupEnvironmentRequest(name="shop"), timeout=300)
    assert backup.databases == ["postgres"]
    fetch(url(envs["shop"], 8080) + "/items?value=after+the+backup", "POST")

    # Lose that node: its daemon and its containerd die at once (its containers' shims live on).
    socket = victim.containerd_socket
    victim.kill()
    killed_at = time.monotonic()
    others = NODES - {owner}
    envs = wait_until(lambda: running(stub, lost, others), "the lost node's environments run elsewhere", 180)
    print(f"failover of {len(lost)} environments after SIGKILL of a node: {time.monotonic() - killed_at:.1f} s")
    assert envs["shop"].node == survivor
    for name in lost:
        placed = next(c for c in envs[name].conditions if c.type == "Placed")
        assert placed.reason == "Moved" and f"node {owner} was lost" in placed.message, placed
    # The dumps load once PostgreSQL runs; the condition says when that is done.
    restored = wait_until(
        lambda: next((c for c in all_envs(stub)["shop"].conditions if c.type == "DataRestored"), None),
        "the database is restored",
        60,
    )
    assert restored.status == pb.CONDITION_STATUS_TRUE and restored.message.startswith("data as of "), restored
    assert rows(envs["shop"]) == ROWS  # the last backup's rows; the later write was on the lost node
    for name in lost:
        if name != "shop":
            assert fetch(url(envs[name], 8080)) == f"hello from {name}"
    assert [n.name for n in stub.ListNodes(pb.ListNodesRequest(), timeout=10).nodes] == sorted(others)
    assert shims_of(socket), "the killed node's containers still run, unreachable"

    # The node returns: it finds its environments moved and removes its stale containers.
    victim.restart()
    wait_until(lambda: not shims_of(socket), "the returning node removed its stale containers", 60)
    envs = all_envs(stub)
    assert all(envs[n].node in others and envs[n].status == pb.ENVIRONMENT_STATUS_RUNNING for n in lost)
    assert [n.name for n in stub.ListNodes(pb.ListNodesRequest(), timeout=10).nodes] == ["n0", "n1", "n2"]

    # Any node serves the whole API; node-local calls name the owner to ask instead.
    third_stub = fleet.node(survivor).stub()
    assert set(all_envs(third_stub)) == set(every)
    placement = {name: e.node for name, e in envs.items()}
    elsewhere = next((e for e in envs.values() if e.node == "n0"), None)
    assert elsewhere is not None, placement
    with pytest.raises(grpc.RpcError) as wrong:
        list(third_stub.GetEnvironmentLogs(pb.GetEnvironmentLogsRequest(name=elsewhere.name), timeout=10))
    assert wrong.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"runs on node 'n0' at {first.address}" in (wrong.value.details() or "")
    metrics = stub.GetEnvironmentMetrics(pb.GetEnvironmentMetricsRequest(name=elsewhere.name), timeout=30)
    assert metrics.containers[0].memory_limit_bytes == 512 * MIB

    # Draining n0 moves its environments to the others at once; it takes no new one.
    on_first = [n for n, e in envs.items() if e.node == "n0"]
    assert stub.DrainNode(pb.DrainNodeRequest(node="n0"), timeout=10).draining
    wait_until(lambda: running(stub, on_first, {"n1", "n2"}), "the drained node's environments moved", 90)
    wait_until(lambda: not shims_of(first.containerd_socket), "the drained node is empty", 60)
