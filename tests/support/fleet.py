"""A fleet of three scheduler nodes on a real 3-member etcd cluster, for fleet tests (pytest plugin).

Each node is a real ``scheduler run`` with its own containerd, data dir, network instance, pool
and port range, in a network namespace of its own with an address on a bridge the fleet creates
(``tests.support.nodenet``): its daemon, containerd, environments' bridges and iptables chains
live there. etcd (3 members of its own) listens on the bridge's host-side address; each node's
API listens on its own address, with TLS and a bearer token as a user would run it (a
non-loopback listener needs both), and publishes ports on it. ``fleet`` (a fixture) starts one
per test; ``start_fleet`` does the same as a context manager for benchmarks. Everything the
fleet made (processes, namespaces, veths, bridge, chains, mounts) is removed at the end, even
when the test fails.

The interface, meant to stay small:

* ``fleet.nodes[i]``: a ``FleetNode`` with ``name`` (``n0``...), ``ip``, ``address`` (its API),
  ``channel()`` (a gRPC channel to its API, credentials included), ``stub()``, ``kill()`` (SIGKILL
  of its daemon and its containerd, its link down), ``restart()`` (link up, its daemon again on
  the same config and data), ``alive``, ``containerd_socket``, ``workload()`` (containers and
  running tasks per environment in its containerd);
* ``fleet.etcd``: the ``EtcdCluster`` (kill or restart a member), ``fleet.prefix``;
* ``fleet.stub(i)``: a SchedulerService stub of node ``i`` (its channel closed with the fleet);
* helpers for specs and waits: ``toolbox``, ``database``, ``all_envs``, ``running``, ``wait_until``,
  ``url``, ``fetch``, ``rows``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import yaml

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from scheduler.api.auth import new_token
from tests.support import nodenet
from tests.support.daemon import VENV_BIN, DaemonProcess, start_daemon
from tests.support.etcd import EtcdCluster
from tests.support.images import BACKEND, POSTGRES
from tests.support.network import require_root
from tests.support.nodenet import NodeNetwork
from tests.support.pki import Issuer, write_ca, write_leaf
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
API_PORT = 7443
SERVE_TIMEOUT = 180.0
"""Seconds a node may take to serve: it imports three image archives first, slow on a busy host."""
"""Each node's API port, on its own address (its namespace has every port to itself)."""


@dataclass
class FleetNode:
    """One node of a test fleet: its daemon, and how to reach, kill and restart it."""

    index: int
    daemon: DaemonProcess
    net: NodeNetwork
    _channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"n{self.index}"

    @property
    def ip(self) -> str:
        """The node's address on the test bridge (its API's and its published ports')."""
        return self.net.node_ip(self.index)

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
        """Lose the node: SIGKILL its daemon and its containerd at once (their shims live on) and
        take its link down."""
        pid_file = self.data_dir / "containerd" / "containerd.pid"
        containerd = int(pid_file.read_text()) if pid_file.exists() else None
        self.daemon.stop(signal.SIGKILL)
        if containerd is not None and alive(containerd):
            os.kill(containerd, signal.SIGKILL)
            wait_until(lambda: not alive(containerd), "the killed containerd is gone", 10)
        self.net.link(self.index, up=False)

    def restart(self) -> None:
        """Bring the link up and start the node's daemon again on its config and data."""
        assert not self.alive, f"{self.name} still runs"
        self.net.link(self.index, up=True)
        old = self.daemon
        old.extra["cleaned"] = True  # the new daemon has its config and data: its cleanup is theirs
        self.daemon = start_daemon(
            old.log_path.parent,
            reuse_config=True,
            netns=old.netns,
            credentials=old.credentials,
            serve_timeout=SERVE_TIMEOUT,
        )

    def workload(self) -> dict[str, tuple[int, int]]:
        """Per environment: its containers in the node's containerd, and how many of their tasks run."""
        return asyncio.run(_workload(self.containerd_socket, self.namespace))

    @property
    def namespace(self) -> str:
        """The containerd namespace the node's daemon uses."""
        return str(yaml.safe_load(self.daemon.config_path.read_text())["containerd"]["namespace"])

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels.clear()


