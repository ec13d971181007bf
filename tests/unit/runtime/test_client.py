"""ContainerdClient against an in-process gRPC server on a unix socket: headers, retries, errors."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2

from scheduler import errors
from scheduler.runtime.containerd._gen.containerd.services.containers.v1 import containers_pb2 as pb
from scheduler.runtime.containerd._gen.containerd.services.containers.v1 import containers_pb2_grpc as pb_grpc
from scheduler.runtime.containerd._gen.containerd.services.version.v1 import version_pb2, version_pb2_grpc
from scheduler.runtime.containerd.client import (
    ContainerdClient,
    RetryPolicy,
    check_name,
    check_socket,
    check_version,
    parse_version,
    socket_path,
)


@dataclass
class Script:
    version: str = "1.6.20~ds1"
    unavailable_before_success: int = 0
    calls: int = 0
    metadata: list[dict[str, str]] = field(default_factory=list)


class VersionServicer(version_pb2_grpc.VersionServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    async def Version(self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext) -> version_pb2.VersionResponse:  # type: ignore[override]
        return version_pb2.VersionResponse(version=self.script.version)


class ContainersServicer(pb_grpc.ContainersServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    async def Get(self, request: pb.GetContainerRequest, context: grpc.aio.ServicerContext) -> pb.GetContainerResponse:  # type: ignore[override]
        self.script.calls += 1
        self.script.metadata.append({k: v for k, v in context.invocation_metadata() or ()})  # type: ignore[misc]
        if self.script.calls <= self.script.unavailable_before_success:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        if request.id == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"container {request.id}: not found")
        return pb.GetContainerResponse(container=pb.Container(id=request.id))

    async def Create(
        self, request: pb.CreateContainerRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateContainerResponse:  # type: ignore[override]
        self.script.calls += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, Script]]:
    script = Script()
    srv = grpc.aio.server()
    version_pb2_grpc.add_VersionServicer_to_server(VersionServicer(script), srv)
    pb_grpc.add_ContainersServicer_to_server(ContainersServicer(script), srv)
    path = str(tmp_path / "c.sock")
    srv.add_insecure_port(f"unix://{path}")
    await srv.start()
    try:
        yield path, script
    finally:
        await srv.stop(None)


FAST = RetryPolicy(attempts=4, initial=0.01, maximum=0.02)


async def test_namespace_and_lease_headers_are_sent(server: tuple[str, Script]) -> None:
    path, script = server
    async with await ContainerdClient.connect(path, "ns1", retry=FAST) as client:
        assert client.version == "1.6.20~ds1"
        reply = await client.containers.get(pb.GetContainerRequest(id="c1"), lease="l1")
        assert reply.container.id == "c1"
    assert script.metadata[0]["containerd-namespace"] == "ns1"
    assert script.metadata[0]["containerd-lease"] == "l1"


async def test_idempotent_calls_retry_unavailable(server: tuple[str, Script]) -> None:
    path, script = server
    script.unavailable_before_success = 2
    async with await ContainerdClient.connect(path, "ns1", retry=FAST) as client:
        reply = await client.containers.get(pb.GetContainerRequest(id="c1"))
    assert reply.container.id == "c1" and script.calls == 3


async def test_retries_are_bounded_and_non_idempotent_calls_are_not_retried(server: tuple[str, Script]) -> None:
    path, script = server
    script.unavailable_before_success = 100
    async with await ContainerdClient.connect(path, "ns1", retry=FAST) as client:
        with pytest.raises(errors.Unavailable, match="Containers.Get c1: restarting"):
            await client.containers.get(pb.GetContainerRequest(id="c1"), what="c1")
        assert script.calls == FAST.attempts
        script.calls = 0
        with pytest.raises(errors.Unavailable):
            await client.containers.create(pb.CreateContainerRequest(container=pb.Container(id="c2")))
        assert script.calls == 1


async def test_not_found_is_translated(server: tuple[str, Script]) -> None:
    path, _ = server
    async with await ContainerdClient.connect(path, "ns1") as client:
        with pytest.raises(errors.NotFound, match="missing"):
            await client.containers.get(pb.GetContainerRequest(id="missing"))
        assert not await client.container_exists("missing")
        assert await client.container_exists("there")


async def test_old_containerd_is_refused(server: tuple[str, Script]) -> None:
    path, script = server
    script.version = "1.5.9"
    with pytest.raises(errors.FailedPrecondition, match="1.5.9 is too old.*1.6 or newer"):
        await ContainerdClient.connect(path, "ns1")


async def test_a_socket_nobody_serves_is_unavailable(tmp_path: Path) -> None:
    path = str(tmp_path / "dead.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)  # bound but never accepting: connection refused
    sock.close()
    with pytest.raises(errors.Unavailable, match=f"containerd does not answer on {path}"):
        await ContainerdClient.connect(path, "ns1", connect_timeout=1.0)


def test_socket_paths() -> None:
    assert socket_path("/run/c.sock") == "/run/c.sock"
    assert socket_path("unix:///run/c.sock") == "/run/c.sock"
    assert socket_path("unix:/run/c.sock") == "/run/c.sock"
    for bad in ("", "unix://run/c.sock", "run/c.sock", "tcp://1.2.3.4:5"):
        with pytest.raises(errors.InvalidArgument) as err:
            socket_path(bad)
        assert err.value.details["field"] == "containerd.socket"


def test_check_socket_explains_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(errors.Unavailable, match="does not exist"):
        check_socket(str(tmp_path / "none.sock"))
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(errors.Unavailable, match="not a unix socket"):
        check_socket(str(plain))
    if os.geteuid() != 0:  # root may open anything, so the permission branch only shows for users
        locked = tmp_path / "locked"
        locked.mkdir(mode=0)
        with pytest.raises(errors.Unavailable, match="permission denied"):
            check_socket(str(locked / "c.sock"))


def test_versions() -> None:
    assert parse_version("1.6.20~ds1") == (1, 6, 20)
    assert parse_version("v1.7.0-rc.1") == (1, 7, 0)
    assert parse_version("2.0") == (2, 0, 0)
    check_version("1.6.0")
    check_version("2.1.1")
    with pytest.raises(errors.FailedPrecondition):
        check_version("1.5.13")
    with pytest.raises(errors.FailedPrecondition, match="unparsable"):
        check_version("dev")


def test_names_and_retry_policy() -> None:
    assert check_name("web-1.a_b", "container.id") == "web-1.a_b"
    for bad in ("", "-x", "a..b", "a b", "x" * 77):
        with pytest.raises(errors.InvalidArgument):
            check_name(bad, "container.id")
    assert RetryPolicy(attempts=5, initial=0.1, maximum=0.3).delays() == [0.1, 0.2, 0.3, 0.3]
    with pytest.raises(errors.InvalidArgument):
        RetryPolicy(attempts=0)
