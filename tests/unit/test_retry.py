"""The one retry helper: which failures it tries again, how often, and what it finally raises."""

import asyncio
import time

import pytest

from scheduler.errors import Internal, NotFound
from scheduler.retry import exponential, linear, retry


def _flaky(failures: list[Exception]):
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return "done"

    return attempt, calls


def test_transient_failures_are_tried_again_until_one_succeeds() -> None:
    attempt, calls = _flaky([Internal("busy"), Internal("busy")])
    assert asyncio.run(retry(attempt, lambda e: isinstance(e, Internal), [0, 0, 0])) == "done"
    assert len(calls) == 3


def test_a_failure_that_is_not_transient_is_raised_at_once() -> None:
    attempt, calls = _flaky([NotFound("gone"), Internal("busy")])
    with pytest.raises(NotFound):
        asyncio.run(retry(attempt, lambda e: isinstance(e, Internal), [0, 0, 0]))
    assert len(calls) == 1


def test_the_last_tries_failure_is_raised_as_it_is() -> None:
    attempt, calls = _flaky([Internal(f"busy {i}") for i in range(5)])
    with pytest.raises(Internal, match="busy 2"):
        asyncio.run(retry(attempt, lambda e: isinstance(e, Internal), [0, 0]))
    assert len(calls) == 3


def test_backoff_schedules() -> None:
    assert linear(5, 0.05) == pytest.approx([0.05, 0.1, 0.15, 0.2])
    assert linear(1, 0.05) == []
    assert exponential(6, 0.05, 0.3) == pytest.approx([0.05, 0.1, 0.2, 0.3, 0.3])


def test_no_wait_runs_past_the_deadline() -> None:
    attempt, calls = _flaky([Internal(f"busy {i}") for i in range(5)])
    with pytest.raises(Internal, match="busy 1"):
        # Room for the first wait (0.01 s) but not for the second (60 s).
        asyncio.run(retry(attempt, lambda e: isinstance(e, Internal), [0.01, 60], deadline=time.monotonic() + 30))
    assert len(calls) == 2
