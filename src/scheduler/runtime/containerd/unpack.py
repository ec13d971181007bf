"""Unpacking image layers into a snapshotter: ``Snapshots.Prepare`` + ``Diff.Apply`` + ``Commit`` per layer.

Snapshots are keyed by chain ID, so a layer shared with another image is unpacked once; a failed
apply removes its half-prepared snapshot.
"""

from __future__ import annotations

import asyncio
import builtins
import secrets
import time

from scheduler.errors import AlreadyExists, FailedPrecondition, NotFound
from scheduler.runtime.containerd._gen.containerd.services.diff.v1 import diff_pb2 as diff_pb
from scheduler.runtime.containerd._gen.containerd.services.snapshots.v1 import snapshots_pb2 as snapshots_pb
from scheduler.runtime.containerd.client import ContainerdClient
from scheduler.runtime.containerd.content import ContentWriter
from scheduler.runtime.containerd.manifests import (
    GC_REF_SNAPSHOT,
    LABEL_UNCOMPRESSED,
    ParsedManifest,
    chain_ids,
    descriptor_to_pb,
)


class Unpacker:
    """Unpacks the layers of stored images into one snapshotter."""

    def __init__(self, client: ContainerdClient, snapshotter: str, content: ContentWriter) -> None:
        self.client = client
        self.snapshotter = snapshotter
        self._content = content

    async def unpack(self, parsed: ParsedManifest, diff_ids: builtins.list[str], lease: str) -> str:
        """Apply each layer onto its parent's snapshot, skipping chain IDs that exist already."""
        if len(diff_ids) != len(parsed.layers):
            raise FailedPrecondition(
                f"manifest {parsed.manifest.digest} has {len(parsed.layers)} layers but its config "
                f"{parsed.config.digest} lists {len(diff_ids)} diff IDs"
            )
        chain = chain_ids(diff_ids)
        for i, (layer, diff_id, chain_id) in enumerate(zip(parsed.layers, diff_ids, chain, strict=True)):
            if await self.snapshot_exists(chain_id):
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
                    diff_pb.ApplyRequest(diff=descriptor_to_pb(layer), mounts=prepared.mounts),
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
            await self._content.update_labels(layer.digest, {LABEL_UNCOMPRESSED: diff_id})
        if chain:
            await self._content.update_labels(
                parsed.config.digest, {f"{GC_REF_SNAPSHOT}.{self.snapshotter}": chain[-1]}
            )
        return chain[-1] if chain else ""

    async def snapshot_exists(self, key: str) -> bool:
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
