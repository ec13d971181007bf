"""Images in containerd: pull from registries, import archives, unpack into the snapshotter.

containerd 1.6 has no server-side pull, so the client does it (as ``ctr`` does): fetch the blobs,
write them with ``Content.Write`` under a lease with the GC labels that chain index -> manifest ->
config/layers, unpack the layers (``Snapshots.Prepare`` + ``Diff.Apply`` + ``Commit``, keyed by chain
ID), label the config with its top snapshot, and only then create the image record. A failure at any
step leaves nothing behind: ingests are aborted and the lease, deleted on the way out, was the only
thing keeping the partial content alive.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import json
import os
import platform as host
import secrets
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import grpc
import httpx

from scheduler import domain
from scheduler.config import ImageSettings
from scheduler.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SchedulerError,
)
from scheduler.reference import Reference, check_digest, normalize, parse
from scheduler.retry import linear, retry
from scheduler.runtime.containerd._gen.containerd.services.content.v1 import content_pb2 as content_pb
from scheduler.runtime.containerd._gen.containerd.services.diff.v1 import diff_pb2 as diff_pb
from scheduler.runtime.containerd._gen.containerd.services.images.v1 import images_pb2 as images_pb
from scheduler.runtime.containerd._gen.containerd.services.leases.v1 import leases_pb2 as leases_pb
from scheduler.runtime.containerd._gen.containerd.services.snapshots.v1 import snapshots_pb2 as snapshots_pb
from scheduler.runtime.containerd._gen.containerd.types import descriptor_pb2 as descriptor_pb
from scheduler.runtime.containerd.client import ContainerdClient
from scheduler.runtime.containerd.errors import from_grpc, status_code, status_details
from scheduler.runtime.containerd.registry import (
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    Descriptor,
    Endpoint,
    RegistryClient,
    check_registry_host,
    verify_digest,
)

ProgressCallback = Callable[[domain.PullProgress], None]

# --- labels containerd's garbage collector follows (metadata/gc.go) ---------------------------

GC_REF_CONTENT = "containerd.io/gc.ref.content"
"""Prefix of a parent's labels naming its children: ``.config``, ``.l.<i>`` (layers), ``.m.<i>``."""
GC_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot"
"""``.<snapshotter>`` on the config blob names the image's top snapshot (chain ID)."""
LABEL_UNCOMPRESSED = "containerd.io/uncompressed"
"""On a layer blob: the diff ID of its uncompressed tar (informational)."""
LABEL_DISTRIBUTION_SOURCE = "containerd.io/distribution.source"
"""``.<registry hostname>=<repository>``: where a blob was pulled from."""
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
LAYER_TYPES = frozenset(
    {
        DOCKER_LAYER,
        DOCKER_LAYER_GZIP,
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
    }
)

