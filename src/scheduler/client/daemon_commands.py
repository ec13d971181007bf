"""Commands about the daemon and its fleet, not one environment: stacks, templates, nodes, reload, events."""

from __future__ import annotations

from collections.abc import Callable

import click
from google.protobuf.message import Message

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.client import render
from scheduler.client.connection import Client, connection_options, output_option
from scheduler.client.streams import (
    interruptible,
    print_stream,
)


@click.command()
@output_option
@connection_options
def stacks(client: Client, output: str) -> None:
    """List the precomposed stacks, their services and parameters."""
    reply = pb.ListStacksResponse(stacks=client.run(lambda api: api.stacks()))
    click.echo(render.to_json(reply) if output == "json" else render.stacks(reply))


@click.group()
def templates() -> None:
    """Inspect the data-directory templates (PostgreSQL's initdb output per image and parameters)."""


@templates.command("list")
@output_option
@connection_options
def templates_list(client: Client, output: str) -> None:
    """List the templates on the daemon's host, oldest first, with the environments seeded from each."""
    reply = pb.ListTemplatesResponse(templates=client.run(lambda api: api.templates()))
    click.echo(render.to_json(reply) if output == "json" else "\n".join(render.template(t) for t in reply.templates))


@click.group()
def node() -> None:
    """List, drain and undrain the nodes of a fleet."""


@node.command("list")
@output_option
@connection_options
def node_list(client: Client, output: str) -> None:
    """List the live nodes: address, CPU and memory allocated of capacity, environments, labels."""
    reply = pb.ListNodesResponse(nodes=client.run(lambda api: api.nodes()))
    click.echo(render.to_json(reply) if output == "json" else render.nodes(reply))


@node.command("drain")
@click.argument("name")
@output_option
@connection_options
def node_drain(client: Client, name: str, output: str) -> None:
    """Mark node NAME draining: it takes no new environment, and its environments move to others."""
    _show_node(client.run(lambda api: api.drain_node(name)), output)


@node.command("undrain")
@click.argument("name")
@output_option
@connection_options
def node_undrain(client: Client, name: str, output: str) -> None:
    """Make drained node NAME eligible for new environments again (environments moved away stay put)."""
    _show_node(client.run(lambda api: api.undrain_node(name)), output)


def _show_node(node: pb.Node, output: str) -> None:
    click.echo(render.to_json(node) if output == "json" else render.nodes(pb.ListNodesResponse(nodes=[node])))


@click.command("reload")
@output_option
@connection_options
def config_reload(client: Client, output: str) -> None:
    """Make the daemon re-read its configuration file, as SIGHUP does (admin only)."""
    reply = client.run(lambda api: api.reload_configuration())
    if output == "json":
        click.echo(render.to_json(reply))
        return
    click.echo("applied: " + (", ".join(reply.applied) or "nothing changed"))
    if reply.needs_restart:
        click.echo("needs a restart: " + ", ".join(reply.needs_restart))


@click.command()
@click.option("--env", "name", default="", help="Only events of this environment.")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many events.")
@click.option("--since", type=click.IntRange(min=0), help="First replay the events after this sequence.")
@output_option
@connection_options
def events(client: Client, name: str, count: int | None, since: int | None, output: str) -> None:
    """Stream environment and container events as they happen, until interrupted.

    A dropped connection (a daemon restart) is resumed from the last event received.
    """
    lines: Callable[[Message], str] = render.to_json_line if output == "json" else render.event  # type: ignore[assignment]
    interruptible(client, lambda api: print_stream(api.events(name, since=since), lines, count))
