"""Client commands: one function per verb, each a thin request/print around one RPC."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click
import grpc
from google.protobuf.duration_pb2 import Duration

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.client import render
from scheduler.client.connection import Client, CommandFailed, connection_options, output_option
from scheduler.client.spec import SpecError, apply_flags, load_file, parse_pairs, status_value

F = TypeVar("F", bound=Callable[..., Any])

POLL_INTERVAL = 0.25
SETTLED = {pb.ENVIRONMENT_STATUS_RUNNING, pb.ENVIRONMENT_STATUS_DEGRADED, pb.ENVIRONMENT_STATUS_FAILED}


def _usage(err: SpecError) -> click.UsageError:
    # The message already names the option (``--set backend.replicas: ...``).
    return click.UsageError(err.message)


def spec_options(command: F) -> F:
    """``--param``, ``--label``, ``--set`` and ``--file``, shared by create and update."""
    for decorator in reversed(
        [
            click.option(
                "--file",
                "-f",
                "spec_file",
                type=click.Path(path_type=Path, dir_okay=False),
                help="Specification as YAML or JSON (API field names); flags apply on top.",
            ),
            click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Stack parameter."),
            click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Environment label."),
            click.option(
                "--set",
                "sets",
                multiple=True,
                metavar="SERVICE.FIELD=VALUE",
                help="Service override, e.g. backend.env.GREETING=hi, backend.replicas=3, "
                "toolbox.resources.memory_bytes=256Mi, backend.command='sh -c \"...\"'.",
            ),
        ]
    ):
        command = decorator(command)
    return command


def wait_options(default_timeout: float) -> Callable[[F], F]:
    """``--wait`` and ``--wait-timeout``."""

    def decorate(command: F) -> F:
        command = click.option(
            "--wait-timeout",
            type=click.FloatRange(min=1),
            default=default_timeout,
            show_default=True,
            help="Seconds --wait may take.",
        )(command)
        return click.option("--wait", is_flag=True, help="Block until the change has settled.")(command)

    return decorate


def _build_spec(
    base: pb.EnvironmentSpecification,
    spec_file: Path | None,
    params: Iterable[str],
    labels: Iterable[str],
    sets: Iterable[str],
) -> pb.EnvironmentSpecification:
    try:
        start = load_file(spec_file) if spec_file is not None else base
        if spec_file is not None and not start.stack:
            start.stack = base.stack
        return apply_flags(
            start,
            params=parse_pairs("--param", params),
            labels=parse_pairs("--label", labels),
            sets=sets,
        )
    except SpecError as err:
        raise _usage(err) from err


def _get(client: Client, name: str) -> pb.Environment:
    return client.stub.GetEnvironment(pb.GetEnvironmentRequest(name=name), timeout=client.timeout)


def _failure(env: pb.Environment) -> str:
    """The condition explaining why an environment is not running, for one-line errors."""
    for cond in env.conditions:
        if cond.status != pb.CONDITION_STATUS_TRUE and cond.message:
            return f"{cond.service + ': ' if cond.service else ''}{cond.message}"
    return "no condition reported"


def wait_settled(client: Client, name: str, generation: int, timeout: float) -> pb.Environment:
    """Poll until ``generation`` is rolled out and the status settled; the environment then."""
    deadline = time.monotonic() + timeout
    while True:
        env = _get(client, name)
        if env.observed_generation >= generation and env.status in SETTLED:
            return env
        if time.monotonic() >= deadline:
            raise CommandFailed(
                "DEADLINE_EXCEEDED",
                f"environment {name!r} is {render.status(env.status)} at generation {env.observed_generation} "
                f"of {generation} after {timeout:g}s",
            )
        time.sleep(POLL_INTERVAL)


def wait_gone(client: Client, name: str, timeout: float) -> None:
    """Poll until the environment no longer exists."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            env = _get(client, name)
        except grpc.RpcError as err:
            if isinstance(err, grpc.Call) and err.code() == grpc.StatusCode.NOT_FOUND:
                return
            raise
        if time.monotonic() >= deadline:
            raise CommandFailed(
                "DEADLINE_EXCEEDED", f"environment {name!r} still {render.status(env.status)} after {timeout:g}s"
            )
        time.sleep(POLL_INTERVAL)


def _print_env(env: pb.Environment, output: str) -> None:
    click.echo(render.to_json(env) if output == "json" else render.environment(env))


# ------------------------------------------------------------------------------------------------
# scheduler stacks
# ------------------------------------------------------------------------------------------------


@click.command()
@output_option
@connection_options
def stacks(client: Client, output: str) -> None:
    """List the precomposed stacks, their services and parameters."""
    reply = client.stub.ListStacks(pb.ListStacksRequest(), timeout=client.timeout)
    click.echo(render.to_json(reply) if output == "json" else render.stacks(reply))


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
    spec = _build_spec(pb.EnvironmentSpecification(stack=stack or ""), spec_file, params, labels, sets)
    if stack:
        spec.stack = stack
    if not spec.stack:
        raise click.UsageError("a stack is required: pass --stack or set `stack` in --file")
    # One id per invocation: a retried call after a lost reply returns the same environment.
    request = pb.CreateEnvironmentRequest(name=name, spec=spec, request_id=uuid.uuid4().hex)
    created = client.stub.CreateEnvironment(request, timeout=client.timeout)
    if not wait:
        _print_env(created, output)
        return
    settled = wait_settled(client, name, created.generation, wait_timeout)
    _print_env(settled, output)
    if settled.status != pb.ENVIRONMENT_STATUS_RUNNING:
        raise CommandFailed(
            "FAILED_PRECONDITION", f"environment {name!r} is {render.status(settled.status)}: {_failure(settled)}"
        )


