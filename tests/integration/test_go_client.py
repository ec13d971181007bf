"""The Go example client compiles from this checkout (GOPATH mode, Debian's Go packages, the
checked-in stubs) and does what it says against a real daemon: create, wait via WatchEvents,
delete."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.support.daemon import ROOT, DaemonProcess, running_daemon

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, image_archives: dict[str, Path]) -> Iterator[DaemonProcess]:
    toolbox = [p for name, p in image_archives.items() if "toolbox" in name]
    with running_daemon(tmp_path_factory.mktemp("goclient"), toolbox) as process:
        yield process


def test_the_go_example_creates_waits_for_running_and_deletes(daemon: DaemonProcess, tmp_path: Path) -> None:
    assert shutil.which("go"), "golang-go is not installed: run scripts/install-system.sh"
    binary = tmp_path / "example"
    built = subprocess.run(
        [str(ROOT / "scripts" / "build_go_example.sh"), str(binary)], capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stdout + built.stderr

    ran = subprocess.run(
        [str(binary), "-address", daemon.address, "-name", "go-demo", "-timeout", "150s"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0].startswith("watching events of go-demo from sequence ")
    assert "created go-demo: ENVIRONMENT_STATUS_PENDING" in lines
    assert any("EVENT_TYPE_ENVIRONMENT_RUNNING" in line for line in lines)
    assert "go-demo is ENVIRONMENT_STATUS_RUNNING with 1 container(s)" in lines
    assert lines[-1] == "go-demo deleted"
    with daemon.channel() as channel, pytest.raises(grpc.RpcError) as gone:
        pb_grpc.SchedulerServiceStub(channel).GetEnvironment(pb.GetEnvironmentRequest(name="go-demo"), timeout=10)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND

    # A failure prints the machine-readable reason: the name is now free, a bad one is not.
    failed = subprocess.run(
        [str(binary), "-address", daemon.address, "-name", "Bad_Name", "-timeout", "30s"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 1
    assert "InvalidArgument" in failed.stderr and "reason INVALID_ARGUMENT, domain scheduler.v1" in failed.stderr
