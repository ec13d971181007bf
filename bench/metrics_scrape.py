"""CPU the daemon spends serving Prometheus scrapes every 5 s with 20 running environments.

Run as root: ``python -m bench.metrics_scrape [--envs N] [--window SECONDS] [--every SECONDS]``.

A real daemon (managed containerd, metrics on loopback, the default 5 s reading interval) deploys
``envs`` idle toolbox environments. Its CPU time (utime + stime from ``/proc/<pid>/stat``) is
measured over ``window`` seconds with nobody scraping (the baseline: supervisor resyncs, gRPC
idle), then over the same window with a scraper fetching ``/metrics`` every ``every`` seconds.
The difference is the cost of being scraped, printed as a share of one core; managed
containerd's extra CPU (answering the ``Tasks.Metrics`` calls) is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import urllib.request
from pathlib import Path

from bench import leftovers
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.support.daemon import DaemonProcess, daemon_instance, free_port, start_daemon
from tests.support.images import TOOLBOX, build

IDLE = "trap 'exit 0' TERM INT; while :; do sleep 1; done"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def measure(pids: dict[str, int], window: float, scrape_url: str = "", every: float = 5.0) -> dict[str, float]:
    """CPU cores used by each of ``pids`` over ``window`` seconds, scraping ``scrape_url`` meanwhile."""
    stop = threading.Event()
    scrapes = [0]

    def scraper() -> None:
        while not stop.is_set():
            with urllib.request.urlopen(scrape_url, timeout=10) as reply:  # noqa: S310 - loopback
                reply.read()
            scrapes[0] += 1
            stop.wait(every)

    thread = threading.Thread(target=scraper) if scrape_url else None
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    if thread is not None:
        thread.start()
    time.sleep(window)
    stop.set()
    if thread is not None:
        thread.join(15)
    elapsed = time.monotonic() - started
    used = {name: (cpu_seconds(pid) - before[name]) / elapsed for name, pid in pids.items()}
    used["scrapes"] = scrapes[0]
    return used


def deploy(daemon: DaemonProcess, names: list[str]) -> None:
    with daemon.channel() as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        config = pb.ContainerConfiguration(command=["sh", "-c", IDLE])
        for name in names:
            spec = pb.EnvironmentSpecification(stack="toolbox", services={"toolbox": config})
            stub.CreateEnvironment(pb.CreateEnvironmentRequest(name=name, spec=spec), timeout=30)
        deadline = time.monotonic() + 300
        while True:
            envs = stub.ListEnvironments(pb.ListEnvironmentsRequest(page_size=500), timeout=10).environments
            if sum(e.status == pb.ENVIRONMENT_STATUS_RUNNING for e in envs) == len(names):
                return
            if time.monotonic() > deadline:
                raise SystemExit("environments did not all reach RUNNING")
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=20)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=5.0)
    args = parser.parse_args()
    archive = build()[TOOLBOX]
    import tempfile

    with tempfile.TemporaryDirectory(prefix="scrape", dir="/tmp") as raw:
        tmp = Path(raw)
        listen = f"127.0.0.1:{free_port()}"
        daemon = start_daemon(
            tmp,
            {"images": {"preload": [str(archive)]}, "log": {"level": "info"}, "metrics": {"listen": listen}},
        )
        try:
            deploy(daemon, [f"scrape-{i:02d}" for i in range(args.envs)])
            time.sleep(5)  # let the deploys' tail (health settling, events) finish
            containerd = int((daemon.data_dir / "containerd" / "containerd.pid").read_text())
            pids = {"daemon": daemon.process.pid, "containerd": containerd}
            base = measure(pids, args.window)
            scraped = measure(pids, args.window, f"http://{listen}/metrics", args.every)
            with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as reply:  # noqa: S310
                body = reply.read()
            cost = scraped["daemon"] - base["daemon"]
            print(
                f"{args.envs} running environments, {args.window:g}s windows, "
                f"/metrics is {len(body)} bytes, {int(scraped['scrapes'])} scrapes every {args.every:g}s"
            )
            print(f"daemon CPU, nobody scraping (baseline): {base['daemon'] * 100:.3f}% of a core")
            print(f"daemon CPU, scraped:                    {scraped['daemon'] * 100:.3f}% of a core")
            print(
                f"cost of the scrapes: {cost * 100:+.3f}% of a core "
                f"(ratio scraped/baseline {scraped['daemon'] / max(base['daemon'], 1e-9):.2f}; target < 2%) "
                f"{'PASS' if cost < 0.02 else 'FAIL'}"
            )
            print(
                f"managed containerd: baseline {base['containerd'] * 100:.3f}%, "
                f"scraped {scraped['containerd'] * 100:.3f}% of a core"
            )
        finally:
            daemon.delete_all_environments(timeout=300)
            daemon.stop()
            daemon.cleanup()
        leftovers.report([daemon_instance(daemon)], [tmp])


if __name__ == "__main__":
    main()