async def _workload(socket: str, namespace: str) -> dict[str, tuple[int, int]]:
    from scheduler import labels
    from scheduler.runtime.containerd._gen.containerd.services.containers.v1 import containers_pb2
    from scheduler.runtime.containerd._gen.containerd.services.tasks.v1 import tasks_pb2
    from scheduler.runtime.containerd._gen.containerd.types.task import task_pb2
    from scheduler.runtime.containerd.client import ContainerdClient

    client = await ContainerdClient.connect(socket, namespace)
    try:
        containers = (await client.containers.list(containers_pb2.ListContainersRequest())).containers
        tasks = (await client.tasks.list(tasks_pb2.ListTasksRequest())).tasks
    finally:
        await client.close()
    running = {t.id for t in tasks if t.status == task_pb2.RUNNING}
    counts: dict[str, tuple[int, int]] = {}
    for container in containers:
        env = container.labels.get(labels.ENV, "")
        made, runs = counts.get(env, (0, 0))
        counts[env] = (made + 1, runs + (container.id in running))
    return counts


@dataclass
class Fleet:
    """The nodes sharing an etcd cluster under ``prefix``, and the backup dir they share."""

    nodes: list[FleetNode]
    etcd: EtcdCluster
    prefix: str
    backup_dir: Path
    net: NodeNetwork
    ca_file: Path | None = None
    """The CA that signed the nodes' certificates."""
    token: str = ""
    """The fleet's admin token."""

    def stub(self, index: int = 0) -> pb_grpc.SchedulerServiceStub:
        return self.nodes[index].stub()

    def cli(self, index: int, *words: str) -> subprocess.CompletedProcess[str]:
        """Run ``scheduler WORDS`` against node ``index`` as a user would (its address, TLS, token)."""
        env = {
            **os.environ,
            "SCHEDULER_ADDRESS": self.nodes[index].address,
            "SCHEDULER_TLS_CA": str(self.ca_file),
            "SCHEDULER_TOKEN": self.token,
        }
        return subprocess.run(
            [str(VENV_BIN / "scheduler"), *words], capture_output=True, text=True, env=env, timeout=60
        )

    def node(self, name: str) -> FleetNode:
        return next(n for n in self.nodes if n.name == name)


@dataclass
class _Access:
    """How nodes serve their API: a CA, each node's certificate for its address, one admin token."""

    where: Path
    token: str
    digest: str
    issuer: Issuer

    @property
    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(root_certificates=(self.where / "ca.crt").read_bytes()),
            grpc.access_token_call_credentials(self.token),
        )

    def server(self, i: int, ip: str) -> dict[str, Any]:
        """Node ``i``'s ``server`` and ``auth`` settings: TLS on ``ip``, the fleet's admin token."""
        write_leaf(self.where, f"n{i}", self.issuer, addresses=(ip,))
        return {
            "server": {
                # Every address of its namespace, as a user's `listen: 0.0.0.0:PORT`; the node
                # advertises the one others reach it on (cluster.node.advertise).
                "listen": f"0.0.0.0:{API_PORT}",
                "tls": {"cert_file": str(self.where / f"n{i}.crt"), "key_file": str(self.where / f"n{i}.key")},
            },
            "auth": {
                "tokens": [{"name": "fleet-admin", "sha256": self.digest}],
                "bindings": [{"role": "admin", "principals": ["token:fleet-admin"]}],
            },
        }


