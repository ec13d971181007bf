"""Container records: snapshot + spec + labels in containerd (the ``containerstore.go`` analogue).

A container is created under a lease so that its fresh snapshot cannot be collected between
``Snapshots.Prepare`` and ``Containers.Create``; once the record exists it protects the snapshot.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scheduler import domain
from scheduler.errors import AlreadyExists, InvalidArgument, NotFound
from scheduler.runtime.containerd import labels as L
from scheduler.runtime.containerd import spec as oci
from scheduler.runtime.containerd._gen.containerd.runc.v1 import options_pb2 as runc_pb
from scheduler.runtime.containerd._gen.containerd.services.containers.v1 import (
    containers_pb2 as containers_pb,
)
from scheduler.runtime.containerd._gen.containerd.services.snapshots.v1 import snapshots_pb2 as snapshots_pb
from scheduler.runtime.containerd._gen.containerd.types import mount_pb2 as mount_pb
from scheduler.runtime.containerd.client import ContainerdClient, check_name
from scheduler.runtime.containerd.convert import json_any, pack

_MAX_DB_BYTES = 4 * 1024 * 1024
FRESH_KEPT = 256
"""Containers created here whose record and mounts are kept for their task's creation (the latest)."""


@dataclass(frozen=True)
class Fresh:
    """What creating a container's task needs of its record, known when this store created it."""

    labels: dict[str, str]
    mounts: list[mount_pb.Mount]
    """Its rootfs snapshot's mounts, as ``Snapshots.Prepare`` returned them (``Snapshots.Mounts`` would too)."""


# ---------------------------------------------------------------------------------------------
# Reading files of an image's rootfs straight from the snapshot's layer directories
# ---------------------------------------------------------------------------------------------


def layer_dirs(mounts: Sequence[mount_pb.Mount]) -> list[str]:
    """Directories of a snapshot's layers, topmost first (bind: one dir; overlay: upper, then lowers)."""
    for m in mounts:
        if m.type == "bind":
            return [m.source]
        if m.type == "overlay":
            upper: list[str] = []
            lower: list[str] = []
            for option in m.options:
                key, _, value = option.partition("=")
                if key == "upperdir":
                    upper = [value]
                elif key == "lowerdir":
                    lower = value.split(":")
            return upper + lower
    return []


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque") == b"y"
    except OSError:
        return False


