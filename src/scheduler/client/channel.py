"""How a client reaches the daemon: address, TLS files and token, made into a channel and call metadata."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"


@dataclass(frozen=True)
class ConnectConfig:
    """Where the daemon is and how to reach it; the CLI builds one from its options."""

    address: str = DEFAULT_ADDRESS
    """``HOST:PORT``, or ``unix:PATH`` for a local socket."""
    timeout: float = 30.0
    """Seconds each unary call may take."""
    ca_file: Path | None = None
    """Use TLS, trusting this CA bundle (the system's when only ``cert_file`` is set)."""
    cert_file: Path | None = None
    """Client certificate for mutual TLS (with ``key_file``)."""
    key_file: Path | None = None
    token: str = ""
    """Bearer token sent as ``authorization`` metadata on every call."""

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")

    @property
    def tls(self) -> bool:
        """Whether the channel uses TLS."""
        return self.ca_file is not None or self.cert_file is not None

    def channel(self) -> grpc.aio.Channel:
        """Open an asyncio channel with these settings."""
        if not self.tls:
            return grpc.aio.insecure_channel(self.address)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes() if self.ca_file else None,
            private_key=self.key_file.read_bytes() if self.key_file else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert_file else None,
        )
        return grpc.aio.secure_channel(self.address, credentials)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata sent with every call."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()
