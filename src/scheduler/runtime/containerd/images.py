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
import os
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scheduler import domain
from scheduler.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from scheduler.reference import Reference, normalize, parse
from scheduler.runtime.containerd._gen.containerd.services.images.v1 import images_pb2 as images_pb
from scheduler.runtime.containerd.client import ContainerdClient
from scheduler.runtime.containerd.content import ContentWriter, Ingest, ProgressCallback
from scheduler.runtime.containerd.descriptors import INDEX_TYPES, MANIFEST_TYPES, Descriptor
from scheduler.runtime.containerd.image_options import ImageOptions
from scheduler.runtime.containerd.manifests import (
    GC_REF_CONTENT,
    ParsedManifest,
    chain_ids,
    choose_manifest,
    descriptor_from_pb,
    descriptor_to_pb,
    diff_ids_of,
    host_platform,
    image_config_from_json,
    json_object,
    parse_manifest,
)
from scheduler.runtime.containerd.sources import (
    BlobSource,
    RegistrySource,
    plan_docker,
    plan_oci,
)
from scheduler.runtime.containerd.unpack import Unpacker

if TYPE_CHECKING:
    import httpx

# The registry client (and httpx with it) is imported by the first pull that needs the network:
# a daemon that only runs local or preloaded images never loads it (a faster start, less memory).

