"""What the API streams and reports: plans, log lines, backups, operations, samples, events, templates."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from scheduler.domain.runtime import TaskMetrics


class ChangeAction(enum.Enum):
    """What an update does to one service."""

    KEEP = "KEEP"
    ADD = "ADD"
    REPLACE = "REPLACE"
    REMOVE = "REMOVE"
    SCALE = "SCALE"


@dataclass(frozen=True)
class ServiceChange:
    """One line of an update plan."""

    service: str
    action: ChangeAction
    reason: str = ""


class LogStream(enum.Enum):
    """Which standard stream a line came from."""

    STDOUT = "stdout"
    STDERR = "stderr"


@dataclass(frozen=True)
class LogQuery:
    """Which log lines a client wants."""

    services: tuple[str, ...] = ()
    tail: int = 0
    """Last lines per container and stream to send first; 0 sends every retained line."""
    since: datetime | None = None
    follow: bool = False
    stream: LogStream | None = None
    """Only this stream; None means both."""


@dataclass(frozen=True)
class LogLine:
    """One line of a container's output, tagged with where it came from."""

    service: str
    replica: int
    container_id: str
    stream: LogStream
    at: datetime
    line: str


@dataclass(frozen=True)
class BackupInfo:
    """One archive of an environment, as BackupEnvironment and ListBackups report it."""

    id: str
    """``<environment>/<file>``: what RestoreEnvironment takes."""
    environment: str
    created_at: datetime
    size_bytes: int
    volumes: tuple[str, ...] = ()
    databases: tuple[str, ...] = ()
    """Services whose database the archive holds as a dump."""


@dataclass(frozen=True)
class OperationStep:
    """One step of a deploy, update or delete: what happened, to which service, when."""

    at: datetime
    step: str
    """pull, create, start, probe, healthy, unhealthy, traffic, remove."""
    service: str = ""
    detail: str = ""


@dataclass(frozen=True)
class OperationRecord:
    """The timeline of one operation on an environment."""

    id: str
    env: str
    operation: str
    """deploy, update or delete."""
    started_at: datetime
    finished_at: datetime | None = None
    outcome: str = ""
    steps: tuple[OperationStep, ...] = ()
    dropped_steps: int = 0
    """Steps beyond the bound kept per operation (probes of a long start period)."""


@dataclass(frozen=True)
class ReloadReport:
    """What a configuration reload did: options applied, options that need a restart, or why it was refused."""

    applied: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class ContainerSample:
    """Resource usage of one replica, with CPU as a rate over a window."""

    service: str
    replica: int
    metrics: TaskMetrics
    cpu_cores: float


class EventType(enum.Enum):
    """Kinds of events streamed by WatchEvents."""

    ENVIRONMENT_CREATED = "ENVIRONMENT_CREATED"
    ENVIRONMENT_DEPLOYING = "ENVIRONMENT_DEPLOYING"
    ENVIRONMENT_RUNNING = "ENVIRONMENT_RUNNING"
    ENVIRONMENT_DEGRADED = "ENVIRONMENT_DEGRADED"
    ENVIRONMENT_FAILED = "ENVIRONMENT_FAILED"
    ENVIRONMENT_UPDATED = "ENVIRONMENT_UPDATED"
    ENVIRONMENT_ROLLED_BACK = "ENVIRONMENT_ROLLED_BACK"
    ENVIRONMENT_DELETED = "ENVIRONMENT_DELETED"
    ENVIRONMENT_STOPPED = "ENVIRONMENT_STOPPED"
    CONTAINER_CREATED = "CONTAINER_CREATED"
    CONTAINER_STARTED = "CONTAINER_STARTED"
    CONTAINER_HEALTHY = "CONTAINER_HEALTHY"
    CONTAINER_UNHEALTHY = "CONTAINER_UNHEALTHY"
    CONTAINER_EXITED = "CONTAINER_EXITED"
    CONTAINER_RESTARTED = "CONTAINER_RESTARTED"
    CONTAINER_REMOVED = "CONTAINER_REMOVED"
    EVENTS_LOST = "EVENTS_LOST"
    HEARTBEAT = "HEARTBEAT"
    """Sent to a watcher when nothing happened for a while; carries the latest sequence."""


@dataclass(frozen=True)
class Event:
    """Something that happened to an environment or one of its containers."""

    type: EventType
    environment: str
    at: datetime
    service: str = ""
    replica: int = 0
    container_id: str = ""
    message: str = ""
    generation: int = 0
    sequence: int = 0


@dataclass(frozen=True)
class DataTemplate:
    """A prepared data directory (PostgreSQL's initdb output) that new volumes start as a copy of.

    Keyed by everything that shapes its files: the image digest and the initialisation
    parameters. It never holds a credential: each environment sets its own on its copy.
    """

    key: str
    kind: str
    """What it is a template of, e.g. ``postgres``."""
    image: str
    image_digest: str
    parameters: Mapping[str, str]
    """The initialisation parameters in the key (user, database, locale, initdb arguments...)."""
    created_at: datetime
    last_used_at: datetime
    size_bytes: int = 0
    environments: tuple[str, ...] = ()
    """Environments whose volumes were seeded from it and still exist."""
