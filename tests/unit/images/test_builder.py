"""The offline image builder: deterministic layers, archive layout, and the input cache."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path

import pytest

from images.build import is_fresh, recipe_hash
from images.oci import ImageConfig, write_archive, write_layer
from images.rootfs import BuildError, Rootfs, host_stats


def _small_rootfs(source: Path) -> Rootfs:
    fs = Rootfs()
    fs.file("/etc/motd", "hello\n")
    fs.file("/app/run", "#!/bin/sh\n", mode=0o755)
    fs.symlink("/usr/bin/run", "/app/run")
    fs.dir("/tmp", 0o1777)
    fs.host_path(str(source), dest="/data/file")
    return fs


def test_layers_are_deterministic_and_sorted(tmp_path: Path) -> None:
    source = tmp_path / "src.txt"
    source.write_text("content")
    first = write_layer(_small_rootfs(source), tmp_path / "a", "test")
    os.utime(source, (time.time() + 100, time.time() + 100))
    second = write_layer(_small_rootfs(source), tmp_path / "b", "test")
    assert (first.digest, first.diff_id, first.size) == (second.digest, second.diff_id, second.size)
    with tarfile.open(first.path, "r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == ["app", "app/run", "data", "data/file", "etc", "etc/motd", "tmp", "usr", "usr/bin", "usr/bin/run"]
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
    assert {m.name: m.mode for m in members}["tmp"] == 0o1777


def test_archive_has_oci_and_docker_indexes(tmp_path: Path) -> None:
    source = tmp_path / "src.txt"
    source.write_text("content")
    layer = write_layer(_small_rootfs(source), tmp_path / "blobs", "test")
    out = tmp_path / "img.tar"
    config = ImageConfig(env=("A=1",), entrypoint=("/app/run",), stop_signal="SIGINT", exposed_ports=("80/tcp",))
    digest = write_archive(out, "docker.io/schedulerdemo/x:1.0", config, [layer])
    with tarfile.open(out) as tar:

        def load(name: str) -> object:
            handle = tar.extractfile(name)
            assert handle is not None
            return json.load(io.TextIOWrapper(handle))

        index = load("index.json")
        docker = load("manifest.json")
        assert load("oci-layout") == {"imageLayoutVersion": "1.0.0"}
        entry = index["manifests"][0]  # type: ignore[index]
        assert entry["digest"] == digest
        assert entry["annotations"] == {
            "io.containerd.image.name": "docker.io/schedulerdemo/x:1.0",
            "org.opencontainers.image.ref.name": "1.0",
        }
        manifest = load("blobs/sha256/" + digest[7:])
        cfg = load("blobs/sha256/" + manifest["config"]["digest"][7:])  # type: ignore[index]
    assert (
        docker
        == [
            {
                "Config": "blobs/sha256/" + manifest["config"]["digest"][7:],  # type: ignore[index]
                "RepoTags": ["schedulerdemo/x:1.0"],
                "Layers": ["blobs/sha256/" + layer.digest[7:]],
            }
        ]
    )
    assert cfg["rootfs"] == {"type": "layers", "diff_ids": [layer.diff_id]}  # type: ignore[index]
    assert cfg["config"]["StopSignal"] == "SIGINT"  # type: ignore[index]
    assert cfg["config"]["ExposedPorts"] == {"80/tcp": {}}  # type: ignore[index]


def test_freshness_follows_recipe_and_inputs(tmp_path: Path) -> None:
    source = tmp_path / "input"
    source.write_text("v1")
    out = tmp_path / "x.tar"
    out.write_bytes(b"archive")
    stamp = {"recipe": "r1", "size": out.stat().st_size, "inputs": host_stats([str(source)])}
    (tmp_path / "x.tar.inputs.json").write_text(json.dumps(stamp))
    assert is_fresh(out, "r1")
    assert not is_fresh(out, "r2")
    source.write_text("v2 is longer")
    assert not is_fresh(out, "r1")
    assert not is_fresh(tmp_path / "missing.tar", "r1")
    assert len(recipe_hash()) == 64


def test_missing_host_binary_is_a_build_error(tmp_path: Path) -> None:
    fs = Rootfs()
    with pytest.raises(BuildError, match="missing on this host"):
        fs.binaries_with_libs([str(tmp_path / "no-such-binary")])
    with pytest.raises(BuildError, match="bad rootfs path"):
        fs.file("/", "x")
