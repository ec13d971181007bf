"""A private containerd for the test session (pytest plugin), and a tiny busybox image without a registry.

``SCHEDULER_TEST_CONTAINERD=/path/to.sock`` uses an existing containerd instead of starting one.
When containerd cannot be started the tests fail under ``CI=true`` and skip otherwise. Each
session works in its own namespace, and the teardown deletes everything in it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scheduler import domain
from scheduler.errors import AlreadyExists, NotFound, SchedulerError
from scheduler.runtime.containerd._gen.containerd.services.content.v1 import content_pb2 as content_pb
from scheduler.runtime.containerd._gen.containerd.services.diff.v1 import diff_pb2 as diff_pb
from scheduler.runtime.containerd._gen.containerd.services.images.v1 import images_pb2 as images_pb
from scheduler.runtime.containerd._gen.containerd.services.leases.v1 import leases_pb2 as leases_pb
from scheduler.runtime.containerd._gen.containerd.services.snapshots.v1 import snapshots_pb2 as snapshots_pb
from scheduler.runtime.containerd._gen.containerd.types import descriptor_pb2 as descriptor_pb
from scheduler.runtime.containerd.client import ContainerdClient
from scheduler.runtime.containerd.errors import translated
from scheduler.runtime.containerd.managed import ManagedContainerd
from scheduler.runtime.containerd.runtime import ContainerdRuntime
from tests.support.leftovers import track

BUSYBOX_REF = "test.local/busybox:latest"
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Fail under CI (containerd is required there), skip elsewhere."""
    if in_ci():
        pytest.fail(f"containerd is required under CI=true: {reason}", pytrace=False)
    pytest.skip(f"containerd not available: {reason}")


# ---------------------------------------------------------------------------------------------
# A one-layer busybox image, built with the standard library
# ---------------------------------------------------------------------------------------------

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
GROUP = "root:x:0:\napp:x:1000:\nextra:x:2000:app\nnogroup:x:65534:\n"


def _applets() -> list[str]:
    out = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout
    return sorted({a.strip() for a in out.split() if a.strip() and a.strip() != "busybox"})


