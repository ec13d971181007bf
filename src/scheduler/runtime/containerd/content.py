"""Writing blobs into containerd's content store: resumable, verified ``Content.Write`` under a lease.

Each blob is streamed with STAT -> WRITE... -> COMMIT; size and digest are checked before the commit,
so nothing unverified is ever committed. A blob stored already is adopted (put under the ingest's
lease, labels refreshed) instead of written again.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import grpc

from scheduler import domain, openssl
from scheduler.errors import FailedPrecondition, NotFound, SchedulerError
from scheduler.reference import check_digest
from scheduler.retry import exponential, linear, retry
from scheduler.rpcstatus import status_code, status_details
from scheduler.runtime.containerd._gen.containerd.services.content.v1 import content_pb2 as content_pb
from scheduler.runtime.containerd._gen.containerd.services.leases.v1 import leases_pb2 as leases_pb
from scheduler.runtime.containerd.client import ContainerdClient
from scheduler.runtime.containerd.descriptors import Descriptor
from scheduler.runtime.containerd.errors import from_grpc
from scheduler.runtime.containerd.sources import BlobSource

ProgressCallback = Callable[[domain.PullProgress], None]

_LOCK_RETRIES = 20


class _IngestLocked(Exception):
    """Another writer holds the ingest ref (containerd answers UNAVAILABLE "locked"): try again."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class Ingest:
    """State of one pull or import: its lease, progress reporting and the image name."""

    lease: str
    image: str
    progress: ProgressCallback | None = None


class ContentWriter:
    """Writes, adopts, labels and reads blobs of one containerd namespace."""

    def __init__(self, client: ContainerdClient) -> None:
        self.client = client

    async def write_from(
        self, source: BlobSource, desc: Descriptor, kind: str, labels: Mapping[str, str], ingest: Ingest
    ) -> None:
        if await self._adopt_existing(desc, {**source.labels, **labels}, ingest):
            return
        async with source.stream(desc) as chunks:
            await self._write(chunks, desc, kind, {**source.labels, **labels}, ingest)

    async def write_bytes(
        self,
        data: bytes,
        desc: Descriptor,
        kind: str,
        labels: Mapping[str, str],
        ingest: Ingest,
        source: BlobSource,
    ) -> None:
        all_labels = {**source.labels, **labels}
        if await self._adopt_existing(desc, all_labels, ingest):
            return

        async def one() -> AsyncIterator[bytes]:
            yield data

        await self._write(one(), desc, kind, all_labels, ingest)

    async def _adopt_existing(self, desc: Descriptor, labels: Mapping[str, str], ingest: Ingest) -> bool:
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
            await self.update_labels(desc.digest, missing)
        self._report(ingest, desc, desc.size)
        return True

    async def _write(
        self,
        chunks: AsyncIterator[bytes],
        desc: Descriptor,
        kind: str,
        labels: Mapping[str, str],
        ingest: Ingest,
    ) -> None:
        """Stream ``chunks`` into ``Content.Write``, verifying size and digest before COMMIT."""
        check_digest(desc.digest, f"{kind} digest")
        ref = f"{kind}-{desc.digest}"
        what = f"{kind} {desc.digest} of {ingest.image}"
        try:
            await retry(
                lambda: self._write_once(chunks, desc, ref, what, labels, ingest),
                lambda err: isinstance(err, _IngestLocked),
                exponential(_LOCK_RETRIES, 0.016, 0.5),
            )
        except _IngestLocked as locked:
            await self._abort(ref)
            raise from_grpc(locked.error, f"Content.Write {what}") from locked.error

    async def _write_once(
        self,
        chunks: AsyncIterator[bytes],
        desc: Descriptor,
        ref: str,
        what: str,
        labels: Mapping[str, str],
        ingest: Ingest,
    ) -> None:
        """One ``Content.Write`` stream; raises :class:`_IngestLocked` while another writer holds ``ref``."""
        call = self.client.content.write(lease=ingest.lease, timeout=0)
        try:
            await call.write(
                content_pb.WriteContentRequest(action=content_pb.STAT, ref=ref, total=desc.size, expected=desc.digest)
            )
            stat = await call.read()
            offset = stat.offset if isinstance(stat, content_pb.WriteContentResponse) else 0
            algorithm = desc.digest.split(":", 1)[0]
            hasher = openssl.hasher(algorithm)
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
            if code == grpc.StatusCode.UNAVAILABLE and "locked" in status_details(err):
                raise _IngestLocked(err) from err
            await self._abort(ref)
            raise from_grpc(err, f"Content.Write {what}") from err
        except BaseException:
            call.cancel()
            await asyncio.shield(self._abort(ref))
            raise

    async def _abort(self, ref: str) -> None:
        async def abort() -> None:
            with contextlib.suppress(NotFound):
                await self.client.content.abort(content_pb.AbortRequest(ref=ref), what=ref)

        # containerd can still hold the ingest directory right after the stream closed. An ingest
        # left behind after that is containerd's to expire: the pull itself has already failed.
        with contextlib.suppress(SchedulerError):
            await retry(abort, lambda err: isinstance(err, SchedulerError), linear(5, 0.02))

    def _report(self, ingest: Ingest, desc: Descriptor, done: int) -> None:
        if ingest.progress is not None:
            ingest.progress(domain.PullProgress(image=ingest.image, digest=desc.digest, done=done, total=desc.size))

    async def update_labels(self, digest: str, labels: Mapping[str, str]) -> None:
        info = content_pb.Info(digest=digest, labels=dict(labels))
        mask = [f"labels.{key}" for key in labels]
        request = content_pb.UpdateRequest(info=info)
        request.update_mask.paths.extend(mask)
        await self.client.content.update(request, what=digest)

    async def read_blob(self, digest: str) -> bytes:
        parts: builtins.list[bytes] = []
        async for reply in self.client.content.read(content_pb.ReadContentRequest(digest=digest), what=digest):
            parts.append(reply.data)
        return b"".join(parts)
