"""An asyncio etcd v3 client over grpc.aio, from the project's own copy of etcd's protos.

``EtcdClient`` holds one channel per member and sends every call to the current member; when
that member is down, has no leader or times out, the call goes to the next one until
``retry_deadline``. Reads are linearizable unless ``serializable=True`` asks for the member's
local copy (answers without a leader, possibly a little stale). Writes that may have been
applied before a failure are sent again and flagged (``TxnResult.ambiguous``).

Watches, kept-alive leases and elections build on this client in ``watch``, ``lease`` and
``election``; ``scheduler.storage.etcd`` re-exports the lot.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from scheduler import log
from scheduler.errors import NotFound, SchedulerError, Unavailable
from scheduler.storage.etcd import convert
from scheduler.storage.etcd._gen.etcd.api.etcdserverpb import rpc_pb2 as pb
from scheduler.storage.etcd.connection import REQUIRE_LEADER, Stubs, connect
from scheduler.storage.etcd.errors import from_grpc, maybe_applied, retryable
from scheduler.storage.etcd.types import (
    CasResult,
    Compare,
    Delete,
    EtcdOptions,
    Get,
    KeyValue,
    Member,
    MemberStatus,
    Put,
    RangePage,
    TxnOp,
    TxnResult,
)

_log = log.get("etcd")

T = TypeVar("T")


class EtcdClient:
    """A client of one etcd cluster with failover between its members. Safe to share."""

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        self._stubs: dict[str, Stubs] = {}
        self._current = 0
        self._closed = False

    # --- connection ------------------------------------------------------------------------------

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The members' client URLs, as configured."""
        return self.options.endpoints

    def stubs(self, endpoint: str | None = None) -> Stubs:
        """The services of ``endpoint`` (default: the current member), connecting on first use."""
        if self._closed:
            raise Unavailable("etcd client is closed")
        endpoint = endpoint or self.endpoints[self._current % len(self.endpoints)]
        stubs = self._stubs.get(endpoint)
        if stubs is None:
            stubs = self._stubs[endpoint] = connect(endpoint, self.options)
        return stubs

    def fail_over(self, failed: Stubs) -> None:
        """Move on to the next member after ``failed`` did not answer."""
        if self.endpoints[self._current % len(self.endpoints)] == failed.endpoint:
            self._current = (self._current + 1) % len(self.endpoints)
            _log.info("etcd.failover", failed=failed.endpoint, next=self.endpoints[self._current])

    async def close(self) -> None:
        """Close every channel; later calls fail with Unavailable."""
        self._closed = True
        stubs, self._stubs = list(self._stubs.values()), {}
        for member in stubs:
            await member.channel.close()

    async def call(
        self,
        what: str,
        invoke: Callable[[Stubs, float | None], Awaitable[T]],
        *,
        attempt_timeout: float | None | bool = True,
        on_retry: Callable[[grpc.RpcError], None] | None = None,
        retry_deadline: float | None = None,
    ) -> T:
        """Run ``invoke`` on the current member, failing over to the next for up to ``retry_deadline``.

        Args:
            what: the operation, for error messages (``"Range /x"``).
            invoke: sends the call to the given member with the given per-attempt timeout.
            attempt_timeout: True for ``dial_timeout`` per attempt; None for no per-attempt bound
                (a campaign that waits for leadership).
            on_retry: told about every failure that is retried (a write notes ambiguity).
            retry_deadline: overrides the client's ``retry_deadline`` for this call.

        Raises:
            SchedulerError: the last failure, translated (Unavailable when no member answered).
        """
        per_attempt = (
            self.options.dial_timeout
            if attempt_timeout is True
            else (None if attempt_timeout is None else float(attempt_timeout))
        )
        loop = asyncio.get_running_loop()
        deadline: float | None = None  # set by the first failure: a campaign may wait long before it
        delay = 0.05
        while True:
            stubs = self.stubs()
            try:
                return await invoke(stubs, per_attempt)
            except grpc.RpcError as err:
                budget = self.options.retry_deadline if retry_deadline is None else retry_deadline
                deadline = loop.time() + budget if deadline is None else deadline
                if not retryable(err) or self._closed or loop.time() + delay >= deadline:
                    raise from_grpc(err, what) from err
                if on_retry is not None:
                    on_retry(err)
                _log.debug("etcd.retry", what=what, endpoint=stubs.endpoint, error=str(from_grpc(err, what)))
                self.fail_over(stubs)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)

    # --- KV --------------------------------------------------------------------------------------

    async def get(self, key: str, *, serializable: bool = False) -> KeyValue | None:
        """The key as stored, or None."""
        page = await self.range(key, serializable=serializable)
        return page.kvs[0] if page.kvs else None

    async def range(
        self,
        key: str,
        *,
        prefix: bool = False,
        start: str | None = None,
        limit: int = 0,
        revision: int = 0,
        serializable: bool = False,
        by_creation: bool = False,
        min_create_revision: int = 0,
        attempt_timeout: float | None = None,
        retry_deadline: float | None = None,
    ) -> RangePage:
        """Read ``key``, or (``prefix``) the keys under it from ``start`` on, ``limit`` at most, in key order.

        ``revision`` reads the store as it was then (Compacted if that history is gone);
        ``serializable`` reads the answering member's copy without asking the leader;
        ``by_creation`` orders by creation revision instead, from ``min_create_revision`` on;
        ``attempt_timeout`` and ``retry_deadline`` override the client's for this call.
        """
        request = convert.range_request(
            key,
            prefix=prefix,
            start=start,
            limit=limit,
            revision=revision,
            serializable=serializable,
            by_creation=by_creation,
            min_create_revision=min_create_revision,
        )
        response: pb.RangeResponse = await self.call(
            f"Range {key}",
            lambda s, t: s.kv.Range(request, timeout=t, metadata=() if serializable else REQUIRE_LEADER),
            attempt_timeout=attempt_timeout if attempt_timeout is not None else True,
            retry_deadline=retry_deadline,
        )
        kvs = tuple(convert.kv_from_proto(kv) for kv in response.kvs)
        return RangePage(kvs, response.more, response.header.revision)

    async def pages(self, prefix: str, *, page_size: int = 500, serializable: bool = False) -> AsyncIterator[RangePage]:
        """The keys under ``prefix`` in key order, a page at a time, all read at the first page's revision."""
        start: str | None = None
        revision = 0
        while True:
            page = await self.range(
                prefix, prefix=True, start=start, limit=page_size, revision=revision, serializable=serializable
            )
            revision = page.revision
            yield page
            if not page.more or not page.kvs:
                return
            start = page.kvs[-1].key + "\0"

    async def iterate(
        self, prefix: str, *, page_size: int = 500, serializable: bool = False
    ) -> AsyncIterator[KeyValue]:
        """Every key under ``prefix`` in key order, a page at a time, all read at one revision."""
        async for page in self.pages(prefix, page_size=page_size, serializable=serializable):
            for kv in page.kvs:
                yield kv

    async def list_prefix(self, prefix: str, *, serializable: bool = False) -> RangePage:
        """Every key under ``prefix`` and the revision they were read at (for a watch to follow on)."""
        kvs: list[KeyValue] = []
        revision = 0
        async for page in self.pages(prefix, serializable=serializable):
            kvs.extend(page.kvs)
            revision = page.revision
        return RangePage(tuple(kvs), False, revision)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write ``value`` at ``key`` unconditionally; returns the revision of the write."""
        request = pb.PutRequest(key=convert.encode_key(key), value=value, lease=lease)
        response: pb.PutResponse = await self.call(
            f"Put {key}", lambda s, t: s.kv.Put(request, timeout=t, metadata=REQUIRE_LEADER)
        )
        return response.header.revision

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """Remove ``key`` (or every key under it); returns how many were removed."""
        raw = convert.encode_key(key)
        request = pb.DeleteRangeRequest(key=raw, range_end=convert.prefix_end(raw) if prefix else b"")
        response: pb.DeleteRangeResponse = await self.call(
            f"DeleteRange {key}", lambda s, t: s.kv.DeleteRange(request, timeout=t, metadata=REQUIRE_LEADER)
        )
        return response.deleted

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp] = ()
    ) -> TxnResult:
        """Apply ``success`` if every guard in ``compares`` holds, else ``failure``, atomically."""
        request = pb.TxnRequest(
            compare=[convert.compare_to_proto(c) for c in compares],
            success=[convert.op_to_proto(op) for op in success],
            failure=[convert.op_to_proto(op) for op in failure],
        )
        ambiguous = False

        def note(err: grpc.RpcError) -> None:
            nonlocal ambiguous
            ambiguous = ambiguous or maybe_applied(err)

        response: pb.TxnResponse = await self.call(
            "Txn", lambda s, t: s.kv.Txn(request, timeout=t, metadata=REQUIRE_LEADER), on_retry=note
        )
        results = tuple(convert.op_result_from_proto(r) for r in response.responses)
        return TxnResult(response.succeeded, response.header.revision, results, ambiguous)

    async def cas(self, key: str, value: bytes, mod_revision: int, *, lease: int = 0) -> CasResult:
        """Write ``key`` only if it was last written at ``mod_revision`` (0: only if it does not exist).

        ``current`` is the key as stored afterwards: the new value, or what blocked the write
        (None: it does not exist).
        """
        result = await self.txn(
            [Compare.mod_revision(key, mod_revision)], [Put(key, value, lease), Get(key)], [Get(key)]
        )
        kvs = result.results[-1].kvs if result.results else ()
        return CasResult(result.succeeded, result.revision, kvs[0] if kvs else None, result.ambiguous)

    async def cas_delete(self, key: str, mod_revision: int) -> TxnResult:
        """Remove ``key`` only if it was last written at ``mod_revision``."""
        return await self.txn([Compare.mod_revision(key, mod_revision)], [Delete(key)], [Get(key)])

    async def revision(self) -> int:
        """The cluster's current revision (a linearizable read)."""
        return (await self.range("\0", limit=1)).revision

    async def compact(self, revision: int) -> None:
        """Drop the history before ``revision`` (watches from earlier revisions get Compacted)."""
        request = pb.CompactionRequest(revision=revision, physical=True)
        await self.call(f"Compact {revision}", lambda s, t: s.kv.Compact(request, timeout=t, metadata=REQUIRE_LEADER))

    # --- leases ----------------------------------------------------------------------------------

    async def grant(self, ttl: int, lease_id: int = 0) -> tuple[int, int]:
        """Grant a lease of ``ttl`` seconds; returns its id and the TTL the cluster chose."""
        request = pb.LeaseGrantRequest(TTL=ttl, ID=lease_id)
        response: pb.LeaseGrantResponse = await self.call(
            "LeaseGrant", lambda s, t: s.lease.LeaseGrant(request, timeout=t, metadata=REQUIRE_LEADER)
        )
        if response.error:
            raise Unavailable(f"etcd LeaseGrant: {response.error}")
        return response.ID, response.TTL

    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease, deleting its keys; revoking an expired or unknown lease is not an error."""
        request = pb.LeaseRevokeRequest(ID=lease_id)
        try:
            await self.call(
                f"LeaseRevoke {lease_id:x}",
                lambda s, t: s.lease.LeaseRevoke(request, timeout=t, metadata=REQUIRE_LEADER),
            )
        except NotFound:
            pass

    async def time_to_live(self, lease_id: int) -> int:
        """Seconds the lease has left; -1 when it expired or never existed."""
        request = pb.LeaseTimeToLiveRequest(ID=lease_id)
        response: pb.LeaseTimeToLiveResponse = await self.call(
            f"LeaseTimeToLive {lease_id:x}",
            lambda s, t: s.lease.LeaseTimeToLive(request, timeout=t, metadata=REQUIRE_LEADER),
        )
        return response.TTL

    # --- the cluster -----------------------------------------------------------------------------

    async def status(self, endpoint: str) -> MemberStatus:
        """What the member at ``endpoint`` reports (no failover: it asks that member).

        Raises:
            Unavailable: the member does not answer within ``dial_timeout``.
        """
        stubs = self.stubs(endpoint)
        try:
            response: pb.StatusResponse = await stubs.maintenance.Status(
                pb.StatusRequest(), timeout=self.options.dial_timeout
            )
        except grpc.RpcError as err:
            raise from_grpc(err, f"Status {endpoint}") from err
        return MemberStatus(
            endpoint,
            response.header.member_id,
            response.leader,
            response.raftTerm,
            response.header.revision,
            response.version,
            tuple(response.errors),
        )

    async def leader(self) -> MemberStatus | None:
        """The status of the member that is leader now, if any member answers and knows one."""
        for endpoint in self.endpoints:
            try:
                status = await self.status(endpoint)
            except SchedulerError:
                continue
            if status.is_leader:
                return status
        return None

    async def members(self) -> list[Member]:
        """The members of the cluster."""
        response: pb.MemberListResponse = await self.call(
            "MemberList", lambda s, t: s.cluster.MemberList(pb.MemberListRequest(), timeout=t)
        )
        return [Member(m.ID, m.name, tuple(m.clientURLs), tuple(m.peerURLs)) for m in response.members]