def busybox_layer() -> bytes:
    """A deterministic tar: /bin/busybox, an applet symlink per command, /etc/passwd and /etc/group."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))

        for name in ("bin", "etc", "home", "home/app", "proc", "root", "sys", "dev", "run", "var"):
            add_dir(name)
        add_dir("tmp", 0o1777)
        with open(BUSYBOX, "rb") as handle:
            add_file("bin/busybox", handle.read(), 0o755)
        for applet in _applets():
            if applet == "busybox":
                continue
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            info.mode = 0o777
            tar.addfile(info)
        add_file("etc/passwd", PASSWD.encode())
        add_file("etc/group", GROUP.encode())
    return buf.getvalue()


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self) -> descriptor_pb.Descriptor:
        return descriptor_pb.Descriptor(media_type=self.media_type, digest=self.digest, size=len(self.data))


def busybox_blobs(cmd: tuple[str, ...] = ("sh",)) -> tuple[Blob, Blob, Blob]:
    """Layer, config and manifest of the busybox image."""
    layer = Blob(LAYER_MEDIA_TYPE, busybox_layer())
    config = Blob(
        CONFIG_MEDIA_TYPE,
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {
                    "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
                    "Cmd": list(cmd),
                    "WorkingDir": "/",
                },
                "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
            },
            sort_keys=True,
        ).encode(),
    )
    manifest = Blob(
        MANIFEST_MEDIA_TYPE,
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_MEDIA_TYPE,
                "config": {"mediaType": config.media_type, "digest": config.digest, "size": len(config.data)},
                "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": len(layer.data)}],
            },
            sort_keys=True,
        ).encode(),
    )
    return layer, config, manifest


async def _write_blob(client: ContainerdClient, blob: Blob, lease: str, labels: dict[str, str]) -> None:
    ref = f"test-{blob.digest}"
    call = client.content.write(lease=lease, timeout=60)
    try:
        with translated(f"Content.Write {blob.digest}"):
            await call.write(content_pb.WriteContentRequest(action=content_pb.STAT, ref=ref, total=len(blob.data)))
            reply = await call.read()
            offset = reply.offset
            chunk = 1 << 20
            while offset < len(blob.data):
                data = blob.data[offset : offset + chunk]
                await call.write(
                    content_pb.WriteContentRequest(action=content_pb.WRITE, ref=ref, offset=offset, data=data)
                )
                offset = (await call.read()).offset
            await call.write(
                content_pb.WriteContentRequest(
                    action=content_pb.COMMIT,
                    ref=ref,
                    offset=len(blob.data),
                    total=len(blob.data),
                    expected=blob.digest,
                    labels=labels,
                )
            )
            await call.read()
            await call.done_writing()
    except AlreadyExists:
        pass  # committed before in this namespace: the blob is still added to the lease
    finally:
        call.cancel()


async def import_busybox(client: ContainerdClient, snapshotter: str = "overlayfs") -> domain.Image:
    """Write the busybox blobs, create the image record and unpack it: what an import does, minimally."""
    layer, config, manifest = busybox_blobs()
    chain_id = layer.digest
    async with client.lease() as lease:
        await _write_blob(client, layer, lease, {})
        await _write_blob(client, config, lease, {})
        await _write_blob(
            client,
            manifest,
            lease,
            {
                "containerd.io/gc.ref.content.config": config.digest,
                "containerd.io/gc.ref.content.l.0": layer.digest,
            },
        )
        try:
            await client.snapshots.stat(snapshots_pb.StatSnapshotRequest(snapshotter=snapshotter, key=chain_id))
        except NotFound:
            key = f"extract-{uuid.uuid4().hex} {chain_id}"
            prepared = await client.snapshots.prepare(
                snapshots_pb.PrepareSnapshotRequest(snapshotter=snapshotter, key=key), lease=lease
            )
            applied = await client.diff.apply(
                diff_pb.ApplyRequest(diff=layer.descriptor(), mounts=prepared.mounts),
                lease=lease,
                timeout=120,
            )
            assert applied.applied.digest == layer.digest
            await client.snapshots.commit(
                snapshots_pb.CommitSnapshotRequest(snapshotter=snapshotter, name=chain_id, key=key),
                lease=lease,
            )
        await client.content.update(
            content_pb.UpdateRequest(
                info=content_pb.Info(
                    digest=config.digest, labels={f"containerd.io/gc.ref.snapshot.{snapshotter}": chain_id}
                ),
                update_mask={"paths": [f"labels.containerd.io/gc.ref.snapshot.{snapshotter}"]},
            )
        )
        record = images_pb.Image(name=BUSYBOX_REF, target=manifest.descriptor())
        try:
            await client.images.create(images_pb.CreateImageRequest(image=record), lease=lease)
        except AlreadyExists:
            await client.images.update(images_pb.UpdateImageRequest(image=record))
    return domain.Image(
        name=BUSYBOX_REF,
        digest=manifest.digest,
        config=domain.ImageConfig(env=("PATH=/usr/sbin:/usr/bin:/sbin:/bin",), cmd=("sh",), working_dir="/"),
        chain_id=chain_id,
        size=len(layer.data),
    )


def write_busybox_archive(path: Path, ref: str = BUSYBOX_REF) -> Path:
    """The busybox image as an OCI layout tarball (index.json names it with containerd's annotation)."""
    layer, config, manifest = busybox_blobs()
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": manifest.media_type,
                "digest": manifest.digest,
                "size": len(manifest.data),
                "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index).encode(),
        **{f"blobs/sha256/{b.digest.removeprefix('sha256:')}": b.data for b in (layer, config, manifest)},
    }
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


