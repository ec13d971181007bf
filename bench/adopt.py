"""Time from daemon start to serving with running environments to adopt, after SIGTERM and SIGKILL.

Run as root: ``python -m bench.adopt [--envs N] [--runs N]``.

A real daemon (managed containerd) deploys ``envs`` toolbox environments. Then, ``runs`` times
each, the daemon is stopped (SIGTERM, a clean shutdown; or SIGKILL, a crash) and started again on
the same data. Measured per start: launch to SERVING (includes the image preload and the startup
reconciliation), the reconciliation alone (from its log line), and launch to every environment
reported RUNNING with the same pids as before (nothing restarted). The same daemon with no
environments gives the baseline start time.
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
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.support.daemon import DaemonProcess, daemon_instance, start_daemon
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


def restart(
    tmp: Path, daemon: DaemonProcess, sig: int, expected: dict[str, tuple[int, ...]]
) -> tuple[DaemonProcess, float, float]:
    """Stop with ``sig``, start again; seconds to SERVING and to every environment adopted as it was."""
    if sig == signal.SIGKILL:
        daemon.process.kill()
        daemon.process.wait(10)
    else:
        daemon.stop(sig)
    started = time.monotonic()
    fresh = start_daemon(tmp, reuse_config=True)
    serving = time.monotonic() - started
    with fresh.channel() as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        deadline = time.monotonic() + 120
        while pids(stub) != expected:
            if time.monotonic() > deadline:
                raise SystemExit(f"environments not adopted as they were:\n{fresh.log()[-3000:]}")
            time.sleep(0.02)
    adopted = time.monotonic() - started
    return fresh, serving, adopted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    archive = build()[TOOLBOX]
    with tempfile.TemporaryDirectory(prefix="adopt", dir="/tmp") as raw:
        tmp = Path(raw)
        daemon = start_daemon(tmp, {"images": {"preload": [str(archive)]}, "log": {"level": "info"}})
        try:
            baseline = []
            for _ in range(args.runs):
                daemon, serving, _ = restart(tmp, daemon, signal.SIGTERM, {})
                baseline.append(serving)
            with daemon.channel() as channel:
                stub = pb_grpc.SchedulerServiceStub(channel)
                config = pb.ContainerConfiguration(
                    command=["sh", "-c", IDLE], restart_policy=pb.RestartPolicy(mode=pb.RESTART_MODE_ALWAYS)
                )
                names = [f"adopt-{i:02d}" for i in range(args.envs)]
                for name in names:
                    spec = pb.EnvironmentSpecification(stack="toolbox", services={"toolbox": config})
                    stub.CreateEnvironment(pb.CreateEnvironmentRequest(name=name, spec=spec), timeout=30)
                deadline = time.monotonic() + 300
                while len(expected := pids(stub)) < len(names):
                    if time.monotonic() > deadline:
                        raise SystemExit("environments did not all reach RUNNING")
                    time.sleep(0.2)
            results: dict[str, list[tuple[float, float, float]]] = {"SIGTERM": [], "SIGKILL": []}
            for _ in range(args.runs):
                for label, sig in (("SIGTERM", signal.SIGTERM), ("SIGKILL", signal.SIGKILL)):
                    daemon, serving, adopted = restart(tmp, daemon, sig, expected)
                    seconds, count = reconcile_seconds(daemon)
                    if count != len(names):
                        raise SystemExit(f"reconciliation adopted {count} containers, expected {len(names)}")
                    results[label].append((serving, seconds, adopted))
            print(
                f"daemon start to SERVING, no environments: median {statistics.median(baseline):.3f}s "
                f"(runs: {', '.join(f'{b:.3f}' for b in baseline)})"
            )
            for label, rows in results.items():
                print(
                    f"after {label} with {len(names)} running environments: "
                    f"to SERVING median {statistics.median(r[0] for r in rows):.3f}s, "
                    f"reconcile median {statistics.median(r[1] for r in rows):.3f}s, "
                    f"to all adopted (same pids) median {statistics.median(r[2] for r in rows):.3f}s "
                    f"(runs: {'; '.join(f'{a:.3f}/{b:.3f}/{c:.3f}' for a, b, c in rows)})"
                )
            with daemon.channel() as channel:
                stub = pb_grpc.SchedulerServiceStub(channel)
                for name in names:
                    stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name=name), timeout=10)
                deadline = time.monotonic() + 120
                while stub.ListEnvironments(pb.ListEnvironmentsRequest(page_size=500), timeout=10).environments:
                    if time.monotonic() > deadline:
                        raise SystemExit("environments were not deleted")
                    time.sleep(0.2)
        finally:
            daemon.delete_all_environments()
            daemon.stop()
            daemon.cleanup()
        leftovers.report([daemon_instance(daemon)], [tmp])


if __name__ == "__main__":
    main()
