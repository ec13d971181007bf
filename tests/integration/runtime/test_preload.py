"""Image archives preloaded after the daemon serves: a deploy that needs one of their images waits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from scheduler import domain
from scheduler.errors import NotFound
from scheduler.runtime.containerd.runtime import ContainerdRuntime
from scheduler.runtime.preload import preload_after
from tests.support.containerd import namespace_runtime, write_busybox_archive

pytestmark = pytest.mark.integration

REF = "docker.io/library/preloaded:1"


@pytest.fixture
async def runtime(containerd_socket: str, tmp_path: Path) -> AsyncIterator[ContainerdRuntime]:
    """A runtime in a namespace of its own (its preload must not touch the session's images)."""
    async with namespace_runtime(containerd_socket, f"preload-{uuid.uuid4().hex[:8]}", tmp_path / "rt") as runtime:
        yield runtime


async def test_an_image_still_being_preloaded_is_waited_for_then_found(
    runtime: ContainerdRuntime, tmp_path: Path
) -> None:
    archive = write_busybox_archive(tmp_path / "busybox.tar", ref=REF)
    serving: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    preloading = asyncio.create_task(preload_after(serving, runtime, [archive], tmp_path / "preloaded.json"))
    runtime.preloading(preloading)
    # Under the pull policy that never pulls, a missing image fails at once unless it waits.
    lookup = asyncio.create_task(runtime.ensure_image(REF, domain.PullPolicy.NEVER))
    await asyncio.sleep(0.3)
    assert not lookup.done(), "the lookup must wait for the preload, which has not started"
    serving.set_result(None)
    async with asyncio.timeout(60):
        image = await lookup
    assert image.name == REF
    await preloading
    # With the preload over, an image that no archive had is missing at once.
    with pytest.raises(NotFound):
        await runtime.ensure_image("docker.io/library/absent:1", domain.PullPolicy.NEVER)


async def test_a_failed_preload_is_logged_and_its_waiters_get_not_found(
    runtime: ContainerdRuntime, tmp_path: Path
) -> None:
    archive = tmp_path / "broken.tar"
    archive.write_bytes(b"not a tar archive")
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    preloading = asyncio.create_task(preload_after(done, runtime, [archive], tmp_path / "preloaded.json"))
    runtime.preloading(preloading)
    async with asyncio.timeout(60):
        with pytest.raises(NotFound):
            await runtime.ensure_image(REF, domain.PullPolicy.NEVER)
        await preloading  # logged, not raised: the daemon keeps serving
    assert not (tmp_path / "preloaded.json").exists()
