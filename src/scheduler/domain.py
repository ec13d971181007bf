"""Domain types shared by every layer: frozen dataclasses and enums, free of any wire format.

Two edges convert to and from these: ``api/convert.py`` (our proto) and
``runtime/containerd/convert.py`` (containerd's proto). Nothing here imports protobuf or grpc.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

# =============================================================================================
# Environment specification: what a user asks for
# =============================================================================================


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
    """Limits applied through the container's cgroup; 0 means unlimited."""

    cpu_millis: int = 0
    """CPU limit in thousandths of a core (1500 = 1.5 cores)."""
    cpu_shares: int = 0
    memory_bytes: int = 0
    pids: int = 0
    disk_bytes: int = 0
    """Size limit of volumes and the writable layer, where the storage supports it."""


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


# =============================================================================================
# Environment status: what the scheduler observed
# =============================================================================================


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


# =============================================================================================
# Runtime: what the scheduler asks of containerd, and what it hears back
# =============================================================================================


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


# =============================================================================================
# What the API streams and reports: plans, log lines, metrics, events
# =============================================================================================


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
