"""Scheduled backups of running environments, with retention.

Each running environment is archived when its newest archive is older than its policy's
interval; archives beyond the policy's count are deleted afterwards, oldest first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime

from scheduler import errors, log
from scheduler.config import BackupSettings
from scheduler.domain import EnvironmentStatus
from scheduler.orchestrator.backup import Backups
from scheduler.orchestrator.ledger import Owns, owns_all
from scheduler.orchestrator.status import now
from scheduler.storage.base import StateStore

_log = log.get("backup")

TICK = 1.0
"""Seconds between checks while some policy takes backups."""
IDLE_TICK = 30.0
"""Seconds between checks while none does (a reload may add one)."""


class BackupSchedule:
    """Runs in the background; ``settings`` may be replaced at any time (a reload)."""

    def __init__(
        self,
        store: StateStore,
        backups: Backups,
        settings: BackupSettings,
        clock: Callable[[], datetime] = now,
        owns: Owns = owns_all,
    ) -> None:
        self._owns = owns
        """In a fleet, only the node running an environment can dump its databases."""
        self._store = store
        self._backups = backups
        self._settings = settings
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    @property
    def settings(self) -> BackupSettings:
        """The policies in effect."""
        return self._settings

    @settings.setter
    def settings(self, settings: BackupSettings) -> None:
        self._settings = settings
        self._changed.set()  # a reload wakes an idle loop at once

    def start(self) -> None:
        """Start checking in the background."""
        self._task = asyncio.create_task(self._loop(), name="backup-schedule")

    async def close(self) -> None:
        """Stop; a backup under way is cancelled (its partial files are removed)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            active = self.settings.every > 0 or any(p.every > 0 for p in self.settings.environments.values())
            if active:
                await self.run_due()
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), TICK if active else IDLE_TICK)

    async def run_due(self) -> list[str]:
        """Back up every running environment whose policy says it is due; return their names."""
        done = []
        async for env in self._store.iterate([EnvironmentStatus.RUNNING]):
            policy = self.settings.policy(env.name)
            if policy.every <= 0 or not self._owns(env):
                continue
            archives = await asyncio.to_thread(self._backups.list, env.name)
            if archives and (self._clock() - archives[0].created_at).total_seconds() < policy.every:
                continue
            try:
                await self._backups.backup(env.name)
            except errors.SchedulerError as err:
                _log.warning("backup.scheduled_failed", env=env.name, error=err.message)
                continue
            removed = await asyncio.to_thread(self._backups.prune, env.name, policy.keep)
            _log.info("backup.scheduled", env=env.name, pruned=removed)
            done.append(env.name)
        return done
