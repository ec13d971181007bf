"""ManagedContainerd: start, adopt after a crash, restart without losing running containers."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from scheduler import domain
from scheduler.errors import InvalidArgument, Unavailable
from scheduler.runtime.containerd.events import TaskEventStream
from scheduler.runtime.containerd.managed import ManagedContainerd, render_config
from scheduler.runtime.containerd.runtime import ContainerdRuntime
from tests.support.containerd import import_busybox, unavailable

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.fixture
async def managed() -> AsyncIterator[ManagedContainerd]:
    """A containerd of this test's own (short path: unix sockets are limited to 107 bytes)."""
    base = Path(tempfile.mkdtemp(prefix="sched-mc-"))
    daemon = ManagedContainerd(base / "containerd")
    try:
        await daemon.start()
    except Unavailable as err:
        unavailable(err.message)
    try:
        yield daemon
    finally:
        await daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


async def test_restart_keeps_the_task_and_the_old_client_reconnects(managed: ManagedContainerd) -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    state = managed.base_dir.parent / "rt"
    runtime = await ContainerdRuntime.connect(str(managed.socket), namespace=namespace, state_dir=state)
    cid = "survivor"
    resubscribed: list[bool] = []

    async def on_resubscribe() -> None:
        resubscribed.append(True)

    stream = TaskEventStream(runtime.client, on_resubscribe=on_resubscribe)
    try:
        image = await import_busybox(runtime.client)
        await runtime.create(
            domain.ContainerConfig(
                id=cid, image=image, command=("sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done")
            )
        )
        pid = await runtime.start(cid)
        first_daemon = managed.pid
        await stream.connected()
        assert first_daemon is not None

        await managed.stop()
        assert not _alive(first_daemon)
        assert _alive(pid), "the container must outlive its containerd"

        # While it is down, calls fail with Unavailable after a bounded retry instead of hanging.
        with pytest.raises(Unavailable):
            async with asyncio.timeout(10):
                await runtime.task_pid(cid)

        await managed.start()
        assert managed.pid != first_daemon and not managed.adopted
        # The same client rides out the restart: idempotent calls retry UNAVAILABLE.
        assert await runtime.task_pid(cid) == pid
        result = await runtime.exec(cid, ["echo", "still here"], timedelta(seconds=10))
        assert result.output == "still here\n"
        # The event stream opened before the restart resubscribed and tells about the reconnect.
        await stream.connected(timeout=15)
        assert resubscribed
        status = await runtime.stop(cid, timedelta(seconds=5))
        assert status.code == 0
        async with asyncio.timeout(10):
            async for event in stream:
                if event.container_id == cid and event.kind is domain.TaskEventKind.EXIT:
                    assert event.exit_code == 0
                    break
    finally:
        await stream.aclose()
        await runtime.delete(cid)
        await runtime.close()


async def test_a_second_instance_adopts_the_running_containerd(managed: ManagedContainerd) -> None:
    pid = managed.pid
    other = ManagedContainerd(managed.base_dir)
    socket = await other.start()
    assert other.adopted and other.pid == pid and socket == managed.socket
    # Stopping through the adopter stops the shared daemon; the fixture's stop is then a no-op.
    await other.stop()
    assert pid is not None and not _alive(pid)
    managed.pid = None


async def test_a_stale_pid_file_is_ignored(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="sched-mc-")) / "containerd"
    base.mkdir(parents=True)
    (base / "containerd.pid").write_text(f"{os.getpid()}\n")  # alive, but not a containerd of ours
    daemon = ManagedContainerd(base)
    try:
        await daemon.start()
        assert not daemon.adopted and daemon.pid != os.getpid()
    finally:
        await daemon.stop()
        shutil.rmtree(base.parent, ignore_errors=True)


def test_config_and_socket_path_limits(tmp_path: Path) -> None:
    text = render_config(Path("/data/containerd"))
    assert 'address = "/data/containerd/containerd.sock"' in text
    assert 'disabled_plugins = ["io.containerd.grpc.v1.cri"]' in text
    assert 'root = "/data/containerd/root"' in text
    with pytest.raises(InvalidArgument) as err:
        ManagedContainerd(Path("/" + "d" * 120))
    assert err.value.details["field"] == "data_dir"


async def test_a_binary_that_does_not_serve_is_reported(tmp_path: Path) -> None:
    daemon = ManagedContainerd(tmp_path / "c", binary="/bin/false", start_timeout=3)
    with pytest.raises(Unavailable, match="exited during start-up"):
        await daemon.start()
    missing = ManagedContainerd(tmp_path / "d", binary=str(tmp_path / "no-such-binary"))
    with pytest.raises(Unavailable, match="cannot run containerd"):
        await missing.start()
