"""Environments end to end: a real daemon process, real containerd, CNI, iptables and images."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from scheduler.runtime.containerd.runtime import ContainerdRuntime
from tests.support.daemon import DaemonProcess, running_daemon, start_daemon
from tests.support.processes import processes_naming, shims_of

pytestmark = pytest.mark.integration

DEPLOY_TIMEOUT = 180


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, image_archives: dict[str, Path]) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("envs"), image_archives.values()) as process:
        yield process


@pytest.fixture(scope="module")
def stub(daemon: DaemonProcess) -> Iterator[pb_grpc.SchedulerServiceStub]:
    with daemon.channel() as channel:
        yield pb_grpc.SchedulerServiceStub(channel)


def wait_status(
    stub: pb_grpc.SchedulerServiceStub, name: str, wanted: set[int], timeout: float = DEPLOY_TIMEOUT
) -> pb.Environment:
    deadline = time.monotonic() + timeout
    env = stub.GetEnvironment(pb.GetEnvironmentRequest(name=name), timeout=10)
    while env.status not in wanted and time.monotonic() < deadline:
        time.sleep(0.2)
        env = stub.GetEnvironment(pb.GetEnvironmentRequest(name=name), timeout=10)
    assert env.status in wanted, f"{name} stayed {pb.EnvironmentStatus.Name(env.status)}: {env}"
    return env


def wait_gone(stub: pb_grpc.SchedulerServiceStub, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stub.GetEnvironment(pb.GetEnvironmentRequest(name=name), timeout=10)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} was not deleted within {timeout}s")


def http_get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def count_resources(daemon: DaemonProcess, namespace: str, instance: str) -> dict[str, int]:
    """Everything the daemon can leave on the host, counted from the outside."""

    async def containerd_counts() -> dict[str, int]:
        runtime = await ContainerdRuntime.connect(
            str(daemon.data_dir / "containerd" / "containerd.sock"),
            namespace=namespace,
            state_dir=daemon.data_dir / "probe",
        )
        try:
            return await runtime.resources()
        finally:
            await runtime.close()

    counts = asyncio.run(containerd_counts())
    counts.pop("snapshots", None)  # image layers stay: the images are kept for the next deploy
    netns_dir = daemon.data_dir / "network" / "netns"
    counts["netns"] = len(list(netns_dir.iterdir())) if netns_dir.exists() else 0
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    counts["links"] = sum(1 for line in links.splitlines() if f" {instance}-" in line or f"@{instance}" in line)
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    counts["env_rules"] = sum(1 for line in rules.splitlines() if line.startswith("-A") and f"{instance}-e" in line)
    volumes = daemon.data_dir / "volumes"
    counts["volumes"] = sum(1 for _ in volumes.rglob("*")) if volumes.exists() else 0
    # Processes too: containerd cannot see a shim or log writer that outlived what it knew of.
    socket = str(daemon.data_dir / "containerd" / "containerd.sock")
    counts["shims"] = len(shims_of(socket))
    counts["log_writers"] = len(processes_naming(f"dir {daemon.data_dir / 'logs'}/"))
    return counts


def daemon_settings(daemon: DaemonProcess) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(daemon.config_path.read_text())


def test_web_postgres_serves_a_page_from_the_database(
    daemon: DaemonProcess, stub: pb_grpc.SchedulerServiceStub
) -> None:
    settings = daemon_settings(daemon)
    namespace, instance = settings["containerd"]["namespace"], settings["network"]["instance"]
    before = count_resources(daemon, namespace, instance)

    events: list[pb.Event] = []
    watching = threading.Event()

    def watch() -> None:
        with daemon.channel() as channel:
            stream = pb_grpc.SchedulerServiceStub(channel).WatchEvents(
                pb.WatchEventsRequest(name="shop"), timeout=DEPLOY_TIMEOUT
            )
            watching.set()
            try:
                for event in stream:
                    events.append(event)
                    if event.type in (pb.EVENT_TYPE_ENVIRONMENT_RUNNING, pb.EVENT_TYPE_ENVIRONMENT_FAILED):
                        stream.cancel()
            except grpc.RpcError:
                pass

    watcher = threading.Thread(target=watch)
    watcher.start()
    watching.wait(10)
    time.sleep(0.2)

    created = daemon.grpcurl(
        "scheduler.v1.SchedulerService/CreateEnvironment",
        data='{"name": "shop", "spec": {"stack": "web-postgres"}}',
    )
    assert created.returncode == 0, created.stderr
    reply = json.loads(created.stdout)
    assert reply["name"] == "shop" and reply["status"] == "ENVIRONMENT_STATUS_PENDING"

    env = wait_status(stub, "shop", {pb.ENVIRONMENT_STATUS_RUNNING, pb.ENVIRONMENT_STATUS_FAILED})
    assert env.status == pb.ENVIRONMENT_STATUS_RUNNING, env
    watcher.join(10)

    # The secret never leaves the daemon.
    postgres = next(s for s in env.services if s.name == "postgres")
    assert postgres.config.env["POSTGRES_PASSWORD"] == "<redacted>"
    assert "redacted" in next(s for s in env.services if s.name == "backend").config.env["DATABASE_URL"]

    endpoint = next(e for e in env.endpoints if e.service == "frontend")
    assert endpoint.host_ip == "127.0.0.1" and endpoint.container_port == 80
    status, page = http_get(f"http://127.0.0.1:{endpoint.host_port}/")
    assert status == 200, page
    assert "hello from the backend" in page and "PostgreSQL 15" in page
    status, health = http_get(f"http://127.0.0.1:{endpoint.host_port}/healthz")
    assert status == 200, health

    # Order: the backend started only after PostgreSQL was healthy.
    def first(kind: int, service: str) -> pb.Event:
        return next(e for e in events if e.type == kind and e.service == service)

    postgres_healthy = first(pb.EVENT_TYPE_CONTAINER_HEALTHY, "postgres")
    backend_started = first(pb.EVENT_TYPE_CONTAINER_STARTED, "backend")
    assert backend_started.sequence > postgres_healthy.sequence
    assert backend_started.time.ToDatetime() >= postgres_healthy.time.ToDatetime()
    frontend_started = first(pb.EVENT_TYPE_CONTAINER_STARTED, "frontend")
    assert frontend_started.sequence > first(pb.EVENT_TYPE_CONTAINER_HEALTHY, "backend").sequence

    running = [c for c in env.containers if c.state == pb.CONTAINER_STATE_RUNNING]
    assert {c.service for c in running} == {"postgres", "backend", "frontend"}
    assert all(c.health == pb.HEALTH_STATUS_HEALTHY and c.pid > 0 and c.ip for c in running)
    # One shim serves the environment's three containers, like a pod's.
    during = count_resources(daemon, namespace, instance)
    assert during["shims"] == before["shims"] + 1, (before, during)

    # Logs: the frontend logged the request we just made.
    lines = list(
        stub.GetEnvironmentLogs(pb.GetEnvironmentLogsRequest(name="shop", services=["frontend"], tail=50), timeout=10)
    )
    assert any("GET / " in line.line for line in lines)
    assert all(line.service == "frontend" for line in lines)

    # Metrics: every running container reports memory and pids.
    metrics = stub.GetEnvironmentMetrics(pb.GetEnvironmentMetricsRequest(name="shop"), timeout=20)
    assert {m.service for m in metrics.containers} == {"postgres", "backend", "frontend"}
    assert all(m.memory_usage_bytes > 0 and m.pids_current > 0 for m in metrics.containers)

    deleted = stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="shop"), timeout=10)
    assert deleted.status == pb.ENVIRONMENT_STATUS_DELETING
    wait_gone(stub, "shop")
    after = count_resources(daemon, namespace, instance)
    assert after == before, f"leaked: before {before}, after {after}"
    history = stub.GetEnvironmentHistory(pb.GetEnvironmentHistoryRequest(name="shop"), timeout=10)
    assert [h.action for h in history.entries][:1] == ["create"] and "delete" in [h.action for h in history.entries]


def _bad_request(err: grpc.RpcError) -> list[str]:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            bad = error_details_pb2.BadRequest()
            assert any(d.Unpack(bad) for d in status.details)
            return [v.field for v in bad.field_violations]
    return []


@pytest.mark.parametrize(
    ("request_json", "field"),
    [
        ({"name": "Not_A_Label", "spec": {"stack": "web-postgres"}}, "name"),
        ({"name": "x", "spec": {"stack": "nope"}}, "spec.stack"),
        ({"name": "x", "spec": {"stack": "web-postgres", "services": {"cache": {}}}}, "spec.services.cache"),
        (
            {"name": "x", "spec": {"stack": "web-postgres", "parameters": {"colour": "red"}}},
            "spec.parameters.colour",
        ),
        (
            {
                "name": "x",
                "spec": {"stack": "web-postgres", "services": {"backend": {"image": "UPPER CASE!"}}},
            },
            "spec.services.backend.image",
        ),
        (
            {"name": "x", "spec": {"stack": "web-postgres", "services": {"backend": {"env": {"1BAD": "v"}}}}},
            "spec.services.backend.env",
        ),
        (
            {
                "name": "x",
                "spec": {
                    "stack": "web-postgres",
                    "services": {"backend": {"ports": [{"containerPort": 70000}]}},
                },
            },
            "spec.services.backend.ports[0].container_port",
        ),
        (
            {
                "name": "x",
                "spec": {
                    "stack": "web-postgres",
                    "services": {"postgres": {"dependsOn": [{"service": "frontend"}]}},
                },
            },
            "spec.services",
        ),
        (
            {
                "name": "x",
                "spec": {
                    "stack": "web-postgres",
                    "services": {"backend": {"volumes": [{"name": "data", "path": "/../../etc"}]}},
                },
            },
            "spec.services.backend.volumes[0].path",
        ),
        (
            {
                "name": "x",
                "spec": {
                    "stack": "web-postgres",
                    "services": {"backend": {"resources": {"memoryBytes": "99999999999999"}}},
                },
            },
            "spec.services.backend.resources.memory_bytes",
        ),
    ],
    ids=[
        "name",
        "stack",
        "service",
        "parameter",
        "image",
        "env-key",
        "port",
        "cycle",
        "volume-path",
        "memory",
    ],
)
def test_invalid_requests_name_the_field_and_create_nothing(
    stub: pb_grpc.SchedulerServiceStub, request_json: dict[str, Any], field: str
) -> None:
    request = json_format.ParseDict(request_json, pb.CreateEnvironmentRequest())
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateEnvironment(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    fields = _bad_request(err.value)
    assert any(f.startswith(field) for f in fields), (field, fields, err.value.details())
    assert field.split("[")[0].split(".")[-1] in err.value.details() or field in err.value.details()
    listed = stub.ListEnvironments(pb.ListEnvironmentsRequest(), timeout=10)
    assert request.name not in [e.name for e in listed.environments]


def test_a_health_check_that_never_passes_fails_the_environment(stub: pb_grpc.SchedulerServiceStub) -> None:
    request = json_format.ParseDict(
        {
            "name": "sick",
            "spec": {
                "stack": "toolbox",
                "services": {
                    "toolbox": {
                        "healthCheck": {"exec": {"command": ["false"]}, "interval": "0.2s", "retries": 2},
                    }
                },
            },
        },
        pb.CreateEnvironmentRequest(),
    )
    started = time.monotonic()
    stub.CreateEnvironment(request, timeout=10)
    env = wait_status(stub, "sick", {pb.ENVIRONMENT_STATUS_FAILED, pb.ENVIRONMENT_STATUS_RUNNING}, timeout=60)
    assert env.status == pb.ENVIRONMENT_STATUS_FAILED
    assert time.monotonic() - started < 30
    ready = next(c for c in env.conditions if c.type == "Ready")
    assert ready.status == pb.CONDITION_STATUS_FALSE and ready.service == "toolbox"
    assert ready.reason == "HealthCheckFailed"
    assert "toolbox" in ready.message and "exit code 1" in ready.message
    stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="sick"), timeout=10)
    wait_gone(stub, "sick")


def test_create_is_idempotent_per_request_id_and_refuses_a_taken_name(
    stub: pb_grpc.SchedulerServiceStub,
) -> None:
    request = pb.CreateEnvironmentRequest(
        name="twice", spec=pb.EnvironmentSpecification(stack="toolbox"), request_id="req-123"
    )
    first = stub.CreateEnvironment(request, timeout=10)
    again = stub.CreateEnvironment(request, timeout=10)
    assert again.uid == first.uid
    with pytest.raises(grpc.RpcError) as taken:
        stub.CreateEnvironment(pb.CreateEnvironmentRequest(name="twice", spec=request.spec), timeout=10)
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS and "twice" in taken.value.details()
    wait_status(stub, "twice", {pb.ENVIRONMENT_STATUS_RUNNING})
    stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="twice"), timeout=10)
    wait_gone(stub, "twice")


def test_list_pages_filters_and_survives_a_restart(tmp_path: Path, image_archives: dict[str, Path]) -> None:
    daemon = start_daemon(
        tmp_path, {"images": {"preload": [str(image_archives["docker.io/schedulerdemo/toolbox:1.0"])]}}
    )
    try:
        with daemon.channel() as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            for index in range(5):
                stub.CreateEnvironment(
                    pb.CreateEnvironmentRequest(
                        name=f"env-{index}",
                        spec=pb.EnvironmentSpecification(stack="toolbox", labels={"parity": str(index % 2)}),
                    ),
                    timeout=10,
                )
            for index in range(5):
                wait_status(stub, f"env-{index}", {pb.ENVIRONMENT_STATUS_RUNNING})
            names, token = [], ""
            while True:
                page = stub.ListEnvironments(pb.ListEnvironmentsRequest(page_size=2, page_token=token), timeout=10)
                names += [e.name for e in page.environments]
                token = page.next_page_token
                if not token:
                    break
            assert names == [f"env-{i}" for i in range(5)]
            odd = stub.ListEnvironments(pb.ListEnvironmentsRequest(filter="labels.parity=1"), timeout=10)
            assert [e.name for e in odd.environments] == ["env-1", "env-3"]
            failed = stub.ListEnvironments(pb.ListEnvironmentsRequest(filter="status=FAILED"), timeout=10)
            assert list(failed.environments) == []
        assert daemon.stop() == 0
        restarted = start_daemon(tmp_path, None, wait=True, reuse_config=True)
        try:
            with restarted.channel() as channel:
                stub = pb_grpc.SchedulerServiceStub(channel)
                listed = stub.ListEnvironments(pb.ListEnvironmentsRequest(), timeout=10)
                assert [e.name for e in listed.environments] == [f"env-{i}" for i in range(5)]
                assert {e.status for e in listed.environments} == {pb.ENVIRONMENT_STATUS_RUNNING}
                for index in range(5):
                    stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name=f"env-{index}"), timeout=10)
                for index in range(5):
                    wait_gone(stub, f"env-{index}")
        finally:
            assert restarted.stop() == 0
    finally:
        daemon.stop()


def test_an_environment_is_deleted_when_its_time_to_live_runs_out(stub: pb_grpc.SchedulerServiceStub) -> None:
    request = json_format.ParseDict(
        {"name": "short-lived", "spec": {"stack": "toolbox", "ttl": "3s"}}, pb.CreateEnvironmentRequest()
    )
    created = stub.CreateEnvironment(request, timeout=10)
    assert created.spec.ttl.seconds == 3
    started = time.monotonic()
    wait_gone(stub, "short-lived", timeout=60)
    assert time.monotonic() - started >= 2.5
    history = stub.GetEnvironmentHistory(pb.GetEnvironmentHistoryRequest(name="short-lived"), timeout=10)
    assert any("time to live" in h.detail for h in history.entries)


def test_deleting_during_a_deploy_cancels_it_and_leaves_nothing(
    daemon: DaemonProcess, stub: pb_grpc.SchedulerServiceStub
) -> None:
    settings = daemon_settings(daemon)
    namespace, instance = settings["containerd"]["namespace"], settings["network"]["instance"]
    before = count_resources(daemon, namespace, instance)
    stub.CreateEnvironment(
        pb.CreateEnvironmentRequest(name="hasty", spec=pb.EnvironmentSpecification(stack="web-postgres")), timeout=10
    )
    # PostgreSQL is still initialising: the backend and frontend are not started yet.
    wait_status(stub, "hasty", {pb.ENVIRONMENT_STATUS_DEPLOYING}, timeout=30)
    time.sleep(0.5)
    deleted = stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="hasty"), timeout=10)
    assert deleted.status == pb.ENVIRONMENT_STATUS_DELETING
    started = time.monotonic()
    wait_gone(stub, "hasty")
    # PostgreSQL gets its image's stop signal (SIGINT, fast shutdown), not SIGTERM and its 30 s grace.
    # A dependent caught starting, before its process installs a handler, drops its signal (it is
    # its pid namespace's init): it is sent again, so no one waits out a 10 s grace.
    assert time.monotonic() - started < 10
    assert count_resources(daemon, namespace, instance) == before


def test_clients_cancelling_busy_streams_do_not_hurt_the_daemon(
    daemon: DaemonProcess, stub: pb_grpc.SchedulerServiceStub
) -> None:
    request = json_format.ParseDict(
        {
            "name": "chatty",
            "spec": {
                "stack": "toolbox",
                "services": {
                    "toolbox": {"command": ["sh", "-c", "i=0; while :; do i=$((i+1)); echo line $i; sleep 0.01; done"]}
                },
            },
        },
        pb.CreateEnvironmentRequest(),
    )
    stub.CreateEnvironment(request, timeout=10)
    wait_status(stub, "chatty", {pb.ENVIRONMENT_STATUS_RUNNING})
    for _ in range(5):
        stream = stub.GetEnvironmentLogs(pb.GetEnvironmentLogsRequest(name="chatty", tail=1, follow=True), timeout=30)
        got = []
        with pytest.raises(grpc.RpcError) as cancelled:
            for line in stream:
                got.append(line.line)
                if len(got) > 5:
                    stream.cancel()
        assert cancelled.value.code() == grpc.StatusCode.CANCELLED
        numbers = [int(text.split()[1]) for text in got]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
        time.sleep(0.3)
        assert daemon.process.poll() is None, daemon.log()[-2000:]
    stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="chatty"), timeout=10)
    wait_gone(stub, "chatty")
