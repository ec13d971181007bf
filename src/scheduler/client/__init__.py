"""The client CLI: ``scheduler stacks|env|events`` over the public gRPC API.

It speaks only the wire protocol (the generated stubs), so it works against any daemon it can
reach, local or remote, and never loads the daemon's own layers.
"""

from __future__ import annotations

import click

from scheduler.client.commands import env, events, stacks
from scheduler.client.connection import global_connection_options

__all__ = ["global_connection_options", "register"]


def register(group: click.Group) -> None:
    """Add the client commands to the top-level command group."""
    group.add_command(stacks)
    group.add_command(env)
    group.add_command(events)
