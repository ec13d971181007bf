"""Decode ``Tasks.Metrics`` samples (cgroups v1 or v2, chosen by the bare type URL) into ``TaskMetrics``."""

from __future__ import annotations

from datetime import UTC, datetime

from scheduler import domain
from scheduler.runtime.containerd._gen.containerd.cgroups.v1 import metrics_pb2 as v1
from scheduler.runtime.containerd._gen.containerd.cgroups.v2 import metrics_pb2 as v2
from scheduler.runtime.containerd._gen.containerd.types import metrics_pb2 as types_pb
from scheduler.runtime.containerd.convert import to_datetime, unpack

# cgroup v1 reports "no limit" as the largest page-aligned int64; v2 as the uint64 max. Both mean 0 here.
_UNLIMITED = 1 << 62


def _limit(value: int) -> int:
    return 0 if value >= _UNLIMITED else value


def _blkio_v1(stat: v1.BlkIOStat) -> tuple[int, int]:
    read = sum(e.value for e in stat.io_service_bytes_recursive if e.op.lower() == "read")
    write = sum(e.value for e in stat.io_service_bytes_recursive if e.op.lower() == "write")
    return read, write


def decode(metric: types_pb.Metric) -> domain.TaskMetrics | None:
    """One sample as ``TaskMetrics``; None for a payload of an unknown type."""
    at = to_datetime(metric.timestamp) or datetime.now(UTC)
    m1 = unpack(metric.data, v1.Metrics)
    if m1 is not None:
        read, write = _blkio_v1(m1.blkio)
        return domain.TaskMetrics(
            container_id=metric.id,
            at=at,
            cpu_usage_ns=m1.cpu.usage.total,
            memory_usage_bytes=m1.memory.usage.usage,
            memory_limit_bytes=_limit(m1.memory.usage.limit),
            pids_current=m1.pids.current,
            pids_limit=_limit(m1.pids.limit),
            io_read_bytes=read,
            io_write_bytes=write,
        )
    m2 = unpack(metric.data, v2.Metrics)
    if m2 is not None:
        return domain.TaskMetrics(
            container_id=metric.id,
            at=at,
            cpu_usage_ns=m2.cpu.usage_usec * 1000,
            memory_usage_bytes=m2.memory.usage,
            memory_limit_bytes=_limit(m2.memory.usage_limit),
            pids_current=m2.pids.current,
            pids_limit=_limit(m2.pids.limit),
            io_read_bytes=sum(e.rbytes for e in m2.io.usage),
            io_write_bytes=sum(e.wbytes for e in m2.io.usage),
        )
    return None


def oom_kills(metric: types_pb.Metric) -> int:
    """How many times the OOM killer fired in the task's cgroup (0 when the payload does not say)."""
    m1 = unpack(metric.data, v1.Metrics)
    if m1 is not None:
        return m1.memory_oom_control.oom_kill
    m2 = unpack(metric.data, v2.Metrics)
    if m2 is not None:
        return m2.memory_events.oom_kill
    return 0
