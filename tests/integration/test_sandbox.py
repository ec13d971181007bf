"""Attacks on the container sandbox, run as an attacker would against a real daemon.

Each test is one way out of a default container (or into the daemon from one) and passes only
when the attack fails; where an attack could fail for an unrelated reason, a control shows the
same tool working on an allowed target first.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.network import socket_in
from tests.support.rawpacket import RawSender

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

IDLE = "trap 'exit 0' TERM INT; while :; do sleep 0.2; done"
SERVE_HI = "trap 'exit 0' TERM INT; while :; do echo hi | nc -l -p 8080; done"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, image_archives: dict[str, Path]) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("sandbox"), image_archives.values()) as process:
        yield process


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
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            stub.GetEnvironment(pb.GetEnvironmentRequest(name=name), timeout=10)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} was not deleted")


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
