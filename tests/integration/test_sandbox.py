"""Attacks on the container sandbox, run as an attacker would against a real daemon.

Each test is one way out of a default container (or into the daemon from one) and passes only
when the attack fails; where an attack could fail for an unrelated reason, a control shows the
same tool working on an allowed target first.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.integration.test_environments import wait_gone
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.network import socket_in
from tests.support.rawpacket import RawSender

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

IDLE = "trap 'exit 0' TERM INT; while :; do sleep 0.2; done"
SERVE_HI = "trap 'exit 0' TERM INT; while :; do echo hi | nc -l -p 8080; done"


@pytest.fixture(scope="module")
def daemon(image_archives: dict[str, Path]) -> Iterator[DaemonProcess]:
    # Not under pytest's private (0700) temporary directory: like /var/lib/scheduler, the data
    # directory's parents are open to every host user, so only the daemon's own modes protect it.
    home = Path(tempfile.mkdtemp(prefix="scheduler-sandbox-", dir="/var/tmp"))
    try:
        home.chmod(0o755)
        with running_daemon(home, image_archives.values()) as process:
            yield process
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def stub(daemon: DaemonProcess) -> Iterator[pb_grpc.SchedulerServiceStub]:
    with daemon.channel() as channel:
        yield pb_grpc.SchedulerServiceStub(channel)


def duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def toolbox(script: str, **fields: object) -> pb.EnvironmentSpecification:
    config = pb.ContainerConfiguration(command=["sh", "-c", script], **fields)  # type: ignore[arg-type]
    return pb.EnvironmentSpecification(stack="toolbox", services={"toolbox": config})


def deploy(stub: pb_grpc.SchedulerServiceStub, name: str, spec: pb.EnvironmentSpecification) -> pb.Environment:
    """Create an environment and wait until it runs."""
    stub.CreateEnvironment(pb.CreateEnvironmentRequest(name=name, spec=spec), timeout=30)
    deadline = time.monotonic() + 120
    env = stub.GetEnvironment(pb.GetEnvironmentRequest(name=name), timeout=10)
    while env.status != pb.ENVIRONMENT_STATUS_RUNNING:
        assert env.status != pb.ENVIRONMENT_STATUS_FAILED, env
        assert time.monotonic() < deadline, f"{name} did not run: {env}"
        time.sleep(0.2)
        env = stub.GetEnvironment(pb.GetEnvironmentRequest(name=name), timeout=10)
    return env


def remove(stub: pb_grpc.SchedulerServiceStub, name: str) -> None:
    stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name=name), timeout=30)
    wait_gone(stub, name)


def read_all(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as sock:
        chunks = []
        while chunk := sock.recv(256):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_container_reaches_neither_the_host_loopback_nor_the_api(
    daemon: DaemonProcess, stub: pb_grpc.SchedulerServiceStub
) -> None:
    spec = toolbox(SERVE_HI, ports=[pb.PortMapping(container_port=8080, publish=True)])
    env = deploy(stub, "netattack", spec)
    try:
        container = env.containers[0]
        netns = f"/proc/{container.pid}/ns/net"
        endpoint = env.endpoints[0]
        # The published port serves on the host's 127.0.0.1 (route_localnet is on for it).
        assert endpoint.host_ip == "127.0.0.1"
        assert read_all("127.0.0.1", endpoint.host_port) == b"hi\n"
        api_port = int(daemon.address.rpartition(":")[2])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as host_udp, socket.socket() as host_any:
            host_udp.bind(("127.0.0.1", 0))
            host_any.bind(("0.0.0.0", 0))
            host_any.listen()
            with RawSender(netns) as raw:
                # Hand-made frames to the host's 127.0.0.1, as a container with NET_RAW would send.
                assert not raw.syn_arrives("127.0.0.1", api_port, host_listener=True)
                assert not raw.udp_arrives(host_udp, "127.0.0.1")
                gateway = raw.gateway_ip
            # An ordinary connection to a host service listening on every address fails too.
            with socket_in(netns) as sock:
                sock.settimeout(1)
                assert sock.connect_ex((gateway, host_any.getsockname()[1])) != 0
        # The API still answers the host.
        assert stub.GetEnvironment(pb.GetEnvironmentRequest(name="netattack"), timeout=10).name == "netattack"
    finally:
        remove(stub, "netattack")


@pytest.fixture
def host_user() -> Iterator[str]:
    """An unprivileged host user made for the test, removed afterwards."""
    name = f"sbx{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=True, timeout=30)


def test_a_setuid_file_made_in_a_volume_is_useless_to_host_users_and_in_the_container(
    daemon: DaemonProcess, stub: pb_grpc.SchedulerServiceStub, host_user: str
) -> None:
    # The payload is the host's own `id` (dynamically linked against the host's libraries, which
    # a container can equally ship); the container's root makes it setuid root in its volume.
    script = (
        "grep ' /data ' /proc/self/mountinfo; "
        "while [ ! -f /data/ready ]; do sleep 0.1; done; "
        "chown 0:0 /data/id && chmod 4755 /data/id && touch /data/done; " + IDLE
    )
    deploy(stub, "setuid", toolbox(script, volumes=[pb.VolumeMount(name="data", path="/data")]))
    try:
        volume = daemon.data_dir / "volumes" / "setuid" / "data"
        planted = volume / "id"
        shutil.copy("/usr/bin/id", planted)
        (volume / "ready").touch()
        deadline = time.monotonic() + 30
        while not (volume / "done").exists():
            assert time.monotonic() < deadline, "the container did not make its file setuid"
            time.sleep(0.2)
        info = planted.stat()
        assert info.st_uid == 0 and info.st_mode & stat.S_ISUID, "the container's root made a setuid-root file"
        # A host user cannot run it: the volume root and the environment's directory are 0700.
        attempt = subprocess.run(
            ["runuser", "-u", host_user, "--", str(planted)], capture_output=True, text=True, timeout=30
        )
        assert "euid=0" not in attempt.stdout, attempt
        assert attempt.returncode != 0 and "ermission denied" in attempt.stderr, attempt
        for directory in (daemon.data_dir / "volumes", volume.parent):
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700 and directory.stat().st_uid == 0
        # Inside the container the volume is mounted nosuid,nodev.
        mountinfo = logs_of(stub, "setuid")
        line = next(line for line in mountinfo if " /data " in line)
        assert "nosuid" in line and "nodev" in line, line
    finally:
        remove(stub, "setuid")


def logs_of(stub: pb_grpc.SchedulerServiceStub, name: str, timeout: float = 30) -> list[str]:
    """The environment's log lines so far (waiting until there is at least one)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line.line for line in stub.GetEnvironmentLogs(pb.GetEnvironmentLogsRequest(name=name), timeout=10)]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


