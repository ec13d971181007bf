"""web-postgres from CreateEnvironment to the page served through the database, with PostgreSQL
templates, against the serial baseline that runs initdb, in one run.

Run as root: ``python -m bench.template_create [--runs N]``. Images are present (preloaded).

- **scheduler**: a real daemon (templates on, the default). CreateEnvironment, then GET of the
  frontend's page until it shows the database's answer ("PostgreSQL"), then DeleteEnvironment.
  The first run builds the template (initdb once) and is reported on its own as ``cold``; the
  median is over the runs after it (``warm``), which start from a copy.
- **serial baseline**: ``bench.env_create``'s: the same three containers started one after another
  straight through the runtime and network layers, each health-gated, PostgreSQL running initdb
  in its fresh volume (no template), until the published page shows the database's answer: the
  same end point as the scheduler's runs.
- Each run, on either side, starts once the machine has settled (``settle``): without that, one
  side's background work (the other's teardown, the template spare the daemon copies two
  seconds after a run took one) ran into the next run, and which side it hit depended on the
  order.
- The warm run closest to the median is broken down from its ListOperations timeline, to show
  where the remaining time goes.

Targets (issue 17): median ≤ 1.0 s and ≤ 0.25 x the baseline. Runs are interleaved so that the
shared machine's drift hits both sides alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import leftovers
from bench.env_create import page_shows_database, serial_baseline, settle, wait_deleted
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.support.daemon import DaemonProcess, daemon_instance, start_daemon
from tests.support.images import build


def page_served(stub: pb_grpc.SchedulerServiceStub, name: str, timeout: float = 300) -> None:
    """Wait until the frontend's page shows PostgreSQL's answer (through backend and database)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        env = stub.GetEnvironment(pb.GetEnvironmentRequest(name=name), timeout=10)
        if env.status == pb.ENVIRONMENT_STATUS_FAILED:
            raise SystemExit(f"{name} failed: {env.conditions}")
        port = next((e.host_port for e in env.endpoints if e.service == "frontend"), 0)
        if port:
            page_shows_database(port, deadline - time.monotonic())
            return
        time.sleep(0.01)
    raise SystemExit(f"{name}: no published port within {timeout}s")


def timeline(stub: pb_grpc.SchedulerServiceStub, name: str) -> list[tuple[str, str, float]]:
    """The deploy's steps (probes left out) with seconds since the deploy began."""
    operations = stub.ListOperations(pb.ListOperationsRequest(name=name), timeout=10).operations
    deploy = next(op for op in operations if op.kind == "deploy")
    start = deploy.start_time.ToDatetime()
    return [
        (step.step, step.service, round((step.time.ToDatetime() - start).total_seconds(), 3))
        for step in deploy.steps
        if step.step != "probe"
    ]


def scheduler_run(daemon: DaemonProcess, index: int) -> tuple[float, list[tuple[str, str, float]]]:
    name = f"tpl-{index}"
    with daemon.channel() as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        started = time.monotonic()
        stub.CreateEnvironment(
            pb.CreateEnvironmentRequest(name=name, spec=pb.EnvironmentSpecification(stack="web-postgres")), timeout=10
        )
        page_served(stub, name)
        elapsed = time.monotonic() - started
        steps = timeline(stub, name)
        wait_deleted(stub, [name])
    return elapsed, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7, help="warm runs (after the cold one)")
    args = parser.parse_args()
    archives = build()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-tpl-") as tmp:
        config: dict[str, Any] = {"images": {"preload": [str(p) for p in archives.values()]}, "log": {"level": "info"}}
        daemon = start_daemon(Path(tmp), config)
        instances = [daemon_instance(daemon)]
        try:
            cold, _ = scheduler_run(daemon, 0)
            ours: list[tuple[float, list[tuple[str, str, float]]]] = []
            baseline: list[float] = []
            for index in range(1, args.runs + 1):
                settle()
                ours.append(scheduler_run(daemon, index))
                state = Path(tmp) / f"baseline{index}"
                settle()
                baseline += asyncio.run(serial_baseline(daemon, 1, state, first=index, instances=instances, page=True))
            with daemon.channel() as channel:
                listed = pb_grpc.SchedulerServiceStub(channel).ListTemplates(pb.ListTemplatesRequest(), timeout=10)
        finally:
            daemon.delete_all_environments()
            daemon.stop()
            daemon.cleanup()
        left = leftovers.report(instances, [tmp])
    warm = [t for t, _ in ours]
    median = statistics.median(warm)
    base = statistics.median(baseline)
    _, steps = min(ours, key=lambda run: abs(run[0] - median))
    report = {
        "web_postgres_create_to_page_s": {
            "median": round(median, 3),
            "samples": [round(t, 3) for t in warm],
            "cold_first_run_with_initdb": round(cold, 3),
        },
        "serial_baseline_with_initdb_to_page_s": {"median": round(base, 3), "samples": [round(t, 3) for t in baseline]},
        "ratio_to_serial_baseline": round(median / base, 3),
        "targets": {"median_s": 1.0, "ratio": 0.25},
        "met": {"median": median <= 1.0, "ratio": median / base <= 0.25},
        "templates": len(listed.templates),
        "leftovers": left,
        "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
    }
    print(json.dumps(report, indent=2))
    print("deploy timeline of the run closest to the median (seconds since the deploy began):")
    for step, service, at in steps:
        print(f"  {at:7.3f}  {step:<8} {service}")


if __name__ == "__main__":
    main()
