"""Archive import and unpack into a real containerd, and what deleting an image leaves behind."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from scheduler.errors import InvalidArgument, NotFound
from scheduler.runtime.containerd._gen.containerd.services.content.v1 import content_pb2 as content_pb
from scheduler.runtime.containerd._gen.containerd.services.snapshots.v1 import snapshots_pb2 as snapshots_pb
from scheduler.runtime.containerd.client import ContainerdClient
from scheduler.runtime.containerd.images import chain_ids
from tests.integration.images.helpers import leftovers
from tests.support.images import BACKEND, FRONTEND, POSTGRES, TOOLBOX

pytestmark = pytest.mark.integration


def _archive_config(archive: Path) -> dict[str, object]:
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest_digest = index["manifests"][0]["digest"].split(":")[1]
        manifest = json.load(tar.extractfile(f"blobs/sha256/{manifest_digest}"))  # type: ignore[arg-type]
        config_digest = manifest["config"]["digest"].split(":")[1]
        return json.load(tar.extractfile(f"blobs/sha256/{config_digest}"))  # type: ignore[arg-type,no-any-return]


@pytest.mark.parametrize("name", [POSTGRES, BACKEND, FRONTEND, TOOLBOX])
async def test_import_each_archive_unpacks_it(
    name: str, image_archives: dict[str, Path], make_service, image_client: ContainerdClient
) -> None:
    service = make_service()
    images = await service.import_archive(image_archives[name])
    assert [i.name for i in images] == [name]
    image = images[0]
    config = _archive_config(image_archives[name])
    diff_ids = config["rootfs"]["diff_ids"]  # type: ignore[index]
    assert image.chain_id == chain_ids(diff_ids)[-1]
    assert image.config.entrypoint == tuple(config["config"]["Entrypoint"])  # type: ignore[index]
    # Every layer is a committed snapshot, chained to its parent.
    parent = ""
    for chain_id in chain_ids(diff_ids):
        info = await image_client.snapshots.stat(
            snapshots_pb.StatSnapshotRequest(snapshotter="overlayfs", key=chain_id)
        )
        assert info.info.kind == snapshots_pb.COMMITTED
        assert info.info.parent == parent
        parent = chain_id
    assert await service.get(name.removeprefix("docker.io/library/")) == image
    assert await leftovers(image_client) == (0, 0)


async def test_postgres_image_follows_the_official_interface(image_archives: dict[str, Path], make_service) -> None:
    (image,) = await make_service().import_archive(image_archives[POSTGRES])
    assert image.name == "docker.io/library/postgres:15"
    assert image.config.stop_signal == "SIGINT"
    assert "PGDATA=/var/lib/postgresql/data" in image.config.env
    assert image.config.exposed_ports == ("5432/tcp",)
    assert image.config.cmd == ("postgres",)


async def test_docker_save_layout_imports_under_its_repo_tag(
    image_archives: dict[str, Path], make_service, tmp_path: Path
) -> None:
    # The same blobs, but only Docker's manifest.json: the docker-archive code path.
    docker_only = tmp_path / "toolbox-docker.tar"
    with tarfile.open(image_archives[TOOLBOX]) as src, tarfile.open(docker_only, "w") as dst:
        for member in src.getmembers():
            if member.name not in ("index.json", "oci-layout"):
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    service = make_service()
    (image,) = await service.import_archive(docker_only)
    (reference,) = await make_service().import_archive(image_archives[TOOLBOX])
    assert image.name == "docker.io/schedulerdemo/toolbox:1.0"
    assert image.chain_id == reference.chain_id
    assert image.config == reference.config


async def test_reimport_reuses_content_and_snapshots(image_archives: dict[str, Path], make_service) -> None:
    service = make_service()
    (first,) = await service.import_archive(image_archives[TOOLBOX])
    (second,) = await service.import_archive(image_archives[TOOLBOX])
    assert first == second
    assert [i.name for i in await service.list()] == [TOOLBOX]


async def test_delete_collects_content_and_snapshots(
    image_archives: dict[str, Path], make_service, image_client: ContainerdClient
) -> None:
    service = make_service()
    (image,) = await service.import_archive(image_archives[TOOLBOX])
    await image_client.content.info(content_pb.InfoRequest(digest=image.digest))
    await service.delete(TOOLBOX)
    with pytest.raises(NotFound):
        await image_client.content.info(content_pb.InfoRequest(digest=image.digest))
    with pytest.raises(NotFound):
        await image_client.snapshots.stat(snapshots_pb.StatSnapshotRequest(snapshotter="overlayfs", key=image.chain_id))
    with pytest.raises(NotFound, match="toolbox"):
        await service.get(TOOLBOX)
    with pytest.raises(NotFound, match="toolbox"):
        await service.delete(TOOLBOX)
    assert await service.list() == []


async def test_bad_archives_are_refused_by_name(make_service, tmp_path: Path, image_client) -> None:
    service = make_service()
    with pytest.raises(InvalidArgument, match="does not exist"):
        await service.import_archive(tmp_path / "missing.tar")
    not_tar = tmp_path / "not.tar"
    not_tar.write_bytes(b"hello" * 200)
    with pytest.raises(InvalidArgument, match="not a tar"):
        await service.import_archive(not_tar)
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(InvalidArgument, match="neither an OCI layout"):
        await service.import_archive(empty)
    assert await leftovers(image_client) == (0, 0)
    assert await service.list() == []


async def test_archive_missing_a_blob_leaves_nothing_behind(
    image_archives: dict[str, Path], make_service, image_client: ContainerdClient, tmp_path: Path
) -> None:
    config = _archive_config(image_archives[TOOLBOX])
    assert config["rootfs"]
    broken = tmp_path / "broken.tar"
    with tarfile.open(image_archives[TOOLBOX]) as src, tarfile.open(broken, "w") as dst:
        index = json.load(src.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = json.load(src.extractfile("blobs/sha256/" + index["manifests"][0]["digest"][7:]))  # type: ignore[arg-type]
        dropped = "blobs/sha256/" + manifest["layers"][1]["digest"][7:]
        for member in src.getmembers():
            if member.name != dropped:
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    service = make_service()
    with pytest.raises(Exception, match=manifest["layers"][1]["digest"]):
        await service.import_archive(broken)
    assert await leftovers(image_client) == (0, 0)
    assert await service.list() == []
    shutil.rmtree(tmp_path, ignore_errors=True)


async def test_gc_keeps_what_a_remaining_image_references(
    image_archives: dict[str, Path], make_service, image_client: ContainerdClient
) -> None:
    service = make_service()
    (toolbox,) = await service.import_archive(image_archives[TOOLBOX])
    (backend,) = await service.import_archive(image_archives[BACKEND])
    toolbox_chain = chain_ids(_archive_config(image_archives[TOOLBOX])["rootfs"]["diff_ids"])  # type: ignore[index]
    backend_chain = chain_ids(_archive_config(image_archives[BACKEND])["rootfs"]["diff_ids"])  # type: ignore[index]
    assert toolbox_chain[0] == backend_chain[0]  # the shared busybox base layer
    # Deleting with sync runs the collector now: only what toolbox references may survive.
    await service.delete(BACKEND)

    async def snapshot_exists(key: str) -> bool:
        try:
            await image_client.snapshots.stat(snapshots_pb.StatSnapshotRequest(snapshotter="overlayfs", key=key))
        except NotFound:
            return False
        return True

    assert [await snapshot_exists(k) for k in toolbox_chain] == [True, True]
    assert await snapshot_exists(backend_chain[-1]) is False
    await image_client.content.info(content_pb.InfoRequest(digest=toolbox.digest))
    with pytest.raises(NotFound):
        await image_client.content.info(content_pb.InfoRequest(digest=backend.digest))
    assert await service.get(TOOLBOX) == toolbox
