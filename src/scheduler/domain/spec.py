"""What a user asks for: environment and service specifications, overrides and requests."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta


class HealthCheckKind(enum.Enum):
    """How a container's health is probed."""

    NONE = "none"
    EXEC = "exec"
    HTTP = "http"
    TCP = "tcp"


@dataclass(frozen=True)
class HealthCheck:
    """A readiness and liveness probe, with Docker's knobs plus native HTTP and TCP kinds."""

    kind: HealthCheckKind = HealthCheckKind.NONE
    command: tuple[str, ...] = ()
    """For EXEC: argv run inside the container; exit 0 means healthy."""
    port: int = 0
    """For HTTP and TCP: the container port probed on the container's address."""
    path: str = "/"
    """For HTTP: the request path; any 2xx or 3xx answer means healthy."""
    interval: timedelta = timedelta(seconds=1)
    timeout: timedelta = timedelta(seconds=2)
    retries: int = 3
    """Consecutive failures, after the start period, that make a container unhealthy."""
    start_period: timedelta = timedelta(seconds=0)
    """Failures during this time after start do not count."""


class RestartMode(enum.Enum):
    """Restart policies as Docker names them."""

    NO = "no"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"
    UNLESS_STOPPED = "unless-stopped"


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a container that exited, with capped exponential backoff."""

    mode: RestartMode = RestartMode.NO
    max_retries: int = 0
    """For ON_FAILURE: give up after this many restarts (0 means no limit)."""
    initial_backoff: timedelta = timedelta(milliseconds=100)
    max_backoff: timedelta = timedelta(seconds=30)
    reset_after: timedelta = timedelta(seconds=10)
    """A container that ran healthy this long has its backoff reset."""


class DependencyCondition(enum.Enum):
    """What a dependency must reach before its dependent starts (Compose's ``depends_on``)."""

    STARTED = "started"
    HEALTHY = "healthy"
    COMPLETED = "completed"


@dataclass(frozen=True)
class Dependency:
    """An edge of the service graph, with its own deadline."""

    service: str
    condition: DependencyCondition = DependencyCondition.STARTED
    deadline: timedelta = timedelta(seconds=60)


class PortProtocol(enum.Enum):
    """Transport protocol of a port."""

    TCP = "tcp"
    UDP = "udp"


@dataclass(frozen=True)
class PortSpec:
    """A container port, optionally published on the host."""

    container_port: int
    protocol: PortProtocol = PortProtocol.TCP
    publish: bool = False
    host_port: int = 0
    """0 lets the scheduler allocate a port from the configured range."""
    host_ip: str = ""
    """Empty means the configured default (127.0.0.1)."""


@dataclass(frozen=True)
class VolumeMount:
    """A named volume of the environment mounted at ``path`` inside the container."""

    name: str
    path: str
    read_only: bool = False


@dataclass(frozen=True)
class Resources:
    """Limits applied through the container's cgroup, and requests a fleet's placement reserves.

    As in Kubernetes, a limit is what the runtime enforces and a request what placement counts
    against a node's capacity; a request never exceeds its limit. 0 means the daemon's default.
    """

    cpu_millis: int = 0
    """CPU limit in thousandths of a core (1500 = 1.5 cores)."""
    cpu_shares: int = 0
    memory_bytes: int = 0
    pids: int = 0
    disk_bytes: int = 0
    """Size limit of volumes and the writable layer, where the storage supports it."""
    cpu_request_millis: int = 0
    """CPU placement reserves, in thousandths of a core; default ``limits.default_cpu_request_millis``."""
    memory_request_bytes: int = 0
    """Memory placement reserves; default the memory limit (memory cannot be taken back)."""


@dataclass(frozen=True)
class Security:
    """What a service's containers may do beyond the default sandbox (Docker's cap_add/cap_drop/security_opt).

    Capabilities are named with or without ``CAP_``; ``cap_add`` is bounded by the daemon's
    ``limits.allowed_capabilities``. ``seccomp`` is empty for the default profile or
    ``unconfined`` to run without one, where the daemon allows it (``limits.allow_unconfined_seccomp``).
    """

    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    seccomp: str = ""


SECCOMP_UNCONFINED = "unconfined"

DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
)
"""containerd's and Docker's default set without NET_RAW (raw packets: spoofing, ARP games on the
bridge), MKNOD (device nodes), SETFCAP (file capabilities) and AUDIT_WRITE (the host's audit
log). PostgreSQL, nginx, the backend and the toolbox need none of the four: they chown their
data, switch users, bind low ports and signal their children, which the rest covers."""
ALL_CAPABILITIES = frozenset(
    "CAP_" + name
    for name in (
        "AUDIT_CONTROL AUDIT_READ AUDIT_WRITE BLOCK_SUSPEND BPF CHECKPOINT_RESTORE CHOWN DAC_OVERRIDE "
        "DAC_READ_SEARCH FOWNER FSETID IPC_LOCK IPC_OWNER KILL LEASE LINUX_IMMUTABLE MAC_ADMIN "
        "MAC_OVERRIDE MKNOD NET_ADMIN NET_BIND_SERVICE NET_BROADCAST NET_RAW PERFMON SETFCAP SETGID "
        "SETPCAP SETUID SYSLOG SYS_ADMIN SYS_BOOT SYS_CHROOT SYS_MODULE SYS_NICE SYS_PACCT SYS_PTRACE "
        "SYS_RAWIO SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG WAKE_ALARM"
    ).split()
)


