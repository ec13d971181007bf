"""Every operation records its steps with their times, readable by ListOperations and `env history --steps`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import json_format

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.integration.test_client_cli import cli
from tests.integration.test_environments import wait_gone, wait_status
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.images import TOOLBOX

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, image_archives: dict[str, Path]) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("timeline"), [image_archives[TOOLBOX]]) as process:
        yield process


def operations(stub: pb_grpc.SchedulerServiceStub, name: str, count: int) -> list[pb.Operation]:
    """The operations of ``name`` once ``count`` of them have ended (bounded wait)."""
    deadline = time.monotonic() + 60
    while True:
        found = list(stub.ListOperations(pb.ListOperationsRequest(name=name), timeout=10).operations)
        if sum(op.outcome != "" for op in found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_deploy_update_and_delete_record_their_steps_in_order(daemon: DaemonProcess) -> None:
    spec = {
        "stack": "toolbox",
        "services": {
            "toolbox": {"healthCheck": {"exec": {"command": ["true"]}, "interval": "0.5s"}, "env": {"V": "1"}}
        },
    }
    with daemon.channel() as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        stub.CreateEnvironment(
            json_format.ParseDict({"name": "tl", "spec": spec}, pb.CreateEnvironmentRequest()), timeout=10
        )
        wait_status(stub, "tl", {pb.ENVIRONMENT_STATUS_RUNNING}, timeout=120)
        spec["services"]["toolbox"]["env"] = {"V": "2"}  # type: ignore[index]
        stub.UpdateEnvironment(
            json_format.ParseDict({"name": "tl", "spec": spec}, pb.UpdateEnvironmentRequest()), timeout=10
        )
        found = operations(stub, "tl", 2)
        assert [op.kind for op in found] == ["deploy", "update"], found
        deploy, update = found
        assert deploy.outcome == "succeeded" and update.outcome == "succeeded", found

        steps = [s.step for s in deploy.steps]
        for earlier, later in [("pull", "create"), ("create", "start"), ("start", "probe"), ("probe", "healthy")]:
            assert steps.index(earlier) < steps.index(later), steps
        assert steps.index("healthy") < steps.index("traffic"), steps
        assert "passed" in next(s.detail for s in deploy.steps if s.step == "probe")
        times = [s.time.ToDatetime() for s in deploy.steps]
        assert times == sorted(times)
        assert deploy.start_time.ToDatetime() <= times[0] and times[-1] <= deploy.end_time.ToDatetime()

        update_steps = [s.step for s in update.steps]
        assert update_steps.index("healthy") < update_steps.index("traffic") < update_steps.index("remove")
        assert "moved to" in next(s.detail for s in update.steps if s.step == "traffic")

        shown = cli(daemon, "env", "history", "tl", "--steps")
        assert shown.returncode == 0, shown.stderr
        assert "deploy succeeded" in shown.stdout and "update succeeded" in shown.stdout, shown.stdout
        assert "probe" in shown.stdout and "traffic" in shown.stdout

        stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="tl"), timeout=10)
        wait_gone(stub, "tl")
        after = operations(stub, "tl", 3)
        assert after[-1].kind == "delete" and after[-1].outcome == "succeeded", after[-1]
        assert "remove" in [s.step for s in after[-1].steps]
