"""Many one-container environments created at once: when the first, the median and the last is RUNNING.

Run as root: ``python -m bench.burst [--envs N] [--runs N] [--only-admitted] [--profile DIR]``.

Each run starts a real daemon (managed containerd, the toolbox image preloaded) twice, one
after the other on fresh data: once as configured by default (deploys admitted a few at a
time, first come first served: ``deploys.concurrency: 0``) and once admitting every deploy at
once (``deploys.concurrency: N``, how the daemon behaved before admission), the baseline. All
``envs`` CreateEnvironment calls are sent back to back; a WatchEvents stream notes when each
environment turns RUNNING. Printed: first, median and last RUNNING (seconds after the first
create) with the deciles, for both, their ratios, then the time until every environment is
deleted again, and the leftovers (0 when everything the run made was removed). Per run also:
when the last create was accepted, and the CPU seconds the daemon, the children it reaped (CNI
plugins, iptables), containerd and the shims (with runc) spent until the last RUNNING.
``--profile DIR`` runs each daemon under cProfile (``SCHEDULER_PROFILE``) and keeps its stats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import grpc

from bench import leftovers
from bench.serving import children_cpu_seconds, cpu_seconds
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.support.daemon import DaemonProcess, daemon_instance, start_daemon
from tests.support.images import TOOLBOX, build
from tests.support.processes import shims_of

IDLE = "trap 'exit 0' TERM INT; while :; do sleep 1; done"


def cpu_used(daemon: DaemonProcess) -> dict[str, float]:
    """CPU seconds so far of the daemon, of the children it reaped (CNI plugins, iptables), of containerd,
    and of the shims with the children they reaped (runc)."""
    containerd = int((daemon.data_dir / "containerd" / "containerd.pid").read_text())
    pid = daemon.process.pid
    shims = shims_of(str(daemon.data_dir / "containerd" / "containerd.sock"))
    return {
        "daemon": cpu_seconds(pid),
        "its children": children_cpu_seconds(pid),
        "containerd": cpu_seconds(containerd),
        "shims and runc": sum(cpu_seconds(s) + children_cpu_seconds(s) for s in shims),
    }


def burst(daemon: DaemonProcess, count: int, timeout: float) -> tuple[list[float], float]:
    """Create ``count`` environments at once; seconds to each RUNNING (sorted), and to all deleted.

    Also printed: the CPU seconds the daemon, its children and containerd spent on the creates.
    """
    names = [f"burst-{i:03d}" for i in range(count)]
    running: dict[str, float] = {}
    failed: dict[str, str] = {}
    watching = threading.Event()
    with daemon.channel() as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        stream = stub.WatchEvents(pb.WatchEventsRequest(), timeout=timeout)
        started = [0.0]

        def watch() -> None:
            watching.set()
            try:
                for event in stream:
                    if event.type == pb.EVENT_TYPE_ENVIRONMENT_RUNNING and event.environment not in running:
                        running[event.environment] = time.monotonic() - started[0]
                    elif event.type == pb.EVENT_TYPE_ENVIRONMENT_FAILED:
                        failed[event.environment] = event.message
                    if len(running) + len(failed) >= count:
                        stream.cancel()
            except grpc.RpcError:
                pass

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        watching.wait(10)
        time.sleep(0.3)  # the stream is established before the first create
        config = pb.ContainerConfiguration(command=["sh", "-c", IDLE])
        before = cpu_used(daemon)
        started[0] = time.monotonic()
        for name in names:
            spec = pb.EnvironmentSpecification(stack="toolbox", services={"toolbox": config})
            stub.CreateEnvironment(pb.CreateEnvironmentRequest(name=name, spec=spec), timeout=60)
        accepted = time.monotonic() - started[0]
        watcher.join(timeout)
        stream.cancel()
        spent = {k: v - before[k] for k, v in cpu_used(daemon).items()}
        figures = ", ".join(f"{k} {v:.1f}" for k, v in spent.items())
        print(f"  all created after {accepted:.2f}s; CPU seconds until the last RUNNING: {figures}", flush=True)
        if len(running) + len(failed) < count:
            raise SystemExit(f"only {len(running)} of {count} environments RUNNING within {timeout:g}s")
        if failed:
            reasons = sorted(set(failed.values()))
            print(f"  {len(failed)} of {count} deploys FAILED (counted as never RUNNING): {reasons[:5]}", flush=True)
        deleting = time.monotonic()
        try:
            daemon.delete_all_environments(timeout=timeout)
        except (AssertionError, grpc.RpcError) as err:
            print(f"  not every environment was deleted: {err}", flush=True)
            return sorted(running.values()), float("nan")
        deleted = time.monotonic() - deleting
    return sorted(running.values()), deleted


def one_run(
    tmp: Path, archive: Path, count: int, concurrency: int, timeout: float, profile: Path | None = None
) -> tuple[list[float], float, int]:
    """A fresh daemon with ``deploys.concurrency``; the burst's figures and the leftovers afterwards.

    ``profile``: where the daemon writes its cProfile stats when it stops.
    """
    daemon = start_daemon(
        tmp,
        {"images": {"preload": [str(archive)]}, "log": {"level": "info"}, "deploys": {"concurrency": concurrency}},
        env={"SCHEDULER_PROFILE": str(profile)} if profile is not None else None,
    )
    try:
        times, deleted = burst(daemon, count, timeout)
    finally:
        daemon.stop()
        daemon.cleanup()
        left = leftovers.report([daemon_instance(daemon)], [tmp])
    return times, deleted, left


def describe(times: list[float]) -> tuple[float, float, float]:
    return times[0], statistics.median(times), times[-1]


def line(times: list[float], deleted: float) -> str:
    """One run's figures."""
    first, median, last = describe(times)
    return (
        f"{len(times)} RUNNING; first {first:6.2f}s, median {median:6.2f}s, last {last:6.2f}s; "
        f"median/last {median / last:.2f}; deciles {' '.join(f'{q:.1f}' for q in statistics.quantiles(times, n=10))}; "
        f"all deleted in {deleted:.2f}s; load {os.getloadavg()[0]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=200)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--only-admitted", action="store_true", help="skip the baseline (no ratios)")
    parser.add_argument(
        "--profile", type=Path, help="directory for the daemons' cProfile stats (<mode>-<run>.prof; `python -m pstats`)"
    )
    args = parser.parse_args()
    archive = build()[TOOLBOX]
    results: dict[str, list[tuple[list[float], float]]] = {"admitted": [], "all at once": []}
    left = 0
    with tempfile.TemporaryDirectory(prefix="burst", dir="/tmp") as raw:
        for run in range(args.runs):
            # Alternate which goes first, so that drift of the shared machine hits both alike.
            modes = [("admitted", 0), ("all at once", args.envs)][: 1 if args.only_admitted else 2]
            for label, concurrency in modes if run % 2 == 0 else modes[::-1]:
                sub = Path(raw) / f"{run}-{concurrency}"
                sub.mkdir()
                profile = args.profile / f"{label.replace(' ', '-')}-{run}.prof" if args.profile else None
                times, deleted, leftover = one_run(sub, archive, args.envs, concurrency, args.timeout, profile)
                results[label].append((times, deleted))
                left += leftover
                print(f"  {label}: {line(times, deleted)}", flush=True)
    print(f"{args.envs} one-container environments created at once, {args.runs} run(s) each way")
    for label, rows in results.items():
        for times, deleted in rows:
            print(f"  {label:12s}: {line(times, deleted)}")
    ours = [describe(t) for t, _ in results["admitted"]]
    base = [describe(t) for t, _ in results["all at once"]]
    for index, name in enumerate(("first", "median", "last")):
        if base:
            ratio = statistics.median(o[index] for o in ours) / statistics.median(b[index] for b in base)
            print(f"  ratio admitted / all at once, {name} RUNNING: {ratio:.2f}")
    print("  targets: first <= 2 s, median <= 0.25 x last, last <= 0.5 x 83 s (the figure before admission)")
    print(f"leftovers in all: {left}")


if __name__ == "__main__":
    main()
