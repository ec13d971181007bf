"""Watching a key prefix from a revision, across member failures and compactions.

The watch is a list-then-watch (Kubernetes' informer pattern): without a start revision it first
yields a snapshot of the prefix, then every change after it. When the member it streams from
dies or loses its leader, the watch resumes on the next member from the revision after the last
change it yielded, so nothing is missed or repeated. When that history was compacted away, it
yields a fresh snapshot instead (the consumer replaces its view) and follows on from there, or,
for a consumer that cannot replace a view (a stream of events resumed from a client's cursor),
raises ``Compacted``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator

import grpc

from scheduler import log
from scheduler.errors import DeadlineExceeded, Unavailable
from scheduler.storage.etcd import convert
from scheduler.storage.etcd._gen.etcd.api.etcdserverpb import rpc_pb2 as pb
from scheduler.storage.etcd.client import EtcdClient
from scheduler.storage.etcd.connection import REQUIRE_LEADER
from scheduler.storage.etcd.errors import Compacted, from_grpc, retryable
from scheduler.storage.etcd.types import WatchBatch

_log = log.get("etcd.watch")

_MAX_DELAY = 1.0


class _Restart(Exception):
    """The stream ended or was cancelled by the member: start a new one (maybe elsewhere)."""


async def _snapshot(client: EtcdClient, prefix: str) -> WatchBatch:
    """Every key under ``prefix`` now, retried until some member answers."""
    delay = 0.05
    while True:
        try:
            page = await client.list_prefix(prefix)
            return WatchBatch(page.revision, snapshot=page.kvs)
        except (Unavailable, DeadlineExceeded) as err:
            _log.warning("etcd.watch.list_failed", prefix=prefix, error=str(err))
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY)


async def _ask_progress(call: grpc.aio.StreamStreamCall[pb.WatchRequest, pb.WatchResponse], every: float) -> None:
    """Ask the member, every ``every`` seconds, how far the watch has been delivered."""
    while True:
        await asyncio.sleep(every)
        try:
            await call.write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
        except (grpc.RpcError, asyncio.InvalidStateError):
            return  # the stream ended: the reader sees why and starts another


async def watch_prefix(
    client: EtcdClient,
    prefix: str,
    start_revision: int = 0,
    *,
    prev_kv: bool = False,
    relist: bool = True,
    progress_every: float | None = None,
) -> AsyncGenerator[WatchBatch]:
    """Yield the changes under ``prefix`` from ``start_revision`` on (0: a snapshot, then changes).

    Runs until the consumer stops iterating (close or cancel it); member failures are retried
    forever with a backoff of at most a second, and logged. With ``progress_every``, the member
    is asked that often how far it has delivered (etcd's progress request, Kubernetes'
    bookmarks), and each answer is yielded as a batch without events: everything under the
    prefix up to its ``revision`` was yielded before it.

    Raises:
        Compacted: with ``relist=False``, the history from the next revision is gone; details
            ``compact_revision`` (the oldest revision a watch may start from) and ``wanted``.
        SchedulerError: etcd refused the watch for a reason another member would not change.
    """
    next_revision = start_revision
    if next_revision <= 0:
        batch = await _snapshot(client, prefix)
        yield batch
        next_revision = batch.revision + 1
    raw = convert.encode_key(prefix)
    delay = 0.05
    while True:
        stubs = client.stubs()
        call = stubs.watch.Watch(metadata=REQUIRE_LEADER)
        create = pb.WatchCreateRequest(
            key=raw,
            range_end=convert.prefix_end(raw),
            start_revision=next_revision,
            progress_notify=True,
            prev_kv=prev_kv,
        )
        asking: asyncio.Task[None] | None = None
        try:
            await call.write(pb.WatchRequest(create_request=create))
            if progress_every is not None:
                asking = asyncio.create_task(_ask_progress(call, progress_every), name=f"watch-progress {prefix}")
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise _Restart("stream ended")
                assert isinstance(response, pb.WatchResponse)
                if response.compact_revision:
                    _log.info(
                        "etcd.watch.compacted", prefix=prefix, wanted=next_revision, compacted=response.compact_revision
                    )
                    if not relist:
                        raise Compacted(
                            f"revision {next_revision} of {prefix!r} was compacted"
                            f" (the oldest kept is {response.compact_revision})",
                            compact_revision=str(response.compact_revision),
                            wanted=str(next_revision),
                        )
                    batch = await _snapshot(client, prefix)
                    yield batch
                    next_revision = batch.revision + 1
                    raise _Restart("compacted")
                if response.canceled:
                    raise _Restart(response.cancel_reason or "cancelled by the member")
                if response.events:
                    events = tuple(convert.event_from_proto(e) for e in response.events)
                    next_revision = events[-1].kv.mod_revision + 1
                    delay = 0.05
                    yield WatchBatch(response.header.revision, events)
                elif not response.created:
                    # A progress notification: everything up to this revision was delivered.
                    next_revision = max(next_revision, response.header.revision + 1)
                    if progress_every is not None:
                        yield WatchBatch(response.header.revision)
        except grpc.RpcError as err:
            if not retryable(err):
                raise from_grpc(err, f"Watch {prefix}") from err
            _log.info(
                "etcd.watch.reconnect", prefix=prefix, endpoint=stubs.endpoint, error=str(from_grpc(err, "Watch"))
            )
            client.fail_over(stubs)
        except asyncio.InvalidStateError as why:  # a write to a stream that already ended
            _log.info("etcd.watch.restart", prefix=prefix, endpoint=stubs.endpoint, reason=repr(why))
            client.fail_over(stubs)
        except _Restart as why:
            if str(why) != "compacted":
                _log.info("etcd.watch.restart", prefix=prefix, endpoint=stubs.endpoint, reason=str(why))
                client.fail_over(stubs)
        finally:
            if asking is not None:
                asking.cancel()
            call.cancel()
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, _MAX_DELAY)
