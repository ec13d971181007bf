"""web-postgres from CreateEnvironment to its page served through the database, against a serial baseline.

Run as root: ``python -m bench.env_create [--runs N] [--parallel N]``.

- **scheduler**: a real daemon process (managed containerd), CreateEnvironment over gRPC, watched
  (WatchEvents, opened before the create; GetEnvironment every 0.25 s besides) until RUNNING and
  then its published page polled until it is served through the backend and PostgreSQL, then
  deleted. ``runs`` times, after ``warmup`` creates (the first builds the PostgreSQL template
  once per image, reported apart as ``first_create_builds_template_s``).
- **serial baseline**: the same three containers (postgres, backend, frontend) with the same
  images, network and health checks, started one after another directly through the runtime and
  network layers, each waiting for its health check before the next starts: the way a shell
  script would do it, until the published page shows the database's answer (the scheduler's
  runs end there too). Same containerd, own namespace and network instance. Each run on either
  side starts once the previous one's background work is done (``settle``).
- **parallel**: ``parallel`` environments created at once; wall time until every one serves its
  page, and its ratio to ``parallel`` times the single-environment median (target <= 0.3). Also
  the CPU seconds they took (the daemon, the CNI plugins it ran, containerd, shims and runc, the
  containers' own processes) and the floor that sets: that CPU spread over every core.

Targets: the single create's median <= 1.0 s and <= 0.25 x the serial baseline's.
``BENCH_TIMELINE=1`` prints each run's steps (the daemon's operation record, the baseline's marks).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import yaml

from bench import compose, leftovers
from bench.burst import cpu_used
from scheduler import domain
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from scheduler.network.cni import CniNetwork, CniSettings
from scheduler.orchestrator import health
from scheduler.orchestrator.templates import TemplateSettings
from scheduler.runtime.containerd.image_options import ImageOptions
from scheduler.runtime.containerd.runtime import ContainerdRuntime
from scheduler.stacks.catalog import default_catalog
from scheduler.stacks.resolve import resolve
from tests.support.daemon import DaemonProcess, daemon_instance, start_daemon
from tests.support.images import build

RUNNING = pb.ENVIRONMENT_STATUS_RUNNING
TIMELINE = bool(os.environ.get("BENCH_TIMELINE"))


class Watch:
    """An environment's events as they come (a thread reads the stream): RUNNING seen without polling."""

    def __init__(self, stub: pb_grpc.SchedulerServiceStub, name: str) -> None:
        self._call = stub.WatchEvents(pb.WatchEventsRequest(name=name))
        self.settled = threading.Event()
        """Set at the environment's RUNNING or FAILED event."""
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        ends = (pb.EVENT_TYPE_ENVIRONMENT_RUNNING, pb.EVENT_TYPE_ENVIRONMENT_FAILED)
        try:
            for event in self._call:
                if event.type in ends:
                    self.settled.set()
        except grpc.RpcError:
            pass  # cancelled by close()

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(timeout=5)


