"""The channel to a daemon, shared options, and one place that turns RPC failures into exit codes."""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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


@dataclass
class Client:
    """A channel and stub to one daemon; ``timeout`` bounds every unary call."""

    address: str
    timeout: float
    _channel: grpc.Channel | None = field(default=None, init=False, repr=False)

    @property
    def stub(self) -> pb_grpc.SchedulerServiceStub:
        """The SchedulerService stub over a channel opened on first use."""
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address)
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


def until_interrupted(call: Any) -> Iterator[Any]:
    """The messages of a streaming ``call`` until it ends or Ctrl-C cancels it (then it ends quietly).

    A blocked stream read does not return to Python until the next message, so a Ctrl-C would
    wait for one; SIGINT cancels the call instead, which ends the read at once.
    """
    interrupted = False

    def cancel(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True
        call.cancel()

    previous = signal.signal(signal.SIGINT, cancel)
    try:
        yield from call
    except grpc.RpcError:
        if not interrupted:
            raise
    finally:
        signal.signal(signal.SIGINT, previous)
        call.cancel()


_ADDRESS_KEY = "scheduler.address"
_TIMEOUT_KEY = "scheduler.timeout"


def _remember(key: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        ctx.meta[key] = value

    return store


def global_connection_options(group: F) -> F:
    """``--address`` and ``--timeout`` before the subcommand (``scheduler --address unix:/p env list``)."""
    group = click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=30.0,
        show_default=True,
        expose_value=False,
        callback=_remember(_TIMEOUT_KEY),
        help="Seconds each call of a client command may take.",
    )(group)
    return click.option(
        "--address",
        envvar=ADDRESS_ENV,
        default=DEFAULT_ADDRESS,
        show_default=True,
        expose_value=False,
        callback=_remember(_ADDRESS_KEY),
        help=f"Daemon address HOST:PORT or unix:PATH for client commands (env {ADDRESS_ENV}).",
    )(group)


def connection_options(command: F) -> F:
    """Add ``--address`` and ``--timeout``; the command receives a ready ``client`` argument instead.

    Given after the subcommand they win over the same options given before it (see
    :func:`global_connection_options`), which win over ``SCHEDULER_ADDRESS`` and the defaults.
    """

    @click.option(
        "--address",
        default=None,
        help=f"Daemon address HOST:PORT or unix:PATH (env {ADDRESS_ENV}; default {DEFAULT_ADDRESS}).",
    )
    @click.option("--timeout", type=click.FloatRange(min=0.1), default=None, help="Seconds each call may take (30).")
    @functools.wraps(command)
    def wrapper(*args: Any, address: str | None, timeout: float | None, **kwargs: Any) -> Any:
        meta = click.get_current_context().meta
        address = address or meta.get(_ADDRESS_KEY) or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
        client = Client(address, timeout or meta.get(_TIMEOUT_KEY) or 30.0)
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
