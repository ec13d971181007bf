"""Printing a server stream (logs, events) line by line until it ends or the user interrupts it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import click

from scheduler.client.api import SchedulerClient
from scheduler.client.connection import Client


async def print_stream(items: AsyncIterator[Any], line: Callable[[Any], str], count: int | None = None) -> None:
    seen = 0
    async for item in items:
        click.echo(line(item))
        seen += 1
        if count is not None and seen >= count:
            return


def interruptible(client: Client, calls: Callable[[SchedulerClient], Any]) -> None:
    """Run a streaming command until it ends or Ctrl-C, which ends it quietly."""
    try:
        client.run(calls)
    except KeyboardInterrupt:
        pass
