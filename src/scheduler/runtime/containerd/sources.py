"""Where the blobs of an ingest come from: a registry, or an OCI layout / docker save tarball."""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import json
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from scheduler import openssl
from scheduler.errors import (
    FailedPrecondition,
    InvalidArgument,
)
from scheduler.reference import Reference, normalize, parse
from scheduler.runtime.containerd.descriptors import DOCKER_MANIFEST, Descriptor, verify_digest
from scheduler.runtime.containerd.manifests import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    LABEL_DISTRIBUTION_SOURCE,
    json_object,
)

if TYPE_CHECKING:
    import tarfile  # the daemon's start does without it; images.py imports it to open an archive

    from scheduler.runtime.containerd.registry import Endpoint, RegistryClient

_CHUNK = 1 << 20


class BlobSource(Protocol):
    """The origin of the blobs of one ingest."""

    labels: Mapping[str, str]
    """Labels put on every blob written from this source."""

    async def document(self, desc: Descriptor) -> bytes:
        """A manifest or index, verified against ``desc``."""
        ...

    def stream(self, desc: Descriptor) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """The bytes of a blob (verified by the writer)."""
        ...


class RegistrySource:
    """Blobs of one image in a registry, labelled with where they came from."""

    def __init__(self, registry: RegistryClient, endpoint: Endpoint, ref: Reference) -> None:
        self._registry, self._endpoint, self._ref = registry, endpoint, ref
        hostname = ref.domain.rsplit(":", 1)[0] if not ref.domain.endswith("]") else ref.domain
        self.labels: Mapping[str, str] = {f"{LABEL_DISTRIBUTION_SOURCE}.{hostname}": ref.path}

    async def document(self, desc: Descriptor) -> bytes:
        return await self._registry.fetch_manifest(self._endpoint, self._ref, desc)

    def stream(self, desc: Descriptor) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._registry.blob(self._endpoint, self._ref, desc)


class ArchiveSource:
    """Blobs of a tarball: members by path, plus documents synthesised in memory."""

    def __init__(
        self,
        tar: tarfile.TarFile,
        members: Mapping[str, tarfile.TarInfo],
        paths: Mapping[str, str],
        inline: Mapping[str, bytes],
        where: str,
    ) -> None:
        self._tar, self._members, self._paths, self._inline, self._where = tar, members, paths, inline, where
        self._lock = threading.Lock()
        self.labels: Mapping[str, str] = {}

    def _member(self, digest: str) -> tarfile.TarInfo:
        path = self._paths.get(digest) or "blobs/" + digest.replace(":", "/", 1)
        member = self._members.get(path)
        if member is None or not member.isfile():
            raise FailedPrecondition(f"{self._where} lacks blob {digest} (looked for {path})")
        return member

    def _read(self, member: tarfile.TarInfo, offset: int, size: int) -> bytes:
        with self._lock:
            handle = self._tar.extractfile(member)
            assert handle is not None
            handle.seek(offset)
            return handle.read(size)

    async def document(self, desc: Descriptor) -> bytes:
        if desc.digest in self._inline:
            data = self._inline[desc.digest]
        else:
            member = self._member(desc.digest)
            data = await asyncio.to_thread(self._read, member, 0, member.size)
        verify_digest(data, desc.digest, f"document in {self._where}")
        return data

    @asynccontextmanager
    async def stream(self, desc: Descriptor) -> AsyncIterator[AsyncIterator[bytes]]:
        if desc.digest in self._inline:
            data = self._inline[desc.digest]

            async def one() -> AsyncIterator[bytes]:
                yield data

            yield one()
            return
        member = self._member(desc.digest)

        async def chunks() -> AsyncIterator[bytes]:
            offset = 0
            while offset < member.size:
                data = await asyncio.to_thread(self._read, member, offset, min(_CHUNK * 4, member.size - offset))
                if not data:
                    break
                offset += len(data)
                yield data

        yield chunks()


def archive_image_name(annotations: Mapping[str, str], name: str, archive: Path) -> str:
    """The image name of an OCI index entry: containerd's annotation, a full ref.name, or ``name``."""
    if annotations.get(ANNOTATION_IMAGE_NAME):
        return normalize(annotations[ANNOTATION_IMAGE_NAME], f"{archive}: {ANNOTATION_IMAGE_NAME}")
    ref_name = annotations.get(ANNOTATION_REF_NAME, "")
    if ref_name and ("/" in ref_name or ":" in ref_name or "@" in ref_name):
        return normalize(ref_name, f"{archive}: {ANNOTATION_REF_NAME}")
    if name:
        base = parse(name, "name")
        if ref_name and not base.digest and name.rfind(":") <= name.rfind("/"):
            return str(Reference(base.domain, base.path, tag=ref_name))
        return str(base)
    raise InvalidArgument(f"image archive {archive} does not name its image: pass a name", field="name")


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:
        raise InvalidArgument(f"{member.name} in the image archive is not a file", field="archive")
    return handle.read()


