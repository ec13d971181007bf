"""Wake of a sleeping web-postgres on its first request, against a cold create in the same run.

Run as root: ``python -m bench.wake [--runs N]``.

- **cold create**: CreateEnvironment of web-postgres until its frontend's published port serves the
  page (frontend -> backend -> PostgreSQL), the baseline.
- **wake**: the same environment stopped (StopEnvironment, until STOPPED), then one plain HTTP
  request to its published port: the time until that request's response arrives, the daemon
  having held the connection while it started the containers.

Both ways of sleeping are measured, each on a daemon of its own: the default (a sleeping
environment keeps no process: its tasks are created again on wake) and ``sleep.keep_tasks`` (the
tasks stay created, not started, while it sleeps). Target: the wake's first response within
1.5 s; printed with its ratio to the cold create. Runs interleave cold creates and wakes so that
drift of the shared machine hits both sides alike. Everything made (the daemons, their
containerd, network instances and data directories) is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from bench import leftovers
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.support.daemon import daemon_instance, start_daemon, wait_serving
from tests.support.images import build

TARGET_S = 1.5


def _status(stub: pb_grpc.SchedulerServiceStub, name: str) -> pb.Environment:
    return stub.GetEnvironment(pb.GetEnvironmentRequest(name=name), timeout=10)


def _wait(stub: pb_grpc.SchedulerServiceStub, name: str, status: int, timeout: float = 300) -> pb.Environment:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        env = _status(stub, name)
        if env.status == status:
            return env
        if env.status == pb.ENVIRONMENT_STATUS_FAILED:
            raise SystemExit(f"{name} failed: {env.conditions}")
        time.sleep(0.02)
    raise SystemExit(f"{name} not {pb.EnvironmentStatus.Name(status)} within {timeout}s")


def _page(port: int, timeout: float) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout) as reply:
        return reply.read().decode()


def _first_page(port: int, timeout: float = 120) -> None:
    """Poll until the page is served (the cold create's end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if "PostgreSQL" in _page(port, 10):
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"port {port} served no page within {timeout}s")


def one_run(stub: pb_grpc.SchedulerServiceStub, name: str) -> tuple[float, float]:
    """(cold create to first page, wake to first response) in seconds."""
    started = time.monotonic()
    stub.CreateEnvironment(
        pb.CreateEnvironmentRequest(name=name, spec=pb.EnvironmentSpecification(stack="web-postgres")), timeout=10
    )
    env = _wait(stub, name, pb.ENVIRONMENT_STATUS_RUNNING)
    port = next(e.host_port for e in env.endpoints if e.service == "frontend")
    _first_page(port)
    cold = time.monotonic() - started
    stub.StopEnvironment(pb.StopEnvironmentRequest(name=name), timeout=10)
    _wait(stub, name, pb.ENVIRONMENT_STATUS_STOPPED)
    started = time.monotonic()
    page = _page(port, 120)
    wake = time.monotonic() - started
    if "PostgreSQL" not in page:
        raise SystemExit(f"the woken {name} answered without the database: {page[:200]}")
    stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name=name), timeout=10)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(
        e.name == name for e in stub.ListEnvironments(pb.ListEnvironmentsRequest(), timeout=10).environments
    ):
        time.sleep(0.1)
    return cold, wake


def measure(archives: list[Path], runs: int, keep_tasks: bool) -> tuple[list[float], list[float], int]:
    """(cold creates, wakes, leftovers) on a daemon of its own, removed afterwards."""
    colds, wakes = [], []
    with tempfile.TemporaryDirectory(prefix="bench-wake-") as tmp:
        config = {
            "images": {"preload": [str(p) for p in archives]},
            "log": {"level": "info"},
            "sleep": {"keep_tasks": keep_tasks},
        }
        # Started without waiting, so that even a daemon slow to serve on a busy machine is
        # stopped and its containerd and network instance removed below.
        daemon = start_daemon(Path(tmp), config, wait=False)
        try:
            wait_serving(daemon.address, daemon.process, daemon.log_path, timeout=300)
            with daemon.channel() as channel:
                stub = pb_grpc.SchedulerServiceStub(channel)
                for index in range(runs):
                    cold, wake = one_run(stub, f"wake-{index}")
                    colds.append(cold)
                    wakes.append(wake)
        finally:
            try:
                daemon.delete_all_environments()
            finally:
                daemon.stop()
                daemon.cleanup()
                left = leftovers.report([daemon_instance(daemon)], [tmp])
    return colds, wakes, left


def _figures(colds: list[float], wakes: list[float]) -> dict[str, object]:
    wake_median, cold_median = statistics.median(wakes), statistics.median(colds)
    return {
        "wake_first_response_s": {"median": round(wake_median, 3), "samples": [round(t, 3) for t in wakes]},
        "cold_create_first_page_s": {"median": round(cold_median, 3), "samples": [round(t, 3) for t in colds]},
        "wake_to_cold_ratio": round(wake_median / cold_median, 3),
        "meets_target": wake_median <= TARGET_S,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    archives = list(build().values())
    report: dict[str, object] = {"target_wake_s": TARGET_S}
    load_before = os.getloadavg()
    left = 0
    for keep_tasks in (False, True):
        key = "keep_tasks" if keep_tasks else "default"
        colds, wakes, leftover = measure(archives, args.runs, keep_tasks)
        report[key] = _figures(colds, wakes)
        left += leftover
    report["leftovers"] = left
    report["load_average_1_5_15"] = {"before": load_before, "after": os.getloadavg()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
