"""Many web-postgres environments on one host, created one after another: time, and memory per idle one.

Run as root: ``python -m bench.density [--envs N]``.

A real daemon (managed containerd, images preloaded) creates ``envs`` web-postgres environments
one after another, each RUNNING before the next is created, and then lets them sit idle. Per
idle environment, what the host pays beyond the containers' own processes (PSS, so that shared
pages are counted once): the containerd shims, the log processes (each task's waiting process
and the host's shared log writer), and a share of the daemon and of its containerd. The serial
creation time of the first and the last environment shows whether creating gets slower as the
host fills. docker compose's side (shims, docker-proxy, dockerd's and its containerd's share)
is not measured yet (see bench/compose.py).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench import compose, leftovers
from bench.env_create import wait_running
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


def measure(
    tmp: Path, archives: dict[str, Path], envs: int, idle: float
) -> tuple[list[float], dict[str, tuple[int, float]]]:
    """Create the environments one after another, idle, measure; then delete them and clean up."""
    daemon = start_daemon(tmp, {"images": {"preload": [str(p) for p in archives.values()]}, "log": {"level": "info"}})
    try:
        times = []
        with daemon.channel() as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            for index in range(envs):
                name = f"dense-{index:03d}"
                started = time.monotonic()
                stub.CreateEnvironment(
                    pb.CreateEnvironmentRequest(name=name, spec=pb.EnvironmentSpecification(stack="web-postgres")),
                    timeout=30,
                )
                wait_running(stub, name, timeout=600)
                times.append(time.monotonic() - started)
        time.sleep(idle)
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
    args = parser.parse_args()
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
    total = 0.0
    print(f"host memory per idle environment (PSS, MB), {args.envs} environments:")
    for kind, (count, pss) in overhead.items():
        total += pss / args.envs
        print(f"  {kind:14s} {pss / args.envs:7.2f}  ({count} processes, {pss:.1f} MB in all)")
    print(f"  {'total':14s} {total:7.2f}")
    print(compose.note("memory per idle environment"))
    print(f"leftovers: {left}")


if __name__ == "__main__":
    main()
