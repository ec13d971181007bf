"""Archive ids and database detection of environment backups (no containers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler import errors
from scheduler.domain import ServiceSpec, VolumeMount
from scheduler.orchestrator.backup import Backups, database_mount
from scheduler.storage.memory import MemoryStateStore
from scheduler.volumes.host import HostVolumeStore


def test_a_postgres_service_is_dumped_from_the_volume_holding_pgdata() -> None:
    pg = ServiceSpec(
        name="db",
        image="postgres:15",
        env={"POSTGRES_USER": "app"},
        volumes=(VolumeMount("other", "/etc/x"), VolumeMount("pgdata", "/var/lib/postgresql/data")),
    )
    mount = database_mount(pg)
    assert mount is not None and mount.name == "pgdata"
    custom = ServiceSpec(
        name="db", image="pg", env={"POSTGRES_USER": "app", "PGDATA": "/data/pg"}, volumes=(VolumeMount("d", "/data"),)
    )
    assert database_mount(custom) == VolumeMount("d", "/data")
    assert database_mount(ServiceSpec(name="web", image="nginx", volumes=(VolumeMount("v", "/srv"),))) is None


def test_only_well_formed_ids_of_existing_archives_are_located(tmp_path: Path) -> None:
    backups = Backups(MemoryStateStore(), None, HostVolumeStore(tmp_path / "v"), tmp_path / "b")  # type: ignore[arg-type]
    for bad in ("", "demo", "../x/demo-20260101T000000Z.tar", "demo/other-20260101T000000Z.tar", "demo/demo.tar"):
        with pytest.raises(errors.InvalidArgument):
            backups.locate(bad)
    with pytest.raises(errors.NotFound):
        backups.locate("demo/demo-20260101T000000Z.tar")
    (tmp_path / "b" / "demo").mkdir(parents=True)
    (tmp_path / "b" / "demo" / "demo-20260101T000000Z.tar").write_bytes(b"")
    assert backups.locate("demo/demo-20260101T000000Z.tar").name == "demo-20260101T000000Z.tar"
    with pytest.raises(errors.InvalidArgument, match="manifest"):
        backups.open("demo/demo-20260101T000000Z.tar")
    assert backups.list("demo") == [] and backups.list("none") == []
