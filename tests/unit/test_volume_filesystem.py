"""Choosing the volume filesystem: what is refused before anything is mounted, and the clone precondition."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scheduler import errors
from scheduler.domain import Environment, EnvironmentSpec, EnvironmentStatus
from scheduler.orchestrator.clone import check_cloneable
from scheduler.volumes.copy import reflinks
from scheduler.volumes.filesystem import DATA_DIR, XFS_IMAGE, backing_file, mounted_device, prepare


def test_the_data_dir_kind_keeps_volumes_under_the_data_dir(tmp_path: Path) -> None:
    found = prepare(tmp_path, DATA_DIR, 1 << 30)
    assert (found.volumes, found.templates) == (tmp_path / "volumes", tmp_path / "templates")
    assert found.reflink is reflinks(tmp_path)
    assert not (tmp_path / "volumefs.json").exists() and not (tmp_path / "volumes.xfs").exists()


def test_a_data_dir_whose_volumes_live_in_an_image_refuses_the_data_dir_kind(tmp_path: Path) -> None:
    record = {"filesystem": XFS_IMAGE, "image": str(tmp_path / "volumes.xfs"), "mount": str(tmp_path / "volumefs")}
    (tmp_path / "volumefs.json").write_text(json.dumps(record))
    with pytest.raises(errors.FailedPrecondition) as refused:
        prepare(tmp_path, DATA_DIR, 1 << 30)
    assert "volumes.filesystem" in refused.value.message and "volumes.xfs" in refused.value.message


def test_volumes_on_the_data_dir_refuse_the_image_kind_before_anything_is_made(tmp_path: Path) -> None:
    (tmp_path / "volumes" / "staging" / "db").mkdir(parents=True)
    with pytest.raises(errors.FailedPrecondition) as refused:
        prepare(tmp_path, XFS_IMAGE, 1 << 30)
    assert "staging" in refused.value.message and "backup and restore" in refused.value.message
    assert not (tmp_path / "volumes.xfs").exists() and not (tmp_path / "volumefs").exists()


def test_an_unreadable_record_is_named(tmp_path: Path) -> None:
    (tmp_path / "volumefs.json").write_text("{not json")
    with pytest.raises(errors.FailedPrecondition, match="volumefs.json"):
        prepare(tmp_path, DATA_DIR, 1 << 30)


def test_a_plain_directory_is_no_mount_and_a_disk_no_loop_device(tmp_path: Path) -> None:
    assert mounted_device(tmp_path) is None
    assert mounted_device(Path("/")) is not None
    assert backing_file("/dev/no-such-device") is None


def _env(status: EnvironmentStatus) -> Environment:
    now = datetime.now(UTC)
    spec = EnvironmentSpec(stack="postgres", services=())
    return Environment("src", "uid-1", spec, 1, 1, status, created_at=now, updated_at=now)


@pytest.mark.parametrize("status", [EnvironmentStatus.RUNNING, EnvironmentStatus.STOPPED])
def test_a_serving_or_sleeping_source_can_be_cloned(status: EnvironmentStatus) -> None:
    check_cloneable(_env(status))


def test_a_source_rolling_out_a_generation_is_refused() -> None:
    rolling = replace(_env(EnvironmentStatus.STOPPED), generation=2)
    with pytest.raises(errors.FailedPrecondition, match="generation 2"):
        check_cloneable(rolling)


@pytest.mark.parametrize("status", [EnvironmentStatus.DEPLOYING, EnvironmentStatus.FAILED, EnvironmentStatus.DELETING])
def test_other_sources_are_refused_naming_their_status(status: EnvironmentStatus) -> None:
    with pytest.raises(errors.FailedPrecondition) as refused:
        check_cloneable(_env(status))
    assert status.value in refused.value.message and refused.value.reason == "SOURCE_NOT_RUNNING"


def test_a_scratch_copy_left_on_the_data_dir_is_no_volume(tmp_path: Path) -> None:
    (tmp_path / "volumes" / ".scratch-0123").mkdir(parents=True)
    (tmp_path / "volumes" / "web").mkdir()
    with pytest.raises(errors.FailedPrecondition) as refused:
        prepare(tmp_path, XFS_IMAGE, 1 << 30)
    assert "web" in refused.value.message and ".scratch" not in refused.value.message
