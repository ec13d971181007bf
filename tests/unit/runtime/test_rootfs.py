"""Reading /etc/passwd of an image from its snapshot's layer directories, with overlay semantics."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from scheduler.runtime.containerd._gen.containerd.types import mount_pb2
from scheduler.runtime.containerd.containers import layer_dirs, read_rootfs_file


def overlay(upper: Path, *lower: Path) -> list[mount_pb2.Mount]:
    options = [f"workdir={upper.parent / 'work'}", f"upperdir={upper}", "lowerdir=" + ":".join(map(str, lower))]
    return [mount_pb2.Mount(type="overlay", source="overlay", options=options)]


def layer(root: Path, name: str, files: dict[str, str]) -> Path:
    directory = root / name
    for path, text in files.items():
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def test_layer_dirs_for_bind_and_overlay(tmp_path: Path) -> None:
    bind = [mount_pb2.Mount(type="bind", source="/s/1/fs", options=["rbind", "rw"])]
    assert layer_dirs(bind) == ["/s/1/fs"]
    assert layer_dirs(overlay(Path("/u"), Path("/l2"), Path("/l1"))) == ["/u", "/l2", "/l1"]
    assert layer_dirs([]) == []


def test_topmost_layer_wins(tmp_path: Path) -> None:
    base = layer(tmp_path, "l1", {"etc/passwd": "root:x:0:0::/:/bin/sh\n", "etc/group": "root:x:0:\n"})
    top = layer(tmp_path, "l2", {"etc/passwd": "app:x:1:1::/:/bin/sh\n"})
    upper = layer(tmp_path, "upper", {})
    mounts = overlay(upper, top, base)
    assert read_rootfs_file(mounts, "/etc/passwd") == "app:x:1:1::/:/bin/sh\n"
    assert read_rootfs_file(mounts, "/etc/group") == "root:x:0:\n"
    assert read_rootfs_file(mounts, "/etc/shadow") is None


def test_whiteouts_and_opaque_dirs_hide_lower_layers(tmp_path: Path) -> None:
    base = layer(tmp_path, "l1", {"etc/passwd": "root:x:0:0::/:/bin/sh\n", "etc/group": "root:x:0:\n"})
    top = layer(tmp_path, "l2", {})
    (top / "etc").mkdir()
    try:
        os.mknod(top / "etc" / "passwd", stat.S_IFCHR | 0o600, 0)
        os.setxattr(top / "etc", "trusted.overlay.opaque", b"y")
    except PermissionError:
        pytest.skip("creating whiteouts needs root")
    mounts = overlay(layer(tmp_path, "upper", {}), top, base)
    assert read_rootfs_file(mounts, "/etc/passwd") is None
    assert read_rootfs_file(mounts, "/etc/group") is None


def test_non_regular_files_are_ignored(tmp_path: Path) -> None:
    only = layer(tmp_path, "l1", {})
    (only / "etc" / "passwd").mkdir(parents=True)
    assert read_rootfs_file([mount_pb2.Mount(type="bind", source=str(only))], "/etc/passwd") is None
