"""What the scheduler observed: environment and container status, conditions, filters, history."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from datetime import datetime

from scheduler.domain.spec import EnvironmentRequest, EnvironmentSpec, PortProtocol


class EnvironmentStatus(enum.Enum):
    """Life cycle of an environment."""

    PENDING = "PENDING"
    DEPLOYING = "DEPLOYING"
    RUNNING = "RUNNING"
    DEGRADED = "DEGRADED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    DELETING = "DELETING"


class ContainerState(enum.Enum):
    """Life cycle of one container (one replica of one service)."""

    PENDING = "PENDING"
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    EXITED = "EXITED"
    RESTARTING = "RESTARTING"
    STOPPED = "STOPPED"
    UNKNOWN = "UNKNOWN"


class Health(enum.Enum):
    """Result of the health checks of one container."""

    UNKNOWN = "UNKNOWN"
    STARTING = "STARTING"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    NONE = "NONE"
    """The service has no health check."""


@dataclass(frozen=True)
class ContainerStatus:
    """Observed state of one replica."""

    service: str
    replica: int
    container_id: str
    state: ContainerState = ContainerState.PENDING
    health: Health = Health.UNKNOWN
    exit_code: int | None = None
    restart_count: int = 0
    pid: int = 0
    ip: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    message: str = ""
    oom_killed: bool = False


@dataclass(frozen=True)
class Endpoint:
    """A published port: where the host can reach a service."""

    service: str
    host_ip: str
    host_port: int
    container_port: int
    protocol: PortProtocol = PortProtocol.TCP


@dataclass(frozen=True)
class Condition:
    """A named observation about an environment, with the last error when it is false."""

    type: str
    status: bool
    reason: str = ""
    message: str = ""
    service: str = ""
    last_transition: datetime | None = None


@dataclass(frozen=True)
class Environment:
    """An environment as stored and reported."""

    name: str
    uid: str
    spec: EnvironmentSpec
    generation: int = 1
    observed_generation: int = 0
    status: EnvironmentStatus = EnvironmentStatus.PENDING
    containers: tuple[ContainerStatus, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    conditions: tuple[Condition, ...] = ()
    created_at: datetime | None = None
    updated_at: datetime | None = None
    request_id: str = ""
    """The request id that created it, for idempotent retries of CreateEnvironment."""
    request: EnvironmentRequest | None = None
    """The specification as the client sent it (stack, overrides, parameters), for Get and updates."""
    revision: int = 0
    """Version of the stored document, set by the store: 1 at creation, bumped by every write.

    A write names the revision it read and is refused if the document moved on since
    (compare-and-swap), so no change made from a stale read ever lands."""
    node: str = ""
    """The fleet node it is placed on; empty until placed, and always on a daemon running alone."""
    keep_volumes: bool = False
    """Set with DELETING by a DeleteEnvironment asking to keep the named volumes: the node that runs
    it (in a fleet, maybe not the one that took the call) removes everything else."""
    requested: SleepRequest | None = None
    """A stop or start accepted by a fleet node that does not run it, for the node that does."""


@dataclass(frozen=True)
class SleepRequest:
    """StopEnvironment or StartEnvironment, taken by one fleet node and carried out by the owner."""

    action: str
    """``stop`` or ``start``."""
    message: str
    """What the owner records (``stopped by ALICE at TIME``)."""


def etag(env: Environment) -> str:
    """The opaque version tag of a stored environment, which clients send back as a precondition.

    It is the stored revision (bumped by every write, status included, and checked by the store
    with compare-and-swap) of this incarnation (the uid differs between two environments of the
    same name created one after the other).
    """
    version = f"{env.uid}/{env.revision}"
    return hashlib.sha256(version.encode()).hexdigest()[:16]


def expire_time(env: Environment) -> datetime | None:
    """When the environment's time to live runs out, if it has one."""
    ttl = env.request.ttl if env.request is not None else env.spec.ttl
    if ttl is None or env.created_at is None:
        return None
    return env.created_at + ttl


@dataclass(frozen=True)
class FilterTerm:
    """One term of a list filter: ``field`` equals (or, negated, differs from) one of ``values``."""

    field: str
    """``status``, ``stack``, ``name`` or ``labels.<key>``."""
    values: tuple[str, ...]
    """Accepted values; for ``status`` the EnvironmentStatus values."""
    negate: bool = False
    prefix: bool = False
    """For ``name``: the values are prefixes."""


@dataclass(frozen=True)
class EnvironmentFilter:
    """Terms that must all hold for an environment to be listed."""

    terms: tuple[FilterTerm, ...] = ()


@dataclass(frozen=True)
class HistoryEntry:
    """One change to an environment, for the audit trail."""

    env: str
    generation: int
    at: datetime
    actor: str
    action: str
    detail: str = ""
