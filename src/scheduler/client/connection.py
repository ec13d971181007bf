"""The channel to a daemon, shared options, and one place that turns RPC failures into exit codes."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
import grpc

from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
ADDRESS_ENV = "SCHEDULER_ADDRESS"
FAILURE_EXIT = 1
INTERRUPTED_EXIT = 130

F = TypeVar("F", bound=Callable[..., Any])


class CommandFailed(Exception):
    """A failure the client itself detects (a wait that ran out, a rollback); printed like an RPC error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Credentials:
    """How the client proves who it is: a bearer token, and/or TLS (mutual with a certificate)."""

    token: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), self._header])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


def open_channel(address: str, credentials: Credentials) -> grpc.Channel:
    """A channel to ``address`` (``HOST:PORT`` or ``unix:PATH``) carrying ``credentials``."""
    if credentials.ca_file or credentials.cert_file:

        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        channel = grpc.secure_channel(
            address,
            grpc.ssl_channel_credentials(
                root_certificates=read(credentials.ca_file),
                private_key=read(credentials.key_file),
                certificate_chain=read(credentials.cert_file),
            ),
        )
    else:
        channel = grpc.insecure_channel(address)
    if credentials.token:
        return grpc.intercept_channel(channel, _Bearer(credentials.token))
    return channel


@dataclass
class Client:
    """A channel and stub to one daemon; ``timeout`` bounds every unary call."""

    address: str
    timeout: float
    credentials: Credentials = Credentials()
    _channel: grpc.Channel | None = field(default=None, init=False, repr=False)

    @property
    def stub(self) -> pb_grpc.SchedulerServiceStub:
        """The SchedulerService stub over a channel opened on first use."""
        if self._channel is None:
            self._channel = open_channel(self.address, self.credentials)
        return pb_grpc.SchedulerServiceStub(self._channel)

    def close(self) -> None:
        """Close the channel if one was opened."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def fail(code: str, message: str) -> None:
    """Print ``error: CODE: message`` on one line to stderr and exit 1."""
    click.echo(f"error: {code}: {_one_line(message)}", err=True)
    sys.exit(FAILURE_EXIT)


@contextmanager
def reported(address: str) -> Iterator[None]:
    """Turn RPC errors and client-side failures into one stderr line and exit 1, never a traceback."""
    try:
        yield
    except grpc.RpcError as err:
        code = err.code() if isinstance(err, grpc.Call) else None
        details = (err.details() if isinstance(err, grpc.Call) else None) or str(err)
        name = code.name if code is not None else "UNKNOWN"
        if code == grpc.StatusCode.UNAVAILABLE:
            details = f"cannot reach the scheduler at {address}: {details}"
        fail(name, details)
    except CommandFailed as err:
        fail(err.code, err.message)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(INTERRUPTED_EXIT)


def connection_options(command: F) -> F:
    """Add ``--address`` and ``--timeout``; the command receives a ready ``client`` argument instead."""

    @click.option(
        "--address",
        envvar=ADDRESS_ENV,
        default=DEFAULT_ADDRESS,
        show_default=True,
        help=f"Daemon address HOST:PORT or unix:PATH (env {ADDRESS_ENV}).",
    )
    @click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=30.0,
        show_default=True,
        help="Seconds each call may take.",
    )
    @click.option("--token", envvar="SCHEDULER_TOKEN", default="", help="Bearer token (env SCHEDULER_TOKEN).")
    @click.option("--tls-ca", envvar="SCHEDULER_TLS_CA", default="", help="CA bundle: use TLS, verify the daemon.")
    @click.option("--tls-cert", envvar="SCHEDULER_TLS_CERT", default="", help="Client certificate (mutual TLS).")
    @click.option("--tls-key", envvar="SCHEDULER_TLS_KEY", default="", help="Key of the client certificate.")
    @functools.wraps(command)
    def wrapper(
        *args: Any,
        address: str,
        timeout: float,
        token: str,
        tls_ca: str,
        tls_cert: str,
        tls_key: str,
        **kwargs: Any,
    ) -> Any:
        client = Client(address, timeout, Credentials(token, tls_ca, tls_cert, tls_key))
        try:
            with reported(address):
                return command(*args, client=client, **kwargs)
        finally:
            client.close()

    return wrapper  # type: ignore[return-value]


def output_option(command: F) -> F:
    """Add ``-o/--output table|json``."""
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="Readable table, or the API's JSON.",
    )(command)