def read_rootfs_file(mounts: Sequence[mount_pb.Mount], path: str) -> str | None:
    """The text of ``path`` in the rootfs the mounts describe, without mounting it; None if absent.

    Follows overlay semantics: the topmost layer holding the file wins; a whiteout (char device 0/0)
    or an opaque parent directory hides what is below.
    """
    rel = path.lstrip("/")
    parent = os.path.dirname(rel)
    for directory in layer_dirs(mounts):
        candidate = os.path.join(directory, rel)
        try:
            info = os.lstat(candidate)
        except OSError:
            if parent and _opaque(os.path.join(directory, parent)):
                return None
            continue
        if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
            return None
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_DB_BYTES:
            return None
        with open(candidate, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    return None


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------


class ContainerStore:
    """Create, read, list and delete container records (and their rootfs snapshots)."""

    def __init__(
        self,
        client: ContainerdClient,
        *,
        snapshotter: str = "overlayfs",
        runtime_name: str = "io.containerd.runc.v2",
        runc_root: str = "",
    ) -> None:
        self._client = client
        self.snapshotter = snapshotter
        self.runtime_name = runtime_name
        self.runc_root = runc_root
        self._fresh: OrderedDict[str, Fresh] = OrderedDict()

    def take_fresh(self, container_id: str) -> Fresh | None:
        """The labels and mounts of a container created here and not given a task yet, once; else None.

        Spares the task's creation two lookups (record, mounts) on a deploy's critical path.
        """
        return self._fresh.pop(container_id, None)

    def runtime(self) -> containers_pb.Container.Runtime:
        """The runtime block of our containers: runc with a private state root when one is set."""
        runtime = containers_pb.Container.Runtime(name=self.runtime_name)
        if self.runc_root:
            runtime.options.CopyFrom(pack(runc_pb.Options(root=self.runc_root)))
        return runtime

    async def create(self, config: domain.ContainerConfig) -> None:
        """Prepare the rootfs snapshot from the image's top layer and create the container record.

        Raises:
            InvalidArgument: a bad id, image, user, mount, resource or log_dir (the field is named).
            AlreadyExists: a container with this id exists.
            NotFound: the image's snapshot is missing (the image is not unpacked).
        """
        check_name(config.id, "container.id")
        if not config.image.chain_id:
            raise InvalidArgument("image has no unpacked rootfs (empty chain_id)", field="image.chain_id")
        if config.log_dir and not config.log_dir.startswith("/"):
            raise InvalidArgument(f"log_dir {config.log_dir!r} must be an absolute path", field="log_dir")
        if config.log_max_bytes <= 0:
            raise InvalidArgument(f"log_max_bytes must be positive, got {config.log_max_bytes}", field="log_max_bytes")
        if config.log_max_files <= 0:
            raise InvalidArgument(f"log_max_files must be positive, got {config.log_max_files}", field="log_max_files")
        if await self._client.container_exists(config.id):
            raise AlreadyExists(f"container {config.id} already exists", container_id=config.id)
        async with self._client.lease() as lease:
            mounts = await self._prepare(config, lease)
            try:
                passwd, group = await asyncio.to_thread(_read_user_db, mounts)
                user = oci.resolve_user(config.user or config.image.config.user, passwd, group)
                spec = oci.build_spec(self._client.namespace, config, user)
                labels = {**config.labels, L.OWNER: L.OWNER_VALUE}
                if config.image.config.stop_signal:
                    labels[L.STOP_SIGNAL] = config.image.config.stop_signal
                if config.log_dir:
                    labels[L.LOG_DIR] = config.log_dir
                    labels[L.LOG_MAX_BYTES] = str(config.log_max_bytes)
                    labels[L.LOG_MAX_FILES] = str(config.log_max_files)
                record = containers_pb.Container(
                    id=config.id,
                    labels=labels,
                    image=config.image.name,
                    runtime=self.runtime(),
                    spec=json_any(oci.SPEC_TYPE_URL, json.dumps(spec).encode()),
                    snapshotter=self.snapshotter,
                    snapshot_key=config.id,
                )
                await self._client.containers.create(
                    containers_pb.CreateContainerRequest(container=record), lease=lease, what=config.id
                )
            except BaseException:
                await self.remove_snapshot(config.id)
                raise
        self._fresh[config.id] = Fresh(labels, mounts)
        while len(self._fresh) > FRESH_KEPT:
            self._fresh.popitem(last=False)

    async def _prepare(self, config: domain.ContainerConfig, lease: str) -> list[mount_pb.Mount]:
        request = snapshots_pb.PrepareSnapshotRequest(
            snapshotter=self.snapshotter, key=config.id, parent=config.image.chain_id
        )
        try:
            reply = await self._client.snapshots.prepare(request, lease=lease, what=config.id)
        except AlreadyExists:
            # No record holds it (checked above): a leftover from a crash between Prepare and Create.
            await self.remove_snapshot(config.id)
            reply = await self._client.snapshots.prepare(request, lease=lease, what=config.id)
        except NotFound as err:
            raise NotFound(
                f"image {config.image.name} has no unpacked snapshot {config.image.chain_id}: pull or import it first",
                image=config.image.name,
            ) from err
        return list(reply.mounts)

    async def get(self, container_id: str) -> containers_pb.Container:
        """The record of ``container_id``.

        Raises:
            NotFound: naming the container.
        """
        try:
            reply = await self._client.containers.get(
                containers_pb.GetContainerRequest(id=container_id), what=container_id
            )
        except NotFound as err:
            raise NotFound(f"container {container_id} not found", container_id=container_id) from err
        return reply.container

    async def find(self, selector: Mapping[str, str]) -> list[containers_pb.Container]:
        """Records carrying every label of ``selector`` (all of the namespace when empty)."""
        request = containers_pb.ListContainersRequest(filters=L.filters(selector))
        reply = await self._client.containers.list(request)
        return list(reply.containers)

    async def spec(self, container_id: str) -> oci.Spec:
        """The OCI spec stored with a container."""
        record = await self.get(container_id)
        loaded: oci.Spec = json.loads(record.spec.value or b"{}")
        return loaded

    async def delete(self, container_id: str) -> None:
        """Delete the record; a missing one is success. Leaves its task alone: see ``TaskManager.delete``."""
        self._fresh.pop(container_id, None)
        try:
            await self._client.containers.delete(
                containers_pb.DeleteContainerRequest(id=container_id), what=container_id
            )
        except NotFound:
            pass

    async def create_stub(self, container_id: str) -> None:
        """Re-create a bare record so that an orphaned task (its record deleted first) can be deleted."""
        record = containers_pb.Container(
            id=container_id,
            labels={L.OWNER: L.OWNER_VALUE},
            runtime=self.runtime(),
            spec=json_any(oci.SPEC_TYPE_URL, b"{}"),
        )
        try:
            await self._client.containers.create(
                containers_pb.CreateContainerRequest(container=record), what=container_id
            )
        except AlreadyExists:
            pass

    async def remove_snapshot(self, key: str) -> None:
        """Remove a container's rootfs snapshot; a missing one is success."""
        try:
            await self._client.snapshots.remove(
                snapshots_pb.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=key), what=key
            )
        except NotFound:
            pass

    async def mounts(self, record: containers_pb.Container) -> list[mount_pb.Mount]:
        """The rootfs mounts of a container's snapshot, for ``Tasks.Create``."""
        snapshotter = record.snapshotter or self.snapshotter
        key = record.snapshot_key or record.id
        try:
            reply = await self._client.snapshots.mounts(
                snapshots_pb.MountsRequest(snapshotter=snapshotter, key=key), what=key
            )
        except NotFound as err:
            raise NotFound(
                f"rootfs snapshot {key} of container {record.id} is missing", container_id=record.id
            ) from err
        return list(reply.mounts)


def _read_user_db(mounts: Sequence[mount_pb.Mount]) -> tuple[str | None, str | None]:
    return read_rootfs_file(mounts, "/etc/passwd"), read_rootfs_file(mounts, "/etc/group")
