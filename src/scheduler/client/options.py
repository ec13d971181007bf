"""Options shared by several client commands: the specification flags and the waiting flags."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.client.spec import SpecError, apply_flags, load_file, parse_pairs

F = TypeVar("F", bound=Callable[..., Any])


def usage_error(err: SpecError) -> click.UsageError:
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


def build_spec(
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
        raise usage_error(err) from err
