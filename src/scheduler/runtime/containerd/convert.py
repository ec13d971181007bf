"""Conversion between containerd's wire messages and domain types: the only place that knows both.

containerd's ``Any`` payloads carry *bare* type URLs (``containerd.events.TaskExit``), which
``Any.Pack``/``Unpack``/``Is`` do not accept; ``pack``/``unpack`` here handle them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message

from scheduler import domain
from scheduler.runtime.containerd._gen.containerd.services.containers.v1 import (
    containers_pb2 as containers_pb,
)
from scheduler.runtime.containerd._gen.containerd.types import mount_pb2 as mount_pb
from scheduler.runtime.containerd._gen.containerd.types.task import task_pb2 as task_pb

M = TypeVar("M", bound=Message)

_STATUS = {
    task_pb.UNKNOWN: domain.TaskState.UNKNOWN,
    task_pb.CREATED: domain.TaskState.CREATED,
    task_pb.RUNNING: domain.TaskState.RUNNING,
    task_pb.STOPPED: domain.TaskState.STOPPED,
    task_pb.PAUSED: domain.TaskState.PAUSED,
    task_pb.PAUSING: domain.TaskState.PAUSING,
}

# containerd reports "no exit status yet" as this value (uint32 max).
UNKNOWN_EXIT = 255


def pack(message: Message, type_url: str = "") -> any_pb2.Any:
    """Wrap ``message`` in an Any with the bare type URL containerd expects (its full proto name)."""
    return any_pb2.Any(type_url=type_url or message.DESCRIPTOR.full_name, value=message.SerializeToString())


def type_name(value: any_pb2.Any) -> str:
    """The message name of an Any, whether its URL is bare or has a ``host/`` prefix."""
    return value.type_url.rpartition("/")[2]


def unpack(value: any_pb2.Any, cls: type[M]) -> M | None:
    """Decode ``value`` as ``cls`` if its type URL names that message, else ``None``."""
    if type_name(value) != cls.DESCRIPTOR.full_name:
        return None
    return cls.FromString(value.value)


def json_any(type_url: str, data: bytes) -> any_pb2.Any:
    """An Any carrying JSON bytes (OCI spec or process), as containerd stores them."""
    return any_pb2.Any(type_url=type_url, value=data)


def to_datetime(ts: timestamp_pb2.Timestamp) -> datetime | None:
    """A timezone-aware datetime, or ``None`` for the zero (unset) timestamp."""
    if ts.seconds <= 0 and ts.nanos == 0:
        return None
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC)


def task_state(status: int) -> domain.TaskState:
    """The domain enum of containerd's task status."""
    return _STATUS.get(task_pb.Status.ValueType(status), domain.TaskState.UNKNOWN)


def mounts_to_proto(mounts: Iterable[domain.Mount]) -> list[mount_pb.Mount]:
    """Domain mounts as containerd mounts (for rootfs-style lists)."""
    return [mount_pb.Mount(type=m.type, source=m.source, target=m.destination, options=list(m.options)) for m in mounts]


def mounts_from_proto(mounts: Iterable[mount_pb.Mount]) -> list[domain.Mount]:
    """Domain mounts from containerd's (e.g. a snapshot's)."""
    return [domain.Mount(destination=m.target, source=m.source, type=m.type, options=tuple(m.options)) for m in mounts]


def container_info(container: containers_pb.Container, task: task_pb.Process | None) -> domain.ContainerInfo:
    """A container record and its task (if any) as ``domain.ContainerInfo``."""
    if task is None:
        return domain.ContainerInfo(id=container.id, labels=dict(container.labels), image=container.image)
    state = task_state(task.status)
    stopped = state == domain.TaskState.STOPPED
    return domain.ContainerInfo(
        id=container.id,
        labels=dict(container.labels),
        image=container.image,
        task_state=state,
        pid=task.pid,
        exit_status=task.exit_status if stopped else None,
    )


def exit_status(code: int, exited_at: timestamp_pb2.Timestamp, oom_killed: bool = False) -> domain.ExitStatus:
    """An exit code and time as ``domain.ExitStatus``."""
    return domain.ExitStatus(code=code, exited_at=to_datetime(exited_at), oom_killed=oom_killed)
