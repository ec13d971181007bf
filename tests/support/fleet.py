"""A fleet of three scheduler nodes on a real 3-member etcd cluster, for fleet tests (pytest plugin).

Each node is a real ``scheduler run`` with its own containerd, data dir, network instance, pool
and port range. ``fleet`` (a fixture) starts one per test; ``start_fleet`` does the same as a
context manager for benchmarks. Everything the fleet made is removed at the end, even when the
test fails.

The interface, meant to stay small:

* ``fleet.nodes[i]``: a ``FleetNode`` with ``name`` (``n0``...), ``channel()`` (a gRPC channel to
  its API, credentials included), ``stub()``, ``kill()`` (SIGKILL of its daemon and its containerd),
  ``restart()`` (its daemon again, on the same config and data), ``alive``, ``containerd_socket``;
* ``fleet.stub(i)``: a SchedulerService stub of node ``i`` (its channel closed with the fleet);
* helpers for specs and waits: ``toolbox``, ``database``, ``all_envs``, ``running``, ``wait_until``,
  ``url``, ``fetch``, ``rows``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.support.daemon import DaemonProcess, start_daemon
from tests.support.etcd import EtcdCluster
from tests.support.images import BACKEND, POSTGRES
from tests.support.processes import alive

T = TypeVar("T")
MIB = 1024**2
TOOLBOX = "docker.io/schedulerdemo/toolbox:1.0"
NODE_MEMORY = 2048 * MIB
SERVE = (
    "trap 'exit 0' TERM INT; "
    "while :; do printf 'HTTP/1.0 200 OK\\r\\n\\r\\nhello from %s' \"$ENV_NAME\" | nc -l -p 8080; done"
)
LABELS: list[dict[str, str]] = [{}, {"node.disk": "ssd"}, {"node.disk": "ssd"}]


@dataclass
class FleetNode:
    """One node of a test fleet: its daemon, and how to reach, kill and restart it."""

    index: int
    daemon: DaemonProcess
    _channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"n{self.index}"

    @property
    def address(self) -> str:
        """The API address clients (and ListNodes) use for the node."""
        return self.daemon.address

    @property
    def data_dir(self) -> Path:
        return self.daemon.data_dir

    @property
    def containerd_socket(self) -> str:
        return str(self.data_dir / "containerd" / "containerd.sock")

    @property
    def alive(self) -> bool:
        return self.daemon.process.poll() is None

    def channel(self) -> grpc.Channel:
        """A new channel to the node's API (close it, or use ``with``)."""
        return self.daemon.channel()

    def stub(self) -> pb_grpc.SchedulerServiceStub:
        """A stub on a channel kept until the fleet ends."""
        channel = self.channel()
        self._channels.append(channel)
        return pb_grpc.SchedulerServiceStub(channel)

    def kill(self) -> None:
        """Lose the node: SIGKILL its daemon and its containerd at once (their shims live on)."""
        pid_file = self.data_dir / "containerd" / "containerd.pid"
        containerd = int(pid_file.read_text()) if pid_file.exists() else None
        self.daemon.stop(signal.SIGKILL)
        if containerd is not None and alive(containerd):
            os.kill(containerd, signal.SIGKILL)
            wait_until(lambda: not alive(containerd), "the killed containerd is gone", 10)

    def restart(self) -> None:
        """Start the node's daemon again on its config and data (after ``kill`` or a stop)."""
        assert not self.alive, f"{self.name} still runs"
        self.daemon = start_daemon(self.daemon.log_path.parent, reuse_config=True)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels.clear()


@dataclass
class Fleet:
    """Three nodes sharing an etcd cluster under ``prefix``, and the backup dir they share."""

    nodes: list[FleetNode]
    etcd: EtcdCluster
    prefix: str
    backup_dir: Path

    def stub(self, index: int = 0) -> pb_grpc.SchedulerServiceStub:
        return self.nodes[index].stub()

    def node(self, name: str) -> FleetNode:
        return next(n for n in self.nodes if n.name == name)


def node_config(
    i: int, etcd: EtcdCluster, prefix: str, backup_dir: Path, archives: list[Path], cluster: dict[str, Any]
) -> dict[str, Any]:
    """Node ``i``'s settings: 8 cores and 2 GiB offered, labels ``LABELS[i]``, ports of its own."""
    low = 31000 + 100 * i
    node = {"name": f"n{i}", "cpu_millis": 8000, "memory_bytes": NODE_MEMORY, "labels": LABELS[i]}
    return {
        "images": {"preload": [str(a) for a in archives]},
        "network": {"port_range": [low, low + 99]},
        "cluster": {
            "etcd": {"endpoints": list(etcd.endpoints), "prefix": prefix},
            "node": node,
            # Short enough for a quick failover, long enough that a busy shared CI machine does not
            # miss keep-alives and move environments off a node that is fine.
            "lease_ttl": 4,
            "failover_grace": 2.0,
            "backup_dir": str(backup_dir),
            **cluster,
        },
    }


