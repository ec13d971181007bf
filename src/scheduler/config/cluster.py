"""Fleet mode: the etcd cluster the daemons share, and this daemon as one node of the fleet."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from scheduler.config.options import ConfigPath, _check_host_port, _Section


class EtcdTlsSettings(_Section):
    """TLS towards the etcd members; all empty speaks plaintext (or TLS for ``https://`` endpoints)."""

    ca_file: ConfigPath = ""
    """PEM bundle of the CA that signed the members' certificates."""
    cert_file: ConfigPath = ""
    """PEM client certificate, for members that require one (set with key_file)."""
    key_file: ConfigPath = ""

    @model_validator(mode="after")
    def _pair(self) -> EtcdTlsSettings:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("set both cert_file and key_file, or neither")
        return self


class EtcdSettings(_Section):
    """The etcd cluster that fleet mode keeps its state in; no endpoints keeps state in SQLite."""

    endpoints: list[str] = []
    """Client URLs of the members (``http://10.0.0.1:2379``); calls fail over between them."""
    prefix: str = Field(default="/scheduler/", pattern=r"^/[^\s]*/$")
    """Key prefix of everything this scheduler fleet stores (several fleets may share a cluster)."""
    dial_timeout: float = Field(default=5.0, gt=0, le=300)
    """Seconds one attempt at one member may take before the next member is tried."""
    retry_deadline: float = Field(default=15.0, gt=0, le=3600)
    """Seconds a call keeps failing over between members (an election takes a few)."""
    tls: EtcdTlsSettings = EtcdTlsSettings()
    compaction_interval: float = Field(default=300.0, ge=0, le=86400)
    """Seconds between compactions of etcd's history, each one interval behind; 0 leaves it to
    etcd's own ``--auto-compaction-retention`` (without either, etcd fills up and refuses writes)."""

    @field_validator("endpoints")
    @classmethod
    def _endpoints_are_urls(cls, value: list[str]) -> list[str]:
        for endpoint in value:
            rest = endpoint.split("://", 1)[1] if "://" in endpoint else endpoint
            if endpoint.split("://", 1)[0] not in ("http", "https") and "://" in endpoint:
                raise ValueError(f"{endpoint!r}: an etcd endpoint is http://HOST:PORT or https://HOST:PORT")
            _check_host_port(rest.rstrip("/"))
        return value


class NodeSettings(_Section):
    """This daemon as a node of a fleet: how it is named, reached and what it offers."""

    name: str = Field(default="", pattern=r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)?$")
    """Unique name in the fleet; empty means the host name."""
    advertise: str = ""
    """API address (``HOST:PORT``) other nodes and clients use for it; empty means ``server.listen``."""
    labels: dict[str, str] = {}
    """Labels environments may select on, e.g. ``{node.disk: ssd}``."""
    cpu_millis: int = Field(default=0, ge=0)
    """CPU offered to environments, in thousandths of a core; 0 means every core of the host."""
    memory_bytes: int = Field(default=0, ge=0)
    """Memory offered to environments; 0 means the host's physical memory."""

    @field_validator("advertise")
    @classmethod
    def _advertise_is_host_port(cls, value: str) -> str:
        return _check_host_port(value) if value else value


class ClusterSettings(_Section):
    """Fleet mode: several schedulers sharing their state through etcd; without endpoints, one alone."""

    etcd: EtcdSettings = EtcdSettings()
    node: NodeSettings = NodeSettings()
    lease_ttl: int = Field(default=10, ge=2, le=300)
    """Seconds a node stays listed after its last keepalive (its daemon, host or link died)."""
    failover_grace: float = Field(default=20.0, ge=0, le=3600)
    """Seconds after a node's lease lapsed before its environments are placed elsewhere."""
    fence: bool = True
    """Stop this node's environments' processes once it cannot renew its lease (they are about to
    run elsewhere), and start those still placed on it when it reaches etcd again."""
    placement: Literal["spread", "pack"] = "spread"
    """Among nodes with room: the least loaded (spread) or the most loaded (pack)."""
    backup_dir: ConfigPath = ""
    """Backup archives shared by every node (a network file system), so that a lost node's
    databases come back elsewhere from their latest backup; empty means ``<data_dir>/backups``."""