# ---------------------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------------------


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
        settings: ImageOptions | None = None,
        snapshotter: str = "overlayfs",
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        platform: tuple[str, str, str] | None = None,
        parallel_downloads: int = 3,
    ) -> None:
        self.client = client
        self.settings = settings if settings is not None else ImageOptions()
        self.snapshotter = snapshotter
        self.platform = platform or host_platform()
        self._transport = transport
        self._parallel = max(1, parallel_downloads)
        self._pulls: dict[str, asyncio.Task[domain.Image]] = {}
        self._lookups: dict[str, asyncio.Future[domain.Image]] = {}
        """Lookups of a local image in flight, by name (see ``get``)."""
        self._content = ContentWriter(client)
        self._unpacker = Unpacker(client, snapshotter, self._content)
        self._manifests: dict[str, tuple[ParsedManifest, dict[str, Any]]] = {}
        """Manifest and config by the digest of the image's root descriptor: content-addressed,
        so never stale; saves a create two to four content reads per service (5-30 ms each)."""

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
        policy = policy or self.settings.pull_policy
        if policy is not domain.PullPolicy.ALWAYS:
            try:
                return await self.get(name)
            except NotFound as err:
                if policy is domain.PullPolicy.NEVER:
                    raise NotFound(
                        f"image {name} is not present and the pull policy is 'never': import or pull it",
                        image=name,
                    ) from err
        from scheduler.runtime.containerd.registry import check_registry_host

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
        import tarfile  # here, not at every daemon start

        try:
            tar = await asyncio.to_thread(tarfile.open, archive, "r:")
        except (tarfile.TarError, OSError) as err:
            raise InvalidArgument(f"image archive {archive} is not a tar file: {err}", field="archive") from err
        try:
            members = {m.name.removeprefix("./"): m for m in await asyncio.to_thread(tar.getmembers)}
            if "index.json" in members:
                plan = await plan_oci(tar, members, archive, name)
            elif "manifest.json" in members:
                plan = await plan_docker(tar, members, archive, name)
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
                    ingest = Ingest(lease=lease, image=names[0])
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
        # Deploys started together ask for the same few images at once: one lookup serves them all.
        running = self._lookups.get(name)
        if running is None:
            running = asyncio.ensure_future(self._get(name))
            self._lookups[name] = running

            def forget(done: asyncio.Future[domain.Image]) -> None:
                self._lookups.pop(name, None)
                if not done.cancelled():
                    done.exception()  # seen, even when every waiter was cancelled

            running.add_done_callback(forget)
        return await asyncio.shield(running)

    async def _get(self, name: str) -> domain.Image:
        try:
            reply = await self.client.images.get(images_pb.GetImageRequest(name=name), what=name)
        except NotFound as err:
            raise NotFound(f"image {name} not found", image=name) from err
        target = descriptor_from_pb(reply.image.target)
        parsed, config_doc = await self._load_local(target, name)
        diff_ids = diff_ids_of(config_doc, name)
        chain = chain_ids(diff_ids)
        if chain and not await self._unpacker.snapshot_exists(chain[-1]):
            async with self.client.lease() as lease:
                await self._unpacker.unpack(parsed, diff_ids, lease)
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
            target = descriptor_from_pb(record.target)
            try:
                parsed, config_doc = await self._load_local(target, record.name)
            except (NotFound, FailedPrecondition):
                continue
            chain = chain_ids(diff_ids_of(config_doc, record.name))
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
        from scheduler.runtime.containerd.registry import RegistryClient

        async with RegistryClient(self.settings.registries, transport=self._transport) as registry:
            endpoint, root = await registry.resolve(ref)
            source = RegistrySource(registry, endpoint, ref)
            async with self.client.lease() as lease:
                ingest = Ingest(lease=lease, image=str(ref), progress=progress)
                images = await self._ingest_and_unpack(source, root, [str(ref)], ingest)
        return images[0]

    # --- ingest: content, unpack, record ------------------------------------------------------

    async def _ingest_and_unpack(
        self, source: BlobSource, root: Descriptor, names: builtins.list[str], ingest: Ingest
    ) -> builtins.list[domain.Image]:
        parsed = await self._ingest(source, root, ingest)
        config_doc = json_object(await self._content.read_blob(parsed.config.digest), f"config of {ingest.image}")
        diff_ids = diff_ids_of(config_doc, ingest.image)
        chain_id = await self._unpacker.unpack(parsed, diff_ids, ingest.lease)
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

    async def _ingest(self, source: BlobSource, root: Descriptor, ingest: Ingest) -> ParsedManifest:
        """Write root, manifest, config and layers; children before parents, labels at commit."""
        where = ingest.image
        if root.media_type in INDEX_TYPES:
            index_bytes = await source.document(root)
            position, manifest_desc = choose_manifest(
                json_object(index_bytes, f"index of {where}"), where, self.platform
            )
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
                await self._content.write_from(source, desc, "layer", {}, ingest)

        await _gather([layer(d) for d in parsed.layers])
        await self._content.write_from(source, parsed.config, "config", {}, ingest)
        manifest_labels = {f"{GC_REF_CONTENT}.config": parsed.config.digest}
        for i, desc in enumerate(parsed.layers):
            manifest_labels[f"{GC_REF_CONTENT}.l.{i}"] = desc.digest
        await self._content.write_bytes(manifest_bytes, manifest_desc, "manifest", manifest_labels, ingest, source)
        if index_bytes:
            labels = {f"{GC_REF_CONTENT}.m.{position}": manifest_desc.digest}
            await self._content.write_bytes(index_bytes, root, "index", labels, ingest, source)
        return parsed

    async def _save_record(self, name: str, target: Descriptor) -> None:
        image = images_pb.Image(name=name, target=descriptor_to_pb(target))
        try:
            await self.client.images.create(images_pb.CreateImageRequest(image=image), what=name)
        except AlreadyExists:
            await self.client.images.update(images_pb.UpdateImageRequest(image=image), what=name)

    # --- local content ------------------------------------------------------------------------

    async def _load_local(self, target: Descriptor, name: str) -> tuple[ParsedManifest, dict[str, Any]]:
        """Manifest and config of a stored image, following an index to this platform's entry."""
        known = self._manifests.get(target.digest)
        if known is not None:
            return known
        found = await self._read_local(target, name)
        if len(self._manifests) >= 256:
            self._manifests.clear()
        self._manifests[target.digest] = found
        return found

    async def _read_local(self, target: Descriptor, name: str) -> tuple[ParsedManifest, dict[str, Any]]:
        desc = target
        if desc.media_type in INDEX_TYPES:
            index = json_object(await self._content.read_blob(desc.digest), f"index of {name}")
            _, desc = choose_manifest(index, name, self.platform)
        parsed = parse_manifest(await self._content.read_blob(desc.digest), desc, name)
        config_doc = json_object(await self._content.read_blob(parsed.config.digest), f"config of {name}")
        return parsed, config_doc


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