_CHUNK = 1 << 20
_LOCK_RETRIES = 20


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def chain_ids(diff_ids: list[str]) -> list[str]:
    """Snapshot names of the layers: ``chain[0] = diff[0]``, then ``sha256(chain[i-1] + " " + diff[i])``."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if not chain:
            chain.append(diff_id)
        else:
            chain.append("sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
    return chain


def host_platform() -> tuple[str, str, str]:
    """(os, architecture, variant) of this machine in OCI terms."""
    machine = host.machine().lower()
    arch, variant = {
        "x86_64": ("amd64", ""),
        "amd64": ("amd64", ""),
        "aarch64": ("arm64", ""),
        "arm64": ("arm64", ""),
        "armv7l": ("arm", "v7"),
        "armv6l": ("arm", "v6"),
        "i686": ("386", ""),
        "i386": ("386", ""),
        "ppc64le": ("ppc64le", ""),
        "s390x": ("s390x", ""),
        "riscv64": ("riscv64", ""),
    }.get(machine, (machine, ""))
    return "linux", arch, variant


def choose_manifest(index: Mapping[str, Any], where: str, platform: tuple[str, str, str]) -> tuple[int, Descriptor]:
    """The position and descriptor of the index entry for ``platform`` (os, arch, variant).

    Raises:
        NotFound: no entry matches; the message lists the platforms offered.
    """
    entries = index.get("manifests")
    if not isinstance(entries, list) or not entries:
        raise FailedPrecondition(f"{where}: the index lists no manifests")
    want_os, want_arch, want_variant = platform
    offered: list[str] = []
    fallback: tuple[int, Descriptor] | None = None
    for position, raw in enumerate(entries):
        desc = Descriptor.from_json(raw, where)
        plat = desc.platform
        if plat is None:
            fallback = fallback or (position, desc)
            continue
        os_, arch, variant = plat.get("os", ""), plat.get("architecture", ""), plat.get("variant", "")
        offered.append("/".join(p for p in (os_, arch, variant) if p))
        if os_ == want_os and arch == want_arch and (not want_variant or not variant or variant == want_variant):
            return position, desc
    if fallback is not None:
        return fallback
    want = "/".join(p for p in platform if p)
    raise NotFound(f"{where} has no manifest for {want} (it offers {', '.join(offered) or 'none'})")


def image_config_from_json(doc: Mapping[str, Any]) -> domain.ImageConfig:
    """The runtime-relevant part of an OCI image config."""
    body = doc.get("config") or {}

    def strings(key: str) -> tuple[str, ...]:
        value = body.get(key) or []
        return tuple(str(v) for v in value) if isinstance(value, list) else ()

    ports = body.get("ExposedPorts") or {}
    labels = body.get("Labels") or {}
    return domain.ImageConfig(
        env=strings("Env"),
        entrypoint=strings("Entrypoint"),
        cmd=strings("Cmd"),
        user=str(body.get("User") or ""),
        working_dir=str(body.get("WorkingDir") or ""),
        stop_signal=str(body.get("StopSignal") or ""),
        exposed_ports=tuple(sorted(str(p) for p in ports)) if isinstance(ports, dict) else (),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
    )


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as err:
        raise FailedPrecondition(f"{what} is not valid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise FailedPrecondition(f"{what} is not a JSON object")
    return doc


@dataclass(frozen=True)
class _Parsed:
    """A manifest's config and layers, with the diff IDs its config lists."""

    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]


def parse_manifest(data: bytes, desc: Descriptor, where: str) -> _Parsed:
    """Read config and layer descriptors from an image manifest.

    Raises:
        FailedPrecondition: the manifest is malformed or uses an unsupported layer type.
    """
    doc = _json(data, f"manifest {desc.digest} of {where}")
    if "config" not in doc or not isinstance(doc.get("layers"), list):
        raise FailedPrecondition(f"manifest {desc.digest} of {where} has no config or layers")
    config = Descriptor.from_json(doc["config"], f"manifest {desc.digest}")
    layers = tuple(Descriptor.from_json(raw, f"manifest {desc.digest}") for raw in doc["layers"])
    for layer in layers:
        if layer.media_type not in LAYER_TYPES:
            raise FailedPrecondition(f"layer {layer.digest} of {where} has unsupported media type {layer.media_type!r}")
    return _Parsed(desc, config, layers)


# ---------------------------------------------------------------------------------------------
# Where blobs come from: a registry or an archive
# ---------------------------------------------------------------------------------------------


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


class _RegistrySource:
    def __init__(self, registry: RegistryClient, endpoint: Endpoint, ref: Reference) -> None:
        self._registry, self._endpoint, self._ref = registry, endpoint, ref
        hostname = ref.domain.rsplit(":", 1)[0] if not ref.domain.endswith("]") else ref.domain
        self.labels: Mapping[str, str] = {f"{LABEL_DISTRIBUTION_SOURCE}.{hostname}": ref.path}

    async def document(self, desc: Descriptor) -> bytes:
        return await self._registry.fetch_manifest(self._endpoint, self._ref, desc)

    def stream(self, desc: Descriptor) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._registry.blob(self._endpoint, self._ref, desc)