def get_member(members: Mapping[str, tarfile.TarInfo], path: object, archive: Path) -> tarfile.TarInfo:
    member = members.get(str(path).removeprefix("./"))
    if member is None or not member.isfile():
        raise InvalidArgument(f"image archive {archive} lacks {path}", field="archive")
    return member


def hash_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> tuple[str, bool]:
    handle: IO[bytes] | None = tar.extractfile(member)
    if handle is None:
        raise InvalidArgument(f"{member.name} in the image archive is not a file", field="archive")
    sha = openssl.hasher("sha256")
    first = handle.read(_CHUNK)
    gzipped = first[:2] == b"\x1f\x8b"
    while first:
        sha.update(first)
        first = handle.read(_CHUNK)
    return "sha256:" + sha.hexdigest(), gzipped


async def plan_oci(
    tar: tarfile.TarFile, members: Mapping[str, tarfile.TarInfo], archive: Path, name: str
) -> tuple[BlobSource, builtins.list[tuple[Descriptor, builtins.list[str]]]]:
    """The images of an OCI layout tarball: each index entry with its name."""
    index = json_object(await asyncio.to_thread(read_member, tar, members["index.json"]), f"{archive}: index.json")
    entries = index.get("manifests")
    if not isinstance(entries, list) or not entries:
        raise InvalidArgument(f"image archive {archive}: index.json lists no images", field="archive")
    plan: builtins.list[tuple[Descriptor, builtins.list[str]]] = []
    for raw in entries:
        desc = Descriptor.from_json(raw, f"{archive}: index.json")
        plan.append((desc, [archive_image_name(desc.annotations, name, archive)]))
    return ArchiveSource(tar, members, {}, {}, str(archive)), plan


async def plan_docker(
    tar: tarfile.TarFile, members: Mapping[str, tarfile.TarInfo], archive: Path, name: str
) -> tuple[BlobSource, builtins.list[tuple[Descriptor, builtins.list[str]]]]:
    """The images of a ``docker save`` tarball: manifests synthesised from manifest.json, with their tags."""
    raw = await asyncio.to_thread(read_member, tar, members["manifest.json"])
    try:
        entries = json.loads(raw)
    except ValueError as err:
        raise InvalidArgument(f"image archive {archive}: manifest.json is not JSON", field="archive") from err
    if not isinstance(entries, list) or not entries:
        raise InvalidArgument(f"image archive {archive}: manifest.json lists no images", field="archive")
    paths: dict[str, str] = {}
    inline: dict[str, bytes] = {}
    plan: builtins.list[tuple[Descriptor, builtins.list[str]]] = []
    for entry in entries:
        try:
            config_path, layer_paths = entry["Config"], entry["Layers"]
        except (KeyError, TypeError) as err:
            raise InvalidArgument(
                f"image archive {archive}: manifest.json entry lacks Config or Layers", field="archive"
            ) from err
        config_bytes = await asyncio.to_thread(read_member, tar, get_member(members, config_path, archive))
        config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
        inline[config_digest] = config_bytes
        layers = []
        for layer_path in layer_paths:
            member = get_member(members, layer_path, archive)
            digest, gzipped = await asyncio.to_thread(hash_member, tar, member)
            paths[digest] = member.name.removeprefix("./")
            layers.append(
                {
                    "mediaType": DOCKER_LAYER_GZIP if gzipped else DOCKER_LAYER,
                    "digest": digest,
                    "size": member.size,
                }
            )
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "config": {
                    "mediaType": DOCKER_CONFIG,
                    "digest": config_digest,
                    "size": len(config_bytes),
                },
                "layers": layers,
            },
            separators=(",", ":"),
        ).encode()
        manifest_desc = Descriptor(DOCKER_MANIFEST, "sha256:" + hashlib.sha256(manifest).hexdigest(), len(manifest))
        inline[manifest_desc.digest] = manifest
        tags = [normalize(tag, "archive RepoTags") for tag in entry.get("RepoTags") or []]
        if not tags:
            if not name:
                raise InvalidArgument(
                    f"image archive {archive} has an image without RepoTags: pass a name", field="name"
                )
            tags = [normalize(name, "name")]
        plan.append((manifest_desc, tags))
    return ArchiveSource(tar, members, paths, inline, str(archive)), plan
