"""Waiting for an environment to settle or to be gone, with progress, as the client commands do."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import click

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.client import render
from scheduler.client.api import SchedulerClient
from scheduler.client.connection import CommandFailed
from scheduler.client.errors import WaitFailed
from scheduler.client.progress import Progress

SETTLED = {pb.ENVIRONMENT_STATUS_RUNNING, pb.ENVIRONMENT_STATUS_DEGRADED, pb.ENVIRONMENT_STATUS_FAILED}


def failure_reason(env: pb.Environment) -> str:
    """The condition explaining why an environment is not running, for one-line errors."""
    for cond in env.conditions:
        if cond.status != pb.CONDITION_STATUS_TRUE and cond.message:
            return f"{cond.service + ': ' if cond.service else ''}{cond.message}"
    return "no condition reported"


async def wait_settled(
    api: SchedulerClient, name: str, accepted: pb.Environment, limit: float, stack: str = ""
) -> pb.Environment:
    """Wait until the ``accepted`` generation is rolled out and the status settled; the environment then.

    A FAILED status set after ``accepted`` ends the wait at once (the rollout failed; waiting
    longer cannot help). On a terminal, each service's progress is printed to stderr as it changes.
    """
    generation = accepted.generation
    observe = await _progress(api, stack or accepted.spec.stack)
    try:
        async with asyncio.timeout(limit):
            try:
                return await api.wait_for(name, SETTLED, generation=generation, since=accepted, observe=observe)
            except WaitFailed as err:
                if err.code != "FAILED_PRECONDITION":
                    raise
                return await api.get(name)
    except TimeoutError:
        env = await api.get(name)
        raise CommandFailed(
            "DEADLINE_EXCEEDED",
            f"environment {name!r} is {render.status(env.status)} at generation {env.observed_generation} "
            f"of {generation} after {limit:g}s",
        ) from None


async def _progress(api: SchedulerClient, stack: str) -> Callable[[pb.Environment], None] | None:
    """A printer of per-service progress lines when stderr is a terminal; None otherwise."""
    if not sys.stderr.isatty():
        return None
    services = next(([s.name for s in st.services] for st in await api.stacks() if st.name == stack), [])
    progress = Progress(services)

    def observe(env: pb.Environment) -> None:
        for line in progress.lines(env):
            click.echo(line, err=True)

    return observe


async def wait_gone(api: SchedulerClient, name: str, limit: float) -> None:
    """Wait until the environment no longer exists."""
    try:
        async with asyncio.timeout(limit):
            await api.wait_deleted(name)
    except TimeoutError:
        env = await api.get(name)
        raise CommandFailed(
            "DEADLINE_EXCEEDED", f"environment {name!r} still {render.status(env.status)} after {limit:g}s"
        ) from None
