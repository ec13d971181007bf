"""Client commands: one function per verb, each a thin layer of flags and printing over the library."""

from __future__ import annotations

from pathlib import Path

import click

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.client import render
from scheduler.client.api import SchedulerClient
from scheduler.client.connection import Client, CommandFailed, connection_options, output_option
from scheduler.client.errors import ApiError
from scheduler.client.options import (
    build_spec,
    spec_options,
    usage_error,
    wait_options,
)
from scheduler.client.spec import SpecError, parse_pairs, status_value
from scheduler.client.streams import (
    interruptible,
    print_stream,
)
from scheduler.client.waits import (
    failure_reason,
    wait_gone,
    wait_settled,
)
from scheduler.retry import retry

UPDATE_ATTEMPTS = 5


def _print_env(env: pb.Environment, output: str) -> None:
    click.echo(render.to_json(env) if output == "json" else render.environment(env))


# ------------------------------------------------------------------------------------------------
# scheduler env ...
# ------------------------------------------------------------------------------------------------


@click.group()
def env() -> None:
    """Create, inspect, update and delete environments."""


@env.command("create")
@click.argument("name")
@click.option("--stack", help="Stack to deploy (see `scheduler stacks`); may come from --file instead.")
@spec_options
@wait_options(300)
@output_option
@connection_options
def env_create(
    client: Client,
    name: str,
    stack: str | None,
    spec_file: Path | None,
    params: tuple[str, ...],
    labels: tuple[str, ...],
    sets: tuple[str, ...],
    wait: bool,
    wait_timeout: float,
    output: str,
) -> None:
    """Create environment NAME from a stack; with --wait, block until it runs."""
    spec = build_spec(pb.EnvironmentSpecification(stack=stack or ""), spec_file, params, labels, sets)
    if stack:
        spec.stack = stack
    if not spec.stack:
        raise click.UsageError("a stack is required: pass --stack or set `stack` in --file")

    async def calls(api: SchedulerClient) -> tuple[pb.Environment, pb.Environment | None]:
        created = await api.create(name, spec)
        return created, await wait_settled(api, name, created, wait_timeout) if wait else None

    _print_created(name, *client.run(calls), output)


def _print_created(name: str, created: pb.Environment, settled: pb.Environment | None, output: str) -> None:
    """Print a new environment as created, or as it settled (failing unless it runs)."""
    if settled is None:
        _print_env(created, output)
        return
    _print_env(settled, output)
    if settled.status != pb.ENVIRONMENT_STATUS_RUNNING:
        raise CommandFailed(
            "FAILED_PRECONDITION", f"environment {name!r} is {render.status(settled.status)}: {failure_reason(settled)}"
        )


@env.command("clone")
@click.argument("source")
@click.argument("name")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Stack parameter to change.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Label to set on the clone.")
@wait_options(300)
@output_option
@connection_options
def env_clone(
    client: Client,
    source: str,
    name: str,
    params: tuple[str, ...],
    labels: tuple[str, ...],
    wait: bool,
    wait_timeout: float,
    output: str,
) -> None:
    """Create environment NAME as a copy of SOURCE: its specification and a consistent copy of its data.

    SOURCE must be running; it keeps serving while it is copied. With --wait, block until NAME runs.
    """
    try:
        overrides = {"parameters": parse_pairs("--param", params), "labels": parse_pairs("--label", labels)}
    except SpecError as err:
        raise usage_error(err) from err
    spec = pb.EnvironmentSpecification(parameters=overrides["parameters"], labels=overrides["labels"])
    mask = [f"{field}.`{key}`" for field, pairs in overrides.items() for key in pairs]

    async def calls(api: SchedulerClient) -> tuple[pb.Environment, pb.Environment | None]:
        created = await api.clone(source, name, spec=spec, update_mask=mask)
        return created, await wait_settled(api, name, created, wait_timeout) if wait else None

    _print_created(name, *client.run(calls), output)


