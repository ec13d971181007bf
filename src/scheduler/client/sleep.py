"""``scheduler env stop NAME`` and ``env start NAME``: put an environment to sleep and wake it."""

from __future__ import annotations

import asyncio

import click

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.client import render
from scheduler.client.api import SchedulerClient
from scheduler.client.commands import _print_env, env
from scheduler.client.connection import Client, CommandFailed, connection_options, output_option
from scheduler.client.errors import WaitFailed
from scheduler.client.options import wait_options
from scheduler.client.waits import failure_reason

_AFTER_START = {pb.ENVIRONMENT_STATUS_RUNNING, pb.ENVIRONMENT_STATUS_DEGRADED, pb.ENVIRONMENT_STATUS_FAILED}


async def _stopped(api: SchedulerClient, name: str, limit: float) -> pb.Environment:
    """Wait until ``name`` is STOPPED (the stop is queued behind any operation under way)."""
    try:
        async with asyncio.timeout(limit):
            watch = api.events(name, heartbeats=True, heartbeat_interval=1.0)
            try:
                while (current := await api.get(name)).status != pb.ENVIRONMENT_STATUS_STOPPED:
                    await anext(watch)
                return current
            finally:
                await watch.aclose()
    except TimeoutError:
        current = await api.get(name)
        raise CommandFailed(
            "DEADLINE_EXCEEDED", f"environment {name!r} is {render.status(current.status)} after {limit:g}s"
        ) from None


async def _started(api: SchedulerClient, name: str, limit: float) -> pb.Environment:
    """Wait until ``name`` runs again (or failed to)."""
    try:
        async with asyncio.timeout(limit):
            try:
                return await api.wait_for(name, _AFTER_START)
            except WaitFailed as err:
                if err.code != "FAILED_PRECONDITION":
                    raise
                return await api.get(name)
    except TimeoutError:
        current = await api.get(name)
        raise CommandFailed(
            "DEADLINE_EXCEEDED", f"environment {name!r} is {render.status(current.status)} after {limit:g}s"
        ) from None


@env.command("stop")
@click.argument("name")
@wait_options(120)
@output_option
@connection_options
def env_stop(client: Client, name: str, wait: bool, wait_timeout: float, output: str) -> None:
    """Put environment NAME to sleep: stop its containers, keep volumes, ports and addresses.

    A connection to one of its published ports wakes it again; so does `env start`.
    """

    async def calls(api: SchedulerClient) -> pb.Environment:
        accepted = await api.stop(name)
        if not wait:
            return accepted
        return await _stopped(api, name, wait_timeout)

    _print_env(client.run(calls), output)


@env.command("start")
@click.argument("name")
@wait_options(300)
@output_option
@connection_options
def env_start(client: Client, name: str, wait: bool, wait_timeout: float, output: str) -> None:
    """Wake environment NAME: start its containers again in dependency order, health-gated."""

    async def calls(api: SchedulerClient) -> pb.Environment:
        accepted = await api.start(name)
        if not wait:
            return accepted
        return await _started(api, name, wait_timeout)

    woken = client.run(calls)
    _print_env(woken, output)
    if wait and woken.status != pb.ENVIRONMENT_STATUS_RUNNING:
        raise CommandFailed(
            "FAILED_PRECONDITION", f"environment {name!r} is {render.status(woken.status)}: {failure_reason(woken)}"
        )
