"""The xfs-image volume filesystem on the real kernel: made, mounted, adopted, grown, released, and
the live copy's second pass cloning changed files there. Mount and loop device go whatever happens."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.volumes.filesystem import XFS_IMAGE, backing_file, mounted_device, prepare, release
from scheduler.volumes.sync import sync_tree
from tests.support.processes import loops_under, mounts_under, unmount_under, wait_loops_gone

pytestmark = pytest.mark.integration

GIB = 1024**3


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    try:
        yield tmp_path
    finally:
        unmount_under(tmp_path)
    assert not mounts_under(tmp_path) and not wait_loops_gone(tmp_path)


def test_the_image_is_made_adopted_grown_and_released(data_dir: Path) -> None:
    first = prepare(data_dir, XFS_IMAGE, GIB)
    device = mounted_device(data_dir / "volumefs")
    assert first.reflink and first.root == data_dir / "volumefs" and device is not None
    assert backing_file(device) == (data_dir / "volumes.xfs").resolve()
    assert os.stat(data_dir / "volumes.xfs").st_blocks * 512 < GIB // 4, "the image is sparse"
    (first.volumes / "env").mkdir(parents=True)
    (first.volumes / "env" / "kept").write_text("data")

    # A restarted daemon adopts the mount as it is (same device), and a larger size grows it online.
    again = prepare(data_dir, XFS_IMAGE, 2 * GIB)
    assert mounted_device(data_dir / "volumefs") == device and again.reflink
    assert os.statvfs(again.root).f_blocks * os.statvfs(again.root).f_frsize > 1.5 * GIB
    assert (again.volumes / "env" / "kept").read_text() == "data"

    assert release(data_dir) and mounted_device(data_dir / "volumefs") is None
    assert not release(data_dir) and not loops_under(data_dir)
    # A start cut short between attaching the image and mounting it: the next one reuses the device.
    left = subprocess.run(
        ["losetup", "--find", "--show", str(data_dir / "volumes.xfs")], capture_output=True, text=True, check=True
    ).stdout.strip()
    third = prepare(data_dir, XFS_IMAGE, 2 * GIB)
    assert mounted_device(third.root) == left and loops_under(data_dir) == [left]
    assert (third.volumes / "env" / "kept").read_text() == "data"
    assert release(data_dir)
    assert not loops_under(data_dir) and mounted_device(third.root) is None


def test_the_second_pass_clones_changed_files_again(data_dir: Path) -> None:
    root = prepare(data_dir, XFS_IMAGE, GIB).root
    source, target = root / "src", root / "dst"
    source.mkdir()
    (source / "shrinks").write_bytes(b"a" * 10_000)
    (source / "grows").write_bytes(b"b" * 5_000)
    (source / "same").write_bytes(b"c" * 70_000)
    first = sync_tree(source, target)
    assert first.cloned == 3 and first.bytes_written == 0, first
    since = time.time()
    (source / "shrinks").write_bytes(b"x" * 4_999)  # not block-aligned, shorter than its copy
    (source / "grows").write_bytes(b"y" * 9_000)
    (source / "new").write_bytes(b"z" * 100)
    second = sync_tree(source, target, since)
    assert second.bytes_written == 0 and second.cloned >= 3, second
    for name in ("shrinks", "grows", "same", "new"):
        assert (target / name).read_bytes() == (source / name).read_bytes(), name
