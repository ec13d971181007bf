"""Start the real daemon as a subprocess (``scheduler run``) on free ports in a temp dir."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
GRPCURL = str(VENV_BIN / "grpcurl")


_pools_in_use: set[str] = set()
_every_daemon: list[DaemonProcess] = []


@pytest.fixture(scope="session", autouse=True)
def _reap_daemons() -> Iterator[None]:
    """At the end of the session, stop every daemon a test started and remove what it left."""
    yield
    for daemon in _every_daemon:
        if daemon.process.poll() is None:
            try:
                daemon.delete_all_environments()
            finally:
                daemon.stop()
    for daemon in _every_daemon:
        daemon.cleanup()


def free_pool() -> str:
    """A /16 that no host route overlaps (leftovers of crashed runs included) and no daemon here uses."""
    import ipaddress
    import random

    from scheduler.network.addresses import read_host_routes

    routes = [r.network for r in read_host_routes() if r.network.prefixlen > 0]
    for _ in range(500):
        pool = ipaddress.IPv4Network(f"10.{random.randint(64, 254)}.0.0/16")
        if str(pool) not in _pools_in_use and not any(pool.overlaps(route) for route in routes):
            _pools_in_use.add(str(pool))
            return str(pool)
    raise AssertionError("no free /16 in 10.64.0.0-10.254.0.0 for a test daemon's pool")


def cleanup_daemon_dir(data_dir: Path, instance: str, pool: str) -> None:
    """Remove what a stopped daemon left on the host: containers in its managed containerd, its
    network instance (bridges, rules, namespaces), its layered volumes' and its volume filesystem's mounts."""
    import asyncio

    from scheduler.network.cni import CniNetwork, CniSettings
    from scheduler.runtime.containerd.managed import ManagedContainerd
    from scheduler.volumes.filesystem import release
    from tests.support.containerd import sweep_daemon
    from tests.support.processes import unmount_under

    socket = data_dir / "containerd" / "containerd.sock"

    async def sweep() -> None:
        if socket.is_socket() and (data_dir / "containerd" / "containerd.pid").exists():
            managed = ManagedContainerd(data_dir / "containerd")
            await managed.start()
            try:
                await sweep_daemon(str(socket), data_dir / "sweep")
            finally:
                await managed.stop()
        network = CniNetwork(data_dir / "network", CniSettings(pool=pool), instance)
        await network.start()
        await network.teardown()

    try:
        asyncio.run(sweep())
    finally:
        unmount_under(data_dir / "volumes")  # layered volumes (overlays), after their containers
        release(data_dir)  # after the containers: theirs are the last users of it


def daemon_instance(daemon: DaemonProcess) -> str:
    """The network instance prefix (chains, bridges) a daemon started here was given."""
    return str(yaml.safe_load(daemon.config_path.read_text())["network"]["instance"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DaemonProcess:
    """A running ``scheduler run`` child and how to reach it."""

    process: subprocess.Popen[bytes]
    address: str
    data_dir: Path
    log_path: Path
    config_path: Path
    extra: dict[str, Any] = field(default_factory=dict)
    netns: str | None = None
    """The network namespace (``ip netns`` name) it runs in; None: the test's own."""
    credentials: grpc.ChannelCredentials | None = None
    """TLS (and token) credentials its API wants; None: plaintext."""

    def channel(self) -> grpc.Channel:
        if self.credentials is not None:
            return grpc.secure_channel(self.address, self.credentials)
        return grpc.insecure_channel(self.address)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def grpcurl(
        self, *words: str, data: str | None = None, flags: tuple[str, ...] = (), timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run the real grpcurl binary: ``grpcurl -plaintext FLAGS [-d DATA] ADDRESS WORDS...``."""
        argv = [GRPCURL, "-plaintext", *flags]
        if data is not None:
            argv += ["-d", data]
        return subprocess.run([*argv, self.address, *words], capture_output=True, text=True, timeout=timeout)

    def delete_all_environments(self, timeout: float = 120) -> None:
        """Delete every environment and wait until they are gone, so no container outlives a test."""
        from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
        from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc

        if self.process.poll() is not None:
            return
        with self.channel() as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            names = [
                e.name
                for e in stub.ListEnvironments(pb.ListEnvironmentsRequest(page_size=500), timeout=10).environments
            ]
            for name in names:
                stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name=name), timeout=10)
            deadline = time.monotonic() + timeout
            while names and time.monotonic() < deadline:
                time.sleep(0.2)
                names = [
                    e.name
                    for e in stub.ListEnvironments(pb.ListEnvironmentsRequest(page_size=500), timeout=10).environments
                ]
        assert not names, f"environments not deleted within {timeout}s: {names}"

    def cleanup(self) -> None:
        """After the daemon stopped: remove what it left on the host by design (its network rules
        and bridges, and containers of environments that were never deleted), so tests leak nothing."""
        if self.extra.get("cleaned"):
            return
        self.extra["cleaned"] = True
        settings = yaml.safe_load(self.config_path.read_text())
        args = (str(self.data_dir), settings["network"]["instance"], settings["network"]["pool"])
        if self.netns is None:
            cleanup_daemon_dir(Path(args[0]), args[1], args[2])
            return
        if not Path("/run/netns", self.netns).exists():
            return  # removed with everything in it by whoever made it (tests.support.nodenet)
        # Its bridges, chains and containers' links live in its namespace: clean up from there.
        script = "import sys, pathlib; from tests.support.daemon import cleanup_daemon_dir as c; "
        script += "c(pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3])"
        argv = [*in_netns(self.netns), sys.executable, "-c", script, *args]
        run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"cleanup in {self.netns} failed: {run.stderr[-3000:]}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def in_netns(netns: str) -> list[str]:
    """The argv prefix that runs a command in network namespace ``netns`` (only that: the mount
    namespace stays the host's, so its mounts and files are where the test looks)."""
    return ["nsenter", f"--net=/run/netns/{netns}", "--"]


def wait_serving(
    address: str,
    process: subprocess.Popen[bytes],
    log_path: Path,
    timeout: float = 60,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from scheduler.api.server import IMAGES_HEALTH

    deadline = time.monotonic() + timeout
    channel_of = grpc.insecure_channel(address) if credentials is None else grpc.secure_channel(address, credentials)
    with channel_of as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"daemon exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                # Past SERVING, until the preloaded images are in: tests count what the daemon
                # holds (leases, snapshots) and expect the images at once, as before the import
                # moved after SERVING.
                reply = stub.Check(health_pb2.HealthCheckRequest(service=IMAGES_HEALTH), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"daemon did not serve within {timeout}s:\n{log_path.read_text()}")


def start_daemon(
    tmp: Path,
    config: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
    reuse_config: bool = False,
    netns: str | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    serve_timeout: float = 60,
) -> DaemonProcess:
    """Write a config for ``tmp`` (free port, private data dir) merged with ``config`` and start it.

    ``reuse_config`` starts again with the config an earlier call wrote there (a restart).
    ``netns`` runs it in that network namespace; ``credentials`` are what its API wants;
    ``serve_timeout`` is how long it may take to serve.
    """
    config_path = tmp / "config.yaml"
    if reuse_config:
        settings = yaml.safe_load(config_path.read_text())
        return _launch(tmp, settings, config_path, env, wait, netns, credentials, serve_timeout)
    port = free_port()
    settings: dict[str, Any] = {
        "data_dir": str(tmp / "data"),
        # TCP on loopback (callers identified as the owner of their socket); no unix socket, so
        # that parallel daemons never share its default path.
        "server": {"listen": f"127.0.0.1:{port}", "unix_socket": "", "shutdown_grace": 3},
        "log": {"format": "json", "level": "debug"},
        # Own bridges, chains and subnets, so that daemons of parallel tests never collide.
        "network": {"instance": "t" + secrets.token_hex(2), "pool": free_pool()},
        "containerd": {"namespace": "t" + secrets.token_hex(4)},
    }
    for key, value in (config or {}).items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    config_path.write_text(yaml.safe_dump(settings))
    return _launch(tmp, settings, config_path, env, wait, netns, credentials, serve_timeout)


def _reach(settings: dict[str, Any]) -> str:
    """The address to call a daemon on: the one it advertises to its fleet, else its TCP listener."""
    advertised = settings.get("cluster", {}).get("node", {}).get("advertise")
    return str(advertised or settings["server"]["listen"])


def _launch(
    tmp: Path,
    settings: dict[str, Any],
    config_path: Path,
    env: dict[str, str] | None,
    wait: bool,
    netns: str | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    serve_timeout: float = 60,
) -> DaemonProcess:
    log_path = tmp / "daemon.log"
    child_env = {**os.environ, **(env or {})}
    # nsenter execs the daemon: the PID is the daemon's.
    prefix = in_netns(netns) if netns is not None else []
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [*prefix, str(VENV_BIN / "scheduler"), "run", "--config", str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=child_env,
        )
    daemon = DaemonProcess(
        process, _reach(settings), Path(settings["data_dir"]), log_path, config_path, {}, netns, credentials
    )
    _every_daemon.append(daemon)
    if wait:
        try:
            wait_serving(daemon.address, process, log_path, serve_timeout, credentials)
        except BaseException:
            daemon.stop(signal.SIGKILL)
            raise
    return daemon


@contextlib.contextmanager
def running_daemon(
    tmp: Path, archives: Iterable[Path], config: dict[str, Any] | None = None
) -> Iterator[DaemonProcess]:
    """A daemon preloaded with ``archives`` (and ``config`` merged in) for a group of tests;
    afterwards every environment is deleted, the daemon must exit 0, and what it left on the host
    is removed."""
    process = start_daemon(tmp, {"images": {"preload": [str(p) for p in archives]}, **(config or {})})
    yield process
    process.delete_all_environments()
    code = process.stop()
    process.cleanup()
    assert code == 0, process.log()[-3000:]


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Any]:
    """Start daemons on demand; every one is stopped at teardown."""
    started: list[DaemonProcess] = []

    def factory(config: dict[str, Any] | None = None, **kwargs: Any) -> DaemonProcess:
        sub = tmp_path / f"d{len(started)}"
        sub.mkdir()
        daemon = start_daemon(sub, config, **kwargs)
        started.append(daemon)
        return daemon

    yield factory
    for daemon in started:
        daemon.delete_all_environments()
        daemon.stop()
        daemon.cleanup()