async def purge_namespace(client: ContainerdClient, runtime: ContainerdRuntime) -> None:
    """Force-delete every container, image and lease of the client's namespace."""
    from scheduler.runtime.containerd._gen.containerd.services.containers.v1 import containers_pb2
    from scheduler.runtime.containerd._gen.containerd.services.tasks.v1 import tasks_pb2

    records = await client.containers.list(containers_pb2.ListContainersRequest())
    tasks = await client.tasks.list(tasks_pb2.ListTasksRequest())
    for cid in sorted({r.id for r in records.containers} | {t.id for t in tasks.tasks}):
        await runtime.delete(cid)
    images = await client.images.list(images_pb.ListImagesRequest())
    for image in images.images:
        try:
            await client.images.delete(images_pb.DeleteImageRequest(name=image.name))
        except NotFound:
            pass
    leases = await client.leases.list(leases_pb.ListRequest())
    for lease in leases.leases:
        try:
            await client.leases.delete(leases_pb.DeleteRequest(id=lease.id, sync=True))
        except NotFound:
            pass


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


async def sweep_daemon(socket: str, state_dir: Path) -> None:
    """Delete everything in every namespace of a containerd the session started (others' leaks too)."""
    from scheduler.runtime.containerd._gen.containerd.services.namespaces.v1 import namespace_pb2

    probe = await ContainerdClient.connect(socket, "default")
    try:
        names = [n.name for n in (await probe.namespaces.list(namespace_pb2.ListNamespacesRequest())).namespaces]
    finally:
        await probe.close()
    for name in names:
        runtime = await ContainerdRuntime.connect(socket, namespace=name, state_dir=state_dir)
        try:
            await purge_namespace(runtime.client, runtime)
        finally:
            await runtime.close()


@pytest.fixture(scope="session")
async def containerd_socket() -> AsyncIterator[str]:
    """Socket of the session's containerd: a private one, or ``SCHEDULER_TEST_CONTAINERD``.

    The private daemon lives outside pytest's temp dirs: those are rotated by later sessions, and
    a leftover rootfs mount in them would make that rotation fail.
    """
    existing = os.environ.get("SCHEDULER_TEST_CONTAINERD", "")
    if existing:
        yield existing
        return
    if shutil.which("containerd") is None:
        unavailable("no containerd binary on PATH")
    if os.geteuid() != 0:
        unavailable("containerd needs root")
    base = Path(tempfile.mkdtemp(prefix="sched-test-ctd-"))
    track(base)
    managed = ManagedContainerd(base / "containerd")
    try:
        socket = await managed.start()
    except SchedulerError as err:
        shutil.rmtree(base, ignore_errors=True)
        unavailable(err.message)
        return
    try:
        yield str(socket)
    finally:
        try:
            await sweep_daemon(str(socket), base / "sweep")
        finally:
            await managed.stop()
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def containerd_namespace() -> str:
    """A namespace unique to this session."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
async def containerd_runtime(
    containerd_socket: str, containerd_namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ContainerdRuntime]:
    """A connected ContainerdRuntime in the session namespace; everything in it is deleted at the end."""
    async with namespace_runtime(containerd_socket, containerd_namespace, tmp_path_factory.mktemp("rt")) as runtime:
        yield runtime


@contextlib.asynccontextmanager
async def namespace_runtime(socket: str, namespace: str, state_dir: Path) -> AsyncIterator[ContainerdRuntime]:
    """A ContainerdRuntime in ``namespace``; everything in that namespace is deleted on the way out."""
    try:
        runtime = await ContainerdRuntime.connect(socket, namespace=namespace, state_dir=state_dir)
    except SchedulerError as err:
        unavailable(err.message)
        raise
    try:
        yield runtime
    finally:
        try:
            await purge_namespace(runtime.client, runtime)
        finally:
            await runtime.close()


@pytest.fixture(scope="session")
async def busybox_image(
    containerd_runtime: ContainerdRuntime, tmp_path_factory: pytest.TempPathFactory
) -> domain.Image:
    """A busybox image imported into the session namespace from an OCI tarball, without any registry."""
    archive = write_busybox_archive(tmp_path_factory.mktemp("busybox") / "busybox.tar")
    images = await containerd_runtime.import_archive(archive)
    assert [i.name for i in images] == [BUSYBOX_REF]
    return images[0]


@pytest.fixture
def container_id() -> Iterator[str]:
    """A fresh container id."""
    yield f"t-{uuid.uuid4().hex[:12]}"
