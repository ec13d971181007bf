"""Many web-postgres environments on one host, created one after another: time, and memory per idle one.

Run as root: ``python -m bench.density [--envs N]``.

A real daemon (managed containerd, images preloaded) creates ``envs`` web-postgres environments
one after another, each RUNNING before the next is created, and then lets them sit idle. Per
idle environment, what the host pays beyond the containers' own processes (PSS, so that shared
pages are counted once): the containerd shims, the log processes (each task's waiting process
and the host's shared log writer), and a share of the daemon and of its containerd. The serial
creation time of the first and the last environment shows whether creating gets slower as the
host fills; after the idle time every environment must still be RUNNING.

The docker side (``bench.docker_stack``): the same number of web-postgres stacks with the same
images, published port and probes under a private dockerd, then the same accounting: its shims,
docker-proxy processes, and dockerd's and its containerd's share. Printed: both, per environment,
and the ratio of ours to docker's (target <= 1). docker compose v2 itself is not on Debian (see
bench/compose.py); what it adds to docker is a client that exits once the stack is up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from bench import compose, docker_stack, leftovers
from bench.dockerd import PrivateDockerd
from bench.serving import memory_mb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from scheduler.runtime import logger
from tests.support.daemon import DaemonProcess, start_daemon
from tests.support.images import build
from tests.support.processes import cmdline, descendants, processes_naming, shims_of


def host_overhead(daemon: DaemonProcess) -> dict[str, tuple[int, float]]:
    """Per kind of host process: how many there are and their PSS in MB, summed."""
    socket = str(daemon.data_dir / "containerd" / "containerd.sock")
    shims = list(shims_of(socket))
    log_waiters = [
        pid
        for shim in shims
        for pid in descendants(shim)
        if (args := cmdline(pid)) and args[0].startswith(f"{logger.PROGRAM}-wait dir {daemon.data_dir}")
    ]
    runtime_bin = str(daemon.data_dir / "runtime" / "bin") + "/"
    writers = [pid for pid in processes_naming(runtime_bin) if logger.is_shared_writer(cmdline(pid))]
    containerd = int((daemon.data_dir / "containerd" / "containerd.pid").read_text())

    def pss(pids: list[int]) -> tuple[int, float]:
        return len(pids), sum(memory_mb(pid)[1] for pid in pids)

    return {
        "shims": pss(shims),
        "log processes": pss(log_waiters + writers),
        "daemon": pss([daemon.process.pid]),
        "containerd": pss([containerd]),
    }


def count_running(stub: pb_grpc.SchedulerServiceStub) -> int:
    """How many environments are RUNNING, over every page of ListEnvironments."""
    running, token = 0, ""
    while True:
        page = stub.ListEnvironments(pb.ListEnvironmentsRequest(page_size=500, page_token=token), timeout=30)
        running += sum(1 for env in page.environments if env.status == pb.ENVIRONMENT_STATUS_RUNNING)
        token = page.next_page_token
        if not token:
            return running


def create_running(stub: pb_grpc.SchedulerServiceStub, name: str, attempts: int = 3) -> int:
    """Create ``name`` and wait until RUNNING; a FAILED deploy (a probe timing out on a host under
    heavy load) is named, deleted and created again. Returns how many attempts FAILED."""
    spec = pb.EnvironmentSpecification(stack="web-postgres")
    for attempt in range(attempts):
        stub.CreateEnvironment(pb.CreateEnvironmentRequest(name=name, spec=spec), timeout=30)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            env = stub.GetEnvironment(pb.GetEnvironmentRequest(name=name), timeout=30)
            if env.status in (pb.ENVIRONMENT_STATUS_RUNNING, pb.ENVIRONMENT_STATUS_FAILED):
                break
            time.sleep(0.05)
        if env.status == pb.ENVIRONMENT_STATUS_RUNNING:
            return attempt
        reason = env.conditions[0].message if env.conditions else pb.EnvironmentStatus.Name(env.status)
        print(f"  {name} attempt {attempt + 1} not RUNNING: {reason}", flush=True)
        stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name=name), timeout=30)
        gone_by = time.monotonic() + 300
        while time.monotonic() < gone_by:
            try:
                stub.GetEnvironment(pb.GetEnvironmentRequest(name=name), timeout=30)
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    break
                raise
            time.sleep(0.2)
    raise SystemExit(f"{name} not RUNNING after {attempts} attempts")


def measure_docker(
    archives: dict[str, Path], envs: int, idle: float, interval: int
) -> tuple[float, dict[str, tuple[int, float]], int]:
    """The docker side: bring-up time, overhead per kind after ``idle`` seconds, leftovers."""
    with PrivateDockerd() as docker:
        docker_stack.load_images(docker, archives)
        started = time.monotonic()
        docker_stack.up_many(docker, envs, interval, at_once=max(2, len(os.sched_getaffinity(0))))
        elapsed = time.monotonic() - started
        time.sleep(idle)
        overhead = docker_stack.overhead(docker)
    return elapsed, overhead, docker.leftovers()


def print_overhead(title: str, overhead: dict[str, tuple[int, float]], envs: int) -> float:
    """Print the per-kind lines; returns the total per environment."""
    total = 0.0
    print(title)
    for kind, (count, pss) in overhead.items():
        total += pss / envs
        print(f"  {kind:14s} {pss / envs:7.2f}  ({count} processes, {pss:.1f} MB in all)")
    print(f"  {'total':14s} {total:7.2f}")
    return total


def measure(
    tmp: Path, archives: dict[str, Path], envs: int, idle: float
) -> tuple[list[float], dict[str, tuple[int, float]]]:
    """Create the environments one after another, idle, measure; then delete them and clean up."""
    daemon = start_daemon(tmp, {"images": {"preload": [str(p) for p in archives.values()]}, "log": {"level": "info"}})
    try:
        times = []
        with daemon.channel() as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            failures = 0
            for index in range(envs):
                name = f"dense-{index:03d}"
                started = time.monotonic()
                failures += create_running(stub, name)
                times.append(time.monotonic() - started)
            print(f"deploys that FAILED and were created again: {failures}", flush=True)
            time.sleep(idle)
            running = count_running(stub)
            print(f"after {idle:g}s idle: {running} of {envs} environments RUNNING", flush=True)
            if running != envs:
                raise SystemExit(f"only {running} of {envs} environments RUNNING after {idle:g}s idle")
            return times, host_overhead(daemon)
    finally:
        try:
            daemon.delete_all_environments(timeout=120 + 5 * envs)
        finally:
            daemon.stop()
            daemon.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=100)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds idle before measuring")
    parser.add_argument("--docker-envs", type=int, default=-1, help="docker's environments (-1: --envs, 0: none)")
    parser.add_argument("--docker-health-interval", type=int, default=60, help="seconds (see bench.docker_stack)")
    args = parser.parse_args()
    if args.docker_envs < 0:
        args.docker_envs = args.envs
    archives = build()
    with tempfile.TemporaryDirectory(prefix="density", dir="/tmp") as raw:
        tmp = Path(raw)
        try:
            times, overhead = measure(tmp, archives, args.envs, args.idle)
        finally:
            left = leftovers.report(leftovers.instances_under(tmp), [tmp])
    tenth = max(1, args.envs // 10)
    print(
        f"{args.envs} web-postgres created one after another, each RUNNING before the next: "
        f"{sum(times):.1f}s in all; first {tenth} median {statistics.median(times[:tenth]):.2f}s, "
        f"last {tenth} median {statistics.median(times[-tenth:]):.2f}s "
        f"(ratio last/first {statistics.median(times[-tenth:]) / statistics.median(times[:tenth]):.2f})"
    )
    ours = print_overhead(f"host memory per idle environment (PSS, MB), {args.envs} environments:", overhead, args.envs)
    if args.docker_envs:
        interval = args.docker_health_interval
        elapsed, theirs, docker_left = measure_docker(archives, args.docker_envs, args.idle, interval)
        left += docker_left
        docker_total = print_overhead(
            f"docker (private dockerd), {args.docker_envs} web-postgres up in {elapsed:.1f}s (health checks every "
            f"{interval}s), per idle environment (PSS, MB):",
            theirs,
            args.docker_envs,
        )
        print(f"  ratio ours / docker, host memory per idle environment: {ours / docker_total:.2f} (target <= 1)")
    print(compose.note("memory per idle environment"))
    print(f"leftovers: {left}")


if __name__ == "__main__":
    main()
