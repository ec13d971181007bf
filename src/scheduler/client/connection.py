"""The CLI's link to the client library, shared options, and one place that turns failures into exit codes."""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from scheduler.client.api import SchedulerClient
from scheduler.client.channel import DEFAULT_ADDRESS, ConnectConfig
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


@dataclass(frozen=True)
class _Option:
    """One connection option: given before the subcommand, after it, by a variable or by default."""

    flag: str
    envvar: str
    default: Any
    help: str
    type: Any = None

    @property
    def name(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


_OPTIONS = (
    _Option("--address", ADDRESS_ENV, DEFAULT_ADDRESS, "Daemon address HOST:PORT or unix:PATH."),
    _Option("--timeout", "", 30.0, "Seconds each call may take.", click.FloatRange(min=0.1)),
    _Option("--token", "SCHEDULER_TOKEN", "", "Bearer token."),
    _Option("--tls-ca", "SCHEDULER_TLS_CA", "", "CA bundle: use TLS, verify the daemon."),
    _Option("--tls-cert", "SCHEDULER_TLS_CERT", "", "Client certificate (mutual TLS)."),
    _Option("--tls-key", "SCHEDULER_TLS_KEY", "", "Key of the client certificate."),
)
_META_KEY = "scheduler.connection"


def _help(option: _Option) -> str:
    env = f"env {option.envvar}; " if option.envvar else ""
    return f"{option.help} ({env}default {option.default!r})" if option.default != "" else f"{option.help} ({env})"


def global_connection_options(group: F) -> F:
    """The connection options before the subcommand too: ``scheduler --address unix:/p env list``."""
    for option in reversed(_OPTIONS):

        def remember(ctx: click.Context, param: click.Parameter, value: Any, name: str = option.name) -> None:
            if value is not None:
                ctx.meta.setdefault(_META_KEY, {})[name] = value

        group = click.option(
            option.flag, type=option.type, default=None, expose_value=False, callback=remember, help=_help(option)
        )(group)
    return group


def _resolved(given: dict[str, Any]) -> dict[str, Any]:
    """After the subcommand > before it > the variable > the default, option by option."""
    before = click.get_current_context().meta.get(_META_KEY, {})
    out = {}
    for option in _OPTIONS:
        value = given.get(option.name)
        if value is None:
            value = before.get(option.name)
        if value is None and option.envvar:
            value = os.environ.get(option.envvar)
        if value is None:
            value = option.default
        out[option.name] = value
    return out


def connection_options(command: F) -> F:
    """Add the connection options; the command receives a ready ``client`` argument instead."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {option.name: kwargs.pop(option.name) for option in _OPTIONS}
        opts = _resolved(given)

        def path(value: str) -> Path | None:
            return Path(value) if value else None

        try:
            config = ConnectConfig(
                opts["address"],
                float(opts["timeout"]),
                ca_file=path(opts["tls_ca"]),
                cert_file=path(opts["tls_cert"]),
                key_file=path(opts["tls_key"]),
                token=opts["token"],
            )
        except ValueError as err:
            raise click.UsageError(f"--tls-cert and --tls-key: {err}") from err
        client = Client(config)
        with reported(opts["address"]):
            return command(*args, client=client, **kwargs)

    decorated: Any = wrapper
    for option in reversed(_OPTIONS):
        decorated = click.option(option.flag, type=option.type, default=None, help=_help(option))(decorated)
    return decorated  # type: ignore[no-any-return]


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
