"""``MemoryStateStore``: the ``StateStore`` contract in process memory, for tests.

Documents are kept as the same JSON text the SQLite store writes, so a value the codec cannot
encode fails here too, and callers never share mutable mappings with the store.
"""

from __future__ import annotations

import builtins
import itertools
import json
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass

from scheduler.domain import Environment, EnvironmentStatus, HistoryEntry
from scheduler.errors import Unavailable
from scheduler.storage import codec
from scheduler.storage.base import (
    HISTORY_LIMIT,
    Json,
    ListQuery,
    PageKey,
    created,
    iterate_pages,
    name_taken,
    not_found,
    record_held,
    record_text,
    request_taken,
    stale_write,
    uid_not_found,
    uid_taken,
    written,
)


@dataclass
class _Row:
    seq: int
    uid: str
    status: EnvironmentStatus
    request_id: str
    labels: dict[str, str]
    doc: str
    revision: int


class MemoryStateStore:
    """A ``StateStore`` that forgets everything when the process ends."""

    def __init__(self) -> None:
        self._rows: dict[str, _Row] = {}
        self._seq = itertools.count(1)
        self._history: dict[str, list[str]] = {}
        self._records: dict[tuple[str, str], str] = {}
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the state store is closed")

    async def create(self, env: Environment) -> Environment:
        """Store a new environment at revision 1."""
        self._check_open()
        env, doc = created(env)
        if env.name in self._rows:
            raise name_taken(env.name)
        for name, row in self._rows.items():
            if row.uid == env.uid:
                raise uid_taken(env, name)
            if env.request_id and row.request_id == env.request_id:
                raise request_taken(env.request_id, name)
        self._rows[env.name] = _Row(
            next(self._seq), env.uid, env.status, env.request_id, dict(env.spec.labels), doc, env.revision
        )
        return env

    async def get(self, name: str) -> Environment:
        """Return the environment called ``name``."""
        self._check_open()
        row = self._rows.get(name)
        if row is None:
            raise not_found(name)
        return codec.environment_from_json(row.doc)

    async def put(self, env: Environment, *, expected_revision: int) -> Environment:
        """Replace a stored environment, matched by name and uid, if still at ``expected_revision``."""
        self._check_open()
        env, doc = written(env, expected_revision)
        row = self._rows.get(env.name)
        if row is None or row.uid != env.uid:
            raise uid_not_found(env)
        if row.revision != expected_revision:
            raise stale_write(env, expected_revision, row.revision)
        for name, other in self._rows.items():
            if name != env.name and env.request_id and other.request_id == env.request_id:
                raise request_taken(env.request_id, name)
        row.status = env.status
        row.request_id = env.request_id
        row.labels = dict(env.spec.labels)
        row.doc = doc
        row.revision = env.revision
        return env

    async def delete(self, name: str) -> None:
        """Remove an environment if present."""
        self._check_open()
        self._rows.pop(name, None)

    async def list(
        self,
        page_size: int,
        page_token: str,
        statuses: Collection[EnvironmentStatus] = (),
        labels: Mapping[str, str] | None = None,
    ) -> tuple[builtins.list[Environment], str]:
        """Return one page of environments in creation order, and the next page's token."""
        self._check_open()
        query = ListQuery.of(page_size, page_token, statuses, labels)
        keyed = ((PageKey(row.seq, name), row) for name, row in self._rows.items())
        matches = sorted(
            ((key, row) for key, row in keyed if query.keeps(key, row.status.value, row.labels)),
            key=lambda item: item[0],
        )
        rows, token = query.page(matches)
        return [codec.environment_from_json(row.doc) for row in rows], token

    def iterate(self, statuses: Collection[EnvironmentStatus] = ()) -> AsyncIterator[Environment]:
        """Yield every environment (in ``statuses``, if given) in creation order."""
        return iterate_pages(self, statuses)

    async def find_by_request_id(self, request_id: str) -> Environment | None:
        """Return the environment created by ``request_id``, if any."""
        self._check_open()
        if not request_id:
            return None
        for row in self._rows.values():
            if row.request_id == request_id:
                return codec.environment_from_json(row.doc)
        return None

    async def append_history(self, entry: HistoryEntry) -> None:
        """Record one change, dropping the oldest beyond the per-environment limit."""
        self._check_open()
        entries = self._history.setdefault(entry.env, [])
        entries.append(codec.history_to_json(entry))
        del entries[:-HISTORY_LIMIT]

    async def history(self, name: str) -> builtins.list[HistoryEntry]:
        """Return the audit trail of ``name``, oldest first."""
        self._check_open()
        return [codec.history_from_json(text) for text in self._history.get(name, [])]

    async def put_record(self, kind: str, key: str, value: Json, *, exclusive: bool = False) -> None:
        """Store a small JSON record."""
        self._check_open()
        text = record_text(kind, key, value)
        if exclusive and (kind, key) in self._records:
            raise record_held(kind, key)
        self._records[(kind, key)] = text

    async def get_records(self, kind: str) -> dict[str, Json]:
        """Return every record of ``kind`` by key."""
        self._check_open()
        return {k: json.loads(text) for (rk, k), text in sorted(self._records.items()) if rk == kind}

    async def delete_record(self, kind: str, key: str) -> None:
        """Remove a record if present."""
        self._check_open()
        self._records.pop((kind, key), None)

    async def close(self) -> None:
        """Mark the store closed."""
        self._closed = True
