"""Backup and restore use cases of the service."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime

from scheduler import errors
from scheduler.cluster.base import Fleet
from scheduler.domain import (
    BackupInfo,
    Environment,
    EnvironmentStatus,
    HistoryEntry,
)
from scheduler.orchestrator.backup import Backups, restoring, ungated
from scheduler.orchestrator.ledger import Ledger
from scheduler.orchestrator.orchestrator import Orchestrator
from scheduler.service.views import (
    check_name,
    redact,
)
from scheduler.stacks.catalog import Catalog
from scheduler.validation import env_name_problem


class BackupCases:
    """Backups and restores of environments; a part of :class:`EnvironmentService`."""

    _backups: Backups | None
    _ledger: Ledger
    _orchestrator: Orchestrator
    _create_lock: asyncio.Lock
    _catalog: Catalog
    _fleet: Fleet | None
    _dispatch: bool
    _check_free: Callable[[str], Awaitable[None]]

    def _archives(self) -> Backups:
        if self._backups is None:
            raise errors.Unimplemented("backups are not configured on this daemon")
        return self._backups

    async def backup(self, name: str) -> BackupInfo:
        """Archive an environment: spec, history, volumes, database dumps.

        Raises:
            FailedPrecondition: reason ``WRONG_NODE``, another fleet node runs it (its volumes are there).
        """
        check_name(name)
        archives = self._archives()
        if self._fleet is not None:
            await self._fleet.check_local(
                await self._ledger.get(name), "back it up through that node, where its volumes are"
            )
        return await archives.backup(name)

    async def backups(self, name: str) -> builtins.list[BackupInfo]:
        """Archives of an environment (which may have been deleted since), newest first."""
        check_name(name)
        return await asyncio.to_thread(self._archives().list, name)

    async def restore(self, backup_id: str, name: str = "", *, actor: str = "") -> Environment:
        """Create an environment from an archive, deploy it and load its databases; return it running.

        Raises:
            InvalidArgument: the id is malformed, the archive damaged, or ``name`` invalid.
            NotFound: no such archive.
            AlreadyExists: an environment of that name exists.
            FailedPrecondition: the restored environment did not come up, or a dump did not load.
        """
        archives = self._archives()
        path, manifest, archived, history = await asyncio.to_thread(archives.open, backup_id)
        target = name or archived.name
        problem = env_name_problem(target)
        if problem:
            raise errors.InvalidArgument.of([errors.FieldViolation("name", problem)])
        fresh, entries = archives.renamed(archived, target, history)
        # In a fleet it is restored on this node (the one reading the archive). The name is
        # claimed first, by the store's create-if-absent (etcd's in a fleet, where a create of
        # the same name may come through another node at the same moment): exactly one of them
        # wins and the other gets ALREADY_EXISTS, with no volume touched. The claim carries the
        # Restoring gate, so nothing deploys it until its volumes are in place.
        home = await self._fleet.here(target, fresh.spec) if self._fleet is not None else ""
        gate = restoring(backup_id, home)
        async with self._create_lock:
            await self._check_free(target)
            await self._ledger.create(replace(fresh, node=home, conditions=(gate,)))
        try:
            await archives.stage(path, manifest, target)
        except BaseException:
            await self._orchestrator.remove_volumes(target, list(manifest["volumes"]))
            await self._ledger.remove(target)
            raise
        await self._ledger.change(target, ungated)
        for entry in entries:
            await self._ledger.append_history(entry)
        await self._ledger.append_history(
            HistoryEntry(target, fresh.generation, datetime.now(UTC), actor, "restore", f"from backup {backup_id}")
        )
        if self._dispatch:
            self._orchestrator.submit_deploy(target)
        await self._orchestrator.wait_idle(target)
        env = await self._ledger.get(target)
        if env.status is not EnvironmentStatus.RUNNING:
            raise errors.FailedPrecondition(
                f"restored environment {target!r} is {env.status.value}, not RUNNING; its databases were not loaded",
                env=target,
            )
        await archives.load_databases(path, manifest, target)
        return redact(await self._ledger.get(target), self._catalog)
