"""Requests lost while a living web-postgres environment changes, under a continuous HTTP loop.

Run as root: ``python -m bench.updates [--interval S] [--settle S]``.

A real daemon (managed containerd) runs one web-postgres environment. One thread sends
``GET /`` to the frontend's published port back to back (each answer goes frontend -> backend ->
PostgreSQL) for the whole run. Then, one after another:

- **backend update**: a new backend env value, containers replaced;
- **frontend update**: a new frontend env value, the published port moves to the new container;
- **broken update**: a backend health check that can never pass, so the update rolls back;
- **scale 1->3->1**: the backend to three replicas, then back to one.

For each phase it prints (as JSON) the seconds it took, the loop's request count, its error count
(connection errors and non-2xx answers) and a few error samples. The target is zero errors.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from bench import leftovers
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.support.daemon import daemon_instance, start_daemon
from tests.support.images import build

NAME = "bench-updates"
SETTLED = {pb.ENVIRONMENT_STATUS_RUNNING, pb.ENVIRONMENT_STATUS_DEGRADED, pb.ENVIRONMENT_STATUS_FAILED}


@dataclass
class HttpLoop:
    """GETs one URL back to back on a thread (bounded by ``max_seconds``), counting outcomes."""

    url: str
    interval: float
    max_seconds: float = 1800
    requests: int = 0
    errors: int = 0
    samples: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def snapshot(self) -> tuple[int, int, int]:
        with self._lock:
            return self.requests, self.errors, len(self.samples)

    def _record(self, error: str | None) -> None:
        with self._lock:
            self.requests += 1
            if error is not None:
                self.errors += 1
                self.samples.append(error)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url, timeout=5) as reply:
                    reply.read()
                self._record(None)
            except urllib.error.HTTPError as err:
                self._record(f"HTTP {err.code}: {err.read()[:120]!r}")
            except OSError as err:
                self._record(repr(err))
            time.sleep(self.interval)


def wait_generation(stub: pb_grpc.SchedulerServiceStub, generation: int, timeout: float = 300) -> pb.Environment:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        env = stub.GetEnvironment(pb.GetEnvironmentRequest(name=NAME), timeout=10)
        if env.observed_generation >= generation and env.status in SETTLED:
            return env
        time.sleep(0.1)
    raise SystemExit(f"{NAME} did not settle at generation {generation} within {timeout}s")


def update(
    stub: pb_grpc.SchedulerServiceStub, change: dict[str, dict[str, Any]], generations: int = 1
) -> pb.Environment:
    """Merge ``change`` (service -> overrides) into the current spec, roll it out, wait until settled."""
    env = stub.GetEnvironment(pb.GetEnvironmentRequest(name=NAME), timeout=10)
    spec = json_format.MessageToDict(env.spec)
    services = spec.setdefault("services", {})
    for service, overrides in change.items():
        services[service] = {**services.get(service, {}), **overrides}
    request = json_format.ParseDict({"name": NAME, "spec": spec}, pb.UpdateEnvironmentRequest())
    reply = stub.UpdateEnvironment(request, timeout=30)
    # A rollback is one more generation restoring the previous spec.
    return wait_generation(stub, reply.environment.generation + generations - 1)


def health(env: pb.Environment) -> dict[str, Any]:
    """What is not fine after a phase: containers not running healthy, conditions that do not hold."""
    return {
        "status": pb.EnvironmentStatus.Name(env.status),
        "not_ready": [
            f"{c.service}-{c.replica} {pb.ContainerState.Name(c.state)} {pb.HealthStatus.Name(c.health)} {c.message}"
            for c in env.containers
            if c.state != pb.CONTAINER_STATE_RUNNING
            or c.health not in (pb.HEALTH_STATUS_HEALTHY, pb.HEALTH_STATUS_NONE)
        ],
        "conditions": [f"{c.type}={c.status} {c.service} {c.reason}: {c.message}" for c in env.conditions],
    }


def phase(
    stub: pb_grpc.SchedulerServiceStub,
    loop: HttpLoop,
    name: str,
    settle: float,
    action: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    time.sleep(settle)
    requests, errors, samples = loop.snapshot()
    started = time.monotonic()
    extra: dict[str, Any] = action()
    seconds = time.monotonic() - started
    time.sleep(settle)
    requests_after, errors_after, _ = loop.snapshot()
    result = {
        "phase": name,
        "seconds": round(seconds, 2),
        "requests": requests_after - requests,
        "errors": errors_after - errors,
        "error_samples": loop.samples[samples : samples + 3],
        **extra,
        **health(stub.GetEnvironment(pb.GetEnvironmentRequest(name=NAME), timeout=10)),
    }
    print(json.dumps(result), flush=True)
    return result


def run(stub: pb_grpc.SchedulerServiceStub, interval: float, settle: float) -> dict[str, Any]:
    stub.CreateEnvironment(
        pb.CreateEnvironmentRequest(name=NAME, spec=pb.EnvironmentSpecification(stack="web-postgres")), timeout=10
    )
    env = wait_generation(stub, 1)
    if env.status != pb.ENVIRONMENT_STATUS_RUNNING:
        raise SystemExit(f"{NAME} did not start: {env.conditions}")
    endpoint = next(e for e in env.endpoints if e.service == "frontend")
    loop = HttpLoop(f"http://{endpoint.host_ip}:{endpoint.host_port}/", interval)
    loop.start()
    phases = []
    try:

        def replace(service: str) -> dict[str, Any]:
            env = update(stub, {service: {"env": {"V": "2"}}})
            return {"generation": env.generation}

        phases.append(phase(stub, loop, "backend update", settle, lambda: replace("backend")))
        phases.append(phase(stub, loop, "frontend update", settle, lambda: replace("frontend")))

        def broken() -> dict[str, Any]:
            probe = {"http": {"port": 8080, "path": "/nope"}, "interval": "0.2s", "retries": 2}
            env = update(stub, {"backend": {"healthCheck": probe}}, generations=2)
            rolled = next((c for c in env.conditions if c.type == "RolledBack"), None)
            return {"rolled_back": bool(rolled and rolled.status), "generation": env.generation}

        phases.append(phase(stub, loop, "broken update (rollback)", settle, broken))

        def scale() -> dict[str, Any]:
            three = update(stub, {"backend": {"replicas": 3}})
            replicas = sum(1 for c in three.containers if c.service == "backend")
            update(stub, {"backend": {"replicas": 1}})
            return {"replicas_at_peak": replicas}

        phases.append(phase(stub, loop, "scale 1->3->1", settle, scale))
    finally:
        loop.stop()
    return {
        "phases": phases,
        "total": {"requests": loop.requests, "errors": loop.errors},
        "target": "0 errors in every phase",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=0.01, help="pause between two requests of the loop (s)")
    parser.add_argument("--settle", type=float, default=1.0, help="loop time before and after each phase (s)")
    args = parser.parse_args()
    archives = build()
    with tempfile.TemporaryDirectory(prefix="bench-updates-") as tmp:
        daemon = start_daemon(
            Path(tmp), {"images": {"preload": [str(p) for p in archives.values()]}, "log": {"level": "info"}}
        )
        try:
            with daemon.channel() as channel:
                report = run(pb_grpc.SchedulerServiceStub(channel), args.interval, args.settle)
        finally:
            daemon.delete_all_environments()
            daemon.stop()
            daemon.cleanup()
        report["leftovers"] = leftovers.report([daemon_instance(daemon)], [tmp])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
