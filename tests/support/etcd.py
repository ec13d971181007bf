"""A real etcd cluster for tests: three members of Debian's etcd on loopback ports (pytest plugin).

``EtcdCluster.start(size)`` runs the members under a temp dir of their own (on /dev/shm when
there is one: the members fsync every write, which tmpfs makes cheap on a shared CI disk), waits
a bounded time for every member to report healthy, and ``stop()`` ends them by PID and removes
the dir. ``kill``/``restart`` take one member down and bring it back (with its data), for
failover tests. The ``etcd_cluster`` session fixture is one such cluster, shared; ``etcd_prefix``
gives each test a key prefix of its own inside it. Under ``CI=true`` a missing etcd fails the
test instead of skipping it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.leftovers import track
from tests.support.processes import alive

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
START_TIMEOUT = 30.0
"""Seconds a cluster (or a restarted member) may take to report healthy."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class EtcdMember:
    """One member: its name, ports, data dir and (while it runs) process."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    """The address it listens on (clients and peers)."""

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def healthy(self) -> bool:
        """Whether the member answers /health with a leader known."""
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=2) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False


@dataclass
class EtcdCluster:
    """A running etcd cluster of real members on loopback, under ``root``."""

    root: Path
    members: list[EtcdMember] = field(default_factory=list)
    token: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:12]}")

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(m.endpoint for m in self.members)

    @classmethod
    def start(
        cls, size: int = 3, parent: Path | None = None, attempts: int = 3, host: str = "127.0.0.1"
    ) -> EtcdCluster:
        """Start ``size`` members on ``host`` and wait until all are healthy, on new ports if a
        member could not bind its own (another session took it between our probe and etcd's bind)."""
        for attempt in range(attempts):
            try:
                return cls._start(size, parent, host)
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _start(cls, size: int, parent: Path | None, host: str) -> EtcdCluster:
        """Start ``size`` members and wait until all are healthy; stops them again on failure."""
        if parent is None and os.access("/dev/shm", os.W_OK):
            parent = Path("/dev/shm")
        root = Path(tempfile.mkdtemp(prefix="scheduler-etcd-", dir=parent))
        track(root)
        cluster = cls(root)
        ports = _free_ports(2 * size, host)
        for i in range(size):
            cluster.members.append(
                EtcdMember(f"m{i}", ports[2 * i], ports[2 * i + 1], root / f"m{i}", root / f"m{i}.log", host=host)
            )
        try:
            for member in cluster.members:
                cluster._launch(member)
            cluster.wait_healthy(cluster.members)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _launch(self, member: EtcdMember) -> None:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        args = [
            ETCD,
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.endpoint}",
            f"--advertise-client-urls={member.endpoint}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={initial}",
            f"--initial-cluster-token={self.token}",
            "--initial-cluster-state=new",
            # On two shared cores a busy member may miss a 100 ms heartbeat; a longer election
            # timeout keeps the leader from flapping while still electing within seconds.
            "--heartbeat-interval=100",
            "--election-timeout=1500",
            "--logger=zap",
            f"--log-outputs={member.log_path}",
        ]
        member.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )

    def wait_healthy(self, members: list[EtcdMember], timeout: float = START_TIMEOUT) -> None:
        """Wait until every one of ``members`` reports healthy.

        Raises:
            RuntimeError: a member exited or stayed unhealthy for ``timeout`` (with its log's tail).
        """
        deadline = time.monotonic() + timeout
        pending = list(members)
        while pending:
            for member in list(pending):
                if member.process is not None and member.process.poll() is not None:
                    raise RuntimeError(
                        f"etcd {member.name} exited {member.process.returncode}: {self.log_tail(member)}"
                    )
                if member.healthy():
                    pending.remove(member)
            if pending and time.monotonic() > deadline:
                tails = "; ".join(f"{m.name}: {self.log_tail(m)}" for m in pending)
                raise RuntimeError(f"etcd members not healthy after {timeout} s: {tails}")
            if pending:
                time.sleep(0.1)

    def log_tail(self, member: EtcdMember, lines: int = 5) -> str:
        try:
            return " | ".join(member.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def status(self, member: EtcdMember) -> dict[str, Any]:
        """The member's Maintenance.Status (its id, the leader's id, raft term and index), through
        etcd's HTTP gateway; empty when it does not answer."""
        request = urllib.request.Request(f"{member.endpoint}/v3/maintenance/status", data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310 - the test's own member
                return dict(json.loads(response.read()))
        except (OSError, ValueError, urllib.error.URLError):
            return {}

    def leader(self) -> EtcdMember | None:
        """The member that the answering members agree leads (by Maintenance.Status), or None."""
        ids = {}
        leaders = set()
        for member in self.members:
            status = self.status(member)
            if status:
                ids[status["header"]["member_id"]] = member
                leaders.add(status.get("leader", ""))
        return ids.get(leaders.pop()) if len(leaders) == 1 else None

    def member_at(self, endpoint: str) -> EtcdMember:
        return next(m for m in self.members if m.endpoint == endpoint)

    def kill(self, member: EtcdMember) -> None:
        """SIGKILL one member (a crash: no goodbye to its peers) and reap it."""
        if member.process is not None and member.process.poll() is None:
            os.kill(member.process.pid, signal.SIGKILL)
            member.process.wait(timeout=10)

    def restart(self, member: EtcdMember) -> None:
        """Start a stopped member again on its data and wait until it is healthy."""
        self._launch(member)
        self.wait_healthy([member])

    def stop(self) -> None:
        """End every member by PID (SIGKILL: a test cluster's data is thrown away) and remove its dir."""
        for member in self.members:
            self.kill(member)
        assert not any(m.pid is not None and alive(m.pid) for m in self.members)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[EtcdCluster]:
    """A 3-member etcd cluster for the session; a test that takes a member down brings it back."""
    if not os.path.exists(ETCD):
        if in_ci():
            pytest.fail("etcd is required under CI=true (Debian's etcd-server)", pytrace=False)
        pytest.skip("etcd is not installed (Debian's etcd-server)")
    cluster = EtcdCluster.start(3)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def etcd_prefix() -> str:
    """A key prefix of the test's own inside the shared cluster."""
    return f"/test-{uuid.uuid4().hex[:10]}/"
