"""Time-to-live expiry: one timer for the earliest deadline, not a scan of every environment.

Deadlines (``created_at + ttl``) sit in a heap fed by the ledger's change notifications. One
task sleeps until the earliest one; an entry that no longer holds when it comes up (the
environment was deleted, or is being deleted) is dropped then, so nothing has to be removed
from the heap when an environment changes.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from scheduler import errors, log
from scheduler.domain import Environment, EnvironmentStatus, HistoryEntry
from scheduler.domain import expire_time as deadline
from scheduler.orchestrator.ledger import Ledger
from scheduler.orchestrator.status import now

_log = log.get("expiry")

MAX_SLEEP = timedelta(minutes=10)
"""Longest sleep between two looks at the heap (bounds the effect of a wall-clock jump)."""


class Expiry:
    """Starts the deletion of each environment whose time to live ran out."""

    def __init__(self, ledger: Ledger, delete: Callable[[str], None]) -> None:
        self._ledger = ledger
        self._delete = delete
        self._heap: list[tuple[datetime, str, str]] = []
        """(deadline, name, uid) entries; stale ones are dropped when they come up."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        ledger.watch(self._changed)
        for env in ledger.all():
            self._changed(None, env)

    def start(self) -> None:
        """Run the timer in the background."""
        self._task = asyncio.create_task(self._run(), name="ttl-expiry")

    async def close(self) -> None:
        """Stop the timer."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _changed(self, before: Environment | None, after: Environment | None) -> None:
        if after is None or after.status is EnvironmentStatus.DELETING:
            return
        due = deadline(after)
        if due is None or (before is not None and before.uid == after.uid and deadline(before) == due):
            return
        earliest = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (due, after.name, after.uid))
        if earliest is None or due < earliest:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.expire_due(now())
            except errors.SchedulerError as err:
                _log.warning("ttl.check_failed", error=err.message)
            wait = MAX_SLEEP.total_seconds()
            if self._heap:
                wait = min(wait, max((self._heap[0][0] - now()).total_seconds(), 0.0))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            except TimeoutError:
                pass

    async def expire_due(self, at: datetime) -> list[str]:
        """Start deleting every environment whose deadline is at or before ``at``; returns their names."""
        expired = []
        while self._heap and self._heap[0][0] <= at:
            due, name, uid = heapq.heappop(self._heap)
            env = self._ledger.find(name)
            if env is None or env.uid != uid or env.status is EnvironmentStatus.DELETING or deadline(env) != due:
                continue
            try:
                env = await self._ledger.change(
                    name,
                    lambda e: (
                        None
                        if e.status is EnvironmentStatus.DELETING
                        else replace(e, status=EnvironmentStatus.DELETING, updated_at=at)
                    ),
                )
            except errors.NotFound:
                continue
            await self._ledger.append_history(
                HistoryEntry(name, env.generation, at, "scheduler", "delete", "time to live expired")
            )
            _log.info("ttl.expired", env=name)
            expired.append(name)
            self._delete(name)
        return expired