def wait_running(
    stub: pb_grpc.SchedulerServiceStub, name: str, timeout: float = 300, watch: Watch | None = None
) -> pb.Environment:
    """Until ``name`` is RUNNING: looked up at each of ``watch``'s ends, else (and at least) every 0.25 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        env = stub.GetEnvironment(pb.GetEnvironmentRequest(name=name), timeout=10)
        if env.status == RUNNING:
            return env
        if env.status == pb.ENVIRONMENT_STATUS_FAILED:
            raise SystemExit(f"{name} failed: {env.conditions}")
        if watch is None:
            time.sleep(0.05)
        else:
            watch.settled.wait(0.25)
    raise SystemExit(f"{name} not RUNNING within {timeout}s")


def wait_serving(
    stub: pb_grpc.SchedulerServiceStub, name: str, timeout: float = 300, watch: Watch | None = None
) -> None:
    """RUNNING, and its published page served through the backend and PostgreSQL."""
    started = time.monotonic()
    env = wait_running(stub, name, timeout, watch)
    port = next(e.host_port for e in env.endpoints if e.service == "frontend")
    page_shows_database(port, max(started + timeout - time.monotonic(), 1))


def wait_deleted(stub: pb_grpc.SchedulerServiceStub, names: list[str]) -> None:
    for name in names:
        stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name=name), timeout=10)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if not stub.ListEnvironments(pb.ListEnvironmentsRequest(page_size=500), timeout=10).environments:
            return
        time.sleep(0.2)
    raise SystemExit("environments not deleted in time")


def scheduler_runs(daemon: DaemonProcess, runs: int, first: int = 0, prefix: str = "bench") -> list[float]:
    times = []
    with daemon.channel() as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        for index in range(first, first + runs):
            name = f"{prefix}-{index}"
            watch = Watch(stub, name)
            time.sleep(0.05)  # the stream reaches the daemon before the create
            wall = time.time()
            started = time.monotonic()
            try:
                stub.CreateEnvironment(
                    pb.CreateEnvironmentRequest(name=name, spec=pb.EnvironmentSpecification(stack="web-postgres")),
                    timeout=10,
                )
                replied = time.monotonic() - started
                wait_serving(stub, name, watch=watch)
                times.append(time.monotonic() - started)
            finally:
                watch.close()
            if TIMELINE:
                print_steps(stub, name, wall, replied, times[-1])
            wait_deleted(stub, [name])
    return times


def print_steps(stub: pb_grpc.SchedulerServiceStub, name: str, wall: float, replied: float, served: float) -> None:
    """The deploy's steps in seconds from the request (wall clock), the reply and when the page was served."""
    operations = stub.ListOperations(pb.ListOperationsRequest(name=name), timeout=10).operations
    deploy = next(o for o in operations if o.kind == "deploy")
    origin = int(wall * 1e9)
    steps = [
        (round((s.time.ToNanoseconds() - origin) / 1e9, 3), s.step, s.service, s.detail[:60]) for s in deploy.steps
    ]
    end = round((deploy.end_time.ToNanoseconds() - origin) / 1e9, 3)
    begun = round((deploy.start_time.ToNanoseconds() - origin) / 1e9, 3)
    print(f"scheduler timeline ({name}: replied {replied:.3f}s, deploy {begun}s to {end}s, served {served:.3f}s):")
    for step in steps:
        print("   ", *step)


def cpu_now(daemon: DaemonProcess) -> dict[str, float]:
    """CPU seconds so far of the daemon, its reaped children, containerd, the shims with runc, and the containers."""
    used = cpu_used(daemon)
    namespace = yaml.safe_load(daemon.config_path.read_text())["containerd"]["namespace"]
    used["containers"] = containers_cpu_seconds(namespace)
    return used


def containers_cpu_seconds(namespace: str) -> float:
    """CPU seconds of every container of a containerd namespace so far, the removed ones included.

    Its cgroup (``/<namespace>/<id>`` per container) charges its parent as it goes, so the
    namespace's own counter keeps what containers deleted meanwhile used (cgroup v1 or v2).
    """
    v1 = Path("/sys/fs/cgroup/cpuacct", namespace, "cpuacct.usage")
    if v1.exists():
        return int(v1.read_text()) / 1e9
    v2 = Path("/sys/fs/cgroup", namespace, "cpu.stat")
    if v2.exists():
        fields = dict(line.split() for line in v2.read_text().splitlines())
        return int(fields["usage_usec"]) / 1e6
    return 0.0


def parallel_run(daemon: DaemonProcess, count: int) -> tuple[float, dict[str, float]]:
    """Wall seconds until ``count`` environments created at once all serve, and the CPU seconds spent."""
    names = [f"par-{i}" for i in range(count)]
    with daemon.channel() as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        before = cpu_now(daemon)
        started = time.monotonic()
        for name in names:
            stub.CreateEnvironment(
                pb.CreateEnvironmentRequest(name=name, spec=pb.EnvironmentSpecification(stack="web-postgres")),
                timeout=10,
            )
        for name in names:
            wait_serving(stub, name, timeout=900)
        elapsed = time.monotonic() - started
        spent = {k: round(v - before[k], 2) for k, v in cpu_now(daemon).items()}
        wait_deleted(stub, names)
    return elapsed, spent


