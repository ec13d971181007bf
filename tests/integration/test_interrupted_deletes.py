"""Deletes interrupted by a daemon restart finish, and leave no container, task or shim behind."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.integration.test_environments import count_resources, daemon_settings
from tests.support.daemon import DaemonProcess, start_daemon
from tests.support.images import TOOLBOX

pytestmark = pytest.mark.integration

COUNT = 12
DEADLINE = 180.0


def _statuses(daemon: DaemonProcess) -> dict[str, int]:
    with daemon.channel() as channel:
        reply = pb_grpc.SchedulerServiceStub(channel).ListEnvironments(
            pb.ListEnvironmentsRequest(page_size=500), timeout=10
        )
    return {e.name: e.status for e in reply.environments}


def test_a_restart_during_many_deletes_leaves_no_container_task_or_shim(
    tmp_path: Path, image_archives: dict[str, Path]
) -> None:
    daemon = start_daemon(tmp_path, {"images": {"preload": [str(image_archives[TOOLBOX])]}})
    settings = daemon_settings(daemon)
    namespace, instance = settings["containerd"]["namespace"], settings["network"]["instance"]
    before = count_resources(daemon, namespace, instance)
    names = [f"gone-{i}" for i in range(COUNT)]
    deadline = time.monotonic() + DEADLINE
    try:
        with daemon.channel() as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            for name in names:
                stub.CreateEnvironment(
                    pb.CreateEnvironmentRequest(name=name, spec=pb.EnvironmentSpecification(stack="toolbox")),
                    timeout=30,
                )
        while time.monotonic() < deadline:
            statuses = _statuses(daemon)
            if all(statuses.get(n) == pb.ENVIRONMENT_STATUS_RUNNING for n in names):
                break
            time.sleep(0.3)
        assert all(s == pb.ENVIRONMENT_STATUS_RUNNING for s in _statuses(daemon).values())
        running = count_resources(daemon, namespace, instance)
        assert running["tasks"] == COUNT and running["shims"] >= COUNT, running

        # Every delete accepted at once, then the daemon is told to stop while they run.
        def delete(name: str) -> None:
            with daemon.channel() as channel:
                pb_grpc.SchedulerServiceStub(channel).DeleteEnvironment(
                    pb.DeleteEnvironmentRequest(name=name), timeout=30
                )

        with ThreadPoolExecutor(max_workers=COUNT) as pool:
            list(pool.map(delete, names))
        assert daemon.stop() == 0
        daemon = start_daemon(tmp_path, reuse_config=True)
        while time.monotonic() < deadline and _statuses(daemon):
            time.sleep(0.3)
        assert _statuses(daemon) == {}
        after = count_resources(daemon, namespace, instance)
        assert after == before, f"left behind: before {before}, after {after}"
    finally:
        daemon.delete_all_environments()
        assert daemon.stop() == 0
        daemon.cleanup()
