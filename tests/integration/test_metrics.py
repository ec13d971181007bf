"""GetEnvironmentMetrics reads real cgroup numbers: a CPU and memory burner against an idle container."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import json_format

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.integration.test_environments import wait_gone, wait_status
from tests.support.daemon import DaemonProcess, running_daemon

pytestmark = pytest.mark.integration

TOOLBOX = "docker.io/schedulerdemo/toolbox:1.0"
MEMORY_LIMIT = 256 * 1024 * 1024
PIDS_LIMIT = 64
HELD = 50_000_000
# Two busy loops (so a contended 2-core host still gives the container more than half a core)
# and a 50 MB string held by the shell. The trap makes a stop quick.
BURNER = (
    'sh -c \'trap "exit 0" TERM; x=$(head -c 50000000 /dev/zero | tr "\\000" a);'
    " (while :; do :; done) & while :; do :; done'"
)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, image_archives: dict[str, Path]) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("metrics"), [image_archives[TOOLBOX]]) as process:
        yield process


@pytest.fixture(scope="module")
def stub(daemon: DaemonProcess) -> Iterator[pb_grpc.SchedulerServiceStub]:
    with daemon.channel() as channel:
        yield pb_grpc.SchedulerServiceStub(channel)


def _sample(stub: pb_grpc.SchedulerServiceStub, name: str) -> pb.ContainerMetrics:
    request = pb.GetEnvironmentMetricsRequest(name=name)
    request.window.FromSeconds(2)
    reply = stub.GetEnvironmentMetrics(request, timeout=30)
    assert reply.name == name and len(reply.containers) == 1, reply
    return reply.containers[0]


def test_a_burner_shows_cpu_memory_limits_and_pids_an_idle_container_does_not(
    stub: pb_grpc.SchedulerServiceStub,
) -> None:
    burner = json_format.ParseDict(
        {
            "name": "burn",
            "spec": {
                "stack": "toolbox",
                "parameters": {"command": BURNER},
                "services": {"toolbox": {"resources": {"memoryBytes": str(MEMORY_LIMIT), "pids": PIDS_LIMIT}}},
            },
        },
        pb.CreateEnvironmentRequest(),
    )
    stub.CreateEnvironment(burner, timeout=10)
    stub.CreateEnvironment(
        pb.CreateEnvironmentRequest(name="idle", spec=pb.EnvironmentSpecification(stack="toolbox")), timeout=10
    )
    for name in ("burn", "idle"):
        env = wait_status(stub, name, {pb.ENVIRONMENT_STATUS_RUNNING, pb.ENVIRONMENT_STATUS_FAILED}, timeout=120)
        assert env.status == pb.ENVIRONMENT_STATUS_RUNNING, env

    # The string takes a moment to build; sample until it is held (bounded).
    deadline = time.monotonic() + 90
    hot = _sample(stub, "burn")
    idle = _sample(stub, "idle")
    while hot.memory_usage_bytes < idle.memory_usage_bytes + HELD * 0.8 and time.monotonic() < deadline:
        time.sleep(0.5)
        hot, idle = _sample(stub, "burn"), _sample(stub, "idle")
    print(
        f"burner: {hot.cpu_cores:.2f} cores, {hot.memory_usage_bytes / 2**20:.1f} MiB, {hot.pids_current} pids; "
        f"idle: {idle.cpu_cores:.2f} cores, {idle.memory_usage_bytes / 2**20:.1f} MiB, {idle.pids_current} pids"
    )
    assert hot.memory_usage_bytes >= idle.memory_usage_bytes + HELD * 0.8, (hot, idle)
    assert hot.memory_usage_bytes < MEMORY_LIMIT
    assert hot.memory_limit_bytes == MEMORY_LIMIT and hot.pids_limit == PIDS_LIMIT
    assert idle.memory_limit_bytes != MEMORY_LIMIT
    assert hot.cpu_cores > 0.5, hot
    assert idle.cpu_cores < 0.2, idle
    assert hot.pids_current >= 2 and idle.pids_current >= 1
    assert hot.service == "toolbox" and hot.replica == 0 and hot.container_id and hot.time.seconds > 0

    # CPU time is cumulative and keeps growing for the burner.
    later = _sample(stub, "burn")
    assert later.cpu_usage_ns - hot.cpu_usage_ns >= 1_000_000_000 * 0.5 * 2, (hot.cpu_usage_ns, later.cpu_usage_ns)

    for name in ("burn", "idle"):
        stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name=name), timeout=10)
    for name in ("burn", "idle"):
        wait_gone(stub, name)
