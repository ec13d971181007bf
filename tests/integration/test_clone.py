"""Clone a running api-postgres environment while a client keeps writing rows through its backend.

The clone must hold an exact prefix of the rows written (a consistent snapshot: no gap, no
duplicate, everything acknowledged before the call), the source must answer every request
meanwhile, and the clone must run with its own database password. Then the source sleeps and is
cloned asleep. The daemon keeps its volumes on ``volumes.filesystem: xfs-image`` (a loop-mounted
XFS with reflinks), so templates' seeds and clones share extents with their sources; the mount
and its loop device are gone after the module, whatever its outcome.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from scheduler.volumes.copy import reflinks
from scheduler.volumes.filesystem import backing_file, mounted_device
from tests.integration.test_client_cli import cli
from tests.integration.test_env_backup import backend_url
from tests.integration.test_environments import http_get, wait_gone, wait_status
from tests.support.daemon import VENV_BIN, DaemonProcess, running_daemon
from tests.support.images import BACKEND, POSTGRES
from tests.support.processes import loops_under, mounts_under, unmount_under, wait_loops_gone

pytestmark = pytest.mark.integration

WRITER_DEADLINE = 120.0
"""The writer stops by itself after this long, whatever happens to the test."""


IMAGE_SIZE = 2 * 1024**3


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, image_archives: dict[str, Path]) -> Iterator[DaemonProcess]:
    archives = [image_archives[POSTGRES], image_archives[BACKEND]]
    tmp = tmp_path_factory.mktemp("clone")
    config = {"volumes": {"filesystem": "xfs-image", "image_size_bytes": IMAGE_SIZE}}
    try:
        with running_daemon(tmp, archives, config) as process:
            yield process
    finally:
        # Whatever happened: the daemon leaves its volume filesystem mounted by design.
        unmount_under(tmp)
    assert not mounts_under(tmp) and not wait_loops_gone(tmp), (mounts_under(tmp), loops_under(tmp))


def _shared_extents(path: Path) -> bool:
    """Whether a file's extents are shared with another file (a reflink), as FIEMAP reports them."""
    report = subprocess.run(["filefrag", "-v", str(path)], capture_output=True, text=True, timeout=30, check=True)
    return "shared" in report.stdout


