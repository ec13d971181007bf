"""What the scheduler asks of the container runtime, and what it hears back: images, containers, tasks."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from scheduler.domain.spec import Resources, Security


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI image config that shape a container's process."""

    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    user: str = ""
    working_dir: str = ""
    stop_signal: str = ""
    exposed_ports: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Image:
    """An image held by the runtime, unpacked and ready to run."""

    name: str
    """Normalised reference, e.g. ``docker.io/library/postgres:16``."""
    digest: str
    """Digest of the image's root descriptor (index or manifest)."""
    config: ImageConfig
    chain_id: str
    """Top snapshot of the unpacked rootfs: the parent of every container snapshot."""
    size: int = 0


class PullPolicy(enum.Enum):
    """When to contact the registry, like Kubernetes' imagePullPolicy."""

    IF_NOT_PRESENT = "if-not-present"
    ALWAYS = "always"
    NEVER = "never"


@dataclass(frozen=True)
class PullProgress:
    """Bytes fetched of one blob of an image being pulled."""

    image: str
    digest: str
    done: int
    total: int


@dataclass(frozen=True)
class Mount:
    """A mount in an OCI runtime spec."""

    destination: str
    source: str
    type: str = "bind"
    options: tuple[str, ...] = ("rbind", "rw")


@dataclass(frozen=True)
class ContainerConfig:
    """Everything the runtime needs to create one container from an unpacked image."""

    id: str
    image: Image
    labels: Mapping[str, str] = field(default_factory=dict)
    command: tuple[str, ...] = ()
    """Replaces the image entrypoint when non-empty."""
    args: tuple[str, ...] = ()
    """Replaces the image cmd when non-empty."""
    env: Mapping[str, str] = field(default_factory=dict)
    user: str = ""
    working_dir: str = ""
    hostname: str = ""
    mounts: tuple[Mount, ...] = ()
    netns_path: str = ""
    """Join this network namespace; empty creates a fresh one with only loopback."""
    resources: Resources = Resources()
    read_only_rootfs: bool = False
    security: Security = Security()
    log_dir: str = ""
    """Directory where the shim writes ``stdout.log`` and ``stderr.log``; empty discards output."""
    log_max_bytes: int = 100 * 1024 * 1024
    """Size at which the log writer rotates a stream's file."""
    log_max_files: int = 3
    """Files kept per stream, the current one included (``stdout.log``, ``stdout.log.1``, ...)."""
    group: str = ""
    """Containers of one group share the runtime's per-task helper (containerd's shim), like a
    pod's; empty gives the container one of its own."""


class TaskState(enum.Enum):
    """containerd's task status."""

    UNKNOWN = "UNKNOWN"
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    PAUSED = "PAUSED"
    PAUSING = "PAUSING"


@dataclass(frozen=True)
class ExitStatus:
    """How a task's process ended."""

    code: int
    exited_at: datetime | None = None
    oom_killed: bool = False


@dataclass(frozen=True)
class ContainerInfo:
    """A container found in the runtime, with its task if it has one."""

    id: str
    labels: Mapping[str, str]
    image: str
    task_state: TaskState | None = None
    pid: int = 0
    exit_status: int | None = None


@dataclass(frozen=True)
class ExecResult:
    """Outcome of a command run inside a running container."""

    exit_code: int
    output: str


class TaskEventKind(enum.Enum):
    """Task events the scheduler listens for."""

    START = "start"
    EXIT = "exit"
    OOM = "oom"
    DELETE = "delete"


@dataclass(frozen=True)
class TaskEvent:
    """A task event from containerd, in the scheduler's namespace."""

    kind: TaskEventKind
    container_id: str
    pid: int = 0
    exit_code: int | None = None
    at: datetime | None = None


@dataclass(frozen=True)
class TaskMetrics:
    """A sample of one task's cgroup counters, decoded from cgroups v1 or v2."""

    container_id: str
    at: datetime
    cpu_usage_ns: int = 0
    memory_usage_bytes: int = 0
    memory_limit_bytes: int = 0
    pids_current: int = 0
    pids_limit: int = 0
    io_read_bytes: int = 0
    io_write_bytes: int = 0
