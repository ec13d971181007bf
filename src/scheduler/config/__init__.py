"""Daemon settings: YAML file, then ``SCHEDULER_`` environment variables, then CLI overrides.

This is the only module of the core that uses pydantic. Every option is documented in
``config.example.yaml``; unknown keys are refused so that a typo never passes silently.

Paths are made absolute here, once: a relative path written in a config file is relative to
that file's directory (as docker compose and Prometheus read theirs), one given by a
``SCHEDULER_*`` variable or a flag is relative to the working directory. Nothing below this
module ever sees a relative path. Options typed :data:`ConfigPath` (or :data:`CommandPath`) are
paths; options typed :data:`SecretStr` are redacted by :func:`redacted`.
"""

from __future__ import annotations

from contextvars import ContextVar
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from scheduler.config.cluster import ClusterSettings, EtcdSettings, EtcdTlsSettings, NodeSettings
from scheduler.config.host import (
    ContainerdSettings,
    ContainerLogSettings,
    ImageSettings,
    NetworkSettings,
    RegistryHost,
)
from scheduler.config.options import (
    REDACTED,
    CommandPath,
    ConfigPath,
    DirPath,
    SecretStr,
    _check_host_port,
    _resolve_paths,
    _Section,
    redacted,
)
from scheduler.config.server import ROLES, AuthSettings, RoleBinding, ServerSettings, TlsSettings, TokenSettings
from scheduler.domain import ALL_CAPABILITIES, capability_name
from scheduler.errors import InvalidArgument
from scheduler.reference import DEFAULT_ALLOWED_REGISTRIES

# Defined in the parts of this package, importable from here as before.
__all__ = [
    "ContainerLogSettings",
    "ContainerdSettings",
    "ImageSettings",
    "NetworkSettings",
    "RegistryHost",
    "DEFAULT_ALLOWED_REGISTRIES",
    "REDACTED",
    "ROLES",
    "AuthSettings",
    "ClusterSettings",
    "CommandPath",
    "ConfigPath",
    "DirPath",
    "EtcdSettings",
    "EtcdTlsSettings",
    "NodeSettings",
    "RoleBinding",
    "SecretStr",
    "ServerSettings",
    "TlsSettings",
    "TokenSettings",
    "redacted",
]


class LogSettings(_Section):
    """Structured logging."""

    format: Literal["auto", "json", "console"] = "auto"
    """``auto`` writes JSON unless stderr is a terminal."""
    level: Literal["debug", "info", "warning", "error"] = "info"


class LimitSettings(_Section):
    """Bounds on what a service, an environment and the daemon may ask for, and service defaults.

    A service whose stack sets no limit gets the defaults (0 in a request means "the default",
    never "unlimited"). Quotas answer RESOURCE_EXHAUSTED naming the quota.
    """

    max_cpu_millis: int = Field(default=8000, gt=0)
    max_memory_bytes: int = Field(default=16 * 1024**3, gt=0)
    max_pids: int = Field(default=32768, gt=0)
    max_replicas: int = Field(default=10, gt=0)
    default_cpu_millis: int = Field(default=2000, gt=0)
    """CPU limit of a service that sets none (2 cores)."""
    default_cpu_request_millis: int = Field(default=250, gt=0)
    """CPU a fleet's placement reserves for a service that requests none (a quarter of a core, or
    its limit if lower); its memory request defaults to its memory limit."""
    default_cpu_shares: int = Field(default=1024, ge=2, le=262144)
    """CPU weight of a service that sets none, in cgroup v1 shares (Docker's 1024; cpu.weight 39 on v2)."""
    default_memory_bytes: int = Field(default=512 * 1024**2, ge=6 * 1024**2)
    """Memory limit of a service that sets none."""
    default_pids: int = Field(default=1024, gt=0)
    """Process limit of a service that sets none."""
    env_max_cpu_millis: int = Field(default=16000, gt=0)
    """Quota: CPU of one environment, summed over its replicas."""
    env_max_memory_bytes: int = Field(default=32 * 1024**3, gt=0)
    """Quota: memory of one environment, summed over its replicas."""
    env_max_containers: int = Field(default=50, gt=0)
    """Quota: containers (replicas) of one environment."""
    env_max_published_ports: int = Field(default=20, ge=0)
    """Quota: host ports one environment publishes."""
    max_environments: int = Field(default=200, gt=0)
    """Quota: environments the daemon holds at once."""
    allowed_capabilities: list[str] = ["CAP_NET_RAW", "CAP_MKNOD", "CAP_SETFCAP", "CAP_AUDIT_WRITE"]
    """Capabilities a service may ``cap_add`` (beyond the default set): Docker's defaults that
    ours drop. Add others (``CAP_NET_ADMIN``...) only for stacks you trust."""
    allow_unconfined_seccomp: bool = False
    """Whether a service may run without the seccomp profile (``security.seccomp: unconfined``)."""

    @field_validator("allowed_capabilities")
    @classmethod
    def _capabilities_are_known(cls, value: list[str]) -> list[str]:
        names = [capability_name(v) for v in value]
        unknown = [v for v, n in zip(value, names, strict=True) if n not in ALL_CAPABILITIES]
        if unknown:
            raise ValueError(f"not Linux capabilities: {unknown}")
        return names

    @model_validator(mode="after")
    def _defaults_within_bounds(self) -> LimitSettings:
        for name in ("cpu_millis", "memory_bytes", "pids"):
            if getattr(self, f"default_{name}") > getattr(self, f"max_{name}"):
                raise ValueError(f"default_{name} must not exceed max_{name}")
        return self


