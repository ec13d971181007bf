"""Sleep and wake on a real daemon: stop/start keeps data, ports and addresses; a request to a
sleeping environment's published port wakes it and gets the real page; an idle environment
falls asleep by itself; deleting a sleeping environment leaves nothing behind."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.integration.test_client_cli import cli
from tests.integration.test_environments import count_resources, daemon_settings, http_get, wait_gone, wait_status
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.images import BACKEND, FRONTEND, POSTGRES, TOOLBOX

pytestmark = pytest.mark.integration

UP = {pb.ENVIRONMENT_STATUS_RUNNING, pb.ENVIRONMENT_STATUS_FAILED}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, image_archives: dict[str, Path]) -> Iterator[DaemonProcess]:
    archives = [image_archives[name] for name in (POSTGRES, BACKEND, FRONTEND, TOOLBOX)]
    # Idle sleep is off by default; environments here opt in with spec.sleep_after_idle.
    config = {"sleep": {"check_interval": 0.5, "wake_deadline": 120}}
    with running_daemon(tmp_path_factory.mktemp("sleep"), archives, config) as process:
        yield process


@pytest.fixture
def stub(daemon: DaemonProcess) -> Iterator[pb_grpc.SchedulerServiceStub]:
    with daemon.channel() as channel:
        yield pb_grpc.SchedulerServiceStub(channel)


def _endpoint(env: pb.Environment, service: str) -> pb.Endpoint:
    return next(e for e in env.endpoints if e.service == service)


def _condition(env: pb.Environment, kind: str) -> pb.Condition:
    return next(c for c in env.conditions if c.type == kind)


def _addresses(env: pb.Environment) -> dict[tuple[str, int], str]:
    return {(c.service, c.replica): c.ip for c in env.containers}


def test_stop_and_start_keep_data_ports_and_addresses(
    daemon: DaemonProcess, stub: pb_grpc.SchedulerServiceStub
) -> None:
    stub.CreateEnvironment(
        pb.CreateEnvironmentRequest(name="nap", spec=pb.EnvironmentSpecification(stack="api-postgres")), timeout=10
    )
    env = wait_status(stub, "nap", UP, timeout=240)
    assert env.status == pb.ENVIRONMENT_STATUS_RUNNING, env
    url = f"http://127.0.0.1:{_endpoint(env, 'backend').host_port}"
    request = urllib.request.Request(url + "/items?" + urllib.parse.urlencode({"value": "kept"}), method="POST")
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.status == 201

    stopped = cli(daemon, "env", "stop", "nap", "--wait", "-o", "json")
    assert stopped.returncode == 0, stopped.stderr
    asleep = stub.GetEnvironment(pb.GetEnvironmentRequest(name="nap"), timeout=10)
    assert asleep.status == pb.ENVIRONMENT_STATUS_STOPPED
    sleeping = _condition(asleep, "Sleeping")
    assert sleeping.status == pb.CONDITION_STATUS_TRUE and sleeping.reason == "Requested", sleeping
    assert {c.state for c in asleep.containers} == {pb.CONTAINER_STATE_STOPPED}, asleep.containers
    assert list(asleep.endpoints) == list(env.endpoints)
    # Stopping a stopped environment changes nothing; updating it is refused until it is started.
    assert stub.StopEnvironment(pb.StopEnvironmentRequest(name="nap"), timeout=10).status == (
        pb.ENVIRONMENT_STATUS_STOPPED
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.UpdateEnvironment(
            pb.UpdateEnvironmentRequest(name="nap", spec=pb.EnvironmentSpecification(stack="api-postgres")),
            timeout=10,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    started = stub.StartEnvironment(pb.StartEnvironmentRequest(name="nap", request_id="wake-1"), timeout=10)
    assert started.name == "nap"
    awake = wait_status(stub, "nap", UP, timeout=240)
    assert awake.status == pb.ENVIRONMENT_STATUS_RUNNING, awake
    assert list(awake.endpoints) == list(env.endpoints)
    assert _addresses(awake) == _addresses(env)
    assert {c.container_id for c in awake.containers} == {c.container_id for c in env.containers}
    status, rows = http_get(url + "/items", timeout=30)
    assert status == 200 and [r["value"] for r in json.loads(rows)] == ["kept"], rows
    # A retried start (same request id) is recognised and does nothing.
    again = stub.StartEnvironment(pb.StartEnvironmentRequest(name="nap", request_id="wake-1"), timeout=10)
    assert again.status == pb.ENVIRONMENT_STATUS_RUNNING
    actions = [e.action for e in stub.GetEnvironmentHistory(pb.GetEnvironmentHistoryRequest(name="nap")).entries]
    assert actions.count("start") == 1 and actions.count("stop") == 1, actions
    stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="nap"), timeout=10)
    wait_gone(stub, "nap")


def test_a_request_wakes_a_sleeping_environment_and_delete_cleans_up(
    daemon: DaemonProcess, stub: pb_grpc.SchedulerServiceStub
) -> None:
    settings = daemon_settings(daemon)
    namespace, instance = settings["containerd"]["namespace"], settings["network"]["instance"]
    before = count_resources(daemon, namespace, instance)
    stub.CreateEnvironment(
        pb.CreateEnvironmentRequest(name="dozy", spec=pb.EnvironmentSpecification(stack="web-postgres")), timeout=10
    )
    env = wait_status(stub, "dozy", UP, timeout=240)
    assert env.status == pb.ENVIRONMENT_STATUS_RUNNING, env
    port = _endpoint(env, "frontend").host_port
    stub.StopEnvironment(pb.StopEnvironmentRequest(name="dozy", etag=env.etag), timeout=10)
    asleep = wait_status(stub, "dozy", {pb.ENVIRONMENT_STATUS_STOPPED}, timeout=120)
    # Asleep, the environment runs no process: no shim, no log writer of its own.
    counts = count_resources(daemon, namespace, instance)
    assert counts["shims"] == before["shims"] and counts["log_writers"] == before["log_writers"], counts

    status, page = http_get(f"http://127.0.0.1:{port}/", timeout=120)
    assert status == 200 and "PostgreSQL 15" in page, page[:500]
    awake = stub.GetEnvironment(pb.GetEnvironmentRequest(name="dozy"), timeout=10)
    assert awake.status == pb.ENVIRONMENT_STATUS_RUNNING, awake
    woken = _condition(awake, "Sleeping")
    assert woken.status == pb.CONDITION_STATUS_FALSE and "woken by a connection" in woken.message, woken
    assert _addresses(awake) == _addresses(asleep)
    # Awake again, the published port goes straight to the containers, as before the sleep.
    status, page = http_get(f"http://127.0.0.1:{port}/", timeout=30)
    assert status == 200 and "PostgreSQL 15" in page

    stub.StopEnvironment(pb.StopEnvironmentRequest(name="dozy"), timeout=10)
    wait_status(stub, "dozy", {pb.ENVIRONMENT_STATUS_STOPPED}, timeout=120)
    stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="dozy"), timeout=10)
    wait_gone(stub, "dozy")
    assert count_resources(daemon, namespace, instance) == before
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    assert f"--dport {port} " not in rules
    # The daemon holds no socket on the port any more, listening or not: a bind allowing reuse
    # gets past the TIME_WAIT of connections it forwarded while waking, and past nothing else.
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_an_idle_environment_falls_asleep_by_itself(stub: pb_grpc.SchedulerServiceStub) -> None:
    spec = pb.EnvironmentSpecification(
        stack="toolbox",
        services={"toolbox": pb.ContainerConfiguration(ports=[pb.PortMapping(container_port=8080, publish=True)])},
        sleep_after_idle=duration_pb2.Duration(seconds=2),
    )
    stub.CreateEnvironment(pb.CreateEnvironmentRequest(name="idle", spec=spec), timeout=10)
    env = wait_status(stub, "idle", UP, timeout=120)
    assert env.status == pb.ENVIRONMENT_STATUS_RUNNING, env
    ran_since = _condition(env, "Ready").last_transition_time.ToDatetime()
    asleep = wait_status(stub, "idle", {pb.ENVIRONMENT_STATUS_STOPPED}, timeout=60)
    sleeping = _condition(asleep, "Sleeping")
    assert sleeping.reason == "Idle" and "no connection on its published ports since" in sleeping.message
    # Not before its idle time: it ran at least that long without a connection.
    assert (sleeping.last_transition_time.ToDatetime() - ran_since).total_seconds() >= 2
    stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="idle"), timeout=10)
    wait_gone(stub, "idle")