def node_config(i: int, fleet: Fleet, archives: list[Path], cluster: dict[str, Any]) -> dict[str, Any]:
    """Node ``i``'s settings: 8 cores and 2 GiB offered, labels ``LABELS[i]``, ports of its own,
    published on its address."""
    low = 31000 + 100 * i
    node = {
        "name": f"n{i}",
        "advertise": f"{fleet.net.node_ip(i)}:{API_PORT}",
        "cpu_millis": 8000,
        "memory_bytes": NODE_MEMORY,
        "labels": LABELS[i],
    }
    return {
        "images": {"preload": [str(a) for a in archives]},
        "network": {"port_range": [low, low + 99], "host_ip": fleet.net.node_ip(i)},
        "cluster": {
            "etcd": {"endpoints": list(fleet.etcd.endpoints), "prefix": fleet.prefix},
            "node": node,
            # Short enough for a quick failover, long enough that a busy shared CI machine does not
            # miss keep-alives and move environments off a node that is fine, nor loses them while
            # etcd elects a new leader (with 4 s, nodes lost theirs at a load average of 150).
            "lease_ttl": 8,
            "failover_grace": 2.0,
            "backup_dir": str(fleet.backup_dir),
            **cluster,
        },
    }


@contextlib.contextmanager
def start_fleet(
    tmp: Path, archives: list[Path], size: int = 3, cluster: dict[str, Any] | None = None
) -> Iterator[Fleet]:
    """Make the bridge, start etcd on it and ``size`` nodes in namespaces of their own
    (``cluster`` merged into each one's ``cluster`` settings). At the end: every environment
    deleted, the daemons stopped, what they left removed, etcd stopped, the namespaces, veths and
    bridge deleted, even on failure."""
    require_root()
    net = NodeNetwork()
    fleet: Fleet | None = None
    try:
        net.create_bridge()
        etcd = EtcdCluster.start(3, host=net.host_ip)
        fleet = Fleet([], etcd, f"/fleet-{net.prefix}/", tmp / "shared-backups", net)
        (tmp / "pki").mkdir()
        token, digest = new_token()
        access = _Access(tmp / "pki", token, digest, write_ca(tmp / "pki"))
        fleet.ca_file, fleet.token = tmp / "pki" / "ca.crt", token
        for i in range(size):
            sub = tmp / f"n{i}"
            sub.mkdir()
            config = {**node_config(i, fleet, archives, cluster or {}), **access.server(i, net.node_ip(i))}
            netns = net.add_node(i)
            daemon = start_daemon(sub, config, netns=netns, credentials=access.credentials, serve_timeout=SERVE_TIMEOUT)
            fleet.nodes.append(FleetNode(i, daemon, net))
        yield fleet
    finally:
        try:
            if fleet is not None:
                _stop(fleet)
        finally:
            net.remove()
            left = net.leftovers()
            assert not left, f"the fleet left {left}"


def _stop(fleet: Fleet) -> None:
    """Delete every environment through a live node, stop every daemon and remove what it left."""
    for node in fleet.nodes:
        node.close()
    try:
        live = [n.daemon for n in fleet.nodes if n.alive]
        if live:
            live[0].delete_all_environments()
    finally:
        try:
            for node in fleet.nodes:
                node.daemon.stop()
                fleet.net.link(node.index, up=True)
            for node in fleet.nodes:
                node.daemon.cleanup()
        finally:
            fleet.etcd.stop()


@pytest.fixture
def fleet(tmp_path: Path, image_archives: dict[str, Path]) -> Iterator[Fleet]:
    """Three nodes (n0: no labels; n1, n2: ``node.disk=ssd``), preloaded with toolbox and api-postgres."""
    archives = [image_archives[name] for name in (TOOLBOX, POSTGRES, BACKEND)]
    with start_fleet(tmp_path, archives) as made:
        yield made


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the namespaces, veths and bridge of a fleet whose own clean-up was cut short."""
    for net in list(nodenet.MADE):
        net.remove()


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
    """Every environment, page after page (a benchmark holds more than a page of 100)."""
    found: dict[str, pb.Environment] = {}
    token = ""
    while True:
        reply = stub.ListEnvironments(pb.ListEnvironmentsRequest(page_size=100, page_token=token), timeout=10)
        found.update((e.name, e) for e in reply.environments)
        token = reply.next_page_token
        if not token:
            return found


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
