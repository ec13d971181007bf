"""Online backup and restore of the SQLite state store, in process."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler import errors
from scheduler.storage.backup import backup_database, restore_database
from scheduler.storage.sqlite import SqliteStateStore
from tests.unit.storage.factories import full_environment


async def test_a_backup_of_an_open_store_restores_every_row(tmp_path: Path) -> None:
    store = await SqliteStateStore.open(tmp_path / "state.db")
    env = full_environment("one")
    await store.create(env)
    size = backup_database(tmp_path / "state.db", tmp_path / "copy.db")
    await store.create(full_environment("two"))  # after the backup: not in it
    await store.close()
    assert size > 0 and (tmp_path / "copy.db").stat().st_mode & 0o777 == 0o600
    with pytest.raises(errors.InvalidArgument, match="already exists"):
        backup_database(tmp_path / "state.db", tmp_path / "copy.db")

    with pytest.raises(errors.FailedPrecondition, match="--replace"):
        restore_database(tmp_path / "copy.db", tmp_path / "state.db")
    restore_database(tmp_path / "copy.db", tmp_path / "state.db", replace=True)
    restored = await SqliteStateStore.open(tmp_path / "state.db")
    try:
        page, _ = await restored.list(page_size=10, page_token="")
        assert [e.name for e in page] == ["one"]
        assert (await restored.get("one")).spec == env.spec
    finally:
        await restored.close()
