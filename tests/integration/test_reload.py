"""SIGHUP re-reads the config: live options apply at once, others wait for a restart, bad files change nothing."""

from __future__ import annotations

import hashlib
import json
import signal
import time
import urllib.request
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import json_format

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.integration.test_client_cli import cli
from tests.support.daemon import DaemonProcess, free_port

pytestmark = pytest.mark.integration


def records(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]


def hup_and_wait(daemon: DaemonProcess, event: str, timeout: float = 30) -> dict[str, Any]:
    """Send a real SIGHUP and return the first ``event`` record logged after it (bounded wait)."""
    seen = len(records(daemon))
    daemon.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in records(daemon)[seen:] if r.get("event") in ("config.reloaded", "config.reload_refused")]
        if found:
            assert found[0]["event"] == event, found[0]
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no {event} within {timeout}s:\n{daemon.log()[-3000:]}")


def validate(stub: pb_grpc.SchedulerServiceStub, replicas: int) -> grpc.StatusCode:
    request = json_format.ParseDict(
        {"name": "wide", "spec": {"stack": "toolbox", "services": {"toolbox": {"replicas": replicas}}}},
        pb.CreateEnvironmentRequest(),
    )
    request.validate_only = True
    try:
        stub.CreateEnvironment(request, timeout=10)
    except grpc.RpcError as err:
        assert "replicas" in (err.details() or ""), err.details()
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_sighup_applies_live_options_reports_the_rest_and_refuses_a_bad_file(daemon_factory: Any) -> None:
    daemon: DaemonProcess = daemon_factory({"log": {"level": "info"}, "limits": {"max_replicas": 2}})
    config = yaml.safe_load(daemon.config_path.read_text())
    metrics_port = free_port()
    with daemon.channel() as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        assert validate(stub, 3) == grpc.StatusCode.INVALID_ARGUMENT

        token = "sch_" + "k" * 40
        bearer = (("authorization", f"Bearer {token}"),)
        with pytest.raises(grpc.RpcError) as unknown:
            stub.ListStacks(pb.ListStacksRequest(), timeout=10, metadata=bearer)
        assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED

        changed = {
            **config,
            "auth": {
                "tokens": [{"name": "ci", "sha256": hashlib.sha256(token.encode()).hexdigest()}],
                "bindings": [
                    {"role": "admin", "principals": ["user:root"]},
                    {"role": "viewer", "principals": ["token:ci"]},
                ],
            },
            "log": {"format": "json", "level": "debug"},
            "limits": {"max_replicas": 5},
            "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
            "network": {**config["network"], "port_range": [21000, 21999]},
        }
        daemon.config_path.write_text(yaml.safe_dump(changed))
        reloaded = hup_and_wait(daemon, "config.reloaded")
        assert set(reloaded["applied"]) == {
            "auth.tokens",
            "auth.bindings",
            "log.level",
            "limits.max_replicas",
            "metrics.listen",
        }, reloaded
        assert stub.ListStacks(pb.ListStacksRequest(), timeout=10, metadata=bearer).stacks
        with pytest.raises(grpc.RpcError) as viewer:
            stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name="x"), timeout=10, metadata=bearer)
        assert viewer.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reloaded["needs_restart"] == ["network.port_range"], reloaded

        assert validate(stub, 3) == grpc.StatusCode.OK
        assert validate(stub, 6) == grpc.StatusCode.INVALID_ARGUMENT
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
            assert b"scheduler_environments" in reply.read()
        # Debug lines now appear (the health check's access log is written at debug).
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        after = records(daemon)
        mark = max(i for i, r in enumerate(after) if r.get("event") == "config.reloaded")
        assert any(r.get("level") == "debug" for r in after[mark:]), after[mark:]

        # A bad file is refused whole: the limit it would lower and the level it would raise stay.
        daemon.config_path.write_text(
            yaml.safe_dump({**changed, "log": {"level": "error"}, "limits": {"max_replicas": -1}})
        )
        refused = hup_and_wait(daemon, "config.reload_refused")
        assert "limits.max_replicas" in refused["error"], refused
        assert validate(stub, 3) == grpc.StatusCode.OK
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        after = records(daemon)
        mark = max(i for i, r in enumerate(after) if r.get("event") == "config.reload_refused")
        assert any(r.get("level") == "debug" for r in after[mark:]), "log level kept at debug"

        # Not YAML at all: refused too, and the daemon keeps serving.
        daemon.config_path.write_text("limits: [unclosed\n")
        refused = hup_and_wait(daemon, "config.reload_refused")
        assert "YAML" in refused["error"], refused
        assert validate(stub, 4) == grpc.StatusCode.OK
        # The same over the API: `scheduler config reload`, admin only.
        daemon.config_path.write_text(yaml.safe_dump({**changed, "limits": {"max_replicas": 7}}))
        with pytest.raises(grpc.RpcError) as not_admin:
            stub.ReloadConfiguration(pb.ReloadConfigurationRequest(), timeout=30, metadata=bearer)
        assert not_admin.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert validate(stub, 7) == grpc.StatusCode.INVALID_ARGUMENT
        reply = cli(daemon, "config", "reload")
        assert reply.returncode == 0, reply.stderr
        assert "applied: limits.max_replicas" in reply.stdout, reply.stdout
        assert validate(stub, 7) == grpc.StatusCode.OK
        daemon.config_path.write_text("limits: [unclosed\n")
        refused_api = cli(daemon, "config", "reload")
        assert refused_api.returncode == 1 and "FAILED_PRECONDITION" in refused_api.stderr, refused_api.stderr
    assert daemon.process.poll() is None
    daemon.config_path.write_text(yaml.safe_dump(changed))  # the teardown reads it
