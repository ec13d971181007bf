"""The daemon as a user meets it: started as a process, called by grpcurl and by the Python stubs."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.support.daemon import VENV_BIN, DaemonProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def daemon(daemon_factory) -> DaemonProcess:
    return daemon_factory()


def test_grpcurl_lists_describes_and_checks_health(daemon: DaemonProcess) -> None:
    listed = daemon.grpcurl("list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {"scheduler.v1.SchedulerService", "grpc.health.v1.Health"} <= services

    described = daemon.grpcurl("describe", "scheduler.v1.SchedulerService")
    assert described.returncode == 0, described.stderr
    for rpc in (
        "CreateEnvironment",
        "GetEnvironment",
        "UpdateEnvironment",
        "DeleteEnvironment",
        "ListEnvironments",
        "GetEnvironmentLogs",
        "GetEnvironmentMetrics",
        "ListStacks",
        "WatchEvents",
    ):
        assert f"rpc {rpc}" in described.stdout

    message = daemon.grpcurl("describe", "scheduler.v1.Environment")
    assert "endpoints" in message.stdout and "status" in message.stdout

    health = daemon.grpcurl("grpc.health.v1.Health/Check", data='{"service": "scheduler.v1.SchedulerService"}')
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["status"] == "SERVING"


def test_python_stubs_get_clear_statuses(daemon: DaemonProcess) -> None:
    with daemon.channel() as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        stacks = stub.ListStacks(pb.ListStacksRequest(), timeout=10)
        assert {"web-postgres", "api-postgres"} <= {s.name for s in stacks.stacks}

        with pytest.raises(grpc.RpcError) as missing:
            stub.GetEnvironment(pb.GetEnvironmentRequest(name="nope"), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert "nope" in missing.value.details()

        with pytest.raises(grpc.RpcError) as bad:
            stub.CreateEnvironment(
                pb.CreateEnvironmentRequest(name="Bad_Name", spec=pb.EnvironmentSpecification(stack="web-postgres")),
                timeout=10,
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "name" in bad.value.details()

        listed = stub.ListEnvironments(pb.ListEnvironmentsRequest(), timeout=10)
        assert list(listed.environments) == [] and listed.next_page_token == ""

    # Every RPC was logged once with method, code and a request id.
    lines = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    rpcs = [line for line in lines if line.get("event") == "rpc" and "GetEnvironment" in line.get("method", "")]
    assert rpcs and rpcs[0]["code"] == "NOT_FOUND" and rpcs[0]["request_id"] and "duration_ms" in rpcs[0]


def test_sigterm_during_a_stream_ends_it_and_exits_zero(daemon: DaemonProcess) -> None:
    received: dict[str, object] = {}

    def watch() -> None:
        with daemon.channel() as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            try:
                for _ in stub.WatchEvents(pb.WatchEventsRequest(), timeout=60):
                    pass
                received["code"] = grpc.StatusCode.OK
            except grpc.RpcError as err:
                received["code"] = err.code()

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.5)  # the stream is open
    started = time.monotonic()
    code = daemon.stop(signal.SIGTERM)
    elapsed = time.monotonic() - started
    watcher.join(10)
    assert code == 0, daemon.log()
    assert elapsed < 3 + 2, f"shutdown took {elapsed:.1f}s, grace is 3s"
    assert received["code"] == grpc.StatusCode.OK

    # Health went NOT_SERVING before the server stopped.
    assert '"daemon.stopping"' in daemon.log() and '"daemon.stopped"' in daemon.log()


def test_health_check_tells_serving(daemon: DaemonProcess) -> None:
    with daemon.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _run_with(tmp_path: Path, text: str | None) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    if text is not None:
        config.write_text(text)
    return subprocess.run(
        [str(VENV_BIN / "scheduler"), "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("colour: blue\n", "colour: Extra inputs are not permitted"),
        ("server:\n  shutdown_grace: soon\n", "server.shutdown_grace"),
        ("server:\n  listen: nowhere\n", "server.listen"),
        ("network:\n  pool: 10.0.0.0/33\n", "network.pool"),
        (None, "does not exist"),
        ("- just\n- a list\n", "must hold a mapping"),
    ],
    ids=["unknown-key", "wrong-type", "bad-address", "bad-pool", "missing-file", "not-a-mapping"],
)
def test_config_errors_get_one_clear_line_and_exit_2(tmp_path: Path, text: str | None, expected: str) -> None:
    result = _run_with(tmp_path, text)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_config_check_validates_the_example() -> None:
    result = subprocess.run(
        [str(VENV_BIN / "scheduler"), "config", "check", "config.example.yaml"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_a_taken_port_is_one_line_naming_the_port_and_its_holder_and_exit_2(tmp_path: Path) -> None:
    import os
    import socket

    from tests.support.daemon import free_port

    port = free_port()
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        config = tmp_path / "config.yaml"
        config.write_text(f"data_dir: data\nserver:\n  listen: 127.0.0.1:{port}\nlog:\n  format: json\n")
        result = subprocess.run(
            [str(VENV_BIN / "scheduler"), "run", "--config", str(config)], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {port}" in lines[0] and f"pid {os.getpid()}" in lines[0], lines[0]
    # It stopped before starting anything: no containerd was made under the data dir.
    assert not (tmp_path / "data" / "containerd").exists()


def test_a_second_daemon_on_a_served_data_dir_exits_naming_it_and_the_first_keeps_serving(
    daemon: DaemonProcess,
) -> None:
    from tests.support.daemon import free_port

    config = daemon.config_path.parent / "second.yaml"
    config.write_text(
        daemon.config_path.read_text().replace(daemon.address, f"127.0.0.1:{free_port()}"),
    )
    result = subprocess.run(
        [str(VENV_BIN / "scheduler"), "run", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(daemon.data_dir) in lines[0] and f"pid {daemon.process.pid}" in lines[0], lines[0]
    assert daemon.process.poll() is None
    with daemon.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        pb_grpc.SchedulerServiceStub(channel).ListEnvironments(pb.ListEnvironmentsRequest(), timeout=10)
