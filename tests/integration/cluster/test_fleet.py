"""Three scheduler nodes on a real 3-member etcd cluster, each with its own containerd.

Environments created through one node land on all three by capacity (and labels) and serve a
page from each; a node killed (its daemon and its containerd, SIGKILL) has its environments run
on the others within a bounded time, PostgreSQL with the rows of its last backup; when the node
comes back it removes its stale containers instead of running them twice; a drained node gives
its environments away.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.support.daemon import DaemonProcess, start_daemon
from tests.support.images import BACKEND, POSTGRES
from tests.support.processes import alive, shims_of

pytestmark = pytest.mark.integration

T = TypeVar("T")
TOOLBOX = "docker.io/schedulerdemo/toolbox:1.0"
MIB = 1024**2
SERVE = (
    "trap 'exit 0' TERM INT; "
    "while :; do printf 'HTTP/1.0 200 OK\\r\\n\\r\\nhello from %s' \"$ENV_NAME\" | nc -l -p 8080; done"
)
STATELESS = 5
LABELS = [{}, {"node.disk": "ssd"}, {"node.disk": "ssd"}]
ROWS = ["first row", "zweite Zeile"]
FAILOVER_TIMEOUT = 120.0


def node_config(i: int, endpoints: tuple[str, ...], prefix: str, shared: Path, archives: list[Path]) -> dict[str, Any]:
    low = 31000 + 100 * i
    node = {"name": f"n{i}", "cpu_millis": 8000, "memory_bytes": 2048 * MIB, "labels": LABELS[i]}
    return {
        "images": {"preload": [str(a) for a in archives]},
        "network": {"port_range": [low, low + 99]},
        "cluster": {
            "etcd": {"endpoints": list(endpoints), "prefix": prefix},
            "node": node,
            # Short enough for a quick failover, long enough that a busy shared CI machine does not
            # miss keep-alives and move environments off a node that is fine.
            "lease_ttl": 4,
            "failover_grace": 2.0,
            "backup_dir": str(shared),
        },
    }


@pytest.fixture
def fleet(
    tmp_path: Path, etcd_cluster: Any, etcd_prefix: str, image_archives: dict[str, Path]
) -> Iterator[list[DaemonProcess]]:
    archives = [image_archives[name] for name in (TOOLBOX, POSTGRES, BACKEND)]
    shared = tmp_path / "shared-backups"
    daemons: list[DaemonProcess] = []
    try:
        for i in range(3):
            sub = tmp_path / f"n{i}"
            sub.mkdir()
            daemons.append(start_daemon(sub, node_config(i, etcd_cluster.endpoints, etcd_prefix, shared, archives)))
        yield daemons
    finally:
        live = [d for d in daemons if d.process.poll() is None]
        if live:
            live[0].delete_all_environments()
        for daemon in daemons:
            daemon.stop()
        for daemon in daemons:
            daemon.cleanup()


def toolbox(name: str) -> pb.EnvironmentSpecification:
    config = pb.ContainerConfiguration(
        command=["sh", "-c", SERVE],
        env={"ENV_NAME": name},
        ports=[pb.PortMapping(container_port=8080, publish=True)],
        resources=pb.Resources(memory_bytes=512 * MIB, cpu_millis=250),
    )
    return pb.EnvironmentSpecification(stack="toolbox", services={"toolbox": config})


def database() -> pb.EnvironmentSpecification:
    small = pb.ContainerConfiguration(resources=pb.Resources(memory_bytes=384 * MIB, cpu_millis=250))
    return pb.EnvironmentSpecification(
        stack="api-postgres", services={"postgres": small, "backend": small}, labels={"node.disk": "ssd"}
    )


def all_envs(stub: pb_grpc.SchedulerServiceStub) -> dict[str, pb.Environment]:
    reply = stub.ListEnvironments(pb.ListEnvironmentsRequest(page_size=100), timeout=10)
    return {e.name: e for e in reply.environments}


def wait_until(check: Callable[[], T | None], what: str, timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.3)


def url(env: pb.Environment, port: int) -> str:
    endpoint = next(e for e in env.endpoints if e.container_port == port)
    return f"http://{endpoint.host_ip}:{endpoint.host_port}"


def fetch(address: str, method: str = "GET") -> str:
    """A page (a server may take a moment to listen after RUNNING; retried for a bounded time)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            request = urllib.request.Request(address, method=method)
            with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - loopback only
                return str(reply.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def rows(env: pb.Environment) -> list[str]:
    return [r["value"] for r in json.loads(fetch(url(env, 8080) + "/items"))]


def running(stub: pb_grpc.SchedulerServiceStub, names: list[str], nodes: set[str]) -> dict[str, pb.Environment] | None:
    envs = all_envs(stub)
    ok = all(envs[n].status == pb.ENVIRONMENT_STATUS_RUNNING and envs[n].node in nodes for n in names)
    return envs if ok else None


def test_a_fleet_places_by_capacity_survives_a_killed_node_and_drains(fleet: list[DaemonProcess]) -> None:
    first = fleet[0]
    with first.channel() as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        nodes = stub.ListNodes(pb.ListNodesRequest(), timeout=10).nodes
        assert [n.name for n in nodes] == ["n0", "n1", "n2"] and sum(n.leader for n in nodes) == 1
        assert nodes[1].capacity.memory_bytes == 2048 * MIB and nodes[1].labels["node.disk"] == "ssd"

        # One PostgreSQL environment (on an ssd node, by label), then stateless ones, all created
        # through n0: spread by load, they land on all three nodes.
        started = time.monotonic()
        stub.CreateEnvironment(pb.CreateEnvironmentRequest(name="shop", spec=database()), timeout=30)
        names = [f"web{i}" for i in range(STATELESS)]
        for name in names:
            stub.CreateEnvironment(pb.CreateEnvironmentRequest(name=name, spec=toolbox(name)), timeout=30)
        every = ["shop", *names]
        envs = wait_until(lambda: running(stub, every, {"n0", "n1", "n2"}), "every environment runs", 240)
        print(f"\nplacement and deploy of {len(every)} environments over 3 nodes: {time.monotonic() - started:.1f} s")
        by_node = {n: sorted(e.name for e in envs.values() if e.node == n) for n in ("n0", "n1", "n2")}
        assert all(by_node.values()), by_node
        assert envs["shop"].node in ("n1", "n2"), by_node  # the only nodes labelled node.disk=ssd
        for name in names:
            assert fetch(url(envs[name], 8080)) == f"hello from {name}"
        for value in ROWS:
            fetch(url(envs["shop"], 8080) + "/items?" + urllib.parse.urlencode({"value": value}), "POST")
        assert rows(envs["shop"]) == ROWS

        # 2 GiB per node: an environment asking 3 GiB fits nowhere, and the error says what.
        big = toolbox("huge")
        big.services["toolbox"].resources.memory_bytes = 3072 * MIB
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateEnvironment(pb.CreateEnvironmentRequest(name="huge", spec=big), timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "bytes of memory" in (refused.value.details() or "")

        # The database's node backs it up (into the fleet's shared backup directory).
        owner = envs["shop"].node
        victim = fleet[int(owner[1])]
        survivor = {"n1": "n2", "n2": "n1"}[owner]
        lost = by_node[owner]
        assert len(lost) >= 2, by_node  # the database and a stateless environment
        with victim.channel() as owner_channel:
            backup = pb_grpc.SchedulerServiceStub(owner_channel).BackupEnvironment(
                pb.BackupEnvironmentRequest(name="shop"), timeout=300
            )
        assert backup.databases == ["postgres"]
        fetch(url(envs["shop"], 8080) + "/items?value=after+the+backup", "POST")

        # Lose that node: its daemon and its containerd die at once (its containers' shims live on).
        containerd_pid = int((victim.data_dir / "containerd" / "containerd.pid").read_text())
        socket = str(victim.data_dir / "containerd" / "containerd.sock")
        victim.stop(signal.SIGKILL)
        os.kill(containerd_pid, signal.SIGKILL)
        wait_until(lambda: not alive(containerd_pid), "the killed containerd is gone", 10)
        killed_at = time.monotonic()
        others = {"n0", "n1", "n2"} - {owner}
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
        fleet[int(owner[1])] = start_daemon(victim.log_path.parent, reuse_config=True)
        wait_until(lambda: not shims_of(socket), "the returning node removed its stale containers", 60)
        envs = all_envs(stub)
        assert all(envs[n].node in others and envs[n].status == pb.ENVIRONMENT_STATUS_RUNNING for n in lost)
        assert [n.name for n in stub.ListNodes(pb.ListNodesRequest(), timeout=10).nodes] == ["n0", "n1", "n2"]

        # Any node serves the whole API; node-local calls name the owner to ask instead.
        third = fleet[int(survivor[1])]
        with third.channel() as third_channel:
            third_stub = pb_grpc.SchedulerServiceStub(third_channel)
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
        envs = wait_until(lambda: running(stub, on_first, {"n1", "n2"}), "the drained node's environments moved", 90)
        socket = str(first.data_dir / "containerd" / "containerd.sock")
        wait_until(lambda: not shims_of(socket), "the drained node is empty", 60)