ESCAPES = (
    "unshare -U -r id 2>&1; echo unshare=$?; "
    "mknod /tmp/sda b 8 0 2>&1; echo mknod=$?; "
    "grep -E '^(CapEff|Seccomp):' /proc/self/status; "
)


def outcome(lines: list[str], key: str) -> int:
    return int(next(line for line in lines if line.startswith(f"{key}=")).partition("=")[2])


def test_a_default_container_can_neither_unshare_nor_make_block_devices(
    stub: pb_grpc.SchedulerServiceStub,
) -> None:
    deploy(stub, "escape", toolbox(ESCAPES + IDLE))
    # Control: the same script in a container granted MKNOD (allowed by the default config).
    granted = toolbox(ESCAPES + IDLE, security=pb.SecurityOptions(cap_add=["MKNOD"]))
    deploy(stub, "granted", granted)
    try:
        lines = wait_lines(stub, "escape", "CapEff:")
        assert outcome(lines, "unshare") != 0, lines
        assert any("Operation not permitted" in line for line in lines if "unshare" in line), lines
        assert outcome(lines, "mknod") != 0, lines
        assert "Seccomp:\t2" in lines, lines  # filter mode
        capabilities = int(next(line for line in lines if line.startswith("CapEff:")).split()[1], 16)
        for bit in (13, 27, 29, 31):  # NET_RAW, MKNOD, AUDIT_WRITE, SETFCAP
            assert not capabilities & (1 << bit), hex(capabilities)
        control = wait_lines(stub, "granted", "CapEff:")
        assert outcome(control, "mknod") == 0, control
        assert outcome(control, "unshare") != 0, control
    finally:
        remove(stub, "escape")
        remove(stub, "granted")