@env.command("get")
@click.argument("name")
@output_option
@connection_options
def env_get(client: Client, name: str, output: str) -> None:
    """Show environment NAME: status, endpoints, conditions and containers."""
    _print_env(client.run(lambda api: api.get(name)), output)


@env.command("list")
@click.option("--status", "statuses", multiple=True, help="Only this status (running, failed, ...); repeatable.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Only environments with this label.")
@output_option
@connection_options
def env_list(client: Client, statuses: tuple[str, ...], labels: tuple[str, ...], output: str) -> None:
    """List environments, oldest first."""
    try:
        wanted = [
            pb.EnvironmentStatus.Name(pb.EnvironmentStatus.ValueType(status_value(s))).removeprefix(
                "ENVIRONMENT_STATUS_"
            )
            for s in statuses
        ]
        label_filter = parse_pairs("--label", labels)
    except SpecError as err:
        raise usage_error(err) from err
    terms = [f"status={','.join(wanted)}"] if wanted else []
    terms += [f'labels.{key}="{value}"' for key, value in label_filter.items()]
    found = pb.ListEnvironmentsResponse(environments=client.run(lambda api: api.list(" ".join(terms), page_size=500)))
    click.echo(render.to_json(found) if output == "json" else render.environments(found.environments))


@env.command("update")
@click.argument("name")
@spec_options
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--drain", type=click.FloatRange(min=0), help="Seconds old containers keep serving after the switch.")
@wait_options(300)
@output_option
@connection_options
def env_update(
    client: Client,
    name: str,
    spec_file: Path | None,
    params: tuple[str, ...],
    labels: tuple[str, ...],
    sets: tuple[str, ...],
    dry_run: bool,
    drain: float | None,
    wait: bool,
    wait_timeout: float,
    output: str,
) -> None:
    """Change environment NAME: flags apply on top of its current specification (or of --file)."""

    async def calls(api: SchedulerClient) -> tuple[pb.UpdateEnvironmentResponse, pb.Environment | None]:
        # The etag makes the read-modify-write safe: a change made meanwhile is not overwritten;
        # the flags are applied again on top of it instead (a few times at most).
        async def attempt() -> pb.UpdateEnvironmentResponse:
            current = await api.get(name)
            spec = build_spec(current.spec, spec_file, params, labels, sets)
            return await api.update(name, spec, etag=current.etag, validate_only=dry_run, drain=drain)

        def changed_meanwhile(err: Exception) -> bool:
            return isinstance(err, ApiError) and err.code == "ABORTED"

        reply = await retry(attempt, changed_meanwhile, [0.0] * (UPDATE_ATTEMPTS - 1))
        if dry_run or not wait:
            return reply, None
        return reply, await wait_settled(api, name, reply.environment, wait_timeout)

    reply, settled = client.run(calls)
    if settled is None:
        if output == "json":
            click.echo(render.to_json(reply))
        else:
            click.echo(render.plan(reply.plan))
            if not dry_run:
                click.echo(f"\n{name}: generation {reply.environment.generation} accepted")
        return
    target = reply.environment.generation
    if output == "json":
        reply.environment.CopyFrom(settled)
        click.echo(render.to_json(reply))
    else:
        click.echo(render.plan(reply.plan) + "\n")
        click.echo(render.environment(settled))
    # A rollback is a new generation restoring the old spec: the requested one is not what runs.
    rolled = next(
        (c for c in settled.conditions if c.type == "RolledBack" and c.status == pb.CONDITION_STATUS_TRUE), None
    )
    if settled.generation > target and rolled is not None:
        raise CommandFailed("ABORTED", f"update of {name!r} rolled back: {rolled.message}")
    if settled.status != pb.ENVIRONMENT_STATUS_RUNNING:
        raise CommandFailed(
            "FAILED_PRECONDITION", f"environment {name!r} is {render.status(settled.status)}: {failure_reason(settled)}"
        )