def capability_name(name: str) -> str:
    """``net_raw``, ``NET_RAW`` or ``CAP_NET_RAW`` as ``CAP_NET_RAW``; ``ALL`` stays ``ALL``."""
    upper = name.strip().upper()
    return upper if upper == "ALL" or upper.startswith("CAP_") else "CAP_" + upper


@dataclass(frozen=True)
class ServiceSpec:
    """One service of a stack: the container configuration plus how it joins the environment."""

    name: str
    image: str
    command: tuple[str, ...] = ()
    """Overrides the image's entrypoint when set."""
    args: tuple[str, ...] = ()
    """Overrides the image's cmd when set."""
    env: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[PortSpec, ...] = ()
    volumes: tuple[VolumeMount, ...] = ()
    resources: Resources = Resources()
    health: HealthCheck = HealthCheck()
    restart: RestartPolicy = RestartPolicy()
    depends_on: tuple[Dependency, ...] = ()
    replicas: int = 1
    user: str = ""
    working_dir: str = ""
    read_only_rootfs: bool = False
    stop_grace: timedelta = timedelta(seconds=10)
    stateful: bool = False
    """A stateful service (a database) is stopped before its replacement starts, never run twice."""
    secret_env: frozenset[str] = frozenset()
    """Names of env variables whose values are secrets: never logged or returned by the API."""
    security: Security = Security()


@dataclass(frozen=True)
class NetworkSettings:
    """Per-environment network options."""

    subnet: str = ""
    """Empty lets the scheduler carve a subnet from its pool."""
    host_ip: str = ""
    """Default host address for published ports (empty: the daemon's default)."""


@dataclass(frozen=True)
class EnvironmentSpec:
    """A stack resolved with the user's overrides: everything needed to deploy it."""

    stack: str
    services: tuple[ServiceSpec, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    network: NetworkSettings = NetworkSettings()
    ttl: timedelta | None = None
    sleep_after_idle: timedelta | None = None
    """Sleep after this long without a new connection on a published port; None: the daemon's
    default, zero: never."""


@dataclass(frozen=True)
class RestartOverride:
    """A user's changes to a stack's restart policy; ``None`` keeps the stack's value."""

    mode: RestartMode | None = None
    max_retries: int | None = None
    initial_backoff: timedelta | None = None
    max_backoff: timedelta | None = None
    reset_after: timedelta | None = None


@dataclass(frozen=True)
class ServiceOverride:
    """A user's changes to one service of a stack; ``None`` keeps the stack's default."""

    image: str | None = None
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    """Merged over the stack's env: keys given here replace or add."""
    ports: tuple[PortSpec, ...] | None = None
    volumes: tuple[VolumeMount, ...] | None = None
    resources: Resources | None = None
    health: HealthCheck | None = None
    restart: RestartOverride | None = None
    depends_on: tuple[Dependency, ...] | None = None
    replicas: int | None = None
    user: str | None = None
    working_dir: str | None = None
    read_only_rootfs: bool | None = None
    security: Security | None = None


@dataclass(frozen=True)
class EnvironmentRequest:
    """What a client sends: a stack by name plus overrides, before resolution and validation."""

    stack: str
    services: Mapping[str, ServiceOverride] = field(default_factory=dict)
    parameters: Mapping[str, str] = field(default_factory=dict)
    """Stack parameters (e.g. ``postgres_db``) declared by the stack."""
    labels: Mapping[str, str] = field(default_factory=dict)
    network: NetworkSettings = NetworkSettings()
    ttl: timedelta | None = None
    sleep_after_idle: timedelta | None = None
    """Sleep after this long without a new connection on a published port; None: the daemon's
    default, zero: never."""
