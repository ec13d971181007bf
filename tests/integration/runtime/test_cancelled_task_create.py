"""A task creation cancelled while containerd starts the shim leaves no shim behind.

containerd runs ``containerd-shim-runc-v2 ... start`` under the request's context: a client
that cancels Tasks.Create while it runs has it killed, and a shim it had already forked then
runs on with no task in containerd. A deploy cancelled by a delete does exactly that to the
tasks it sets up ahead. Each attempt here cancels ``prepare_start`` the moment the shim's
process appears, then cleans up as the deploy and the delete do, and counts what is left of
that container: shim processes, tasks and records.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from scheduler import domain
from scheduler.runtime.containerd import labels as L
from scheduler.runtime.containerd.runtime import ContainerdRuntime
from tests.support.processes import cmdline, descendants, processes_naming

pytestmark = pytest.mark.integration

ATTEMPTS = 24


def _shims(cid: str) -> dict[int, list[str]]:
    """Processes of the shim binary for ``cid`` (its ``start`` command and the shim it forks)."""
    found = {}
    for pid in processes_naming(cid):
        args = cmdline(pid)
        options = dict(zip(args[1::2], args[2::2], strict=False))
        if args and Path(args[0]).name.startswith("containerd-shim") and options.get("-id") == cid:
            found[pid] = args
    return found


async def _cancel_once_the_shim_runs(runtime: ContainerdRuntime, cid: str) -> bool:
    """Start ``prepare_start`` and cancel it once the forked shim shows; whether it was still running then."""
    creating = asyncio.ensure_future(runtime.prepare_start(cid))
    deadline = time.monotonic() + 20
    while not creating.done() and time.monotonic() < deadline:
        if any(args[-1] != "start" for args in _shims(cid).values()):
            break
        await asyncio.sleep(0.001)
    hit = not creating.done()
    creating.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await creating
    return hit


async def _left_of(runtime: ContainerdRuntime, cid: str, settle: float = 3.0) -> list[str]:
    """What is left of ``cid`` once containerd had ``settle`` seconds to finish what was asked."""
    deadline = time.monotonic() + settle
    while True:
        shims = _shims(cid)
        tasks = [t for t in await runtime.tasks.all() if t == cid]
        records = [i.id for i in await runtime.list({L.ENV: "cancel-create"}) if i.id == cid]
        left = [f"shim {pid}" for pid in shims] + [f"task {t}" for t in tasks] + [f"record {r}" for r in records]
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.1)


def _end(pids: list[int]) -> None:
    for pid in pids:
        for victim in [*descendants(pid), pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)


async def test_a_task_create_cancelled_while_the_shim_starts_leaves_nothing(
    containerd_runtime: ContainerdRuntime, busybox_image: domain.Image, tmp_path: Path
) -> None:
    hits, leaks = 0, {}
    for attempt in range(ATTEMPTS):
        cid = f"t-cancel-{attempt}-{uuid.uuid4().hex[:6]}"
        config = domain.ContainerConfig(
            id=cid,
            image=busybox_image,
            command=("sh", "-c", "sleep 60"),
            log_dir=str(tmp_path / cid),
            labels={L.ENV: "cancel-create", L.SERVICE: "svc"},
        )
        await containerd_runtime.create(config)
        hits += await _cancel_once_the_shim_runs(containerd_runtime, cid)
        # What a cancelled deploy does with a task set up ahead, then what the delete does.
        await containerd_runtime.cancel_start(cid)
        await containerd_runtime.delete(cid)
        left = await _left_of(containerd_runtime, cid)
        if left:
            leaks[cid] = left
            _end(list(_shims(cid)))
    assert hits > 0, "no attempt cancelled a creation while it ran"
    assert not leaks, f"left behind after {hits} cancelled creations of {ATTEMPTS}: {leaks}"
