"""Layered volumes (overlayfs on a template) on the real kernel: writes stay in the volume, the
template is never written, the mount comes back after it is gone (a reboot), backup, restore and
clone copies see the merged data, removal leaves no mount, and the collector's guard names the
templates in use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.errors import FailedPrecondition
from scheduler.volumes import overlay
from scheduler.volumes.host import HostVolumeStore
from tests.support.processes import mounts_under, unmount_under

pytestmark = pytest.mark.integration


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    try:
        yield tmp_path
    finally:
        unmount_under(tmp_path)
    assert not mounts_under(tmp_path)


def template(root: Path) -> Path:
    lower = root / "templates" / "key" / "data"
    (lower / "base").mkdir(parents=True)
    (lower / "PG_VERSION").write_text("15\n")
    (lower / "base" / "1259").write_bytes(b"t" * 8192)
    os.chown(lower, 999, 999)
    os.chmod(lower, 0o700)
    return lower


def test_a_layered_volume_is_its_own_and_leaves_the_template_alone(root: Path) -> None:
    lower = template(root)
    store = HostVolumeStore(root / "volumes")
    assert store.layer("env-a", "pgdata", lower)
    assert store.layer("env-b", "pgdata", lower)
    a, b = store.path("env-a", "pgdata"), store.path("env-b", "pgdata")
    assert sorted(mounts_under(root / "volumes")) == sorted([str(a), str(b)])
    # The root has the template's owner and mode (PostgreSQL insists on 0700 and its uid).
    assert (a.stat().st_uid, a.stat().st_mode & 0o7777) == (999, 0o700)
    (a / "base" / "1259").write_bytes(b"a" * 8192)
    (a / "new").write_text("only in a")
    (a / "PG_VERSION").unlink()
    assert (lower / "base" / "1259").read_bytes() == b"t" * 8192 and (lower / "PG_VERSION").exists()
    assert (b / "base" / "1259").read_bytes() == b"t" * 8192 and not (b / "new").exists()
    assert [v.name for v in store.list("env-a")] == ["pgdata"], "the layers are not a volume"
    # A volume with data is left alone, by a layer and by a copy.
    assert not store.layer("env-a", "pgdata", lower)
    assert not store.seed("env-a", "pgdata", lower)
    assert store.lowers() == {lower}

    # Gone like after a reboot: empty until mounted again from its record, with its data.
    overlay.unmount(a)
    assert str(a) not in mounts_under(root) and not any(a.iterdir())
    assert not store.seed("env-a", "pgdata", lower), "never copied over a layered volume"
    mounted, failed = store.remount_layers()
    assert mounted == ["env-a/pgdata"] and failed == []
    assert (a / "new").read_text() == "only in a" and not (a / "PG_VERSION").exists()

    # Backup reads the merged data; a restore leaves a plain directory with it.
    archive = store.backup("env-a", "pgdata", root / "a.tar.gz")
    store.restore("env-b", "pgdata", archive)
    assert str(b) not in mounts_under(root) and not overlay.is_layered(b)
    assert (b / "new").read_text() == "only in a" and (b / "base" / "1259").read_bytes() == b"a" * 8192
    # A clone's copy sees the merged data too.
    staging = store.staging()
    store.copy_into("env-a", "pgdata", staging / "pgdata")
    assert (staging / "pgdata" / "new").read_text() == "only in a"
    store.discard(staging)

    store.remove("env-a", "pgdata")
    assert mounts_under(root) == [] and not (root / "volumes" / "env-a").exists()
    assert store.lowers() == set()


def test_removing_an_environment_unmounts_its_layers_first(root: Path) -> None:
    lower = template(root)
    store = HostVolumeStore(root / "volumes")
    assert store.layer("env-a", "one", lower) and store.layer("env-a", "two", lower)
    (store.path("env-a", "one") / "x").write_text("x")
    store.remove_environment("env-a")
    assert mounts_under(root) == [] and not (root / "volumes" / "env-a").exists()
    assert sorted(p.name for p in lower.iterdir()) == ["PG_VERSION", "base"], "the template is untouched"


def test_a_volume_whose_template_is_gone_is_refused_not_emptied(root: Path) -> None:
    lower = template(root)
    store = HostVolumeStore(root / "volumes")
    assert store.layer("env-a", "pgdata", lower)
    overlay.unmount(store.path("env-a", "pgdata"))
    os.rename(lower, root / "elsewhere")
    mounted, failed = store.remount_layers()
    assert mounted == [] and len(failed) == 1 and failed[0].startswith("env-a/pgdata: ")
    with pytest.raises(FailedPrecondition):
        store.layer("env-a", "pgdata", root / "elsewhere")
    store.remove_environment("env-a")
    assert mounts_under(root) == []


def test_a_lower_the_kernel_cannot_take_leaves_nothing(root: Path) -> None:
    store = HostVolumeStore(root / "volumes")
    odd = root / "a,b"
    odd.mkdir()
    with pytest.raises(OSError):
        store.layer("env-a", "pgdata", odd)
    assert not store.path("env-a", "pgdata").exists() and not overlay.is_layered(store.path("env-a", "pgdata"))
