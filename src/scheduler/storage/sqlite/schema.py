"""The SQLite schema and opening a state database: file mode, pragmas, integrity check, ordered migrations."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from scheduler.errors import FailedPrecondition, Internal, Unavailable


def _execute_script(db: sqlite3.Connection, script: str) -> None:
    """Run statements one by one: ``executescript`` would COMMIT the migration's transaction first."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            db.execute(pending)
            pending = ""
    if pending.strip():
        raise Internal(f"incomplete SQL statement in a migration: {pending.strip()[:80]!r}")


def _migrate_v1(db: sqlite3.Connection) -> None:
    _execute_script(
        db,
        """
        CREATE TABLE environments (
            -- AUTOINCREMENT: a deleted environment's sequence is never reused, so page tokens
            -- issued before a delete still point at the right place.
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            uid TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL,
            request_id TEXT NOT NULL DEFAULT '',
            generation INTEGER NOT NULL,
            doc TEXT NOT NULL
        );
        CREATE UNIQUE INDEX environments_request_id ON environments(request_id) WHERE request_id <> '';
        CREATE INDEX environments_status ON environments(status, seq);
        CREATE TABLE environment_labels (
            seq INTEGER NOT NULL REFERENCES environments(seq) ON DELETE CASCADE,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (seq, key)
        );
        CREATE INDEX environment_labels_pair ON environment_labels(key, value);
        CREATE TABLE history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            env TEXT NOT NULL,
            doc TEXT NOT NULL
        );
        CREATE INDEX history_env ON history(env, id);
        CREATE TABLE records (
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (kind, key)
        );
        """,
    )


def _migrate_v2(db: sqlite3.Connection) -> None:
    # Documents written before revisions existed start at 1; every write bumps it (compare-and-swap).
    db.execute("ALTER TABLE environments ADD COLUMN revision INTEGER NOT NULL DEFAULT 1")


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_migrate_v1, _migrate_v2)
"""``MIGRATIONS[i]`` upgrades a database from schema version ``i`` to ``i + 1``. Append only."""
SCHEMA_VERSION = len(MIGRATIONS)


def open_database(path: Path) -> sqlite3.Connection:
    """Open (creating mode 0600) and prepare the database at ``path``: pragmas, integrity check, migrations.

    Raises:
        Unavailable: the file cannot be opened, or is corrupt.
        FailedPrecondition: the schema is newer than this scheduler.
    """
    where = str(path)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The file holds secrets (generated database passwords): owner-only. SQLite gives
        # the -wal and -shm files the same mode as the database file.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
    except OSError as err:
        raise Unavailable(f"cannot create state database {where!r}: {err}") from err
    try:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE in _run).
        db = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as err:
        raise Unavailable(f"cannot open state database {where!r}: {err}") from err
    try:
        _prepare(db, path)
    except BaseException:
        db.close()
        raise
    return db


def _prepare(db: sqlite3.Connection, path: Path) -> None:
    where = str(path)
    try:
        db.execute("PRAGMA busy_timeout = 5000")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        check = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as err:
        raise Unavailable(f"state database {where!r} is corrupt or not a database: {err}") from err
    if [row[0] for row in check] != ["ok"]:
        problems = "; ".join(str(row[0]) for row in check[:5])
        raise Unavailable(f"state database {where!r} is corrupt: {problems}")
    if str(mode).lower() != "wal":
        raise Unavailable(f"state database {where!r} cannot use WAL journaling (got {mode!r})")
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = _schema_version(db)
            if version > SCHEMA_VERSION:
                raise FailedPrecondition(
                    f"state database {where!r} has schema version {version}, newer than the "
                    f"{SCHEMA_VERSION} this scheduler understands; upgrade the scheduler"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[target - 1](db)
                db.execute("UPDATE schema_version SET version = ?", (target,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    except sqlite3.DatabaseError as err:
        raise Unavailable(f"cannot migrate state database {where!r}: {err}") from err


def _schema_version(db: sqlite3.Connection) -> int:
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    rows = db.execute("SELECT version FROM schema_version").fetchall()
    if not rows:
        tables = db.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name <> 'schema_version'"
            " AND name NOT LIKE 'sqlite_%'"
        ).fetchone()[0]
        if tables:
            raise FailedPrecondition(
                "state database has tables but no schema version: it was not written by the scheduler"
            )
        db.execute("INSERT INTO schema_version (version) VALUES (0)")
        return 0
    if len(rows) != 1 or not isinstance(rows[0][0], int):
        raise FailedPrecondition(f"state database has a malformed schema_version table: {rows!r}")
    version: int = rows[0][0]
    return version
