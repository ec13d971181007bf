"""Link changes run in a thread, and a cancelled caller returns only once the change is over."""

from __future__ import annotations

import asyncio
import threading

import pytest

from scheduler.errors import Internal
from scheduler.network import links


async def test_a_cancelled_link_change_returns_only_after_its_thread_finished() -> None:
    entered, release = threading.Event(), threading.Event()
    done: list[str] = []

    def change(name: str) -> None:
        entered.set()
        release.wait(5)
        done.append(name)

    caller = asyncio.create_task(links._finished(change, "br0"))
    await asyncio.to_thread(entered.wait, 5)
    caller.cancel()
    await asyncio.sleep(0.05)
    assert not caller.done()  # still waiting for the thread, though cancelled
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert done == ["br0"]


async def test_a_failed_link_change_raises_its_error() -> None:
    def change(name: str) -> None:
        raise Internal(f"cannot create bridge {name}")

    with pytest.raises(Internal, match="br1"):
        await links._finished(change, "br1")
