"""The CLI's link to the client library, shared options, and one place that turns failures into exit codes."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from scheduler.client.api import DEFAULT_ADDRESS, ConnectConfig, SchedulerClient
from scheduler.client.errors import ClientError

ADDRESS_ENV = "SCHEDULER_ADDRESS"
FAILURE_EXIT = 1
INTERRUPTED_EXIT = 130

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class CommandFailed(ClientError):
    """A failure the CLI itself detects (a rollback, a deploy that failed); printed like an RPC error."""


@dataclass
class Client:
    """Runs one command's calls through the async client library, on its own event loop."""

    config: ConnectConfig

    @property
    def address(self) -> str:
        """The daemon's address, for messages."""
        return self.config.address

    @property
    def timeout(self) -> float:
        """Seconds each unary call may take."""
        return self.config.timeout

    def run(self, calls: Callable[[SchedulerClient], Awaitable[T]]) -> T:
        """Open a client, await ``calls(client)``, close it; Ctrl-C cancels the calls in flight."""

        async def main() -> T:
            async with SchedulerClient(self.config) as api:
                return await calls(api)

        return asyncio.run(main())


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
    except ClientError as err:
        message = err.message
        if err.code == "UNAVAILABLE":
            message = f"cannot reach the scheduler at {address}: {message}"
        fail(err.code, message)
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
        def path(value: str) -> Path | None:
            return Path(value) if value else None

        try:
            config = ConnectConfig(
                address, timeout, ca_file=path(tls_ca), cert_file=path(tls_cert), key_file=path(tls_key), token=token
            )
        except ValueError as err:
            raise click.UsageError(f"--tls-cert and --tls-key: {err}") from err
        client = Client(config)
        with reported(address):
            return command(*args, client=client, **kwargs)

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
