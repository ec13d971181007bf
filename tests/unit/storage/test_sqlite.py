"""What only the SQLite store does: durability, migrations, refusing bad files."""

import asyncio
import json
import sqlite3

import pytest

from scheduler.errors import FailedPrecondition, Unavailable
from scheduler.storage.sqlite import SCHEMA_VERSION, SqliteStateStore
from scheduler.storage.sqlite import schema as sqlite_store
from tests.unit.storage.factories import full_environment, history_entry


async def test_state_survives_close_and_reopen(tmp_path):
    path = tmp_path / "state.db"
    store = SqliteStateStore(path)
    env = full_environment("alpha", request_id="r-1")
    await store.create(env)
    await store.append_history(history_entry("alpha"))
    await store.put_record("port", "20001", {"env": "alpha"})
    await store.create(full_environment("beta"))
    _, token = await store.list(1, "")
    await store.close()

    again = SqliteStateStore(path)
    try:
        assert await again.get("alpha") == env
        assert len(await again.history("alpha")) == 1
        assert await again.get_records("port") == {"20001": {"env": "alpha"}}
        # A token issued before the restart still continues where it left off.
        page, _ = await again.list(1, token)
        assert [e.name for e in page] == ["beta"]
        # Sequences keep growing after a reopen, so later creations sort last.
        await again.delete("alpha")
        await again.create(full_environment("alpha"))
        assert [e.name for e in (await again.list(0, ""))[0]] == ["beta", "alpha"]
    finally:
        await again.close()


async def test_a_new_file_is_created_with_wal_and_the_current_schema(tmp_path):
    path = tmp_path / "nested" / "dir" / "state.db"
    store = SqliteStateStore(path)
    await store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"environments", "environment_labels", "history", "records"} <= tables
    finally:
        db.close()


async def test_a_newer_schema_is_refused_with_failed_precondition(tmp_path):
    path = tmp_path / "state.db"
    await SqliteStateStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(FailedPrecondition, match=f"schema version {SCHEMA_VERSION + 1}"):
        SqliteStateStore(path)


async def test_a_corrupt_file_is_refused_with_unavailable(tmp_path):
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database, just some bytes" * 200)
    with pytest.raises(Unavailable, match="state.db"):
        SqliteStateStore(path)


async def test_a_damaged_database_page_is_refused_with_unavailable(tmp_path):
    path = tmp_path / "state.db"
    store = SqliteStateStore(path)
    for i in range(40):
        await store.create(full_environment(f"env-{i}"))
    await store.close()
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[2 * page : 3 * page] = b"\xff" * page
    path.write_bytes(bytes(data))
    with pytest.raises(Unavailable, match="corrupt"):
        SqliteStateStore(path)


async def test_a_foreign_sqlite_database_is_refused(tmp_path):
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE something (x)")
    db.commit()
    db.close()
    with pytest.raises(FailedPrecondition, match="not written by the scheduler"):
        SqliteStateStore(path)


async def test_migrations_run_in_order_from_the_stored_version(tmp_path, monkeypatch):
    path = tmp_path / "state.db"
    await SqliteStateStore(path).close()

    def migrate_v2(db):
        db.execute("CREATE TABLE added_in_v2 (x INTEGER)")

    monkeypatch.setattr(sqlite_store, "MIGRATIONS", (*sqlite_store.MIGRATIONS, migrate_v2))
    monkeypatch.setattr(sqlite_store, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    store = SqliteStateStore(path)
    await store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert db.execute("SELECT count(*) FROM added_in_v2").fetchone()[0] == 0
    finally:
        db.close()


async def test_a_failing_migration_leaves_the_old_version_intact(tmp_path, monkeypatch):
    path = tmp_path / "state.db"
    store = SqliteStateStore(path)
    await store.create(full_environment("alpha"))
    await store.close()

    def broken(db):
        db.execute("CREATE TABLE half_done (x)")
        db.execute("THIS IS NOT SQL")

    monkeypatch.setattr(sqlite_store, "MIGRATIONS", (*sqlite_store.MIGRATIONS, broken))
    monkeypatch.setattr(sqlite_store, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(Unavailable, match="migrate"):
        SqliteStateStore(path)
    monkeypatch.undo()
    store = SqliteStateStore(path)
    try:
        assert (await store.get("alpha")).name == "alpha"
    finally:
        await store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT count(*) FROM sqlite_master WHERE name='half_done'").fetchone()[0] == 0
    finally:
        db.close()


async def test_cancelling_a_caller_does_not_break_the_connection(tmp_path):
    store = SqliteStateStore(tmp_path / "state.db")
    try:
        tasks = [asyncio.ensure_future(store.create(full_environment(f"e{i}"))) for i in range(10)]
        await asyncio.sleep(0)
        for task in tasks[::2]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Cancelled callers stop waiting, but each submitted transaction still commits whole.
        await store.create(full_environment("after"))
        names = [e.name for e in (await store.list(0, ""))[0]]
        assert names[-1] == "after"
        assert {f"e{i}" for i in range(1, 10, 2)} <= set(names)
    finally:
        await store.close()


async def test_a_second_store_on_the_same_file_sees_committed_writes(tmp_path):
    path = tmp_path / "state.db"
    first, second = SqliteStateStore(path), SqliteStateStore(path)
    try:
        await first.create(full_environment("alpha"))
        assert (await second.get("alpha")).name == "alpha"
    finally:
        await first.close()
        await second.close()


async def test_the_database_and_its_wal_are_private_to_the_owner(tmp_path):
    import stat

    path = tmp_path / "state.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    store = await SqliteStateStore.open(path)
    try:
        await store.create(full_environment("alpha"))
        for file in (path, path.with_name("state.db-wal"), path.with_name("state.db-shm")):
            assert file.exists(), file
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    finally:
        await store.close()


async def test_open_runs_off_the_event_loop_and_reports_bad_files(tmp_path):
    path = tmp_path / "state.db"
    path.write_bytes(b"\x00garbage" * 512)
    with pytest.raises(Unavailable):
        await SqliteStateStore.open(path)
    store = await SqliteStateStore.open(tmp_path / "fresh.db")
    await store.close()


async def test_documents_written_before_revisions_existed_load_at_revision_1(tmp_path):
    path = tmp_path / "state.db"
    old = SqliteStateStore(path)
    env = await old.create(full_environment("alpha"))
    await old.close()
    db = sqlite3.connect(path)
    try:
        # Turn the file into what a schema-1 scheduler wrote: no revision column, no revision in documents.
        doc = json.loads(db.execute("SELECT doc FROM environments").fetchone()[0])
        del doc["revision"]
        db.execute("UPDATE environments SET doc = ?", (json.dumps(doc),))
        db.execute("ALTER TABLE environments DROP COLUMN revision")
        db.execute("UPDATE schema_version SET version = 1")
        db.commit()
    finally:
        db.close()
    store = SqliteStateStore(path)
    try:
        loaded = await store.get("alpha")
        assert loaded == env and loaded.revision == 1
        assert (await store.put(loaded, expected_revision=1)).revision == 2
    finally:
        await store.close()
