"""Churn with crashes: concurrent create/delete cycles while the daemon and containers are killed."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.integration.test_environments import count_resources, daemon_settings
from tests.support.daemon import DaemonProcess, start_daemon
from tests.support.images import TOOLBOX

pytestmark = pytest.mark.integration

CYCLES = 20
DEADLINE = 240.0
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def _call(address: str, deadline: float, method: str, request: object) -> object:
    """Call ``method``, riding out daemon restarts; other errors go back to the caller."""
    while True:
        try:
            with grpc.insecure_channel(address) as channel:
                return getattr(pb_grpc.SchedulerServiceStub(channel), method)(request, timeout=10)
        except grpc.RpcError as err:
            if err.code() not in RETRYABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _cycle(address: str, name: str, deadline: float, errors: list[str]) -> None:
    try:
        try:
            _call(
                address,
                deadline,
                "CreateEnvironment",
                pb.CreateEnvironmentRequest(
                    name=name, spec=pb.EnvironmentSpecification(stack="toolbox"), request_id=f"req-{name}"
                ),
            )
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        while time.monotonic() < deadline:
            env = _call(address, deadline, "GetEnvironment", pb.GetEnvironmentRequest(name=name))
            if env.status in (
                pb.ENVIRONMENT_STATUS_RUNNING,
                pb.ENVIRONMENT_STATUS_FAILED,
                pb.ENVIRONMENT_STATUS_DEGRADED,
            ):  # type: ignore[attr-defined]
                break
            time.sleep(0.2)
        try:
            _call(address, deadline, "DeleteEnvironment", pb.DeleteEnvironmentRequest(name=name))
        except grpc.RpcError as err:
            # A delete the daemon accepted just before it was killed is retried after the restart,
            # which may find the deletion already finished.
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
        while time.monotonic() < deadline:
            try:
                _call(address, deadline, "GetEnvironment", pb.GetEnvironmentRequest(name=name))
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    return
                raise
            time.sleep(0.2)
        errors.append(f"{name}: not deleted in time")
    except grpc.RpcError as err:
        errors.append(f"{name}: {err.code().name} {err.details()}")


def _kill_a_container(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        envs = stub.ListEnvironments(pb.ListEnvironmentsRequest(page_size=500), timeout=5).environments
    pids = [c.pid for e in envs for c in e.containers if c.pid]
    if pids:
        try:
            os.kill(random.choice(pids), signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_concurrent_cycles_with_random_kills_leak_nothing(tmp_path: Path, image_archives: dict[str, Path]) -> None:
    daemon: DaemonProcess = start_daemon(tmp_path, {"images": {"preload": [str(image_archives[TOOLBOX])]}})
    settings = daemon_settings(daemon)
    namespace, instance = settings["containerd"]["namespace"], settings["network"]["instance"]
    before = count_resources(daemon, namespace, instance)
    deadline = time.monotonic() + DEADLINE
    errors: list[str] = []
    workers = [
        threading.Thread(target=_cycle, args=(daemon.address, f"churn-{i}", deadline, errors)) for i in range(CYCLES)
    ]
    for worker in workers:
        worker.start()
    rng = random.Random(7)
    try:
        for _ in range(2):
            time.sleep(rng.uniform(1.0, 3.0))
            try:
                _kill_a_container(daemon.address)
            except grpc.RpcError:
                pass
            time.sleep(rng.uniform(0.5, 2.0))
            daemon.process.send_signal(signal.SIGKILL)
            daemon.process.wait(10)
            daemon = start_daemon(tmp_path, reuse_config=True)
        for worker in workers:
            worker.join(max(1.0, deadline - time.monotonic()))
        assert not any(worker.is_alive() for worker in workers), "cycles did not finish in time"
        assert errors == []
        # Everything converged: no environment, and nothing of theirs left on the host.
        with daemon.channel() as channel:
            listed = pb_grpc.SchedulerServiceStub(channel).ListEnvironments(pb.ListEnvironmentsRequest(), timeout=10)
            assert list(listed.environments) == []
        after = count_resources(daemon, namespace, instance)
        assert after == before, f"leaked: before {before}, after {after}"
    finally:
        daemon.delete_all_environments()
        assert daemon.stop() == 0
        daemon.cleanup()
