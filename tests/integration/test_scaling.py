"""Replica balancing: three backends behind the service address all serve, and scaling drops nothing."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import json_format

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.integration.test_environments import wait_gone, wait_status
from tests.integration.test_updates import RUNNING, Load, _frontend_url, _update, _wait_generation
from tests.support.daemon import DaemonProcess, running_daemon

pytestmark = pytest.mark.integration

REPLICAS = {"backend-0", "backend-1", "backend-2"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, image_archives: dict[str, Path]) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("scaling"), image_archives.values()) as process:
        yield process


@pytest.fixture(scope="module")
def stub(daemon: DaemonProcess) -> Iterator[pb_grpc.SchedulerServiceStub]:
    with daemon.channel() as channel:
        yield pb_grpc.SchedulerServiceStub(channel)


def served_by(bodies: list[str]) -> Counter[str]:
    return Counter(json.loads(body)["served_by"] for body in bodies)


def test_three_backend_replicas_all_serve_under_load_then_scale_back_to_one(
    stub: pb_grpc.SchedulerServiceStub,
) -> None:
    stub.CreateEnvironment(
        pb.CreateEnvironmentRequest(name="spread", spec=pb.EnvironmentSpecification(stack="web-postgres")),
        timeout=10,
    )
    env = wait_status(stub, "spread", RUNNING)
    assert env.status == pb.ENVIRONMENT_STATUS_RUNNING, env
    url = _frontend_url(env, "/api/")
    spec = json_format.MessageToDict(env.spec)

    def scaled(count: int) -> dict[str, object]:
        services = spec.get("services", {})
        return {**spec, "services": {**services, "backend": {**services.get("backend", {}), "replicas": count}}}

    with Load(url, interval=0.01) as load:
        time.sleep(1)
        before = served_by(load.bodies)
        _update(stub, "spread", scaled(3))
        env = _wait_generation(stub, "spread", env.generation + 1)
        backends = [c for c in env.containers if c.service == "backend"]
        assert len(backends) == 3 and all(c.state == pb.CONTAINER_STATE_RUNNING for c in backends), backends
        assert len({c.ip for c in backends}) == 3

        # Bounded: every replica answers within a few dozen requests unless balancing is broken.
        mark = len(load.bodies)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            len(load.bodies) - mark < 150 or set(served_by(load.bodies[mark:])) != REPLICAS
        ):
            time.sleep(0.2)
        spread = served_by(load.bodies[mark:])

        _update(stub, "spread", scaled(1))
        env = _wait_generation(stub, "spread", env.generation + 1)
        mark = len(load.bodies)
        time.sleep(2)
        after = served_by(load.bodies[mark:])
    print(f"scale 1->3->1: {load.total} requests {dict(load.results)}; at 3 replicas {dict(spread)}; after {after}")

    assert load.failures == [], load.failures[:5]
    assert load.total > 150
    assert set(before) == {"backend-0"}, before
    assert set(spread) == REPLICAS, spread
    # Random balancing: each of three replicas gets far more than a tenth of 150+ requests.
    total = sum(spread.values())
    assert all(count >= total / 10 for count in spread.values()), spread
    assert len([c for c in env.containers if c.service == "backend"]) == 1
    assert len(after) == 1 and sum(after.values()) > 10, after

    stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="spread"), timeout=10)
    wait_gone(stub, "spread")