def wait_lines(stub: pb_grpc.SchedulerServiceStub, name: str, marker: str, timeout: float = 30) -> list[str]:
    """The environment's log lines once one starts with ``marker``."""
    deadline = time.monotonic() + timeout
    while True:
        lines = logs_of(stub, name)
        if any(line.startswith(marker) for line in lines):
            return lines
        assert time.monotonic() < deadline, f"{name} never logged {marker!r}: {lines}"
        time.sleep(0.2)


def test_a_64_kib_status_line_makes_the_container_unhealthy_and_the_monitor_lives_on(
    stub: pb_grpc.SchedulerServiceStub,
) -> None:
    # Healthy answers for the first three probes (the deploy needs one), then a 70 KB status line.
    script = (
        "trap 'exit 0' TERM INT; i=0; while :; do i=$((i+1)); if [ $i -gt 3 ]; then "
        "{ printf 'HTTP/1.0 200 '; head -c 70000 /dev/zero | tr '\\0' a; printf '\\r\\n\\r\\nok'; } | nc -l -p 8080; "
        "else printf 'HTTP/1.0 200 OK\\r\\n\\r\\nok' | nc -l -p 8080; fi; done"
    )
    check = pb.HealthCheck(
        http=pb.HealthCheck.Http(port=8080, path="/"), interval=duration(0.3), timeout=duration(2), retries=2
    )
    env = deploy(stub, "longline", toolbox(script, health_check=check))
    try:
        assert env.containers[0].health == pb.HEALTH_STATUS_HEALTHY
        deadline = time.monotonic() + 60
        while env.containers[0].health != pb.HEALTH_STATUS_UNHEALTHY:
            assert time.monotonic() < deadline, f"the monitor never noticed: {env}"
            time.sleep(0.2)
            env = stub.GetEnvironment(pb.GetEnvironmentRequest(name="longline"), timeout=10)
        assert "status line longer than" in env.containers[0].message, env.containers[0]
    finally:
        remove(stub, "longline")


def test_every_service_gets_default_limits_and_quotas_answer_resource_exhausted(
    daemon_factory: Callable[..., DaemonProcess], image_archives: dict[str, Path]
) -> None:
    limits = {
        "default_memory_bytes": 96 * 1024**2,
        "default_pids": 128,
        "env_max_published_ports": 1,
        "max_environments": 1,
    }
    small = daemon_factory({"limits": limits, "images": {"preload": [str(p) for p in image_archives.values()]}})
    with small.channel() as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        ports = [pb.PortMapping(container_port=p, publish=True) for p in (80, 81)]
        with pytest.raises(grpc.RpcError) as over:
            stub.CreateEnvironment(
                pb.CreateEnvironmentRequest(name="ports", spec=toolbox(IDLE, ports=ports)), timeout=30
            )
        assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limits.env_max_published_ports" in (over.value.details() or "")

        # A service that sets no limit (0 included) runs under the defaults, not unlimited.
        unset = toolbox(IDLE, resources=pb.Resources(memory_bytes=0, pids=0))
        deploy(stub, "defaults", unset)
        request = pb.GetEnvironmentMetricsRequest(name="defaults")
        request.window.FromMilliseconds(200)
        sample = stub.GetEnvironmentMetrics(request, timeout=30).containers[0]
        assert sample.memory_limit_bytes == 96 * 1024**2 and sample.pids_limit == 128, sample

        with pytest.raises(grpc.RpcError) as over:
            stub.CreateEnvironment(pb.CreateEnvironmentRequest(name="second", spec=toolbox(IDLE)), timeout=30)
        assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limits.max_environments" in (over.value.details() or "")
        remove(stub, "defaults")