class DeploySettings(_Section):
    """How many deploys and updates bring containers up at once."""

    concurrency: int = Field(default=0, ge=0, le=10000)
    """Admitted at once, first come first served; 0: from twice the CPUs the daemon may use, growing
    by two with each deploy that ends up to 32 per CPU (and starting low again when idle)."""
    hold_seconds: float = Field(default=60.0, gt=0, le=3600)
    """Longest a deploy holds its place (a slow health check): then the next one starts anyway."""


class MetricsSettings(_Section):
    """The Prometheus endpoint: an HTTP listener of its own, separate from the gRPC API."""

    listen: str = ""
    """``HOST:PORT`` serving ``/metrics``; empty (the default) serves no metrics."""
    interval: float = Field(default=5.0, ge=0.5, le=3600)
    """Seconds a reading of the containers' counters is reused: however often Prometheus scrapes,
    containerd is asked for each container's counters at most once per interval."""

    @field_validator("listen")
    @classmethod
    def _listen_is_address(cls, value: str) -> str:
        return _check_host_port(value) if value else value


class TemplateSettings(_Section):
    """PostgreSQL data-directory templates: initdb once per image digest and parameters, a copy per environment."""

    enabled: bool = True
    """New PostgreSQL volumes start as a copy of their template; false runs initdb in every environment."""
    unused_after: float = Field(default=86400, ge=0)
    """Seconds after its last use that a template no existing environment came from is removed."""
    gc_interval: float = Field(default=600, ge=1)
    """Seconds between two collections of unused templates (and of templates whose image is gone)."""
    spares: int = Field(default=2, ge=0, le=100)
    """Copies of each template made ahead of time, so that a new environment's volume is a rename
    (about 1 ms) instead of a copy (0.05-0.35 s for PostgreSQL's 39 MB); 0 copies at create.
    A spare is taken before an overlay is made (``overlay``)."""
    overlay: bool = True
    """Where the volumes' filesystem has no reflinks (ext4), a new PostgreSQL volume is an overlay
    mount on its template when no spare is left (a mount, no copy: see ``scheduler.volumes.overlay``);
    false copies it."""


class VolumeSettings(_Section):
    """The filesystem named volumes and templates live on (see ``scheduler.volumes.filesystem``)."""

    filesystem: Literal["data-dir", "xfs-image"] = "data-dir"
    """``data-dir``: under data_dir, on its filesystem (copies are reflinks where it has them, byte
    copies on ext4). ``xfs-image``: in a sparse XFS image with reflinks, loop-mounted by the daemon
    at ``<data_dir>/volumefs``, where every copy (template seed, clone) is a metadata operation."""
    image_size_bytes: int = Field(default=64 * 1024**3, ge=1024**3)
    """Size of the xfs-image (sparse: the data dir pays for what is written). Raising it grows the
    filesystem at the next start; it never shrinks."""


class BackupPolicy(_Section):
    """How often an environment is archived, and how many archives are kept."""

    every: float = Field(default=0, ge=0)
    """Seconds between scheduled backups; 0 takes none."""
    keep: int = Field(default=7, ge=1, le=10000)
    """Archives kept per environment (scheduled or not); older ones are deleted after each backup."""


class BackupSettings(BackupPolicy):
    """Scheduled backups of running environments (BackupEnvironment's archives, on a timer)."""

    environments: dict[str, BackupPolicy] = {}
    """Per environment name, a policy replacing the default one above."""

    def policy(self, name: str) -> BackupPolicy:
        """The policy that applies to environment ``name``."""
        return self.environments.get(name) or BackupPolicy(every=self.every, keep=self.keep)


class SleepSettings(_Section):
    """Idle environments going to sleep, and waking on a connection to a published port."""

    idle_after: float = Field(default=0, ge=0)
    """Seconds without a new connection on its published ports after which an environment sleeps
    (its containers stop; volumes, ports and addresses stay); 0 (the default) never. An
    environment's spec.sleep_after_idle overrides it."""
    check_interval: float = Field(default=10.0, ge=0.1, le=3600)
    """Seconds between two readings of the published ports' connection counters."""
    wake_deadline: float = Field(default=60.0, gt=0, le=3600)
    """Seconds a connection to a sleeping environment is held while it wakes; then it is closed."""
    max_pending: int = Field(default=64, ge=1, le=4096)
    """Connections held at once per waking environment; more are closed at once."""
    keep_tasks: bool = False
    """Keep each sleeping container's task created but not started (its shim, log writer and
    ``runc init`` stay, about 25 MB of RSS per container), so that a wake only starts processes;
    false (the default) frees all of it and a wake creates them again first."""