def page_shows_database(port: int, timeout: float = 300) -> None:
    """Wait until the frontend's page on ``port`` shows PostgreSQL's answer (through backend and database)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as reply:
                if "PostgreSQL" in reply.read().decode(errors="replace"):
                    return
        except OSError:  # refused, reset, or an HTTP error status (URLError is an OSError)
            pass
        time.sleep(0.01)
    raise SystemExit(f"port {port}: no page from the database within {timeout}s")


def busy_seconds() -> tuple[float, float]:
    """CPU seconds spent busy and in all, over every core, since boot (``/proc/stat``)."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz


def settle(quiet: float = 0.15, window: float = 0.25, limit: float = 10.0) -> None:
    """Wait until the last run's background work is done: past the delay after which the daemon
    copies a template spare to replace the one a run took, then (at most ``limit`` seconds more)
    until the cores were less than ``quiet`` busy over ``window``."""
    time.sleep(TemplateSettings().spare_delay.total_seconds() + window)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        busy0, all0 = busy_seconds()
        time.sleep(window)
        busy1, all1 = busy_seconds()
        if all1 > all0 and (busy1 - busy0) / (all1 - all0) < quiet:
            return


async def serial_baseline(
    daemon: DaemonProcess,
    runs: int,
    state: Path,
    first: int = 0,
    instances: list[str] | None = None,
    page: bool = False,
) -> list[float]:
    """Start postgres, then backend, then frontend, each health-gated, through the layers directly.

    With ``page``, each run ends when the published page shows the database's answer (what
    ``bench.template_create`` times on the scheduler's side), not when the last is healthy.
    Its network instance is torn down at the end (chains, bridge) and named in ``instances``.
    """
    runtime = await ContainerdRuntime.connect(
        str(daemon.data_dir / "containerd" / "containerd.sock"),
        namespace="baseline" + secrets.token_hex(3),
        state_dir=state / "runtime",
        images=ImageOptions(),
    )
    settings = CniSettings(pool=f"10.{240 + first % 10}.0.0/16", port_range=(31000, 31999))
    instance = "bl" + secrets.token_hex(2)
    if instances is not None:
        instances.append(instance)
    network = CniNetwork(state / "network", settings, instance=instance)
    await network.start()
    archives = build()
    for archive in archives.values():
        await runtime.import_archive(archive)
    times = []
    try:
        for index in range(first, first + runs):
            env = f"base{index}"
            spec = resolve(domain.EnvironmentRequest(stack="web-postgres"), env, default_catalog())
            started = time.monotonic()
            marks: list[tuple[str, str, float]] = []
            await network.ensure_environment(env)
            ids = []
            for service in spec.services:
                await network.ensure_service(env, service.name, [p.container_port for p in service.ports])
                image = await runtime.ensure_image(service.image, domain.PullPolicy.IF_NOT_PRESENT)
                cid = f"{env}.{service.name}.0"
                attachment = await network.attach(env, cid, hostname=f"{service.name}-0", aliases=(service.name,))
                volumes = []
                for volume in service.volumes:
                    path = state / "volumes" / env / volume.name
                    path.mkdir(parents=True, exist_ok=True)
                    volumes.append(domain.Mount(volume.path, str(path)))
                await runtime.create(
                    domain.ContainerConfig(
                        id=cid,
                        image=image,
                        command=service.command,
                        args=service.args,
                        env=service.env,
                        hostname=f"{service.name}-0",
                        mounts=(
                            domain.Mount("/etc/hosts", attachment.hosts_path, options=("rbind", "ro")),
                            domain.Mount("/etc/resolv.conf", attachment.resolv_path, options=("rbind", "ro")),
                            *volumes,
                        ),
                        netns_path=attachment.netns_path,
                        resources=service.resources,
                        log_dir=str(state / "logs" / cid),
                    )
                )
                await runtime.start(cid)
                marks.append((service.name, "started", time.monotonic() - started))
                ids.append(cid)
                # The same probes at the same cadence as the scheduler's: only the ordering differs.
                if service.health.kind is not domain.HealthCheckKind.NONE:
                    await health.wait_healthy(service.health, runtime, cid, attachment.ip, time.monotonic())
                marks.append((service.name, "healthy", time.monotonic() - started))
                await network.set_backends(env, service.name, [attachment.ip])
            published = [
                await network.publish(env, "frontend", port.container_port)
                for port in (p for s in spec.services for p in s.ports if p.publish)
            ]
            if page:
                await asyncio.to_thread(page_shows_database, published[0].host_port)
            times.append(time.monotonic() - started)
            if TIMELINE:
                print("baseline timeline:", [(n, k, round(t, 3)) for n, k, t in marks])
            for cid in reversed(ids):
                await runtime.stop(cid, domain.ServiceSpec("x", "x").stop_grace)
                await runtime.delete(cid)
                await network.detach(env, cid)
            await network.delete_environment(env)
    finally:
        await network.teardown()
        await network.close()
        await runtime.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--parallel", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=1, help="creates before the measured runs (not in the median)")
    args = parser.parse_args()
    archives = build()
    with tempfile.TemporaryDirectory(prefix="bench-env-") as tmp:
        daemon = start_daemon(
            Path(tmp), {"images": {"preload": [str(p) for p in archives.values()]}, "log": {"level": "info"}}
        )
        instances = [daemon_instance(daemon)]
        try:
            warmup = scheduler_runs(daemon, args.warmup, prefix="warmup") if args.warmup else []
            # Interleaved, so that drift of the shared machine hits both sides alike.
            ours, baseline = [], []
            for index in range(args.runs):
                settle()
                ours += scheduler_runs(daemon, 1, first=index)
                state = Path(tmp) / f"baseline{index}"
                settle()
                baseline += asyncio.run(serial_baseline(daemon, 1, state, first=index, instances=instances, page=True))
            together, spent = parallel_run(daemon, args.parallel) if args.parallel else (0.0, {})
        finally:
            daemon.delete_all_environments()
            daemon.stop()
            daemon.cleanup()
        left = leftovers.report(instances, [tmp])
    single = statistics.median(ours)
    report = {
        "web_postgres_create_to_serving_s": {"median": round(single, 3), "samples": [round(t, 3) for t in ours]},
        "serial_baseline_s": {
            "median": round(statistics.median(baseline), 3),
            "samples": [round(t, 3) for t in baseline],
        },
        "ratio_scheduler_to_serial": round(single / statistics.median(baseline), 3),
        "target": "median <= 1.0 s and ratio <= 0.25 (create to page served, against the serial baseline)",
    }
    if warmup:
        report["first_create_builds_template_s"] = round(warmup[0], 3)
    if args.parallel:
        n = args.parallel
        report[f"{n}_at_once_to_all_serving_s"] = round(together, 3)
        report[f"ratio_{n}_at_once_to_{n}x_single"] = round(together / (n * single), 3)
        report[f"target_{n}_at_once"] = f"ratio <= 0.3 ({n} at once, all serving, against {n} x the single run)"
        # The CPU they took, spread perfectly over every core with nothing else running: no
        # order or concurrency of deploys finishes them sooner.
        cpus = len(os.sched_getaffinity(0))
        floor = sum(spent.values()) / cpus
        report[f"{n}_at_once_cpu_s"] = spent
        report[f"{n}_at_once_cpu_floor_s"] = {"seconds": round(floor, 3), "cpus": cpus}
        report[f"ratio_{n}_at_once_cpu_floor_to_{n}x_single"] = round(floor / (n * single), 3)
        report["load_average"] = open("/proc/loadavg").read().split()[:3]
    report["leftovers"] = left
    report["docker_compose"] = compose.note("create to serving")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
