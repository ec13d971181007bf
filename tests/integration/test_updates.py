"""Living environments: zero-downtime updates, rollback, scaling, under a continuous HTTP loop."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.integration.test_environments import wait_status
from tests.support.daemon import DaemonProcess, running_daemon

pytestmark = pytest.mark.integration

RUNNING = {pb.ENVIRONMENT_STATUS_RUNNING, pb.ENVIRONMENT_STATUS_FAILED, pb.ENVIRONMENT_STATUS_DEGRADED}


@dataclass
class Load:
    """A bounded loop of HTTP requests against one URL, counting outcomes."""

    url: str
    interval: float = 0.02
    max_seconds: float = 240
    results: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    bodies: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url, timeout=5) as reply:
                    body = reply.read().decode()
                    self.results[str(reply.status)] += 1
                    self.bodies.append(body)
            except urllib.error.HTTPError as err:
                self.results[str(err.code)] += 1
                self.failures.append(f"HTTP {err.code}: {err.read()[:200]!r}")
            except OSError as err:
                self.results["error"] += 1
                self.failures.append(repr(err))
            time.sleep(self.interval)

    @property
    def total(self) -> int:
        return sum(self.results.values())


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, image_archives: dict[str, Path]) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("updates"), image_archives.values()) as process:
        yield process


@pytest.fixture(scope="module")
def stub(daemon: DaemonProcess) -> Iterator[pb_grpc.SchedulerServiceStub]:
    with daemon.channel() as channel:
        yield pb_grpc.SchedulerServiceStub(channel)


def _update(
    stub: pb_grpc.SchedulerServiceStub, name: str, spec: dict[str, object], **extra: object
) -> pb.UpdateEnvironmentResponse:
    request = json_format.ParseDict({"name": name, "spec": spec, **extra}, pb.UpdateEnvironmentRequest())
    return stub.UpdateEnvironment(request, timeout=30)


def _wait_generation(
    stub: pb_grpc.SchedulerServiceStub, name: str, generation: int, timeout: float = 180
) -> pb.Environment:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        env = stub.GetEnvironment(pb.GetEnvironmentRequest(name=name), timeout=10)
        if env.observed_generation >= generation and env.status in RUNNING:
            return env
        time.sleep(0.2)
    raise AssertionError(f"{name} did not reach generation {generation}: {env}")


def _frontend_url(env: pb.Environment, path: str = "/") -> str:
    endpoint = next(e for e in env.endpoints if e.service == "frontend")
    return f"http://{endpoint.host_ip}:{endpoint.host_port}{path}"


def test_backend_and_frontend_updates_drop_no_request_and_keep_data(
    daemon: DaemonProcess, stub: pb_grpc.SchedulerServiceStub
) -> None:
    stub.CreateEnvironment(
        pb.CreateEnvironmentRequest(name="live", spec=pb.EnvironmentSpecification(stack="web-postgres")), timeout=10
    )
    env = wait_status(stub, "live", RUNNING)
    assert env.status == pb.ENVIRONMENT_STATUS_RUNNING, env
    with urllib.request.urlopen(_frontend_url(env, "/api/items?value=before-update"), data=b"", timeout=10) as reply:
        assert reply.status == 201

    events: list[pb.Event] = []

    def watch() -> None:
        with daemon.channel() as channel:
            stream = pb_grpc.SchedulerServiceStub(channel).WatchEvents(pb.WatchEventsRequest(name="live"), timeout=200)
            try:
                for event in stream:
                    events.append(event)
                    if event.type in (pb.EVENT_TYPE_ENVIRONMENT_RUNNING, pb.EVENT_TYPE_ENVIRONMENT_ROLLED_BACK):
                        stream.cancel()
            except grpc.RpcError:
                pass

    # Dry run: the plan, and nothing changes.
    plan = _update(
        stub, "live", {"stack": "web-postgres", "services": {"backend": {"env": {"GREETING": "v2"}}}}, validateOnly=True
    )
    actions = {c.service: c.action for c in plan.plan}
    assert actions == {
        "postgres": pb.CHANGE_ACTION_KEEP,
        "backend": pb.CHANGE_ACTION_REPLACE,
        "frontend": pb.CHANGE_ACTION_KEEP,
    }
    assert stub.GetEnvironment(pb.GetEnvironmentRequest(name="live"), timeout=10).generation == 1

    backend_before = {c.container_id for c in env.containers if c.service == "backend"}
    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.3)
    with Load(_frontend_url(env)) as load:
        time.sleep(1)
        reply = _update(stub, "live", {"stack": "web-postgres", "services": {"backend": {"env": {"GREETING": "v2"}}}})
        assert reply.environment.generation == 2
        env = _wait_generation(stub, "live", 2)
        time.sleep(1)
    watcher.join(10)
    print(f"backend update: {load.total} requests, {dict(load.results)}")
    assert load.failures == [], load.failures[:5]
    assert load.total > 20
    assert env.status == pb.ENVIRONMENT_STATUS_RUNNING
    backend_after = {c.container_id for c in env.containers if c.service == "backend"}
    assert backend_after and not backend_after & backend_before
    kinds = [e.type for e in events]
    assert kinds.index(pb.EVENT_TYPE_ENVIRONMENT_UPDATED) < kinds.index(pb.EVENT_TYPE_CONTAINER_CREATED)
    assert kinds.index(pb.EVENT_TYPE_CONTAINER_HEALTHY) < kinds.index(pb.EVENT_TYPE_CONTAINER_REMOVED)
    assert kinds[-1] == pb.EVENT_TYPE_ENVIRONMENT_RUNNING
    assert [e.sequence for e in events] == sorted(e.sequence for e in events)

    # The frontend itself: its published port moves to the new container, and a log follow that
    # started on the old container moves on to the new one.
    port_before = next(e.host_port for e in env.endpoints if e.service == "frontend")
    frontend_before = {c.container_id for c in env.containers if c.service == "frontend"}
    followed: list[pb.LogLine] = []
    follow_ready = threading.Event()

    def follow() -> None:
        with daemon.channel() as channel:
            stream = pb_grpc.SchedulerServiceStub(channel).GetEnvironmentLogs(
                pb.GetEnvironmentLogsRequest(name="live", services=["frontend"], tail=1, follow=True), timeout=120
            )
            follow_ready.set()
            try:
                for line in stream:
                    followed.append(line)
                    if line.container_id not in frontend_before and len(followed) > 5:
                        stream.cancel()
            except grpc.RpcError:
                pass

    follower = threading.Thread(target=follow)
    follower.start()
    follow_ready.wait(10)
    with Load(_frontend_url(env)) as load:
        time.sleep(1)
        _update(
            stub,
            "live",
            {
                "stack": "web-postgres",
                "services": {"backend": {"env": {"GREETING": "v2"}}, "frontend": {"env": {"V": "2"}}},
            },
        )
        env = _wait_generation(stub, "live", 3)
        time.sleep(1)
    print(f"frontend update: {load.total} requests, {dict(load.results)}")
    assert load.failures == [], load.failures[:5]
    assert next(e.host_port for e in env.endpoints if e.service == "frontend") == port_before
    follower.join(30)
    sources = {line.container_id for line in followed}
    assert sources & frontend_before and sources - frontend_before, sources
    assert all(line.time.seconds > 0 for line in followed)

    with urllib.request.urlopen(_frontend_url(env, "/api/items"), timeout=10) as reply:
        assert "before-update" in reply.read().decode()

    history = stub.GetEnvironmentHistory(pb.GetEnvironmentHistoryRequest(name="live"), timeout=10)
    assert [h.action for h in history.entries] == ["create", "update", "update"]


def test_a_broken_update_rolls_back_while_the_old_containers_serve(stub: pb_grpc.SchedulerServiceStub) -> None:
    env = stub.GetEnvironment(pb.GetEnvironmentRequest(name="live"), timeout=10)
    spec = json_format.MessageToDict(env.spec)
    generation = env.generation
    broken = {
        **spec,
        "services": {
            **spec.get("services", {}),
            "backend": {"healthCheck": {"http": {"port": 8080, "path": "/nope"}, "interval": "0.2s", "retries": 2}},
        },
    }
    with Load(_frontend_url(env)) as load:
        _update(stub, "live", broken)
        env = _wait_generation(stub, "live", generation + 2, timeout=120)
    print(f"broken update: {load.total} requests, {dict(load.results)}")
    assert load.failures == [], load.failures[:5]
    assert env.status == pb.ENVIRONMENT_STATUS_RUNNING
    rolled = next(c for c in env.conditions if c.type == "RolledBack")
    assert rolled.status == pb.CONDITION_STATUS_TRUE and rolled.service == "backend" and "404" in rolled.message
    assert not any(s.config.health_check.http.path == "/nope" for s in env.services)


def test_scaling_the_backend_spreads_traffic_and_drops_nothing(stub: pb_grpc.SchedulerServiceStub) -> None:
    env = stub.GetEnvironment(pb.GetEnvironmentRequest(name="live"), timeout=10)
    spec = json_format.MessageToDict(env.spec)
    services = spec.get("services", {})

    def scaled(count: int) -> dict[str, object]:
        return {**spec, "services": {**services, "backend": {**services.get("backend", {}), "replicas": count}}}

    with Load(_frontend_url(env)) as load:
        _update(stub, "live", scaled(3))
        env = _wait_generation(stub, "live", env.generation + 1)
        assert len([c for c in env.containers if c.service == "backend"]) == 3
        backends = [c.ip for c in env.containers if c.service == "backend"]
        time.sleep(2)
        _update(stub, "live", scaled(1))
        env = _wait_generation(stub, "live", env.generation + 1)
    print(f"scale 1->3->1: {load.total} requests, {dict(load.results)}")
    assert load.failures == [], load.failures[:5]
    assert len([c for c in env.containers if c.service == "backend"]) == 1
    assert len(set(backends)) == 3