class Settings(BaseSettings):
    """Everything the daemon can be told; defaults work out of the box."""

    model_config = SettingsConfigDict(
        env_prefix="SCHEDULER_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    data_dir: DirPath = Path("/var/lib/scheduler")
    """Root of everything the daemon keeps: state database, volumes, logs, managed containerd."""
    state_db: ConfigPath = ""
    """SQLite file of the state store; empty means ``<data_dir>/state.db``."""
    server: ServerSettings = ServerSettings()
    auth: AuthSettings = AuthSettings()
    log: LogSettings = LogSettings()
    container_logs: ContainerLogSettings = ContainerLogSettings()
    containerd: ContainerdSettings = ContainerdSettings()
    images: ImageSettings = ImageSettings()
    network: NetworkSettings = NetworkSettings()
    limits: LimitSettings = LimitSettings()
    deploys: DeploySettings = DeploySettings()
    metrics: MetricsSettings = MetricsSettings()
    backups: BackupSettings = BackupSettings()
    sleep: SleepSettings = SleepSettings()
    templates: TemplateSettings = TemplateSettings()
    volumes: VolumeSettings = VolumeSettings()
    cluster: ClusterSettings = ClusterSettings()

    @model_validator(mode="after")
    def _network_listener_is_protected(self) -> Settings:
        server = self.server
        if server.listen and not server.listen_is_loopback:
            if not server.tls.cert_file:
                raise ValueError(
                    f"server.listen {server.listen} is not a loopback address: set server.tls "
                    "(cert_file, key_file) to serve it"
                )
            if not self.auth.tokens and not server.tls.client_ca_file:
                raise ValueError(
                    f"server.listen {server.listen} is not a loopback address: set auth.tokens or "
                    "server.tls.client_ca_file so that its callers authenticate"
                )
        return self

    @property
    def state_db_path(self) -> Path:
        """Where the state database lives."""
        return Path(self.state_db) if self.state_db else self.data_dir / "state.db"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: CLI overrides (init) > environment > YAML file (if one is being loaded).
        return (init_settings, env_settings, _ConfigFileSource(settings_cls, yaml_file=_config_file.get()))


_config_file: ContextVar[Path | None] = ContextVar("config_file", default=None)
"""The YAML file :func:`load_settings` is reading. Handed to the source this way, not through a
subclass whose ``model_config`` names it: each subclass builds its own validator (about 1 MB and
0.1 s at every start and reload)."""


class _ConfigFileSource(YamlConfigSettingsSource):
    """The YAML file, its relative paths resolved against the file's own directory."""

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        with file_path.open(encoding="utf-8") as handle:
            loaded = _parse_yaml(handle.read()) or {}
        return _resolve_paths(Settings, loaded, Path(str(file_path)).resolve().parent)


def _parse_yaml(text: str) -> Any:
    """Safe YAML, parsed by libyaml when PyYAML has it (the Python parser takes ~10 ms a file here)."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_settings(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Load settings from a YAML file, the environment and overrides.

    Raises:
        InvalidArgument: with one line per bad field, naming it and the problem.
    """
    if path is not None:
        if not path.is_file():
            raise InvalidArgument(f"config file {str(path)!r} does not exist or is not a file", field="config")
        import yaml

        try:
            loaded = _parse_yaml(path.read_text())
        except yaml.YAMLError as err:
            raise InvalidArgument(f"config file {str(path)!r} is not valid YAML: {err}", field="config") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise InvalidArgument(f"config file {str(path)!r} must hold a mapping of options", field="config")
    reading = _config_file.set(path)
    try:
        return Settings(**(overrides or {}))
    except ValidationError as err:
        lines = []
        for problem in err.errors():
            where = ".".join(str(part) for part in problem["loc"]) or "config"
            lines.append(f"{where}: {problem['msg']}")
        raise InvalidArgument("invalid configuration: " + "; ".join(lines), field="config") from err
    finally:
        _config_file.reset(reading)


LIVE_SETTINGS = ("log", "limits", "metrics", "auth", "backups", "images.registries", "images.allowed_registries")
"""Settings a reload applies at once; a change to any other needs a restart of the daemon."""


def changed_settings(old: Settings, new: Settings) -> list[str]:
    """Dotted names of the options whose values differ (``log.level``, ``data_dir``), never values."""
    changed = []
    for name in Settings.model_fields:
        before, after = getattr(old, name), getattr(new, name)
        if isinstance(before, BaseModel) and isinstance(after, BaseModel):
            changed += [f"{name}.{field}" for field in type(before).model_fields if _differs(before, after, field)]
        elif before != after:
            changed.append(name)
    return changed


def _differs(before: BaseModel, after: BaseModel, field: str) -> bool:
    return bool(before.model_dump(include={field}) != after.model_dump(include={field}))


def is_live(option: str) -> bool:
    """Whether a reload applies ``option`` (a dotted name from :func:`changed_settings`) at once."""
    return any(option == live or option.startswith(live + ".") for live in LIVE_SETTINGS)
