"""The one owner of every environment's state: changes are applied in order, reads come from memory.

Every change to an environment (the service's create, update and delete, the orchestrator's
deploy steps, the supervisor's observations, the reconciler's repairs) is a function from the
current ``Environment`` to the next one, handed to :meth:`Ledger.change`. The ledger applies the
changes of one environment one at a time, in the order they arrive, writes each result through
to the store with compare-and-swap on the revision it started from, and only then makes it the
current state. Nobody else reads, modifies and writes an environment, so no change is built on
a stale copy.

The current state of every environment is kept in memory (the store is its durable copy), so
Get, List and the periodic work read frozen dataclasses instead of decoding stored documents.
Listing pages by creation time and name, a key that survives restarts (the store's own
sequence numbers are not visible here).
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from scheduler import errors
from scheduler.domain import ContainerStatus, Environment, EnvironmentStatus, HistoryEntry
from scheduler.orchestrator.status import now
from scheduler.storage.base import ListQuery, PageKey, StateStore

Change = Callable[[Environment], Environment | None]
"""A change to one environment: returns the next state, or None (or the same object) to leave it."""

Owns = Callable[[Environment], bool]
"""Whether an environment is this daemon's to run (in a fleet: whether it is placed on this node)."""


def owns_all(env: Environment) -> bool:
    """A daemon running alone runs every environment."""
    return True


