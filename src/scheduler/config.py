"""Daemon settings: YAML file, then ``SCHEDULER_`` environment variables, then CLI overrides.

This is the only module of the core that uses pydantic. Every option is documented in
``config.example.yaml``; unknown keys are refused so that a typo never passes silently.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from scheduler.errors import InvalidArgument


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT with a port from 0 to 65535")
    return value


class ServerSettings(_Section):
    """Where and how the gRPC API is served."""

    listen: str = "127.0.0.1:50051"
    """TCP address ``HOST:PORT``; empty disables TCP."""
    unix_socket: str = ""
    """Path of a unix socket to serve on as well; empty disables it."""
    shutdown_grace: float = Field(default=5.0, ge=0, le=600)
    """Seconds in-flight RPCs get to finish after SIGTERM or SIGINT."""

    @field_validator("listen")
    @classmethod
    def _listen_is_address(cls, value: str) -> str:
        return _check_host_port(value) if value else value

    @model_validator(mode="after")
    def _serves_somewhere(self) -> ServerSettings:
        if not self.listen and not self.unix_socket:
            raise ValueError("set server.listen or server.unix_socket, or both")
        return self


class LogSettings(_Section):
    """Structured logging."""

    format: Literal["auto", "json", "console"] = "auto"
    """``auto`` writes JSON unless stderr is a terminal."""
    level: Literal["debug", "info", "warning", "error"] = "info"


class ContainerLogSettings(_Section):
    """Containers' stdout and stderr files, written and rotated by each task's log writer."""

    max_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    """Size in bytes at which a stream's file is rotated."""
    max_files: int = Field(default=3, ge=1, le=100)
    """Files kept per stream, the current one included (``stdout.log``, ``stdout.log.1``, ...)."""


class ContainerdSettings(_Section):
    """How the daemon reaches containerd."""

    socket: str = ""
    """Socket of an existing containerd; empty starts (or adopts) a managed one under data_dir."""
    namespace: str = "scheduler"
    """containerd namespace that holds everything the scheduler creates."""
    binary: str = "containerd"
    """containerd binary for the managed instance."""
    snapshotter: str = "overlayfs"
    runtime: str = "io.containerd.runc.v2"
    call_timeout: float = Field(default=30.0, gt=0)
    """Deadline, in seconds, of one containerd call."""

    @field_validator("namespace")
    @classmethod
    def _namespace_is_identifier(cls, value: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*", value):
            raise ValueError(f"{value!r} is not a valid containerd namespace")
        return value


class RegistryHost(_Section):
    """Per-registry-host settings, like containerd's hosts.toml."""

    mirrors: list[str] = []
    """Endpoints (``http://127.0.0.1:5000``) tried in order before the host itself."""
    insecure: bool = False
    """Allow plain HTTP to this host."""
    username: str = ""
    password: str = ""


class ImageSettings(_Section):
    """Image pulls and imports."""

    pull_policy: Literal["if-not-present", "always", "never"] = "if-not-present"
    registries: dict[str, RegistryHost] = {}
    """Keyed by registry host (``docker.io``, ``127.0.0.1:5000``)."""
    preload: list[str] = []
    """Image archives (OCI layout or ``docker save`` tars) imported at start."""


class NetworkSettings(_Section):
    """Environment networks and published ports."""

    pool: str = "10.88.0.0/16"
    """Address pool carved into one subnet per environment."""
    subnet_prefix: int = Field(default=24, ge=16, le=28)
    port_range: tuple[int, int] = (20000, 29999)
    """Host ports allocated when a service asks for none in particular."""
    host_ip: str = "127.0.0.1"
    """Default host address for published ports."""
    cni_bin_dir: str = "/usr/lib/cni"
    instance: str = Field(default="sch", pattern=r"^[a-z0-9]{1,6}$")
    """Prefix of every bridge, iptables chain and name this daemon owns on the host; two daemons
    on one host need different instances (and non-overlapping pools)."""

    @field_validator("pool")
    @classmethod
    def _pool_is_network(cls, value: str) -> str:
        ipaddress.ip_network(value)
        return value

    @field_validator("host_ip")
    @classmethod
    def _host_ip_is_address(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value

    @field_validator("port_range")
    @classmethod
    def _range_is_ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"{list(value)} is not [LOW, HIGH] with 1 <= LOW <= HIGH <= 65535")
        return value


class LimitSettings(_Section):
    """Bounds on what one service may ask for."""

    max_cpu_millis: int = Field(default=8000, gt=0)
    max_memory_bytes: int = Field(default=16 * 1024**3, gt=0)
    max_pids: int = Field(default=32768, gt=0)
    max_replicas: int = Field(default=10, gt=0)


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


class Settings(BaseSettings):
    """Everything the daemon can be told; defaults work out of the box."""

    model_config = SettingsConfigDict(
        env_prefix="SCHEDULER_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    data_dir: Path = Path("/var/lib/scheduler")
    """Root of everything the daemon keeps: state database, volumes, logs, managed containerd."""
    state_db: str = ""
    """SQLite file of the state store; empty means ``<data_dir>/state.db``."""
    server: ServerSettings = ServerSettings()
    log: LogSettings = LogSettings()
    container_logs: ContainerLogSettings = ContainerLogSettings()
    containerd: ContainerdSettings = ContainerdSettings()
    images: ImageSettings = ImageSettings()
    network: NetworkSettings = NetworkSettings()
    limits: LimitSettings = LimitSettings()
    metrics: MetricsSettings = MetricsSettings()

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
        # Earlier sources win: CLI overrides (init) > environment > YAML file (if the class names one).
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))


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
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise InvalidArgument(f"config file {str(path)!r} is not valid YAML: {err}", field="config") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise InvalidArgument(f"config file {str(path)!r} must hold a mapping of options", field="config")
    settings_class = Settings if path is None else _settings_from_file(path)
    try:
        return settings_class(**(overrides or {}))
    except ValidationError as err:
        lines = []
        for problem in err.errors():
            where = ".".join(str(part) for part in problem["loc"]) or "config"
            lines.append(f"{where}: {problem['msg']}")
        raise InvalidArgument("invalid configuration: " + "; ".join(lines), field="config") from err


def _settings_from_file(path: Path) -> type[Settings]:
    class FileSettings(Settings):
        model_config = SettingsConfigDict(yaml_file=path)

    return FileSettings