def test_volumes_live_on_a_reflink_filesystem_image(daemon: DaemonProcess) -> None:
    mount = daemon.data_dir / "volumefs"
    device = mounted_device(mount)
    assert device is not None and device.startswith("/dev/loop"), device
    assert backing_file(device) == (daemon.data_dir / "volumes.xfs").resolve()
    assert os.stat(daemon.data_dir / "volumes.xfs").st_size == IMAGE_SIZE
    assert reflinks(mount)
    record = json.loads((daemon.data_dir / "volumefs.json").read_text())
    assert record["filesystem"] == "xfs-image" and record["mount"] == str(mount.resolve()), record
    # The administrator's way out refuses while the daemon serves the data dir.
    released = subprocess.run(
        [str(VENV_BIN / "scheduler"), "admin", "release-volumes", "--config", str(daemon.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert released.returncode != 0 and "stop it first" in released.stderr, released
    assert mounted_device(mount) == device


@dataclass
class Writer:
    """Adds rows 0, 1, 2, ... one at a time through the backend, recording what was acknowledged."""

    url: str
    acknowledged: list[int] = field(default_factory=list)
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    slowest: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        deadline = time.monotonic() + WRITER_DEADLINE
        value = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.sent = value + 1
            query = urllib.parse.urlencode({"value": str(value)})
            started = time.monotonic()
            try:
                request = urllib.request.Request(f"{self.url}/items?{query}", method="POST")
                with urllib.request.urlopen(request, timeout=30) as reply:
                    if reply.status != 201:
                        self.failures.append(f"{value}: HTTP {reply.status}")
            except (urllib.error.URLError, OSError) as err:
                self.failures.append(f"{value}: {err}")
            else:
                self.acknowledged.append(value)
            self.slowest = max(self.slowest, time.monotonic() - started)
            value += 1

    def wait_for(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acknowledged) < count and not self.failures and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.acknowledged) >= count, (len(self.acknowledged), self.failures)


def _postgres_password(env: pb.Environment) -> str:
    """The password the environment's PostgreSQL container runs with (from its process' environment)."""
    pid = next(c.pid for c in env.containers if c.service == "postgres")
    variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(v.split(b"=", 1)[1].decode() for v in variables if v.startswith(b"POSTGRES_PASSWORD="))


def _rows(env: pb.Environment) -> list[int]:
    status, body = http_get(backend_url(env) + "/items", timeout=30)
    assert status == 200, body
    return [int(row["value"]) for row in json.loads(body)]


def test_clone_while_writing_copies_a_consistent_prefix(daemon: DaemonProcess) -> None:
    with daemon.channel() as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        spec = pb.EnvironmentSpecification(stack="api-postgres", labels={"tier": "staging"})
        stub.CreateEnvironment(pb.CreateEnvironmentRequest(name="staging", spec=spec), timeout=10)
        source = wait_status(stub, "staging", {pb.ENVIRONMENT_STATUS_RUNNING, pb.ENVIRONMENT_STATUS_FAILED}, 240)
        assert source.status == pb.ENVIRONMENT_STATUS_RUNNING, source

        writer = Writer(backend_url(source))
        thread = threading.Thread(target=writer.run, daemon=True)
        thread.start()
        try:
            writer.wait_for(10)
            acknowledged_before = len(writer.acknowledged)
            request = pb.CloneEnvironmentRequest(
                source="staging",
                name="preview",
                spec=pb.EnvironmentSpecification(labels={"tier": "preview"}),
                update_mask=field_mask_pb2.FieldMask(paths=["labels.tier"]),
                request_id="clone-preview-1",
            )
            clone = stub.CloneEnvironment(request, timeout=120)
            sent_by_return = writer.sent
            assert clone.status == pb.ENVIRONMENT_STATUS_PENDING and clone.spec.labels["tier"] == "preview", clone
            # A retry of the same request is answered with the same environment.
            again = stub.CloneEnvironment(request, timeout=30)
            assert again.uid == clone.uid
            writer.wait_for(acknowledged_before + 20)
        finally:
            writer.stop.set()
            thread.join(timeout=60)
        assert not writer.failures, writer.failures[:5]

        preview = wait_status(stub, "preview", {pb.ENVIRONMENT_STATUS_RUNNING, pb.ENVIRONMENT_STATUS_FAILED}, 240)
        assert preview.status == pb.ENVIRONMENT_STATUS_RUNNING, preview.conditions
        copied = _rows(preview)
        # An exact prefix of the sequence written: consistent, nothing acknowledged before the call lost.
        assert copied == list(range(len(copied))), copied
        assert acknowledged_before <= len(copied) <= sent_by_return, (acknowledged_before, len(copied), sent_by_return)
        # The source kept every row, and the two now diverge.
        assert _rows(source)[: len(writer.acknowledged)] == writer.acknowledged
        assert len(_rows(source)) > len(copied)
        # The clone runs with a password of its own, and its backend reaches the database with it.
        assert _postgres_password(preview) != _postgres_password(source)
        history = stub.GetEnvironmentHistory(pb.GetEnvironmentHistoryRequest(name="staging"), timeout=10).entries
        cloned = next(h for h in history if h.action == "cloned")
        print(f"clone: source paused ({cloned.detail}); slowest write meanwhile {writer.slowest:.3f}s")
        assert not list((daemon.data_dir / "volumefs" / "volumes").glob(".scratch-*")), "a staging copy was left behind"

        # Asleep, the source is copied in one pass without waking it, as it was when it stopped.
        stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="preview"), timeout=10)
        stub.StopEnvironment(pb.StopEnvironmentRequest(name="staging"), timeout=10)
        wait_status(stub, "staging", {pb.ENVIRONMENT_STATUS_STOPPED}, 120)
        before_sleep = len(writer.acknowledged)
        stub.CloneEnvironment(pb.CloneEnvironmentRequest(source="staging", name="from-asleep"), timeout=120)
        asleep = stub.GetEnvironment(pb.GetEnvironmentRequest(name="staging"), timeout=10)
        assert asleep.status == pb.ENVIRONMENT_STATUS_STOPPED, asleep
        assert {c.state for c in asleep.containers} == {pb.CONTAINER_STATE_STOPPED}, asleep.containers
        copy = wait_status(stub, "from-asleep", {pb.ENVIRONMENT_STATUS_RUNNING, pb.ENVIRONMENT_STATUS_FAILED}, 240)
        assert copy.status == pb.ENVIRONMENT_STATUS_RUNNING, copy.conditions
        assert _rows(copy)[:before_sleep] == writer.acknowledged and len(_rows(copy)) <= writer.sent
        history = stub.GetEnvironmentHistory(pb.GetEnvironmentHistoryRequest(name="staging"), timeout=10).entries
        assert [h.detail for h in history if h.action == "cloned"][-1] == "to from-asleep; paused 0 ms", history
        # Its files share their extents with the source's (reflinks), not copies of them.
        copied_files = [p for p in (daemon.data_dir / "volumefs" / "volumes" / "from-asleep").rglob("*") if p.is_file()]
        assert any(_shared_extents(p) for p in copied_files if p.stat().st_size >= 8192), copied_files[:5]