@contextlib.contextmanager
def start_fleet(
    tmp: Path,
    etcd: EtcdCluster,
    prefix: str,
    archives: list[Path],
    size: int = 3,
    cluster: dict[str, Any] | None = None,
) -> Iterator[Fleet]:
    """Start ``size`` nodes (``cluster`` merged into each one's ``cluster`` settings); at the end
    delete every environment, stop the daemons and remove what they left, even on failure."""
    backup_dir = tmp / "shared-backups"
    fleet = Fleet([], etcd, prefix, backup_dir)
    try:
        for i in range(size):
            sub = tmp / f"n{i}"
            sub.mkdir()
            config = node_config(i, etcd, prefix, backup_dir, archives, cluster or {})
            fleet.nodes.append(FleetNode(i, start_daemon(sub, config)))
        yield fleet
    finally:
        for node in fleet.nodes:
            node.close()
        live = [n.daemon for n in fleet.nodes if n.alive]
        try:
            if live:
                live[0].delete_all_environments()
        finally:
            for node in fleet.nodes:
                node.daemon.stop()
            for node in fleet.nodes:
                node.daemon.cleanup()


@pytest.fixture
def fleet(
    tmp_path: Path, etcd_cluster: EtcdCluster, etcd_prefix: str, image_archives: dict[str, Path]
) -> Iterator[Fleet]:
    """Three nodes (n0: no labels; n1, n2: ``node.disk=ssd``), preloaded with toolbox and api-postgres."""
    archives = [image_archives[name] for name in (TOOLBOX, POSTGRES, BACKEND)]
    with start_fleet(tmp_path, etcd_cluster, etcd_prefix, archives) as made:
        yield made


# --- specs and waits ----------------------------------------------------------------------------


def toolbox(name: str, memory: int = 512 * MIB) -> pb.EnvironmentSpecification:
    """A one-container environment serving ``hello from NAME`` on a published port 8080."""
    config = pb.ContainerConfiguration(
        command=["sh", "-c", SERVE],
        env={"ENV_NAME": name},
        ports=[pb.PortMapping(container_port=8080, publish=True)],
        resources=pb.Resources(memory_bytes=memory, cpu_millis=250),
    )
    return pb.EnvironmentSpecification(stack="toolbox", services={"toolbox": config})


def database() -> pb.EnvironmentSpecification:
    """api-postgres (PostgreSQL and an API storing rows in it), on an ssd node."""
    small = pb.ContainerConfiguration(resources=pb.Resources(memory_bytes=384 * MIB, cpu_millis=250))
    return pb.EnvironmentSpecification(
        stack="api-postgres", services={"postgres": small, "backend": small}, labels={"node.disk": "ssd"}
    )


def all_envs(stub: pb_grpc.SchedulerServiceStub) -> dict[str, pb.Environment]:
    reply = stub.ListEnvironments(pb.ListEnvironmentsRequest(page_size=100), timeout=10)
    return {e.name: e for e in reply.environments}


def wait_until(check: Callable[[], T | None], what: str, timeout: float) -> T:
    """Poll ``check`` until it returns something true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.3)


def running(stub: pb_grpc.SchedulerServiceStub, names: list[str], nodes: set[str]) -> dict[str, pb.Environment] | None:
    """Every environment when all of ``names`` run on one of ``nodes``, else None."""
    envs = all_envs(stub)
    ok = all(n in envs and envs[n].status == pb.ENVIRONMENT_STATUS_RUNNING and envs[n].node in nodes for n in names)
    return envs if ok else None


def url(env: pb.Environment, port: int) -> str:
    endpoint = next(e for e in env.endpoints if e.container_port == port)
    return f"http://{endpoint.host_ip}:{endpoint.host_port}"


def fetch(address: str, method: str = "GET") -> str:
    """A page (a server may take a moment to listen after RUNNING; retried for a bounded time)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            request = urllib.request.Request(address, method=method)
            with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - test addresses only
                return str(reply.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def rows(env: pb.Environment) -> list[str]:
    """The rows api-postgres's API returns."""
    return [r["value"] for r in json.loads(fetch(url(env, 8080) + "/items"))]
