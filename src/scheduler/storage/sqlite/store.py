"""``SqliteStateStore``: the embedded default ``StateStore``, one SQLite file.

Design:

* Each environment is one JSON document (``codec``) plus indexed columns for lookups: name, uid,
  status, request id and the creation sequence that orders pagination. Labels get their own table
  so that label filters are SQL, not a scan of every document.
* Every statement runs on one dedicated thread that owns the connection, so the event loop never
  blocks on disk and writers never interleave; each public method is one transaction.
* WAL journal with ``synchronous=NORMAL``: a committed transaction survives a process crash; a
  power loss may drop the last few commits but never corrupts the file. The daemon reconciles
  with containerd at boot, which heals a lost tail.
* The file is created mode 0600: it holds secrets, which the API layer redacts but the store
  must keep for redeploys.
* The schema is versioned in ``schema_version`` and upgraded by ordered migration functions at
  open. A file written by a newer scheduler, or one that fails SQLite's integrity check, is
  refused at open rather than half-read.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from scheduler.domain import Environment, EnvironmentStatus, HistoryEntry
from scheduler.errors import Internal, Unavailable
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
from scheduler.storage.sqlite import schema
from scheduler.storage.sqlite.schema import open_database

T = TypeVar("T")

# --- schema ------------------------------------------------------------------------------------


class SqliteStateStore:
    """A ``StateStore`` in one SQLite file; opening it migrates the schema.

    Raises (at construction):
        Unavailable: the file cannot be opened, or is corrupt.
        FailedPrecondition: the file was written by a newer scheduler (schema too new).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-db")
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._close_lock = threading.Lock()
        try:
            self._db = self._executor.submit(open_database, self.path).result()
        except BaseException:
            self._executor.shutdown(wait=True)
            raise

    @classmethod
    async def open(cls, path: Path | str) -> SqliteStateStore:
        """Open (creating and migrating as needed) without blocking the event loop.

        Raises:
            Unavailable: the file cannot be opened, or is corrupt.
            FailedPrecondition: the schema is newer than this scheduler.
        """
        return await asyncio.to_thread(cls, path)

    @property
    def schema_version(self) -> int:
        """Schema version this code writes."""
        return schema.SCHEMA_VERSION

    # --- plumbing ------------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        if self._closed or self._db is None:
            raise Unavailable("the state store is closed")
        db = self._db

        def call() -> T:
            try:
                if not write:
                    return fn(db)
                db.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(db)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                return result
            except sqlite3.ProgrammingError as err:  # the connection was closed under us
                raise Unavailable(f"the state store is closed: {err}") from err
            except sqlite3.OperationalError as err:
                raise Unavailable(f"state database {str(self.path)!r}: {err}") from err
            except sqlite3.DatabaseError as err:
                raise Internal(f"state database {str(self.path)!r}: {err}") from err

        try:
            future = self._executor.submit(call)
        except RuntimeError as err:  # executor shut down by a concurrent close()
            raise Unavailable("the state store is closed") from err
        # Not cancelled with the caller: once submitted, a transaction runs to its end, so a
        # cancelled RPC never leaves the connection half inside a transaction.
        return await asyncio.shield(asyncio.wrap_future(future))

    # --- environments --------------------------------------------------------------------------

    async def create(self, env: Environment) -> Environment:
        """Store a new environment at revision 1."""
        env, doc = created(env)

        def run(db: sqlite3.Connection) -> None:
            clash = db.execute(
                "SELECT name, uid, request_id FROM environments WHERE name = ? OR uid = ?"
                " OR (request_id <> '' AND request_id = ?)",
                (env.name, env.uid, env.request_id),
            ).fetchone()
            if clash is not None:
                name, uid, request_id = clash
                if name == env.name:
                    raise name_taken(env.name)
                if uid == env.uid:
                    raise uid_taken(env, name)
                raise request_taken(request_id, name)
            cursor = db.execute(
                "INSERT INTO environments (name, uid, status, request_id, generation, revision, doc)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (env.name, env.uid, env.status.value, env.request_id, env.generation, env.revision, doc),
            )
            self._write_labels(db, cursor.lastrowid, env)

        await self._run(run, write=True)
        return env

    @staticmethod
    def _write_labels(db: sqlite3.Connection, seq: int | None, env: Environment) -> None:
        db.execute("DELETE FROM environment_labels WHERE seq = ?", (seq,))
        db.executemany(
            "INSERT INTO environment_labels (seq, key, value) VALUES (?, ?, ?)",
            [(seq, key, value) for key, value in env.spec.labels.items()],
        )

    async def get(self, name: str) -> Environment:
        """Return the environment called ``name``."""

        def run(db: sqlite3.Connection) -> tuple[str, int] | None:
            row = db.execute("SELECT doc, revision FROM environments WHERE name = ?", (name,)).fetchone()
            return None if row is None else (str(row[0]), int(row[1]))

        found = await self._run(run, write=False)
        if found is None:
            raise not_found(name)
        return _decode(*found)

    async def put(self, env: Environment, *, expected_revision: int) -> Environment:
        """Replace a stored environment, matched by name and uid, if still at ``expected_revision``."""
        env, doc = written(env, expected_revision)

        def run(db: sqlite3.Connection) -> None:
            row = db.execute(
                "SELECT seq, revision FROM environments WHERE name = ? AND uid = ?", (env.name, env.uid)
            ).fetchone()
            if row is None:
                raise uid_not_found(env)
            if row[1] != expected_revision:
                raise stale_write(env, expected_revision, int(row[1]))
            if env.request_id:
                other = db.execute(
                    "SELECT name FROM environments WHERE request_id = ? AND seq <> ?",
                    (env.request_id, row[0]),
                ).fetchone()
                if other is not None:
                    raise request_taken(env.request_id, other[0])
            db.execute(
                "UPDATE environments SET status = ?, request_id = ?, generation = ?, revision = ?, doc = ?"
                " WHERE seq = ?",
                (env.status.value, env.request_id, env.generation, env.revision, doc, row[0]),
            )
            self._write_labels(db, row[0], env)

        await self._run(run, write=True)
        return env

    async def delete(self, name: str) -> None:
        """Remove an environment if present; its history is kept."""

        def run(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM environments WHERE name = ?", (name,))

        await self._run(run, write=True)

    async def list(
        self,
        page_size: int,
        page_token: str,
        statuses: Collection[EnvironmentStatus] = (),
        labels: Mapping[str, str] | None = None,
    ) -> tuple[builtins.list[Environment], str]:
        """Return one page of environments in creation order, and the next page's token."""
        query = ListQuery.of(page_size, page_token, statuses, labels)
        clauses: builtins.list[str] = []
        params: builtins.list[object] = []
        if query.after is not None:
            # seq is unique, so (seq, name) > (s, n) reduces to seq > s, or the same seq and a later name.
            clauses.append("(e.seq > ? OR (e.seq = ? AND e.name > ?))")
            params += [query.after.seq, query.after.seq, query.after.name]
        if query.statuses:
            wanted = sorted(query.statuses)
            clauses.append(f"e.status IN ({', '.join('?' * len(wanted))})")
            params += wanted
        for key, value in sorted(query.labels.items()):
            clauses.append(
                "EXISTS (SELECT 1 FROM environment_labels l WHERE l.seq = e.seq AND l.key = ? AND l.value = ?)"
            )
            params += [key, value]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT e.seq, e.name, e.doc, e.revision FROM environments e {where} ORDER BY e.seq, e.name LIMIT ?"
        params.append(query.size + 1)

        def run(db: sqlite3.Connection) -> builtins.list[tuple[PageKey, tuple[str, int]]]:
            rows = db.execute(sql, params).fetchall()
            return [(PageKey(int(s), str(n)), (str(d), int(r))) for s, n, d, r in rows]

        page, token = query.page(await self._run(run, write=False))
        return [_decode(doc, revision) for doc, revision in page], token

    def iterate(self, statuses: Collection[EnvironmentStatus] = ()) -> AsyncIterator[Environment]:
        """Yield every environment (in ``statuses``, if given) in creation order, a page at a time."""
        return iterate_pages(self, statuses)

    async def find_by_request_id(self, request_id: str) -> Environment | None:
        """Return the environment created by ``request_id``, if any."""
        if not request_id:
            return None

        def run(db: sqlite3.Connection) -> tuple[str, int] | None:
            row = db.execute("SELECT doc, revision FROM environments WHERE request_id = ?", (request_id,)).fetchone()
            return None if row is None else (str(row[0]), int(row[1]))

        found = await self._run(run, write=False)
        return None if found is None else _decode(*found)

    # --- history -------------------------------------------------------------------------------

    async def append_history(self, entry: HistoryEntry) -> None:
        """Record one change, dropping the oldest beyond the per-environment limit."""
        doc = codec.history_to_json(entry)

        def run(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO history (env, doc) VALUES (?, ?)", (entry.env, doc))
            db.execute(
                "DELETE FROM history WHERE env = ? AND id NOT IN"
                " (SELECT id FROM history WHERE env = ? ORDER BY id DESC LIMIT ?)",
                (entry.env, entry.env, HISTORY_LIMIT),
            )

        await self._run(run, write=True)

    async def history(self, name: str) -> builtins.list[HistoryEntry]:
        """Return the audit trail of ``name``, oldest first."""

        def run(db: sqlite3.Connection) -> builtins.list[str]:
            rows = db.execute("SELECT doc FROM history WHERE env = ? ORDER BY id", (name,)).fetchall()
            return [str(row[0]) for row in rows]

        return [codec.history_from_json(doc) for doc in await self._run(run, write=False)]

    # --- records -------------------------------------------------------------------------------

    async def put_record(self, kind: str, key: str, value: Json, *, exclusive: bool = False) -> None:
        """Store a small JSON record; ``exclusive`` makes it an atomic claim."""
        text = record_text(kind, key, value)

        def run(db: sqlite3.Connection) -> None:
            if exclusive:
                try:
                    db.execute("INSERT INTO records (kind, key, value) VALUES (?, ?, ?)", (kind, key, text))
                except sqlite3.IntegrityError as err:
                    raise record_held(kind, key) from err
            else:
                db.execute(
                    "INSERT INTO records (kind, key, value) VALUES (?, ?, ?)"
                    " ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value",
                    (kind, key, text),
                )

        await self._run(run, write=True)

    async def get_records(self, kind: str) -> dict[str, Json]:
        """Return every record of ``kind`` by key."""

        def run(db: sqlite3.Connection) -> builtins.list[tuple[str, str]]:
            query = "SELECT key, value FROM records WHERE kind = ? ORDER BY key"
            rows = db.execute(query, (kind,)).fetchall()
            return [(str(k), str(v)) for k, v in rows]

        return {key: json.loads(text) for key, text in await self._run(run, write=False)}

    async def delete_record(self, kind: str, key: str) -> None:
        """Remove a record if present."""

        def run(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key))

        await self._run(run, write=True)

    # --- closing -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Checkpoint the WAL into the main file and close; idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        db = self._db

        def run() -> None:
            if db is not None:
                try:
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    db.close()

        try:
            await asyncio.wrap_future(self._executor.submit(run))
        finally:
            self._executor.shutdown(wait=False)


def _decode(doc: str, revision: int) -> Environment:
    """Decode a stored document; the revision column is authoritative (documents before v2 lack it)."""
    env = codec.environment_from_json(doc)
    return env if env.revision == revision else replace(env, revision=revision)
