"""``toolbox``: one small container running a configurable command, for trying things out and tests."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from scheduler.domain import ServiceSpec
from scheduler.stacks import shellwords
from scheduler.stacks.components import IMAGE_HINT, IMAGE_PATTERN
from scheduler.stacks.stack import Stack, StackParameter, Values

# PID 1 ignores signals it installs no handler for; the trap makes a stop take milliseconds.
DEFAULT_COMMAND = "sh -c 'trap \"exit 0\" TERM INT; while :; do sleep 1; done'"


def _command_problem(value: str) -> str | None:
    try:
        argv = shellwords.split(value)
    except ValueError as err:
        return f"is not a shell-quoted command line: {err}"
    return None if argv else "must name a command"


def _finalize(services: tuple[ServiceSpec, ...], values: Values) -> tuple[ServiceSpec, ...]:
    argv = tuple(shellwords.split(values["command"]))
    return tuple(dataclasses.replace(s, command=argv) if s.name == "toolbox" else s for s in services)


STACK = Stack(
    name="toolbox",
    description="One busybox-style container running a command (default: idle until stopped).",
    services=(
        ServiceSpec(
            name="toolbox",
            image="${toolbox_image}",
            stop_grace=timedelta(seconds=5),
        ),
    ),
    parameters=(
        StackParameter(
            "toolbox_image",
            "Image of the container.",
            default="docker.io/schedulerdemo/toolbox:1.0",
            pattern=IMAGE_PATTERN,
            hint=IMAGE_HINT,
        ),
        StackParameter(
            "command",
            "Command line, split like a POSIX shell would; replaces the image entrypoint.",
            default=DEFAULT_COMMAND,
            check=_command_problem,
        ),
    ),
    finalize=_finalize,
)
