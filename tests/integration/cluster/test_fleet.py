"""Three scheduler nodes on a real 3-member etcd cluster, each with its own containerd.

Environments created through one node land on all three by capacity and serve a page from
each; a node killed (its daemon and its containerd, SIGKILL) has its environments run on the
others within a bounded time; when it comes back, it removes its stale containers instead of
running them twice.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.support.daemon import DaemonProcess, start_daemon
from tests.support.processes import alive, shims_of

pytestmark = pytest.mark.integration

TOOLBOX = "docker.io/schedulerdemo/toolbox:1.0"
MIB = 1024**2
SERVE = (
    "trap 'exit 0' TERM INT; "
    "while :; do printf 'HTTP/1.0 200 OK\\r\\n\\r\\nhello from %s' \"$ENV_NAME\" | nc -l -p 8080; done"
)
NODES = 3
ENVS = 6
FAILOVER_TIMEOUT = 90.0


def node_config(i: int, endpoints: tuple[str, ...], prefix: str, archive: Path) -> dict[str, Any]:
    low = 31000 + 100 * i
    return {
        "images": {"preload": [str(archive)]},
        "network": {"port_range": [low, low + 99]},
        "cluster": {
            "etcd": {"endpoints": list(endpoints), "prefix": prefix},
            "node": {"name": f"n{i}", "cpu_millis": 2000, "memory_bytes": 512 * MIB, "labels": {"node.index": str(i)}},
            "lease_ttl": 2,
            "failover_grace": 1.0,
        },
    }


@pytest.fixture
def fleet(
    tmp_path: Path, etcd_cluster: Any, etcd_prefix: str, image_archives: dict[str, Path]
) -> Iterator[list[DaemonProcess]]:
    daemons: list[DaemonProcess] = []
    try:
        for i in range(NODES):
            sub = tmp_path / f"n{i}"
            sub.mkdir()
            daemons.append(
                start_daemon(sub, node_config(i, etcd_cluster.endpoints, etcd_prefix, image_archives[TOOLBOX]))
            )
        yield daemons
    finally:
        live = [d for d in daemons if d.process.poll() is None]
        if live:
            live[0].delete_all_environments()
        for daemon in daemons:
            daemon.stop()
        for daemon in daemons:
            daemon.cleanup()


def stub_of(daemon: DaemonProcess) -> tuple[grpc.Channel, pb_grpc.SchedulerServiceStub]:
    channel = daemon.channel()
    return channel, pb_grpc.SchedulerServiceStub(channel)


def spec(name: str, memory: int = 100 * MIB) -> pb.EnvironmentSpecification:
    config = pb.ContainerConfiguration(
        command=["sh", "-c", SERVE],
        env={"ENV_NAME": name},
        ports=[pb.PortMapping(container_port=8080, publish=True)],
        resources=pb.Resources(memory_bytes=memory, cpu_millis=250),
    )
    return pb.EnvironmentSpecification(stack="toolbox", services={"toolbox": config})


def all_envs(stub: pb_grpc.SchedulerServiceStub) -> dict[str, pb.Environment]:
    reply = stub.ListEnvironments(pb.ListEnvironmentsRequest(page_size=100), timeout=10)
    return {e.name: e for e in reply.environments}


def wait_until(check: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.3)


def page(env: pb.Environment) -> str:
    """The page the environment serves (its shell loop may take a moment to listen after RUNNING)."""
    endpoint = next(e for e in env.endpoints if e.container_port == 8080)
    url = f"http://{endpoint.host_ip}:{endpoint.host_port}/"
    deadline = time.monotonic() + 15
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - loopback only
                return str(reply.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def running_everywhere(
    stub: pb_grpc.SchedulerServiceStub, names: list[str], nodes: set[str]
) -> dict[str, pb.Environment] | None:
    envs = all_envs(stub)
    if all(envs[n].status == pb.ENVIRONMENT_STATUS_RUNNING and envs[n].node in nodes for n in names):
        return envs
    return None


def test_environments_spread_over_three_nodes_and_move_off_a_killed_one(fleet: list[DaemonProcess]) -> None:
    first, victim, third = fleet
    channel, stub = stub_of(first)
    with channel:
        nodes = stub.ListNodes(pb.ListNodesRequest(), timeout=10).nodes
        assert [n.name for n in nodes] == ["n0", "n1", "n2"] and sum(n.leader for n in nodes) == 1
        assert nodes[1].capacity.memory_bytes == 512 * MIB and nodes[1].labels["node.index"] == "1"

        names = [f"web{i}" for i in range(ENVS)]
        started = time.monotonic()
        for name in names:
            stub.CreateEnvironment(pb.CreateEnvironmentRequest(name=name, spec=spec(name)), timeout=30)
        envs = wait_until(lambda: running_everywhere(stub, names, {"n0", "n1", "n2"}), "all environments run", 120)
        placed_in = time.monotonic() - started
        by_node = {n: sorted(e.name for e in envs.values() if e.node == n) for n in ("n0", "n1", "n2")}
        assert [len(v) for v in by_node.values()] == [2, 2, 2], by_node  # spread by capacity
        for env in envs.values():
            assert page(env) == f"hello from {env.name}", env.name
        print(f"\nplacement and deploy of {ENVS} environments over {NODES} nodes: {placed_in:.1f} s")

        # Capacity: 512 MiB per node, 100 MiB per environment; a 600 MiB one fits nowhere.
        big = spec("huge", memory=600 * MIB)
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateEnvironment(pb.CreateEnvironmentRequest(name="huge", spec=big), timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "bytes of memory" in (refused.value.details() or "")

        # Lose node n1: its daemon and its containerd die at once (its containers' shims live on).
        lost = by_node["n1"]
        victim_containerd = int((victim.data_dir / "containerd" / "containerd.pid").read_text())
        socket = str(victim.data_dir / "containerd" / "containerd.sock")
        victim.stop(signal.SIGKILL)
        os.kill(victim_containerd, signal.SIGKILL)
        wait_until(lambda: not alive(victim_containerd), "the killed containerd is gone", 10)
        killed_at = time.monotonic()
        envs = wait_until(
            lambda: running_everywhere(stub, names, {"n0", "n2"}),
            "the lost node's environments run elsewhere",
            FAILOVER_TIMEOUT,
        )
        failover = time.monotonic() - killed_at
        print(f"failover of {len(lost)} environments after SIGKILL of a node: {failover:.1f} s")
        for name in lost:
            assert envs[name].node in ("n0", "n2")
            placed = next(c for c in envs[name].conditions if c.type == "Placed")
            assert placed.reason == "Moved" and "node n1 was lost" in placed.message, placed
            assert page(envs[name]) == f"hello from {name}"
        assert [n.name for n in stub.ListNodes(pb.ListNodesRequest(), timeout=10).nodes] == ["n0", "n2"]
        assert shims_of(socket), "the killed node's containers still run, unreachable"

        # n1 returns: it finds its environments moved and removes its stale containers.
        returned = start_daemon(victim.log_path.parent, reuse_config=True)
        fleet[1] = returned
        wait_until(lambda: not shims_of(socket), "the returning node removed its stale containers", 60)
        envs = all_envs(stub)
        assert all(e.node in ("n0", "n2") and e.status == pb.ENVIRONMENT_STATUS_RUNNING for e in envs.values())
        assert [n.name for n in stub.ListNodes(pb.ListNodesRequest(), timeout=10).nodes] == ["n0", "n1", "n2"]
        third_channel, third_stub = stub_of(third)
        with third_channel:
            # Any node serves the whole API.
            assert set(all_envs(third_stub)) == set(names)
