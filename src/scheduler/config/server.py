"""Settings of the API server: listeners, TLS, tokens and role bindings."""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from scheduler.config.options import (
    ConfigPath,
    _check_host_port,
    _Section,
)


class TlsSettings(_Section):
    """TLS on the TCP listener; with ``client_ca_file``, mutual TLS (clients must present a certificate)."""

    cert_file: ConfigPath = ""
    """PEM certificate chain of the server; empty serves plaintext TCP (loopback only)."""
    key_file: ConfigPath = ""
    client_ca_file: ConfigPath = ""
    """PEM bundle of the CAs that sign client certificates; set, it makes TLS mutual."""

    @model_validator(mode="after")
    def _pairs(self) -> TlsSettings:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("set both cert_file and key_file, or neither")
        if self.client_ca_file and not self.cert_file:
            raise ValueError("client_ca_file needs cert_file and key_file (mutual TLS is TLS first)")
        return self


class ServerSettings(_Section):
    """Where and how the gRPC API is served."""

    listen: str = ""
    """TCP address ``HOST:PORT``; empty (the default) disables TCP. A non-loopback address needs
    ``tls`` and a way to authenticate (``auth.tokens`` or ``tls.client_ca_file``)."""
    unix_socket: ConfigPath = "/run/scheduler/scheduler.sock"
    """Path of the unix socket, the default local transport; empty disables it."""
    unix_socket_mode: int = Field(default=0o660, ge=0, le=0o777)
    """Permission bits the socket is created with (before it becomes reachable)."""
    unix_socket_group: str = ""
    """Group (name or id) owning the socket; empty keeps the daemon's group."""
    tls: TlsSettings = TlsSettings()
    shutdown_grace: float = Field(default=5.0, ge=0, le=600)
    """Seconds in-flight RPCs get to finish after SIGTERM or SIGINT."""

    @field_validator("listen")
    @classmethod
    def _listen_is_address(cls, value: str) -> str:
        return _check_host_port(value) if value else value

    @field_validator("unix_socket_mode", mode="before")
    @classmethod
    def _mode_is_octal(cls, value: Any) -> Any:
        # A string (a variable, or YAML's 0o660) is read as octal, as chmod reads it.
        return int(value.removeprefix("0o"), 8) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _serves_somewhere(self) -> ServerSettings:
        if not self.listen and not self.unix_socket:
            raise ValueError("set server.listen or server.unix_socket, or both")
        return self

    @property
    def listen_is_loopback(self) -> bool:
        """Whether the TCP address only accepts connections from this host."""
        host = self.listen.rpartition(":")[0].strip("[]")
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


ROLES = ("viewer", "operator", "admin")


class TokenSettings(_Section):
    """A bearer token, stored only as its SHA-256 (``scheduler token create`` makes one)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
    """The principal the token authenticates: ``token:<name>``."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class RoleBinding(_Section):
    """Grants a role to principals, optionally only over some environments."""

    role: Literal["viewer", "operator", "admin"]
    principals: list[str] = Field(min_length=1)
    """``user:NAME``, ``uid:N``, ``group:NAME``, ``gid:N`` (local callers), ``token:NAME``, ``cert:CN``."""
    name_prefix: str = ""
    """Only environments whose name starts with this."""
    labels: dict[str, str] = {}
    """Only environments carrying these labels (and new ones must carry them)."""

    @field_validator("principals")
    @classmethod
    def _principal_kinds(cls, value: list[str]) -> list[str]:
        for principal in value:
            kind, sep, name = principal.partition(":")
            if not sep or not name or kind not in ("user", "uid", "group", "gid", "token", "cert"):
                raise ValueError(f"{principal!r} is not user:, uid:, group:, gid:, token: or cert: and a name")
        return value


class AuthSettings(_Section):
    """Who may call: every caller is a principal, and roles say what each principal may do."""

    tokens: list[TokenSettings] = []
    bindings: list[RoleBinding] = [RoleBinding(role="admin", principals=["user:root"])]
    """Role bindings; by default only root (over the unix socket or loopback TCP) may call."""
    loopback_ident: bool = True
    """Identify plaintext TCP callers on loopback by the owner of their socket (as identd does),
    so that loopback TCP is as closed as the unix socket."""