class _ArchiveSource:
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


# ---------------------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------------------


@dataclass
class _Ingest:
    """State of one pull or import: its lease, progress reporting and the image name."""

    lease: str
    image: str
    progress: ProgressCallback | None = None


class ImageService:
    """Pull, import, unpack, list and delete images in one containerd namespace.

    Args:
        client: the containerd client (namespace set).
        settings: pull policy default and per-registry mirrors, TLS and credentials.
        snapshotter: where layers are unpacked (``overlayfs``).
        transport: replaces the network for registry calls, for tests.
        platform: (os, architecture, variant) to pick from multi-platform images; the host's by default.
    """

    def __init__(
        self,
        client: ContainerdClient,
        settings: ImageSettings | None = None,
        snapshotter: str = "overlayfs",
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        platform: tuple[str, str, str] | None = None,
        parallel_downloads: int = 3,
    ) -> None:
        self.client = client
        self.settings = settings if settings is not None else ImageSettings()
        self.snapshotter = snapshotter
        self.platform = platform or host_platform()
        self._transport = transport
        self._parallel = max(1, parallel_downloads)
        self._pulls: dict[str, asyncio.Task[domain.Image]] = {}

    # --- public API ---------------------------------------------------------------------------

    async def ensure_image(
        self, ref: str, policy: domain.PullPolicy | None = None, progress: ProgressCallback | None = None
    ) -> domain.Image:
        """Make ``ref`` present and unpacked according to ``policy`` (default: the settings').

        Raises:
            InvalidArgument: ``ref`` is malformed.
            NotFound: the image is absent and the policy is ``never``, or the registry lacks it.
            PermissionDenied: the registry refused the credentials.
            Unavailable: the registry cannot be reached.
        """
        return await self.pull(ref, policy=policy, progress=progress)

    async def pull(
        self, ref: str, *, policy: domain.PullPolicy | None = None, progress: ProgressCallback | None = None
    ) -> domain.Image:
        """Pull ``ref`` (per ``policy``), unpack it and return it. Same errors as ``ensure_image``."""
        parsed = parse(ref)
        name = str(parsed)
        policy = policy or domain.PullPolicy(self.settings.pull_policy)
        if policy is not domain.PullPolicy.ALWAYS:
            try:
                return await self.get(name)
            except NotFound as err:
                if policy is domain.PullPolicy.NEVER:
                    raise NotFound(
                        f"image {name} is not present and the pull policy is 'never': import or pull it",
                        image=name,
                    ) from err
        # Checked before any connection, so that a reference never probes an arbitrary host.
        await check_registry_host(parsed.domain, self.settings, name)
        # Concurrent pulls of one image share the work instead of racing on ingest refs.
        running = self._pulls.get(name)
        if running is None:
            running = asyncio.ensure_future(self._pull(parsed, progress))
            self._pulls[name] = running
            running.add_done_callback(lambda _t: self._pulls.pop(name, None))
        return await asyncio.shield(running)

    async def import_archive(self, path: str | os.PathLike[str], name: str = "") -> builtins.list[domain.Image]:
        """Import an OCI layout tarball or a ``docker save`` tarball; return its images, unpacked.

        ``name`` names an image whose archive carries no full reference (only a tag, or none).

        Raises:
            InvalidArgument: the file is missing, not a tar, or of neither format; or an image has no name.
            FailedPrecondition: a blob is missing or does not match its digest.
        """
        archive = Path(path)
        if not archive.is_file():
            raise InvalidArgument(f"image archive {archive} does not exist", field="archive")
        try:
            tar = await asyncio.to_thread(tarfile.open, archive, "r:")
        except (tarfile.TarError, OSError) as err:
            raise InvalidArgument(f"image archive {archive} is not a tar file: {err}", field="archive") from err
        try:
            members = {m.name.removeprefix("./"): m for m in await asyncio.to_thread(tar.getmembers)}
            if "index.json" in members:
                plan = await self._plan_oci(tar, members, archive, name)
            elif "manifest.json" in members:
                plan = await self._plan_docker(tar, members, archive, name)
            else:
                raise InvalidArgument(
                    f"image archive {archive} is neither an OCI layout (index.json) nor a docker save "
                    "archive (manifest.json)",
                    field="archive",
                )
            images: builtins.list[domain.Image] = []
            source, entries = plan
            for root, names in entries:
                async with self.client.lease() as lease:
                    ingest = _Ingest(lease=lease, image=names[0])
                    image = await self._ingest_and_unpack(source, root, names, ingest)
                images.extend(image)
            return images
        finally:
            tar.close()

    async def get(self, ref: str) -> domain.Image:
        """The image named ``ref``, unpacked (unpacking it again if its snapshots were collected).

        Raises:
            InvalidArgument: ``ref`` is malformed.
            NotFound: no such image in this namespace.
        """
        name = normalize(ref)
        try:
            reply = await self.client.images.get(images_pb.GetImageRequest(name=name), what=name)
        except NotFound as err:
            raise NotFound(f"image {name} not found", image=name) from err
        target = _descriptor_from_pb(reply.image.target)
        parsed, config_doc = await self._load_local(target, name)
        diff_ids = _diff_ids(config_doc, name)
        chain = chain_ids(diff_ids)
        if chain and not await self._snapshot_exists(chain[-1]):
            async with self.client.lease() as lease:
                await self._unpack(parsed, diff_ids, lease)
        return domain.Image(
            name=name,
            digest=target.digest,
            config=image_config_from_json(config_doc),
            chain_id=chain[-1] if chain else "",
            size=sum(layer.size for layer in parsed.layers),
        )

    async def list(self) -> builtins.list[domain.Image]:
        """Every image of the namespace whose content is complete, by name."""
        reply = await self.client.images.list(images_pb.ListImagesRequest())
        out: builtins.list[domain.Image] = []
        for record in sorted(reply.images, key=lambda i: i.name):
            target = _descriptor_from_pb(record.target)
            try:
                parsed, config_doc = await self._load_local(target, record.name)
            except (NotFound, FailedPrecondition):
                continue
            chain = chain_ids(_diff_ids(config_doc, record.name))
            out.append(
                domain.Image(
                    name=record.name,
                    digest=target.digest,
                    config=image_config_from_json(config_doc),
                    chain_id=chain[-1] if chain else "",
                    size=sum(layer.size for layer in parsed.layers),
                )
            )
        return out

    async def delete(self, ref: str, *, sync: bool = True) -> None:
        """Delete the image record; with ``sync`` the collector removes its content and snapshots now.

        Raises:
            InvalidArgument: ``ref`` is malformed.
            NotFound: no such image.
        """
        name = normalize(ref)
        try:
            await self.client.images.delete(images_pb.DeleteImageRequest(name=name, sync=sync), what=name)
        except NotFound as err:
            raise NotFound(f"image {name} not found", image=name) from err

    # --- pull ---------------------------------------------------------------------------------

    async def _pull(self, ref: Reference, progress: ProgressCallback | None) -> domain.Image:
        async with RegistryClient(self.settings.registries, transport=self._transport) as registry:
            endpoint, root = await registry.resolve(ref)
            source = _RegistrySource(registry, endpoint, ref)
            async with self.client.lease() as lease:
                ingest = _Ingest(lease=lease, image=str(ref), progress=progress)
                images = await self._ingest_and_unpack(source, root, [str(ref)], ingest)
        return images[0]

    # --- ingest: content, unpack, record ------------------------------------------------------

    async def _ingest_and_unpack(
        self, source: BlobSource, root: Descriptor, names: builtins.list[str], ingest: _Ingest
    ) -> builtins.list[domain.Image]:
        parsed = await self._ingest(source, root, ingest)
        config_doc = _json(await self._read_blob(parsed.config.digest), f"config of {ingest.image}")
        diff_ids = _diff_ids(config_doc, ingest.image)
        chain_id = await self._unpack(parsed, diff_ids, ingest.lease)
        # The record comes last: until it exists, only the lease keeps the content alive.
        for name in names:
            await self._save_record(name, root)
        return [
            domain.Image(
                name=name,
                digest=root.digest,
                config=image_config_from_json(config_doc),
                chain_id=chain_id,
                size=sum(layer.size for layer in parsed.layers),
            )
            for name in names
        ]

    async def _ingest(self, source: BlobSource, root: Descriptor, ingest: _Ingest) -> _Parsed:
        """Write root, manifest, config and layers; children before parents, labels at commit."""
        where = ingest.image
        if root.media_type in INDEX_TYPES:
            index_bytes = await source.document(root)
            position, manifest_desc = choose_manifest(_json(index_bytes, f"index of {where}"), where, self.platform)
            manifest_bytes = await source.document(manifest_desc)
            if manifest_desc.media_type and manifest_desc.media_type not in MANIFEST_TYPES:
                raise FailedPrecondition(f"{where}: nested index {manifest_desc.digest} is not supported")
        elif root.media_type in MANIFEST_TYPES:
            index_bytes, position, manifest_desc = b"", 0, root
            manifest_bytes = await source.document(root)
        else:
            raise FailedPrecondition(f"{where}: unsupported root media type {root.media_type!r}")
        parsed = parse_manifest(manifest_bytes, manifest_desc, where)

        limit = asyncio.Semaphore(self._parallel)

        async def layer(desc: Descriptor) -> None:
            async with limit:
                await self._write_from(source, desc, "layer", {}, ingest)

        await _gather([layer(d) for d in parsed.layers])
        await self._write_from(source, parsed.config, "config", {}, ingest)
        manifest_labels = {f"{GC_REF_CONTENT}.config": parsed.config.digest}
        for i, desc in enumerate(parsed.layers):
            manifest_labels[f"{GC_REF_CONTENT}.l.{i}"] = desc.digest
        await self._write_bytes(manifest_bytes, manifest_desc, "manifest", manifest_labels, ingest, source)
        if index_bytes:
            labels = {f"{GC_REF_CONTENT}.m.{position}": manifest_desc.digest}
            await self._write_bytes(index_bytes, root, "index", labels, ingest, source)
        return parsed

    async def _write_from(
        self, source: BlobSource, desc: Descriptor, kind: str, labels: Mapping[str, str], ingest: _Ingest
    ) -> None:
        if await self._adopt_existing(desc, {**source.labels, **labels}, ingest):
            return
        async with source.stream(desc) as chunks:
            await self._write(chunks, desc, kind, {**source.labels, **labels}, ingest)

    async def _write_bytes(
        self,
        data: bytes,
        desc: Descriptor,
        kind: str,
        labels: Mapping[str, str],
        ingest: _Ingest,
        source: BlobSource,
    ) -> None:
        all_labels = {**source.labels, **labels}
        if await self._adopt_existing(desc, all_labels, ingest):
            return

        async def one() -> AsyncIterator[bytes]:
            yield data

        await self._write(one(), desc, kind, all_labels, ingest)

    async def _adopt_existing(self, desc: Descriptor, labels: Mapping[str, str], ingest: _Ingest) -> bool:
        """If the blob is already stored, put it under our lease and refresh its labels."""
        try:
            info = (await self.client.content.info(content_pb.InfoRequest(digest=desc.digest))).info
        except NotFound:
            return False
        await self.client.leases.add_resource(
            leases_pb.AddResourceRequest(id=ingest.lease, resource=leases_pb.Resource(id=desc.digest, type="content"))
        )
        missing = {k: v for k, v in labels.items() if info.labels.get(k) != v}
        if missing:
            await self._update_labels(desc.digest, missing)
        self._report(ingest, desc, desc.size)
        return True

    async def _write(
        self,
        chunks: AsyncIterator[bytes],
        desc: Descriptor,
        kind: str,
        labels: Mapping[str, str],
        ingest: _Ingest,
    ) -> None:
        """Stream ``chunks`` into ``Content.Write``, verifying size and digest before COMMIT."""
        check_digest(desc.digest, f"{kind} digest")
        ref = f"{kind}-{desc.digest}"
        what = f"{kind} {desc.digest} of {ingest.image}"
        for attempt in range(_LOCK_RETRIES):
            call = self.client.content.write(lease=ingest.lease, timeout=0)
            try:
                await call.write(
                    content_pb.WriteContentRequest(
                        action=content_pb.STAT, ref=ref, total=desc.size, expected=desc.digest
                    )
                )
                stat = await call.read()
                offset = stat.offset if isinstance(stat, content_pb.WriteContentResponse) else 0
                algorithm = desc.digest.split(":", 1)[0]
                hasher = hashlib.new(algorithm)
                received = 0
                async for chunk in chunks:
                    hasher.update(chunk)
                    start = received
                    received += len(chunk)
                    if received > desc.size:
                        raise FailedPrecondition(f"{what}: more than the {desc.size} bytes announced")
                    if received <= offset:
                        continue
                    data = chunk[max(0, offset - start) :]
                    await call.write(
                        content_pb.WriteContentRequest(
                            action=content_pb.WRITE, ref=ref, offset=received - len(data), data=data
                        )
                    )
                    await call.read()
                    self._report(ingest, desc, received)
                if received != desc.size:
                    raise FailedPrecondition(f"{what}: got {received} bytes, expected {desc.size}")
                actual = f"{algorithm}:{hasher.hexdigest()}"
                if actual != desc.digest:
                    raise FailedPrecondition(f"{what}: content digest {actual} does not match {desc.digest}")
                await call.write(
                    content_pb.WriteContentRequest(
                        action=content_pb.COMMIT,
                        ref=ref,
                        offset=desc.size,
                        total=desc.size,
                        expected=desc.digest,
                        labels=dict(labels),
                    )
                )
                await call.read()
                await call.done_writing()
                while await call.read() is not grpc.aio.EOF:
                    pass
                self._report(ingest, desc, desc.size)
                return
            except grpc.aio.AioRpcError as err:
                code = status_code(err)
                if code == grpc.StatusCode.ALREADY_EXISTS:
                    # Committed meanwhile (or by a concurrent writer): ours too, under our lease.
                    await self._adopt_existing(desc, labels, ingest)
                    return
                if (
                    code == grpc.StatusCode.UNAVAILABLE
                    and "locked" in status_details(err)
                    and attempt + 1 < _LOCK_RETRIES
                ):
                    await asyncio.sleep(min(0.016 * 2**attempt, 0.5))
                    continue
                await self._abort(ref)
                raise from_grpc(err, f"Content.Write {what}") from err
            except BaseException:
                call.cancel()
                await asyncio.shield(self._abort(ref))
                raise
        raise FailedPrecondition(f"{what}: the ingest stayed locked by another writer")

    async def _abort(self, ref: str) -> None:
        async def abort() -> None:
            with contextlib.suppress(NotFound):
                await self.client.content.abort(content_pb.AbortRequest(ref=ref), what=ref)

        # containerd can still hold the ingest directory right after the stream closed. An ingest
        # left behind after that is containerd's to expire: the pull itself has already failed.
        with contextlib.suppress(SchedulerError):
            await retry(abort, lambda err: isinstance(err, SchedulerError), linear(5, 0.02))

    def _report(self, ingest: _Ingest, desc: Descriptor, done: int) -> None:
        if ingest.progress is not None:
            ingest.progress(domain.PullProgress(image=ingest.image, digest=desc.digest, done=done, total=desc.size))

    async def _update_labels(self, digest: str, labels: Mapping[str, str]) -> None:
        info = content_pb.Info(digest=digest, labels=dict(labels))
        mask = [f"labels.{key}" for key in labels]
        request = content_pb.UpdateRequest(info=info)
        request.update_mask.paths.extend(mask)
        await self.client.content.update(request, what=digest)

    async def _save_record(self, name: str, target: Descriptor) -> None:
        image = images_pb.Image(name=name, target=_descriptor_to_pb(target))
        try:
            await self.client.images.create(images_pb.CreateImageRequest(image=image), what=name)
        except AlreadyExists:
            await self.client.images.update(images_pb.UpdateImageRequest(image=image), what=name)

    # --- unpack -------------------------------------------------------------------------------

    async def _unpack(self, parsed: _Parsed, diff_ids: builtins.list[str], lease: str) -> str:
        """Apply each layer onto its parent's snapshot, skipping chain IDs that exist already."""
        if len(diff_ids) != len(parsed.layers):
            raise FailedPrecondition(
                f"manifest {parsed.manifest.digest} has {len(parsed.layers)} layers but its config "
                f"{parsed.config.digest} lists {len(diff_ids)} diff IDs"
            )
        chain = chain_ids(diff_ids)
        for i, (layer, diff_id, chain_id) in enumerate(zip(parsed.layers, diff_ids, chain, strict=True)):
            if await self._snapshot_exists(chain_id):
                continue
            key = f"extract-{time.time_ns()}-{secrets.token_hex(4)} {chain_id}"
            parent = chain[i - 1] if i else ""
            prepared = await self.client.snapshots.prepare(
                snapshots_pb.PrepareSnapshotRequest(snapshotter=self.snapshotter, key=key, parent=parent),
                lease=lease,
                what=chain_id,
            )
            try:
                applied = await self.client.diff.apply(
                    diff_pb.ApplyRequest(diff=_descriptor_to_pb(layer), mounts=prepared.mounts),
                    lease=lease,
                    timeout=600,
                    what=f"layer {layer.digest}",
                )
                if applied.applied.digest != diff_id:
                    raise FailedPrecondition(
                        f"layer {layer.digest} unpacked to {applied.applied.digest}, but the config "
                        f"{parsed.config.digest} expects diff ID {diff_id}"
                    )
                try:
                    await self.client.snapshots.commit(
                        snapshots_pb.CommitSnapshotRequest(snapshotter=self.snapshotter, name=chain_id, key=key),
                        lease=lease,
                        what=chain_id,
                    )
                except AlreadyExists:
                    await self._remove_snapshot(key)
            except BaseException:
                await asyncio.shield(self._remove_snapshot(key))
                raise
            await self._update_labels(layer.digest, {LABEL_UNCOMPRESSED: diff_id})
        if chain:
            await self._update_labels(parsed.config.digest, {f"{GC_REF_SNAPSHOT}.{self.snapshotter}": chain[-1]})
        return chain[-1] if chain else ""

    async def _snapshot_exists(self, key: str) -> bool:
        try:
            await self.client.snapshots.stat(
                snapshots_pb.StatSnapshotRequest(snapshotter=self.snapshotter, key=key), what=key
            )
        except NotFound:
            return False
        return True

    async def _remove_snapshot(self, key: str) -> None:
        try:
            await self.client.snapshots.remove(
                snapshots_pb.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=key), what=key
            )
        except (NotFound, FailedPrecondition):
            pass

    # --- local content ------------------------------------------------------------------------

    async def _read_blob(self, digest: str) -> bytes:
        parts: builtins.list[bytes] = []
        async for reply in self.client.content.read(content_pb.ReadContentRequest(digest=digest), what=digest):
            parts.append(reply.data)
        return b"".join(parts)

    async def _load_local(self, target: Descriptor, name: str) -> tuple[_Parsed, dict[str, Any]]:
        """Manifest and config of a stored image, following an index to this platform's entry."""
        desc = target
        if desc.media_type in INDEX_TYPES:
            index = _json(await self._read_blob(desc.digest), f"index of {name}")
            _, desc = choose_manifest(index, name, self.platform)
        parsed = parse_manifest(await self._read_blob(desc.digest), desc, name)
        config_doc = _json(await self._read_blob(parsed.config.digest), f"config of {name}")
        return parsed, config_doc

    # --- archives -----------------------------------------------------------------------------

    async def _plan_oci(
        self, tar: tarfile.TarFile, members: Mapping[str, tarfile.TarInfo], archive: Path, name: str
    ) -> tuple[BlobSource, builtins.list[tuple[Descriptor, builtins.list[str]]]]:
        index = _json(await asyncio.to_thread(_read_member, tar, members["index.json"]), f"{archive}: index.json")
        entries = index.get("manifests")
        if not isinstance(entries, list) or not entries:
            raise InvalidArgument(f"image archive {archive}: index.json lists no images", field="archive")
        plan: builtins.list[tuple[Descriptor, builtins.list[str]]] = []
        for raw in entries:
            desc = Descriptor.from_json(raw, f"{archive}: index.json")
            plan.append((desc, [_archive_image_name(desc.annotations, name, archive)]))
        return _ArchiveSource(tar, members, {}, {}, str(archive)), plan

    async def _plan_docker(
        self, tar: tarfile.TarFile, members: Mapping[str, tarfile.TarInfo], archive: Path, name: str
    ) -> tuple[BlobSource, builtins.list[tuple[Descriptor, builtins.list[str]]]]:
        raw = await asyncio.to_thread(_read_member, tar, members["manifest.json"])
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
            config_bytes = await asyncio.to_thread(_read_member, tar, _get_member(members, config_path, archive))
            config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
            inline[config_digest] = config_bytes
            layers = []
            for layer_path in layer_paths:
                member = _get_member(members, layer_path, archive)
                digest, gzipped = await asyncio.to_thread(_hash_member, tar, member)
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
        return _ArchiveSource(tar, members, paths, inline, str(archive)), plan


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


