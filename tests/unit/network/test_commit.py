"""GroupCommit: requests made while a flush runs share the next flush, which sees all their changes."""

from __future__ import annotations

import asyncio

import pytest

from scheduler.network.commit import GroupCommit


class Recorder:
    """A flush that records the state it saw and can be held open or made to fail."""

    def __init__(self) -> None:
        self.state: list[int] = []
        self.seen: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def flush(self) -> None:
        self.seen.append(list(self.state))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail


async def test_requests_during_a_flush_share_the_next_one_which_sees_them_all() -> None:
    rec = Recorder()
    commits = GroupCommit(rec.flush)
    rec.gate.clear()
    rec.state.append(1)
    first = asyncio.ensure_future(commits.request())
    await asyncio.sleep(0)  # the first flush starts and blocks
    waiters = []
    for value in (2, 3, 4):
        rec.state.append(value)
        waiters.append(asyncio.ensure_future(commits.request()))
    rec.gate.set()
    await asyncio.gather(first, *waiters)
    assert rec.seen == [[1], [1, 2, 3, 4]]
    assert commits.flushes == 2


async def test_a_failed_flush_reaches_every_waiter_of_its_batch_and_the_next_flush_runs() -> None:
    rec = Recorder()
    commits = GroupCommit(rec.flush)
    rec.fail = RuntimeError("disk full")
    results = await asyncio.gather(commits.request(), commits.request(), return_exceptions=True)
    assert [str(r) for r in results] == ["disk full", "disk full"]
    rec.fail = None
    await commits.request()
    assert commits.flushes == 2


async def test_a_cancelled_waiter_does_not_cancel_the_flush_the_others_wait_for() -> None:
    rec = Recorder()
    commits = GroupCommit(rec.flush)
    rec.gate.clear()
    leaving = asyncio.ensure_future(commits.request())
    staying = asyncio.ensure_future(commits.request())
    await asyncio.sleep(0)
    leaving.cancel()
    rec.gate.set()
    await staying
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert commits.flushes == 1
    await commits.idle()