Watcher = Callable[[Environment | None, Environment | None], None]
"""Called after every applied change with (before, after); None stands for absent."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CHANGE_ATTEMPTS = 5
"""Times an unconditional change is applied again after another writer got in first."""


def _key(env: Environment) -> PageKey:
    created = env.created_at or _EPOCH
    return PageKey(int(created.timestamp() * 1_000_000), env.name)


class Ledger:
    """In-memory current state of every environment, written through to a ``StateStore``."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._envs: dict[str, Environment] = {}
        self._keys: list[PageKey] = []
        """Sorted page keys of the environments in ``_envs``."""
        self._locks: dict[str, asyncio.Lock] = {}
        self._watchers: list[Watcher] = []

    @classmethod
    async def open(cls, store: StateStore) -> Ledger:
        """Load every stored environment (the only full read of the store, once at start)."""
        ledger = cls(store)
        async for env in store.iterate():
            ledger._remember(env)
        return ledger

    @property
    def store(self) -> StateStore:
        """The durable copy (history and allocation records are read and written there directly)."""
        return self._store

    def watch(self, watcher: Watcher) -> None:
        """Call ``watcher`` after every change, creation and removal (it must not block)."""
        self._watchers.append(watcher)

    # --- reads (memory only) ------------------------------------------------------------------

    def find(self, name: str) -> Environment | None:
        """The current state of ``name``, or None."""
        return self._envs.get(name)

    async def get(self, name: str) -> Environment:
        """The current state of ``name``.

        Raises:
            NotFound: naming the environment.
        """
        env = self._envs.get(name)
        if env is None:
            raise errors.NotFound(f"environment {name!r} not found", env=name)
        return env

    def all(self, statuses: Collection[EnvironmentStatus] = ()) -> Iterator[Environment]:
        """Every environment (in ``statuses``, if given), in creation order."""
        wanted = set(statuses)
        for key in list(self._keys):
            env = self._envs.get(key.name)
            if env is not None and (not wanted or env.status in wanted):
                yield env

    async def iterate(self, statuses: Collection[EnvironmentStatus] = ()) -> AsyncIterator[Environment]:
        """Every environment (in ``statuses``, if given), in creation order; ``StateStore.iterate``'s shape."""
        for env in self.all(statuses):
            yield env

    def names(self) -> builtins.list[str]:
        """Names of every environment."""
        return list(self._envs)

    async def list(
        self,
        page_size: int,
        page_token: str,
        statuses: Collection[EnvironmentStatus] = (),
        labels: Mapping[str, str] | None = None,
    ) -> tuple[builtins.list[Environment], str]:
        """One page in creation order and the next page's token; the contract of ``StateStore.list``."""
        query = ListQuery.of(page_size, page_token, statuses, labels)
        start = 0 if query.after is None else bisect.bisect_right(self._keys, query.after)
        found: builtins.list[tuple[PageKey, Environment]] = []
        for key in self._keys[start:]:
            env = self._envs[key.name]
            if query.keeps(key, env.status.value, env.spec.labels):
                found.append((key, env))
                if len(found) > query.size:
                    break
        return query.page(found)

    async def find_by_request_id(self, request_id: str) -> Environment | None:
        """The environment a CreateEnvironment request id made, if it still exists."""
        if not request_id:
            return None
        return next((e for e in self._envs.values() if e.request_id == request_id), None)

    async def history(self, name: str) -> builtins.list[HistoryEntry]:
        """The audit trail of ``name`` (from the store: it outlives the environment)."""
        return await self._store.history(name)

    async def append_history(self, entry: HistoryEntry) -> None:
        """Record one change in the audit trail."""
        await self._store.append_history(entry)

    # --- changes (one at a time per environment, written through) -----------------------------

    async def create(self, env: Environment) -> Environment:
        """Store a new environment and make it current.

        Raises:
            AlreadyExists: from the store.
        """
        async with self._lock(env.name):
            created = await self._store.create(env)
            self._remember(created)
        self._notify(None, created)
        return created

    async def change(self, name: str, change: Change, *, expected_revision: int | None = None) -> Environment:
        """Apply ``change`` to the current state of ``name``, write it through, and return the result.

        Changes of one environment run one at a time, in arrival order, each on the state the
        previous one left. ``expected_revision`` makes the change conditional on the revision a
        client read (its etag).

        Raises:
            NotFound: no environment ``name`` (or it was removed while the change waited).
            Conflict: ``expected_revision`` is not the current revision, or the store holds a
                newer one (then the memory is reloaded from the store).
        """
        # A change that names no revision is a function of the current state, so when another
        # node wrote first (fleet mode) it is applied again to what that node wrote.
        attempts = 1 if expected_revision is not None else _CHANGE_ATTEMPTS
        for attempt in range(attempts):
            async with self._lock(name):
                current = await self.get(name)
                if expected_revision is not None and expected_revision != current.revision:
                    raise errors.Conflict(
                        f"environment {name!r} is at revision {current.revision}, not {expected_revision}: "
                        "it changed since it was read; read it again and retry",
                        env=name,
                    )
                updated = change(current)
                if updated is None or updated is current:
                    return current
                try:
                    written = await self._store.put(updated, expected_revision=current.revision)
                except errors.Conflict:
                    # Someone wrote behind the ledger's back: take the store's word for it.
                    stored = await self._store.get(name)
                    self._remember(stored)
                    self._notify(current, stored)
                    if attempt + 1 == attempts:
                        raise
                    continue
                self._envs[name] = written
            self._notify(current, written)
            return written
        raise AssertionError("unreachable")

    def absorb(self, env: Environment) -> None:
        """Take a state another node wrote to the shared store (fleet mode), if newer than ours."""
        current = self._envs.get(env.name)
        if current is not None and current.uid == env.uid and current.revision >= env.revision:
            return
        self._remember(env)
        self._notify(current, env)

    def absorb_removal(self, name: str) -> None:
        """Forget an environment another node removed from the shared store (fleet mode)."""
        before = self._forget(name)
        if before is not None:
            self._notify(before, None)

    async def change_container(
        self, name: str, container_id: str, *, unless_deleting: bool = False, **changes: Any
    ) -> ContainerStatus | None:
        """Change fields of one container's status; returns it, or None if not listed (or deleting).

        Raises nothing for a missing environment: an observation about it has nobody to tell.
        """
        updated: ContainerStatus | None = None

        def change(env: Environment) -> Environment | None:
            nonlocal updated
            if unless_deleting and env.status is EnvironmentStatus.DELETING:
                return None
            current = next((c for c in env.containers if c.container_id == container_id), None)
            if current is None:
                return None
            updated = replace(current, **changes)
            if updated == current:
                return None  # nothing to write (a restart adopting a container as it was)
            containers = tuple(updated if c.container_id == container_id else c for c in env.containers)
            return replace(env, containers=containers, updated_at=now())

        try:
            await self.change(name, change)
        except errors.NotFound:
            return None
        return updated

    async def remove(self, name: str) -> None:
        """Remove ``name`` from the store and from memory; removing a missing one is not an error."""
        async with self._lock(name):
            await self._store.delete(name)
            before = self._forget(name)
        self._locks.pop(name, None)
        if before is not None:
            self._notify(before, None)

    # --- helpers ------------------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _remember(self, env: Environment) -> None:
        self._forget(env.name)
        self._envs[env.name] = env
        bisect.insort(self._keys, _key(env))

    def _forget(self, name: str) -> Environment | None:
        env = self._envs.pop(name, None)
        if env is not None:
            key = _key(env)
            index = bisect.bisect_left(self._keys, key)
            if index < len(self._keys) and self._keys[index] == key:
                del self._keys[index]
        return env

    def _notify(self, before: Environment | None, after: Environment | None) -> None:
        for watcher in self._watchers:
            watcher(before, after)