@env.command("get")
@click.argument("name")
@output_option
@connection_options
def env_get(client: Client, name: str, output: str) -> None:
    """Show environment NAME: status, endpoints, conditions and containers."""
    _print_env(_get(client, name), output)


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
        raise _usage(err) from err
    terms = [f"status={','.join(wanted)}"] if wanted else []
    terms += [f'labels.{key}="{value}"' for key, value in label_filter.items()]
    found = pb.ListEnvironmentsResponse()
    token = ""
    # Bounded: a daemon returning the same token forever must not hang the client.
    for _ in range(10_000):
        page = client.stub.ListEnvironments(
            pb.ListEnvironmentsRequest(page_size=500, page_token=token, filter=" ".join(terms)),
            timeout=client.timeout,
        )
        found.environments.extend(page.environments)
        if not page.next_page_token or page.next_page_token == token:
            break
        token = page.next_page_token
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
    current = _get(client, name)
    spec = _build_spec(current.spec, spec_file, params, labels, sets)
    # The etag makes the read-modify-write safe: a change made meanwhile is not overwritten.
    request = pb.UpdateEnvironmentRequest(name=name, spec=spec, validate_only=dry_run, etag=current.etag)
    if drain is not None:
        request.drain.CopyFrom(Duration(seconds=int(drain), nanos=int((drain % 1) * 1e9)))
    reply = client.stub.UpdateEnvironment(request, timeout=client.timeout)
    if dry_run or not wait:
        if output == "json":
            click.echo(render.to_json(reply))
        else:
            click.echo(render.plan(reply.plan))
            if not dry_run:
                click.echo(f"\n{name}: generation {reply.environment.generation} accepted")
        return
    target = reply.environment.generation
    settled = wait_settled(client, name, target, wait_timeout)
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
            "FAILED_PRECONDITION", f"environment {name!r} is {render.status(settled.status)}: {_failure(settled)}"
        )


@env.command("delete")
@click.argument("name")
@click.option("--keep-volumes", is_flag=True, help="Keep the environment's named volumes on the host.")
@wait_options(180)
@connection_options
def env_delete(client: Client, name: str, keep_volumes: bool, wait: bool, wait_timeout: float) -> None:
    """Delete environment NAME; with --wait, block until it is gone."""
    deleted = client.stub.DeleteEnvironment(
        pb.DeleteEnvironmentRequest(name=name, keep_volumes=keep_volumes), timeout=client.timeout
    )
    if wait:
        wait_gone(client, name, wait_timeout)
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
    request = pb.GetEnvironmentLogsRequest(
        name=name, services=services, tail=tail, follow=follow, stream=streams[stream]
    )
    call = client.stub.GetEnvironmentLogs(request, timeout=None if follow else client.timeout)
    try:
        for line in call:
            click.echo(render.to_json_line(line) if output == "json" else render.log_line(line))
    except KeyboardInterrupt:
        call.cancel()


@env.command("metrics")
@click.argument("name")
@click.option("--window", type=click.FloatRange(min=0.1), help="Seconds over which CPU use is measured (default 1).")
@output_option
@connection_options
def env_metrics(client: Client, name: str, window: float | None, output: str) -> None:
    """Sample CPU, memory, pids and IO of every container of environment NAME."""
    request = pb.GetEnvironmentMetricsRequest(name=name)
    if window is not None:
        request.window.CopyFrom(Duration(seconds=int(window), nanos=int((window % 1) * 1e9)))
    reply = client.stub.GetEnvironmentMetrics(request, timeout=client.timeout + (window or 1))
    click.echo(render.to_json(reply) if output == "json" else render.metrics(reply))


@env.command("history")
@click.argument("name")
@output_option
@connection_options
def env_history(client: Client, name: str, output: str) -> None:
    """Show the audit trail of environment NAME, oldest first."""
    reply = client.stub.GetEnvironmentHistory(pb.GetEnvironmentHistoryRequest(name=name), timeout=client.timeout)
    click.echo(render.to_json(reply) if output == "json" else render.history(reply))


# ------------------------------------------------------------------------------------------------
# scheduler events
# ------------------------------------------------------------------------------------------------


@click.command()
@click.option("--env", "name", default="", help="Only events of this environment.")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many events.")
@click.option("--since", type=click.IntRange(min=0), help="First replay the events after this sequence.")
@output_option
@connection_options
def events(client: Client, name: str, count: int | None, since: int | None, output: str) -> None:
    """Stream environment and container events as they happen, until interrupted."""
    call = client.stub.WatchEvents(pb.WatchEventsRequest(name=name, since=since))
    seen = 0
    try:
        for event in call:
            if event.type == pb.EVENT_TYPE_HEARTBEAT:
                continue
            click.echo(render.to_json_line(event) if output == "json" else render.event(event))
            seen += 1
            if count is not None and seen >= count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        call.cancel()
