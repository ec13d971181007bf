"""What runs now: environments by status, containers by state, and each container's usage.

The usage comes from containerd's task metrics (cgroup counters) and the network counters of the
container's namespace (``/proc/<pid>/net/dev``). A reading is kept for ``interval`` seconds: the
HTTP endpoint awaits :meth:`StateCollector.refresh` before rendering, and a refresh within the
interval of the last one reads nothing, so any number of scrapers costs containerd one ``Metrics``
call (covering every container) per interval.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from scheduler import domain, errors, log
from scheduler.domain import ContainerState, EnvironmentStatus
from scheduler.metrics.recorder import Family, Kind
from scheduler.runtime.base import ContainerRuntime

_log = log.get("metrics")

CONTAINER_LABELS = ["environment", "service", "replica"]


@dataclass(frozen=True)
class _Row:
    """One running container's usage at the last reading."""

    labels: tuple[str, str, str]
    usage: domain.TaskMetrics
    rx_bytes: int
    tx_bytes: int


@dataclass
class _Snapshot:
    statuses: Counter[EnvironmentStatus] = field(default_factory=Counter)
    states: Counter[ContainerState] = field(default_factory=Counter)
    rows: list[_Row] = field(default_factory=list)


def read_net_dev(pid: int, proc: Path = Path("/proc")) -> tuple[int, int]:
    """Received and transmitted bytes of every interface but loopback in ``pid``'s network namespace."""
    try:
        text = (proc / str(pid) / "net" / "dev").read_text()
    except OSError:
        return 0, 0
    rx = tx = 0
    for line in text.splitlines()[2:]:
        name, _, counters = line.partition(":")
        fields = counters.split()
        if name.strip() == "lo" or len(fields) < 9:
            continue
        rx += int(fields[0])
        tx += int(fields[8])
    return rx, tx


class Environments(Protocol):
    """Where the collector reads every environment (the daemon's ledger: memory, no decoding)."""

    def iterate(self, statuses: Collection[EnvironmentStatus] = ()) -> AsyncIterator[domain.Environment]:
        """Every environment, in creation order."""
        ...


class StateCollector:
    """A custom collector over a cached reading of the store and containerd."""

    def __init__(
        self,
        store: Environments,
        runtime: ContainerRuntime,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._runtime = runtime
        self.interval = interval
        self._clock = clock
        self._snapshot = _Snapshot()
        self._read_at: float | None = None
        self._lock = asyncio.Lock()
        self.reads = 0
        """How many times containerd was asked for the containers' counters."""

    async def refresh(self) -> None:
        """Read the store and containerd unless the last reading is younger than ``interval``."""
        async with self._lock:
            if self._read_at is not None and self._clock() - self._read_at < self.interval:
                return
            self._read_at = self._clock()
            snapshot = _Snapshot()
            running: dict[str, tuple[tuple[str, str, str], int]] = {}
            async for env in self._store.iterate():
                snapshot.statuses[env.status] += 1
                for c in env.containers:
                    snapshot.states[c.state] += 1
                    if c.state is ContainerState.RUNNING:
                        running[c.container_id] = ((env.name, c.service, str(c.replica)), c.pid)
            if running:
                self.reads += 1
                try:
                    samples = await self._runtime.metrics(list(running))
                except errors.SchedulerError as err:
                    _log.warning("metrics.read_failed", error=err.message)
                    samples = []
                for usage in samples:
                    labels, pid = running[usage.container_id]
                    rx, tx = read_net_dev(pid) if pid else (0, 0)
                    snapshot.rows.append(_Row(labels, usage, rx, tx))
            self._snapshot = snapshot

    def families(self) -> list[Family]:
        """The last reading as metric families (rendered for Prometheus by ``metrics.export``)."""
        snapshot = self._snapshot
        envs = Family("scheduler_environments", "Environments by status.", "gauge", ("status",))
        for status in EnvironmentStatus:
            envs.scalar(status.value.lower()).value = snapshot.statuses[status]
        containers = Family("scheduler_containers", "Containers by state.", "gauge", ("state",))
        for state in ContainerState:
            containers.scalar(state.value.lower()).value = snapshot.states[state]
        reads = Family(
            "scheduler_container_stats_reads_total", "Readings of the containers' counters from containerd.", "counter"
        )
        reads.scalar().value = self.reads
        return [envs, containers, *self._usage(snapshot.rows), reads]

    @staticmethod
    def _usage(rows: list[_Row]) -> Iterator[Family]:
        def family(kind: Kind, name: str, doc: str, value: Callable[[_Row], float]) -> Family:
            metric = Family(name, doc, kind, tuple(CONTAINER_LABELS))
            for row in rows:
                metric.scalar(*row.labels).value = value(row)
            return metric

        c: Kind = "counter"
        g: Kind = "gauge"
        yield family(c, "scheduler_container_cpu_seconds_total", "CPU time used.", lambda r: r.usage.cpu_usage_ns / 1e9)
        yield family(
            g, "scheduler_container_memory_usage_bytes", "Memory in use.", lambda r: r.usage.memory_usage_bytes
        )
        yield family(
            g, "scheduler_container_memory_limit_bytes", "Memory limit (0: none).", lambda r: r.usage.memory_limit_bytes
        )
        yield family(g, "scheduler_container_pids", "Processes and threads.", lambda r: r.usage.pids_current)
        yield family(g, "scheduler_container_pids_limit", "Pids limit (0: none).", lambda r: r.usage.pids_limit)
        yield family(c, "scheduler_container_network_receive_bytes_total", "Bytes received.", lambda r: r.rx_bytes)
        yield family(c, "scheduler_container_network_transmit_bytes_total", "Bytes sent.", lambda r: r.tx_bytes)
        yield family(
            c,
            "scheduler_container_fs_reads_bytes_total",
            "Bytes read from block devices.",
            lambda r: r.usage.io_read_bytes,
        )
        yield family(
            c,
            "scheduler_container_fs_writes_bytes_total",
            "Bytes written to block devices.",
            lambda r: r.usage.io_write_bytes,
        )