@env.command("delete")
@click.argument("name")
@click.option("--keep-volumes", is_flag=True, help="Keep the environment's named volumes on the host.")
@wait_options(180)
@connection_options
def env_delete(client: Client, name: str, keep_volumes: bool, wait: bool, wait_timeout: float) -> None:
    """Delete environment NAME; with --wait, block until it is gone."""

    async def calls(api: SchedulerClient) -> pb.Environment:
        deleted = await api.delete(name, keep_volumes=keep_volumes)
        if wait:
            await wait_gone(api, name, wait_timeout)
        return deleted

    deleted = client.run(calls)
    if wait:
        click.echo(f"{name}: deleted")
    else:
        click.echo(f"{name}: {render.status(deleted.status)}")


@env.command("logs")
@click.argument("name")
@click.option("--service", "services", multiple=True, help="Only this service; repeatable.")
@click.option("--tail", type=click.IntRange(min=0), default=0, help="Last lines per container (0: all retained).")
@click.option("--follow", "-f", is_flag=True, help="Keep streaming new lines until interrupted.")
@click.option("--stream", type=click.Choice(["both", "stdout", "stderr"]), default="both", show_default=True)
@output_option
@connection_options
def env_logs(
    client: Client, name: str, services: tuple[str, ...], tail: int, follow: bool, stream: str, output: str
) -> None:
    """Print the log lines of environment NAME's containers, each prefixed by SERVICE-REPLICA."""
    streams = {"both": pb.LOG_STREAM_UNSPECIFIED, "stdout": pb.LOG_STREAM_STDOUT, "stderr": pb.LOG_STREAM_STDERR}
    lines = render.to_json_line if output == "json" else render.log_line
    interruptible(
        client,
        lambda api: print_stream(
            api.logs(name, services=services, tail=tail, follow=follow, stream=streams[stream]), lines
        ),
    )


@env.command("metrics")
@click.argument("name")
@click.option("--window", type=click.FloatRange(min=0.1), help="Seconds over which CPU use is measured (default 1).")
@output_option
@connection_options
def env_metrics(client: Client, name: str, window: float | None, output: str) -> None:
    """Sample CPU, memory, pids and IO of every container of environment NAME."""
    reply = client.run(lambda api: api.metrics(name, window=window))
    click.echo(render.to_json(reply) if output == "json" else render.metrics(reply))


@env.command("history")
@click.argument("name")
@click.option("--steps", is_flag=True, help="Also show each recent operation's steps with their times.")
@output_option
@connection_options
def env_history(client: Client, name: str, steps: bool, output: str) -> None:
    """Show the audit trail of environment NAME, oldest first (with --steps, the operations' timelines)."""
    reply = pb.GetEnvironmentHistoryResponse(entries=client.run(lambda api: api.history(name)))
    if not steps:
        click.echo(render.to_json(reply) if output == "json" else render.history(reply))
        return
    operations = pb.ListOperationsResponse(operations=client.run(lambda api: api.operations(name)))
    if output == "json":
        click.echo(render.to_json(operations))
        return
    click.echo(render.history(reply))
    click.echo(render.operations(operations))


@env.command("backup")
@click.argument("name")
@output_option
@connection_options
def env_backup(client: Client, name: str, output: str) -> None:
    """Archive environment NAME (spec, history, volumes, database dumps) on the daemon's host."""
    reply = client.run(lambda api: api.backup(name))
    click.echo(render.to_json(reply) if output == "json" else render.backup(reply))


@env.command("backups")
@click.argument("name")
@output_option
@connection_options
def env_backups(client: Client, name: str, output: str) -> None:
    """List the archives of environment NAME, newest first."""
    reply = pb.ListBackupsResponse(backups=client.run(lambda api: api.backups(name)))
    click.echo(render.to_json(reply) if output == "json" else "\n".join(render.backup(b) for b in reply.backups))


@env.command("restore")
@click.argument("backup")
@click.option("--name", default="", help="Create the environment under this name (default: the archived one).")
@output_option
@connection_options
def env_restore(client: Client, backup: str, name: str, output: str) -> None:
    """Create an environment from archive BACKUP (an id from `env backups`); waits until it runs."""
    _print_env(client.run(lambda api: api.restore(backup, name)), output)
