"""Copies of the state database taken with SQLite's online backup API.

The backup API copies the database page by page inside read transactions, so a copy taken while
the daemon writes is a consistent snapshot of one moment (WAL mode lets the daemon keep writing
meanwhile), unlike a file copy, which can catch the database, its WAL and its index mid-write.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from scheduler.errors import FailedPrecondition, InvalidArgument, Unavailable

_PAGES_PER_STEP = 256
"""Pages copied per step; between steps the daemon's writers get the database back."""


def backup_database(source: Path, target: Path) -> int:
    """Write a consistent copy of the database at ``source`` to ``target`` (0600); return its size.

    The copy is written next to ``target`` and renamed into place once checked, so a failed or
    interrupted backup never leaves a partial file under the target name.

    Raises:
        InvalidArgument: ``source`` is not a database, or ``target`` already exists.
        Unavailable: reading or writing failed (the message says which and why).
    """
    if not source.is_file():
        raise InvalidArgument(f"state database {str(source)!r} does not exist", field="state_db")
    if target.exists():
        raise InvalidArgument(f"{str(target)!r} already exists; choose a new file", field="output")
    partial = target.with_name(f".{target.name}.partial")
    try:
        _copy(f"file:{source}?mode=ro", partial)
        _check(partial)
        os.replace(partial, target)
    except sqlite3.Error as err:
        raise Unavailable(f"cannot back up {str(source)!r} to {str(target)!r}: {err}") from err
    finally:
        partial.unlink(missing_ok=True)
    return target.stat().st_size


def restore_database(backup: Path, target: Path, *, replace: bool = False) -> None:
    """Put the copy ``backup`` in place as the database ``target`` (the daemon must be stopped).

    Raises:
        InvalidArgument: ``backup`` is missing or not an intact scheduler database.
        FailedPrecondition: ``target`` exists and ``replace`` is false.
        Unavailable: writing failed.
    """
    if not backup.is_file():
        raise InvalidArgument(f"backup {str(backup)!r} does not exist", field="backup")
    try:
        _check(backup)
    except sqlite3.Error as err:
        raise InvalidArgument(f"backup {str(backup)!r} is not an intact database: {err}", field="backup") from err
    if target.exists() and not replace:
        raise FailedPrecondition(f"{str(target)!r} exists; pass --replace to overwrite it (stop the daemon first)")
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.restoring")
    try:
        _copy(f"file:{backup}?mode=ro", partial)
        # The old database's WAL and index belong to the old file: they must not be replayed.
        for suffix in ("-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        os.replace(partial, target)
    except (sqlite3.Error, OSError) as err:
        raise Unavailable(f"cannot restore {str(backup)!r} to {str(target)!r}: {err}") from err
    finally:
        partial.unlink(missing_ok=True)


def _copy(source_uri: str, target: Path) -> None:
    target.unlink(missing_ok=True)
    os.close(os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    with contextlib.closing(sqlite3.connect(source_uri, uri=True)) as src:
        with contextlib.closing(sqlite3.connect(target)) as dst:
            src.backup(dst, pages=_PAGES_PER_STEP)
            # A standalone file: no WAL to carry around with it.
            dst.execute("PRAGMA journal_mode = DELETE")


def _check(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = [row[0] for row in db.execute("PRAGMA integrity_check").fetchall()]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if rows != ["ok"]:
        raise sqlite3.DatabaseError("integrity check: " + "; ".join(str(r) for r in rows[:5]))
    if "environments" not in tables:
        raise sqlite3.DatabaseError("no environments table: not a scheduler state database")
