"""The two-pass live tree copy behind clones: a full pass, then only what changed since, block by block."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from scheduler import errors
from scheduler.volumes.host import HostVolumeStore
from scheduler.volumes.sync import BLOCK, sync_tree


def _tree(root: Path) -> dict[str, tuple[str, int, bytes | str]]:
    """Every entry under ``root``: kind, mode, and content (or link target)."""
    found: dict[str, tuple[str, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if path.is_symlink():
                found[rel] = ("link", 0, os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir", st.st_mode & 0o7777, b"")
            else:
                found[rel] = ("file", st.st_mode & 0o7777, path.read_bytes())
    return found


def test_a_second_pass_brings_the_copy_up_to_date(tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    (source / "base" / "1").mkdir(parents=True)
    big = source / "base" / "1" / "16384"
    big.write_bytes(b"a" * (3 * BLOCK + 100))
    (source / "gone.txt").write_text("removed later")
    (source / "PG_VERSION").write_text("15\n")
    os.chmod(source / "base", 0o700)
    os.symlink("base/1", source / "link")
    since = time.time()
    first = sync_tree(source, target)
    assert first.files == 3 and _tree(target) == _tree(source)

    # Between the passes: one block of a big file changes, a file goes, one appears, one grows.
    with big.open("r+b") as f:
        f.seek(BLOCK + 5)
        f.write(b"changed")
    (source / "gone.txt").unlink()
    (source / "pg_wal").mkdir()
    (source / "pg_wal" / "000000010000000000000001").write_bytes(b"w" * 1000)
    with (source / "PG_VERSION").open("a") as f:
        f.write("more\n")
    second = sync_tree(source, target, since)
    assert _tree(target) == _tree(source)
    assert second.removed == 1
    # Only the changed block of the big file (plus the small files) was rewritten.
    assert second.bytes_written < 2 * BLOCK, second


def test_unchanged_old_files_are_not_even_read(tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    source.mkdir()
    old = source / "old"
    old.write_bytes(b"x" * 10)
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    sync_tree(source, target)
    # Same size, same old times: trusted, even though the copy was tampered with.
    (target / "old").write_bytes(b"y" * 10)
    assert sync_tree(source, target, since=time.time() + 10).files == 0
    assert (target / "old").read_bytes() == b"y" * 10


def test_host_volumes_stage_copy_and_adopt(tmp_path: Path) -> None:
    volumes = HostVolumeStore(tmp_path / "volumes")
    data = volumes.ensure("staging", "pgdata")
    (data / "PG_VERSION").write_text("15\n")
    staging = volumes.staging()
    volumes.copy_into("staging", "pgdata", staging / "pgdata")
    placed = volumes.adopt("preview", "pgdata", staging / "pgdata")
    assert (placed / "PG_VERSION").read_text() == "15\n" and placed == volumes.path("preview", "pgdata")
    other = volumes.staging()
    volumes.copy_into("staging", "pgdata", other / "pgdata")
    with pytest.raises(errors.AlreadyExists):
        volumes.adopt("preview", "pgdata", other / "pgdata")
    with pytest.raises(errors.InvalidArgument):
        volumes.adopt("preview", "x", tmp_path)  # not a staging directory
    volumes.discard(other)
    volumes.discard(staging)
    assert sorted(p.name for p in (tmp_path / "volumes").iterdir()) == ["preview", "staging"]
    with pytest.raises(errors.NotFound):
        volumes.copy_into("staging", "nothing", other / "x")
