"""Daemon start to SERVING and its memory, with no environment and with many to adopt.

Run as root: ``python -m bench.adopt [--envs N] [--runs N]``.

A real daemon (managed containerd) is started ``runs`` times with no environment, interleaved
with a bare grpc.aio server of the same virtualenv that serves only the health service (the
baseline: what any Python gRPC daemon pays to start). Then it deploys ``envs`` toolbox
environments and, ``runs`` times each, is stopped (SIGTERM, a clean shutdown; or SIGKILL, a
crash) and started again on the same data. Measured per start: exec to SERVING (the health
service asked every 20 ms with a fresh channel; includes the start-up reconciliation, not the
image preload, which runs after SERVING) and the CPU the process used by then (less stretched
than the wall clock by other work on a shared host), the reconciliation alone, exec to every
environment reported RUNNING again and how many containers got another pid (restarts: 0 when
all were adopted), the daemon's RSS
and PSS two seconds after SERVING (the bare server's RSS too), and
where the start-up time went (the ``startup`` phases of its ``daemon.ready`` line).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import tempfile
import time
from pathlib import Path

from bench import leftovers
from bench.serving import Start, bare_grpc_start, cpu_seconds, memory_mb, wait_serving
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.support.daemon import DaemonProcess, free_port, start_daemon
from tests.support.images import TOOLBOX, build

IDLE = "trap 'exit 0' TERM INT; while :; do sleep 1; done"


def pids(stub: pb_grpc.SchedulerServiceStub) -> dict[str, tuple[int, ...]]:
    reply = stub.ListEnvironments(pb.ListEnvironmentsRequest(page_size=500), timeout=10)
    return {
        env.name: tuple(c.pid for c in env.containers)
        for env in reply.environments
        if env.status == pb.ENVIRONMENT_STATUS_RUNNING and all(c.pid for c in env.containers)
    }


def reconcile_seconds(daemon: DaemonProcess) -> tuple[float, int]:
    """Seconds the latest reconciliation took, and how many containers it adopted (from the log)."""
    lines = [line for line in daemon.log().splitlines() if '"reconcile.done"' in line]
    if not lines:
        return float("nan"), -1
    record = json.loads(lines[-1])
    return float(record.get("seconds", float("nan"))), int(record.get("adopted", -1))


def startup_phases(daemon: DaemonProcess) -> dict[str, float]:
    """The latest ``daemon.ready`` line's start-up phases (seconds per step)."""
    lines = [line for line in daemon.log().splitlines() if '"daemon.ready"' in line]
    return dict(json.loads(lines[-1]).get("startup", {})) if lines else {}


def restart(
    tmp: Path, daemon: DaemonProcess, sig: int, expected: dict[str, tuple[int, ...]]
) -> tuple[DaemonProcess, Start, float, int]:
    """Stop with ``sig``, start again: the start to SERVING, the seconds until every environment
    is RUNNING again with pids, and how many of its containers have another pid (restarted)."""
    if sig == signal.SIGKILL:
        daemon.process.kill()
        daemon.process.wait(10)
    else:
        daemon.stop(sig)
    started = time.monotonic()
    fresh = start_daemon(tmp, reuse_config=True, wait=False)
    wait_serving(fresh.address, fresh.process)
    serving = Start(time.monotonic() - started, cpu_seconds(fresh.process.pid))
    with fresh.channel() as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        deadline = time.monotonic() + 120
        while (now := pids(stub)).keys() != expected.keys():
            if time.monotonic() > deadline:
                raise SystemExit(f"environments not all RUNNING again after the restart:\n{fresh.log()[-3000:]}")
            time.sleep(0.02)
    adopted = time.monotonic() - started
    restarted = sum(1 for name, old in expected.items() for a, b in zip(old, now[name], strict=False) if a != b)
    restarted += sum(abs(len(old) - len(now[name])) for name, old in expected.items())
    return fresh, serving, adopted, restarted


