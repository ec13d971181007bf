"""Fleet limits: placement latency, environments per node and failover time, against one host.

Run as root: ``python -m bench.fleet [--runs N] [--per-node K]`` (K is 40 by default: what a
node offering 8 cores and 2 GiB takes of environments requesting a tenth of a core and 32 MiB
is 64, so 40 per node leaves placement room and measures a node well beyond 10).

- **single-host baseline**: a daemon alone (SQLite, no etcd) creates a one-container toolbox
  environment until RUNNING, ``runs`` times (median), then ``per-node`` of them at once.
- **fleet**: three nodes, each in a network namespace of its own on a test bridge, on a 3-member
  etcd (``tests/support/fleet.py``, as the integration test runs them: TLS and a token,
  ``lease_ttl: 4``, ``failover_grace: 2``):
  - placement latency: CreateEnvironment through n0 until the leader has placed it (``node``
    set), and until RUNNING; ``runs`` times, median; RUNNING as a ratio to the baseline;
  - environments per node: ``3 * per-node`` created at once through n0 until all RUNNING, how
    they spread, and the wall time as a ratio to the single host's ``per-node`` at once;
  - failover: the node with the most of them lost (SIGKILL of its daemon and containerd, link
    down) until they all RUN elsewhere; printed with ``lease_ttl`` + ``failover_grace`` (the
    lease lapses a TTL after the last keep-alive, which came up to a third of a TTL before the
    kill: the rest is redeploy, give or take that) and the redeploy as a ratio to the single
    host creating as many at once.

The load average is printed at the start and the end: figures from a busy host are upper bounds.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import leftovers
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.support.daemon import daemon_instance, start_daemon
from tests.support.fleet import MIB, TOOLBOX, Fleet, all_envs, start_fleet, toolbox
from tests.support.images import build

LEASE_TTL = 4
GRACE = 2.0
SMALL = 32 * MIB
"""Memory limit of each environment: placement counts it against the node's 2 GiB."""
CPU_REQUEST = 100
"""Millicores each environment reserves (its limit stays a quarter of a core): 80 fit a node's 8 cores."""


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def wait(check: Callable[[], object], what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {timeout} s")
        time.sleep(0.02)


def create(stub: pb_grpc.SchedulerServiceStub, names: list[str]) -> None:
    for name in names:
        spec = toolbox(name, SMALL)
        spec.services["toolbox"].resources.cpu_request_millis = CPU_REQUEST
        stub.CreateEnvironment(pb.CreateEnvironmentRequest(name=name, spec=spec), timeout=30)


def all_running(stub: pb_grpc.SchedulerServiceStub, names: list[str], away_from: str = "") -> bool:
    envs = all_envs(stub)
    return all(
        n in envs and envs[n].status == pb.ENVIRONMENT_STATUS_RUNNING and (not away_from or envs[n].node != away_from)
        for n in names
    )


def node_of(stub: pb_grpc.SchedulerServiceStub, name: str) -> str:
    return str(stub.GetEnvironment(pb.GetEnvironmentRequest(name=name), timeout=10).node)


def delete_all(stub: pb_grpc.SchedulerServiceStub) -> None:
    for name in all_envs(stub):
        stub.DeleteEnvironment(pb.DeleteEnvironmentRequest(name=name), timeout=30)
    wait(lambda: not all_envs(stub), "environments deleted")


def one_at_a_time(
    stub: pb_grpc.SchedulerServiceStub, runs: int, tag: str, fleet: bool
) -> tuple[list[float], list[float]]:
    """Create ``runs`` environments one after another: seconds to placed (in a fleet) and to RUNNING."""
    placed, ready = [], []
    for i in range(runs):
        name = f"{tag}{i}"
        started = time.monotonic()
        create(stub, [name])
        if fleet:
            wait(functools.partial(node_of, stub, name), f"{name} placed")
            placed.append(time.monotonic() - started)
        wait(functools.partial(all_running, stub, [name]), f"{name} RUNNING")
        ready.append(time.monotonic() - started)
        delete_all(stub)
    return placed, ready


def at_once(stub: pb_grpc.SchedulerServiceStub, count: int, tag: str) -> tuple[list[str], float]:
    names = [f"{tag}{i}" for i in range(count)]
    started = time.monotonic()
    create(stub, names)
    wait(lambda: all_running(stub, names), f"{count} environments RUNNING")
    return names, time.monotonic() - started


def single_host(tmp: Path, archive: Path, runs: int, count: int) -> tuple[float, float, list[str]]:
    daemon = start_daemon(tmp, {"images": {"preload": [str(archive)]}, "log": {"level": "info"}})
    instances = [daemon_instance(daemon)]
    try:
        with daemon.channel() as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            _, ready = one_at_a_time(stub, runs, "one", fleet=False)
            _, many = at_once(stub, count, "many")
    finally:
        daemon.delete_all_environments()
        daemon.stop()
        daemon.cleanup()
    print(f"single host: create until RUNNING, median of {runs}: {statistics.median(ready):.2f} s; ", end="")
    print(f"{count} at once: {many:.1f} s", flush=True)
    return statistics.median(ready), many, instances


def fleet_figures(fleet: Fleet, runs: int, per_node: int, single: float, single_many: float) -> None:
    stub = fleet.stub(0)
    placed, ready = one_at_a_time(stub, runs, "one", fleet=True)
    print(
        f"placement latency (create through n0 until placed by the leader), median of {runs}: "
        f"{statistics.median(placed):.2f} s"
    )
    print(
        f"create until RUNNING on the fleet, median of {runs}: {statistics.median(ready):.2f} s "
        f"(single host {single:.2f} s): ratio {statistics.median(ready) / single:.2f}"
    )
    count = 3 * per_node
    names, wall = at_once(stub, count, "many")
    envs = all_envs(stub)
    spread = {node.name: sum(1 for e in envs.values() if e.node == node.name) for node in fleet.nodes}
    print(
        f"{count} environments at once over 3 nodes: {wall:.1f} s, spread {spread} "
        f"(single host, {per_node} at once: {single_many:.1f} s): ratio {wall / single_many:.2f}; "
        f"load average {load()}"
    )
    shown = {node.name: node.workload() for node in fleet.nodes}
    running = {name: sum(runs for _, runs in work.values()) for name, work in shown.items()}
    print(f"tasks running per node (each node's containerd): {running}", flush=True)
    victim = fleet.node(max(spread, key=lambda n: spread[n]))
    lost = [n for n in names if envs[n].node == victim.name]
    watcher = next(node for node in fleet.nodes if node is not victim).stub()
    victim.kill()
    killed = time.monotonic()
    wait(lambda: all_running(watcher, lost, away_from=victim.name), "failover")
    failover = time.monotonic() - killed
    print(
        f"failover of {len(lost)} environments (node {victim.name} lost): {failover:.1f} s, of which "
        f"lease_ttl + failover_grace = {LEASE_TTL + GRACE:.0f} s, redeploy {failover - LEASE_TTL - GRACE:.1f} s "
        f"(single host, {per_node} at once: {single_many:.1f} s): ratio of the redeploy "
        f"{(failover - LEASE_TTL - GRACE) / single_many:.2f}"
    )
    after = all_envs(watcher)
    moved = {node.name: sum(1 for e in after.values() if e.node == node.name) for node in fleet.nodes if node.alive}
    running = {node.name: sum(runs for _, runs in node.workload().values()) for node in fleet.nodes if node.alive}
    print(f"after the failover, environments per live node: {moved}, tasks running: {running}; load average {load()}")
    victim.restart()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--per-node", type=int, default=40)
    args = parser.parse_args()
    archive = build()[TOOLBOX]
    print(f"load average at start: {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        (Path(tmp) / "single").mkdir()
        single, single_many, instances = single_host(Path(tmp) / "single", archive, args.runs, args.per_node)
        cluster = {"lease_ttl": LEASE_TTL, "failover_grace": GRACE}
        fleet_dir = Path(tmp) / "fleet"
        fleet_dir.mkdir()
        with start_fleet(fleet_dir, [archive], cluster=cluster) as fleet:
            prefix = fleet.net.prefix
            instances += [leftovers.instances_under(node.data_dir.parent)[0] for node in fleet.nodes]
            fleet_figures(fleet, args.runs, args.per_node, single, single_many)
        print(f"load average at the end: {load()}")
        # The fleet checked that its namespaces, veths and bridge (named PREFIX...) are gone.
        if leftovers.report([*instances, prefix], [tmp]):
            raise SystemExit("the benchmark left something behind")


if __name__ == "__main__":
    main()
