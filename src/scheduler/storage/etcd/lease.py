"""A lease kept alive in the background: what a node's registration or a leader's term hangs on.

Keep-alives go over one LeaseKeepAlive stream every third of the TTL; when the member dies, or
does not answer within that third, the stream is reopened on the next one. ``lost`` is set, and
the keep-alives stop for good, when the cluster says the lease expired or when no keep-alive was
answered for a whole TTL (the lease may have expired then, and whoever holds it must act as if
it had). A lost lease is never revived: grant a new one.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import grpc

from scheduler import log
from scheduler.storage.etcd._gen.etcd.api.etcdserverpb import rpc_pb2 as pb
from scheduler.storage.etcd.client import EtcdClient
from scheduler.storage.etcd.connection import REQUIRE_LEADER
from scheduler.storage.etcd.errors import from_grpc

_log = log.get("etcd.lease")


class Lease:
    """A granted lease and its keep-alive task; ``async with`` revokes it on the way out."""

    def __init__(self, client: EtcdClient, lease_id: int, ttl: int, interval: float | None = None) -> None:
        self.client = client
        self.id = lease_id
        """The lease id, to attach keys to (``put(..., lease=lease.id)``)."""
        self.ttl = ttl
        """The TTL the cluster granted, in seconds."""
        self.interval = interval if interval is not None else max(ttl / 3, 0.2)
        """Seconds between keep-alives (a third of the TTL unless asked otherwise)."""
        self.renewals = 0
        """Keep-alives the cluster answered so far."""
        self.lost = asyncio.Event()
        """Set once the lease expired or may have (no keep-alive answered for a TTL)."""
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def grant(cls, client: EtcdClient, ttl: int, *, interval: float | None = None) -> Lease:
        """Grant a lease of ``ttl`` seconds and start keeping it alive every ``interval`` (default TTL/3)."""
        lease_id, granted = await client.grant(ttl)
        lease = cls(client, lease_id, granted, interval)
        lease._task = asyncio.create_task(lease._keep_alive(), name=f"etcd-lease-{lease_id:x}")
        return lease

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self, *, revoke: bool = True) -> None:
        """Stop the keep-alives and (``revoke``) revoke the lease, deleting the keys attached to it."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if revoke and not self.lost.is_set():
            await self.client.revoke(self.id)
        self.lost.set()

    def _lose(self, why: str) -> None:
        _log.warning("etcd.lease.lost", lease=f"{self.id:x}", reason=why)
        self.lost.set()

    async def _keep_alive(self) -> None:
        try:
            await self._keep_alive_until_lost()
        except asyncio.CancelledError:
            raise
        except BaseException as err:  # a keeper that dies must not leave its holder believing in the lease
            self._lose(f"keep-alive failed: {err!r}")
            raise

    async def _keep_alive_until_lost(self) -> None:
        loop = asyncio.get_running_loop()
        answered = loop.time()
        delay = 0.05
        while True:
            if loop.time() - answered > self.ttl:
                self._lose(f"no keep-alive answered for {self.ttl} s")
                return
            stubs = self.client.stubs()
            call = stubs.lease.LeaseKeepAlive(metadata=REQUIRE_LEADER)
            try:
                while True:
                    left = max(self.ttl - (loop.time() - answered), 0.1)
                    # One bound on the write and the read: either may hang on a member that died.
                    # No longer than the interval, so that a keep-alive stuck on a dead member
                    # leaves time within the TTL to reach another one once they have a leader.
                    async with asyncio.timeout(min(self.client.options.dial_timeout, self.interval, left)):
                        await call.write(pb.LeaseKeepAliveRequest(ID=self.id))
                        response = await call.read()
                    if response is grpc.aio.EOF:
                        raise ConnectionError("keep-alive stream ended")
                    assert isinstance(response, pb.LeaseKeepAliveResponse)
                    if response.TTL <= 0:
                        self._lose("the cluster says it expired")
                        return
                    answered = loop.time()
                    self.renewals += 1
                    delay = 0.05
                    await asyncio.sleep(self.interval)
            except (grpc.RpcError, TimeoutError, ConnectionError, asyncio.InvalidStateError) as err:
                reason = str(from_grpc(err, "LeaseKeepAlive")) if isinstance(err, grpc.RpcError) else repr(err)
                _log.info("etcd.lease.reconnect", lease=f"{self.id:x}", endpoint=stubs.endpoint, error=reason)
                self.client.fail_over(stubs)
            finally:
                call.cancel()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