def settled_memory(daemon: DaemonProcess) -> tuple[float, float]:
    """RSS and PSS (MB) of the daemon two seconds after it serves (what it keeps, not its start-up peak)."""
    time.sleep(2)
    return memory_mb(daemon.process.pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    archive = build()[TOOLBOX]
    with tempfile.TemporaryDirectory(prefix="adopt", dir="/tmp") as raw:
        tmp = Path(raw)
        try:
            run(tmp, archive, args)
        finally:
            leftovers.report(leftovers.instances_under(tmp), [tmp])


def run(tmp: Path, archive: Path, args: argparse.Namespace) -> None:
    """Measure; every environment is deleted and the daemon stopped and cleaned up, whatever happened."""
    daemon = start_daemon(tmp, {"images": {"preload": [str(archive)]}, "log": {"level": "info"}})
    try:
        baseline: list[Start] = []
        bare: list[Start] = []
        idle_memory, idle_phases = [], []
        for _ in range(args.runs):
            bare.append(bare_grpc_start(free_port()))
            daemon, serving, _, _ = restart(tmp, daemon, signal.SIGTERM, {})
            baseline.append(serving)
            idle_phases.append(startup_phases(daemon))
            idle_memory.append(settled_memory(daemon))
        # Printed now: the part with many environments may not finish on a crowded host.
        print(f"bare grpc.aio health server, exec to SERVING: {_runs([b.seconds for b in bare])} s", flush=True)
        print(f"daemon exec to SERVING, no environments: {_runs([b.seconds for b in baseline])} s", flush=True)
        print(f"daemon memory idle (RSS, PSS MB): {idle_memory}; start-up phases: {idle_phases}", flush=True)
        with daemon.channel() as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            config = pb.ContainerConfiguration(
                command=["sh", "-c", IDLE], restart_policy=pb.RestartPolicy(mode=pb.RESTART_MODE_ALWAYS)
            )
            names = [f"adopt-{i:03d}" for i in range(args.envs)]
            for name in names:
                spec = pb.EnvironmentSpecification(stack="toolbox", services={"toolbox": config})
                stub.CreateEnvironment(pb.CreateEnvironmentRequest(name=name, spec=spec), timeout=30)
            deadline = time.monotonic() + 60 + 3 * args.envs
            while len(expected := pids(stub)) < len(names):
                if time.monotonic() > deadline:
                    raise SystemExit("environments did not all reach RUNNING")
                time.sleep(0.2)
        loaded_memory = settled_memory(daemon)
        results: dict[str, list[tuple[Start, float, float, int]]] = {"SIGTERM": [], "SIGKILL": []}
        busy_memory, busy_phases = [], []
        for _ in range(args.runs):
            for label, sig in (("SIGTERM", signal.SIGTERM), ("SIGKILL", signal.SIGKILL)):
                daemon, serving, adopted, restarted = restart(tmp, daemon, sig, expected)
                seconds, count = reconcile_seconds(daemon)
                if count != len(names):
                    raise SystemExit(f"reconciliation adopted {count} containers, expected {len(names)}")
                results[label].append((serving, seconds, adopted, restarted))
                busy_phases.append(startup_phases(daemon))
                busy_memory.append(settled_memory(daemon))
        report(args.envs, bare, baseline, results, idle_memory, loaded_memory, busy_memory)
        print(f"start-up phases, no environment (s): {idle_phases}")
        print(f"start-up phases, {args.envs} to adopt (s): {busy_phases}")
    finally:
        try:
            daemon.delete_all_environments(timeout=120 + args.envs)
        finally:
            daemon.stop()
            daemon.cleanup()


def report(
    envs: int,
    bare: list[Start],
    baseline: list[Start],
    results: dict[str, list[tuple[Start, float, float, int]]],
    idle_memory: list[tuple[float, float]],
    loaded_memory: tuple[float, float],
    busy_memory: list[tuple[float, float]],
) -> None:
    """Print the figures, each start against the bare gRPC server's (wall clock and CPU), memory as measured."""
    median = statistics.median
    bare_s, bare_cpu = median(b.seconds for b in bare), median(b.cpu_seconds for b in bare)
    bare_rss = median(b.rss_mb for b in bare)
    print(
        f"bare grpc.aio health server, exec to SERVING: median {bare_s:.3f}s, CPU {bare_cpu:.2f}s, "
        f"RSS {bare_rss:.1f} MB (runs: {_runs([b.seconds for b in bare])})"
    )
    idle_s, idle_cpu = median(b.seconds for b in baseline), median(b.cpu_seconds for b in baseline)
    print(
        f"daemon exec to SERVING, no environments: median {idle_s:.3f}s "
        f"(runs: {_runs([b.seconds for b in baseline])}); "
        f"ratio to the bare server {idle_s / bare_s:.2f}; target <= 1 s; "
        f"CPU {idle_cpu:.2f}s (ratio to the bare server {idle_cpu / max(bare_cpu, 0.01):.2f})"
    )
    for label, rows in results.items():
        serving = median(r[0].seconds for r in rows)
        cpu = median(r[0].cpu_seconds for r in rows)
        restarted = sum(r[3] for r in rows)
        print(
            f"start -> SERVING with {envs} running (adopted, {restarted} restarts) after {label}: "
            f"median {serving:.3f}s (ratio to the bare server {serving / bare_s:.2f}; target <= 2 s), "
            f"CPU to SERVING median {cpu:.2f}s (ratio to the bare server {cpu / max(bare_cpu, 0.01):.2f}), "
            f"reconcile median {median(r[1] for r in rows):.3f}s, "
            f"to all adopted (same pids) median {median(r[2] for r in rows):.3f}s "
            f"(runs: {'; '.join(f'{a.seconds:.3f}/{b:.3f}/{c:.3f}' for a, b, c, _ in rows)})"
        )
    rss, pss = median(m[0] for m in idle_memory), median(m[1] for m in idle_memory)
    print(
        f"daemon memory idle, no environment: RSS {rss:.1f} MB, PSS {pss:.1f} MB (target RSS <= 60 MB; "
        f"ratio to the bare server's RSS {rss / max(bare_rss, 0.1):.2f})"
    )
    print(
        f"daemon memory with {envs} environments (after deploying them): "
        f"RSS {loaded_memory[0]:.1f} MB, PSS {loaded_memory[1]:.1f} MB"
    )
    rss, pss = median(m[0] for m in busy_memory), median(m[1] for m in busy_memory)
    print(
        f"daemon memory with {envs} environments (after a restart adopted them): "
        f"RSS {rss:.1f} MB, PSS {pss:.1f} MB (target RSS <= 120 MB)"
    )


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


if __name__ == "__main__":
    main()
