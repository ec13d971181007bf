"""The scheduler's Python client: a typed asyncio library, and the CLI built on it.

The library (:class:`SchedulerClient`) speaks only the wire protocol (the generated stubs), so it
works against any daemon it can reach and never loads the daemon's own layers. The CLI
(``scheduler stacks|env|events|node``) is a thin layer of printing over it.
"""

from __future__ import annotations

import click

from scheduler.client.api import SchedulerClient
from scheduler.client.channel import ConnectConfig
from scheduler.client.connection import global_connection_options
from scheduler.client.errors import ApiError, ClientError, ErrorDetails, Violation, WaitFailed

__all__ = [
    "ApiError",
    "ClientError",
    "ConnectConfig",
    "ErrorDetails",
    "SchedulerClient",
    "Violation",
    "WaitFailed",
    "global_connection_options",
    "register",
]


def register(group: click.Group) -> None:
    """Add the client commands to the top-level command group."""
    from scheduler.client import sleep as _sleep_commands  # noqa: F401 - registers env stop/start
    from scheduler.client.commands import env
    from scheduler.client.daemon_commands import config_reload, events, node, stacks, templates

    group.add_command(stacks)
    group.add_command(node)
    group.add_command(env)
    group.add_command(events)
    group.add_command(templates)
    config = group.commands.get("config")
    if isinstance(config, click.Group):
        config.add_command(config_reload, "reload")