async def _gather(coros: builtins.list[Awaitable[None]]) -> None:
    """Run all; on the first failure cancel the rest and wait for their cleanup, then raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _diff_ids(config: Mapping[str, Any], where: str) -> builtins.list[str]:
    rootfs = config.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise FailedPrecondition(f"config of {where} has no rootfs.diff_ids")
    return [str(d) for d in diff_ids]


def _descriptor_to_pb(desc: Descriptor) -> descriptor_pb.Descriptor:
    return descriptor_pb.Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size)


def _descriptor_from_pb(desc: descriptor_pb.Descriptor) -> Descriptor:
    return Descriptor(desc.media_type, desc.digest, desc.size)


def _archive_image_name(annotations: Mapping[str, str], name: str, archive: Path) -> str:
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


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:
        raise InvalidArgument(f"{member.name} in the image archive is not a file", field="archive")
    return handle.read()


def _get_member(members: Mapping[str, tarfile.TarInfo], path: object, archive: Path) -> tarfile.TarInfo:
    member = members.get(str(path).removeprefix("./"))
    if member is None or not member.isfile():
        raise InvalidArgument(f"image archive {archive} lacks {path}", field="archive")
    return member


def _hash_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> tuple[str, bool]:
    handle: IO[bytes] | None = tar.extractfile(member)
    if handle is None:
        raise InvalidArgument(f"{member.name} in the image archive is not a file", field="archive")
    sha = hashlib.sha256()
    first = handle.read(_CHUNK)
    gzipped = first[:2] == b"\x1f\x8b"
    while first:
        sha.update(first)
        first = handle.read(_CHUNK)
    return "sha256:" + sha.hexdigest(), gzipped