def test_clone_refuses_bad_sources_and_names(daemon: DaemonProcess) -> None:
    with daemon.channel() as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        missing = cli(daemon, "env", "clone", "no-such-env", "copy")
        assert missing.returncode != 0 and "NOT_FOUND" in missing.stderr, missing
        assert "no-such-env" in missing.stderr, missing.stderr

        stub.CreateEnvironment(
            pb.CreateEnvironmentRequest(name="young", spec=pb.EnvironmentSpecification(stack="api-postgres")),
            timeout=10,
        )
        with pytest.raises(grpc.RpcError) as not_running:
            stub.CloneEnvironment(pb.CloneEnvironmentRequest(source="young", name="young-copy"), timeout=30)
        assert not_running.value.code() == grpc.StatusCode.FAILED_PRECONDITION, not_running.value
        assert "young" in not_running.value.details() and "RUNNING" in not_running.value.details()
        young = wait_status(stub, "young", {pb.ENVIRONMENT_STATUS_RUNNING, pb.ENVIRONMENT_STATUS_FAILED}, 240)
        assert young.status == pb.ENVIRONMENT_STATUS_RUNNING, young

        with pytest.raises(grpc.RpcError) as taken:
            stub.CloneEnvironment(pb.CloneEnvironmentRequest(source="young", name="young"), timeout=30)
        assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS and "young" in taken.value.details()
        with pytest.raises(grpc.RpcError) as stack_change:
            stub.CloneEnvironment(
                pb.CloneEnvironmentRequest(
                    source="young",
                    name="young-web",
                    spec=pb.EnvironmentSpecification(stack="web-postgres"),
                    update_mask=field_mask_pb2.FieldMask(paths=["stack"]),
                ),
                timeout=30,
            )
        assert stack_change.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "spec.stack" in stack_change.value.details()
        checked = stub.CloneEnvironment(
            pb.CloneEnvironmentRequest(source="young", name="young-copy", validate_only=True), timeout=30
        )
        assert checked.name == "young-copy" and checked.spec.stack == "api-postgres"
        with pytest.raises(grpc.RpcError) as nothing_made:
            stub.GetEnvironment(pb.GetEnvironmentRequest(name="young-copy"), timeout=10)
        assert nothing_made.value.code() == grpc.StatusCode.NOT_FOUND
        assert not (daemon.data_dir / "volumefs" / "volumes" / "young-copy").exists()

        stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="young"), timeout=10)
        wait_gone(stub, "young")
