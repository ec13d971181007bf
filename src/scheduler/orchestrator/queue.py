"""The operation queue: one operation per environment at a time, in submission order, in the background.

A delete cancels the operation running on its environment (a deploy has no reason to finish);
every other operation waits for the previous one. Deploys and updates (what starts containers)
also wait for admission (:mod:`.admission`): a few at a time, in the order they arrived. Each
operation's duration and outcome go to the observer (metrics).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Protocol

from scheduler import errors, log
from scheduler.domain import Environment, EnvironmentStatus
from scheduler.orchestrator.admission import Admission
from scheduler.orchestrator.observer import Observer

_log = log.get("orchestrator")

Operation = Callable[[], Coroutine[Any, Any, None]]
ADMITTED = frozenset({"deploy", "update", "clone"})
"""Operations that start containers, and so wait for admission."""


class Current(Protocol):
    """Where the queue reads an environment's current state (for outcomes): the ledger."""

    def find(self, name: str) -> Environment | None:
        """The current state of ``name``, or None."""
        ...


class OperationQueue:
    """Serialises operations per environment; see the module docstring."""

    def __init__(self, current: Current, observer: Observer, admission: Admission | None = None) -> None:
        self._current = current
        self._observer = observer
        self._admission = admission
        self._locks: dict[str, asyncio.Lock] = {}
        self._operations: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    def submit(self, kind: str, name: str, body: Operation, *, preempt: bool = False) -> None:
        """Run ``body`` once the operations already queued on ``name`` are done (``preempt``: cancel them).

        Raises:
            Unavailable: the queue is closed (the daemon is shutting down).
        """
        if self._closed:
            raise errors.Unavailable("the daemon is shutting down")
        running = self._operations.get(name)
        if preempt and running is not None and not running.done():
            running.cancel()
        lock = self._locks.setdefault(name, asyncio.Lock())

        async def serialised() -> None:
            async with lock:
                await self._observed(kind, name, body)

        task = asyncio.create_task(serialised(), name=f"env:{name}")
        self._operations[name] = task
        task.add_done_callback(lambda t: self._finished(name, t))

    def busy(self, name: str) -> bool:
        """Whether an operation runs (or waits) on ``name``."""
        task = self._operations.get(name)
        return task is not None and not task.done()

    async def wait_idle(self, name: str) -> None:
        """Wait until no operation runs on ``name``."""
        while (task := self._operations.get(name)) is not None and not task.done():
            await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        """Refuse new operations and cancel the running ones (the next start resumes them)."""
        self._closed = True
        tasks = list(self._operations.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _finished(self, name: str, task: asyncio.Task[None]) -> None:
        if self._operations.get(name) is task:
            del self._operations[name]
            lock = self._locks.get(name)
            if lock is not None and not lock.locked():
                del self._locks[name]  # nothing queued behind it: do not keep a lock per name ever seen
        if not task.cancelled() and task.exception() is not None:
            _log.error("operation.crashed", env=name, exc_info=task.exception())

    async def _observed(self, operation: str, name: str, body: Operation) -> None:
        """Run one operation and tell the observer how long it took and how it ended."""
        started = time.monotonic()
        env = self._current.find(name)
        stack = env.spec.stack if env is not None else ""
        outcome = "failed"
        self._observer.operation_started(operation, name)
        try:
            if self._admission is not None and operation in ADMITTED:
                async with self._admission.slot():
                    await body()
            else:
                await body()
            outcome = self._outcome(operation, name)
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self._observer.operation_finished(operation, name, stack, outcome, time.monotonic() - started)

    def _outcome(self, operation: str, name: str) -> str:
        env = self._current.find(name)
        if env is None:
            return "succeeded" if operation == "delete" else "cancelled"
        if operation == "delete" or env.status is EnvironmentStatus.FAILED:
            return "failed"
        if operation == "update" and _rolled_back_last(env):
            return "rolled_back"
        return "succeeded"


def _rolled_back_last(env: Environment) -> bool:
    """Whether the latest condition set on ``env`` is its RolledBack one."""
    latest = max(env.conditions, key=lambda c: c.last_transition or datetime.min.replace(tzinfo=UTC), default=None)
    return latest is not None and latest.type == "RolledBack"
