"""The timeline of each operation: its steps with their times, kept for ``env history --steps``.

An :class:`Observer` of the orchestrator: steps of the operation under way on an environment are
collected in memory (operations on one environment never overlap) and the record is stored when
the operation ends. Steps outside an operation (the supervisor's probes and restarts) are not
recorded here; the event stream has those.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field, replace

from scheduler import log
from scheduler.domain import OperationRecord, OperationStep
from scheduler.orchestrator.status import now
from scheduler.storage.timeline import SqliteTimeline

_log = log.get("timeline")

MAX_STEPS = 500
"""Steps kept per operation; later ones are only counted."""


@dataclass
class _Open:
    record: OperationRecord
    steps: list[OperationStep] = field(default_factory=list)
    dropped: int = 0


class Timeline:
    """Collects steps per operation and stores each finished record."""

    def __init__(self, store: SqliteTimeline) -> None:
        self._store = store
        self._open: dict[str, _Open] = {}
        self._writes: set[asyncio.Task[None]] = set()

    def operation_started(self, operation: str, env: str) -> None:
        record = OperationRecord(id=uuid.uuid4().hex[:12], env=env, operation=operation, started_at=now())
        self._open[env] = _Open(record)

    def step(self, env: str, step: str, service: str = "", detail: str = "") -> None:
        current = self._open.get(env)
        if current is None:
            return
        if len(current.steps) >= MAX_STEPS:
            current.dropped += 1
            return
        current.steps.append(OperationStep(now(), step, service, detail[:500]))

    def operation_finished(self, operation: str, env: str, stack: str, outcome: str, seconds: float) -> None:
        current = self._open.pop(env, None)
        if current is None:
            return
        record = replace(
            current.record,
            finished_at=now(),
            outcome=outcome,
            steps=tuple(current.steps),
            dropped_steps=current.dropped,
        )
        task = asyncio.get_running_loop().create_task(self._write(record))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, record: OperationRecord) -> None:
        try:
            await asyncio.to_thread(self._store.append, record)
        except Exception:  # noqa: BLE001 - a lost timeline must not disturb the operation
            _log.exception("timeline.write_failed", env=record.env)

    async def of(self, env: str) -> list[OperationRecord]:
        """Finished operations of ``env`` (oldest first), then the one under way, if any."""
        done = await asyncio.to_thread(self._store.of, env)
        current = self._open.get(env)
        if current is not None:
            done.append(replace(current.record, steps=tuple(current.steps), dropped_steps=current.dropped))
        return done

    async def close(self) -> None:
        """Wait for pending writes, then close the store."""
        await asyncio.gather(*self._writes, return_exceptions=True)
        self._store.close()

    def probe_finished(self, kind: str, ok: bool, seconds: float) -> None:
        return None

    def container_restarted(self, reason: str) -> None:
        return None

    def image_ensured(self, outcome: str, seconds: float, fetched_bytes: int) -> None:
        return None
