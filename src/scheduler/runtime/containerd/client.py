"""Async client of containerd's gRPC API on a unix socket.

Every call carries the namespace header, an optional lease header and a deadline, and every error
leaves through ``errors.from_grpc``. Idempotent calls are retried with backoff on UNAVAILABLE so that
a containerd restart (about a second) is ridden out instead of surfacing as a failure.
Callers use the typed service accessors (``client.tasks.start(req)``); raw stubs stay inside.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2

from scheduler import log
from scheduler.errors import NotFound, Unavailable
from scheduler.runtime.containerd._gen.containerd.services.containers.v1 import (
    containers_pb2 as containers_pb,
)
from scheduler.runtime.containerd._gen.containerd.services.leases.v1 import leases_pb2 as leases_pb
from scheduler.runtime.containerd.addresses import (
    check_name,
    check_socket,
    check_version,
    parse_version,
    socket_path,
)
from scheduler.runtime.containerd.calls import (
    NO_RETRY,
    Req,
    Resp,
    RetryPolicy,
    ServerStreamCall,
    UnaryCall,
)
from scheduler.runtime.containerd.services import (
    ContainersService,
    ContentService,
    DiffService,
    EventsService,
    ImagesService,
    IntrospectionService,
    LeasesService,
    NamespacesService,
    SnapshotsService,
    TasksService,
    VersionService,
)

_S = TypeVar("_S")
CallObserver = Callable[[str, float, str], None]
"""``(method, seconds, status code name)`` of one finished unary call, retries included."""

NAMESPACE_HEADER = "containerd-namespace"
"""gRPC metadata key that scopes a call to a containerd namespace."""
LEASE_HEADER = "containerd-lease"
"""gRPC metadata key that adds every resource a call creates to a lease."""
LEASE_PREFIX = "scheduler-"
"""Every lease the scheduler takes has an id starting so; see :meth:`ContainerdClient.sweep_leases`."""

_logger = log.get("containerd.client")

__all__ = [
    "LEASE_PREFIX",
    "NO_RETRY",
    "CallObserver",
    "ContainerdClient",
    "RetryPolicy",
    "check_name",
    "check_socket",
    "check_version",
    "parse_version",
    "socket_path",
]


class ContainerdClient:
    """A connection to one containerd, scoped to one namespace.

    Build it with ``await ContainerdClient.connect(address, namespace)``; close it with ``close()``.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        address: str,
        namespace: str,
        timeout: float,
        retry: RetryPolicy,
        version: str = "",
    ) -> None:
        self.channel = channel
        self.address = address
        self.namespace = check_name(namespace, "containerd.namespace")
        self.timeout = timeout
        self.retry = retry
        self.version = version
        self.call_observer: CallObserver | None = None
        """Told the method, seconds and final status code of every unary call (for metrics)."""
        self._services: dict[type[Any], Any] = {}

    @classmethod
    async def connect(
        cls,
        address: str,
        namespace: str,
        *,
        timeout: float = 30.0,  # noqa: ASYNC109 - the default deadline of every call
        connect_timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> ContainerdClient:
        """Open a channel to the socket at ``address`` and check the daemon's version.

        Raises:
            InvalidArgument: the address is not an absolute unix socket path, or the namespace is invalid.
            Unavailable: the socket is missing, not a socket, not permitted, or nothing answers on it.
            FailedPrecondition: containerd is older than 1.6.
        """
        path = socket_path(address)
        check_name(namespace, "containerd.namespace")
        check_socket(path)
        channel = grpc.aio.insecure_channel(
            f"unix://{path}",
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                # A local socket is cheap to retry: reconnect within ~2 s of containerd coming back,
                # instead of gRPC's default backoff that grows to two minutes.
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
        )
        client = cls(
            channel,
            address=path,
            namespace=namespace,
            timeout=timeout,
            retry=retry if retry is not None else RetryPolicy(),
        )
        try:
            reply = await client.version_service.version(empty_pb2.Empty(), timeout=connect_timeout, retry=NO_RETRY)
            check_version(reply.version)
        except Unavailable as err:
            await channel.close()
            raise Unavailable(f"containerd does not answer on {path}: {err.message}", socket=path) from err.__cause__
        except BaseException:
            await channel.close()
            raise
        client.version = reply.version
        _logger.debug("connected to containerd", socket=path, version=reply.version, namespace=namespace)
        return client

    async def close(self) -> None:
        """Close the channel; running tasks are unaffected (the shims own them)."""
        await self.channel.close()

    async def __aenter__(self) -> ContainerdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def metadata(self, *, lease: str | None = None, namespaced: bool = True) -> tuple[tuple[str, str], ...]:
        """The gRPC metadata of one call."""
        pairs: list[tuple[str, str]] = []
        if namespaced:
            pairs.append((NAMESPACE_HEADER, self.namespace))
        if lease:
            pairs.append((LEASE_HEADER, lease))
        return tuple(pairs)

    def unary(
        self,
        name: str,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        *,
        idempotent: bool,
        namespaced: bool = True,
    ) -> UnaryCall[Req, Resp]:
        """Wrap a unary stub method (used by the service accessors)."""
        return UnaryCall(self, name, method, idempotent=idempotent, namespaced=namespaced)

    def server_stream(
        self, name: str, method: grpc.aio.UnaryStreamMultiCallable[Req, Resp]
    ) -> ServerStreamCall[Req, Resp]:
        """Wrap a server-streaming stub method (used by the service accessors)."""
        return ServerStreamCall(self, name, method)

    def _service(self, factory: Callable[[ContainerdClient], _S]) -> _S:
        key = factory if isinstance(factory, type) else type(factory)
        found = self._services.get(key)
        if found is None:
            found = self._services[key] = factory(self)
        return found

    @property
    def version_service(self) -> VersionService:
        """The Version service."""
        return self._service(VersionService)

    @property
    def namespaces(self) -> NamespacesService:
        """The Namespaces service."""
        return self._service(NamespacesService)

    @property
    def introspection(self) -> IntrospectionService:
        """The Introspection service."""
        return self._service(IntrospectionService)

    @property
    def containers(self) -> ContainersService:
        """The Containers service."""
        return self._service(ContainersService)

    @property
    def tasks(self) -> TasksService:
        """The Tasks service."""
        return self._service(TasksService)

    @property
    def content(self) -> ContentService:
        """The Content service."""
        return self._service(ContentService)

    @property
    def images(self) -> ImagesService:
        """The Images service."""
        return self._service(ImagesService)

    @property
    def snapshots(self) -> SnapshotsService:
        """The Snapshots service."""
        return self._service(SnapshotsService)

    @property
    def diff(self) -> DiffService:
        """The Diff service."""
        return self._service(DiffService)

    @property
    def leases(self) -> LeasesService:
        """The Leases service."""
        return self._service(LeasesService)

    @property
    def events(self) -> EventsService:
        """The Events service."""
        return self._service(EventsService)

    @asynccontextmanager
    async def lease(
        self,
        *,
        expire: timedelta = timedelta(hours=1),
        labels: dict[str, str] | None = None,
        sync_delete: bool = False,
    ) -> AsyncIterator[str]:
        """Hold a lease for the block; pass the yielded id as ``lease=`` to calls that create resources.

        The lease expires by itself after ``expire`` should the process die inside the block, so
        nothing it protects is kept forever. It is deleted on exit, errors included.
        """
        lease_id = f"{LEASE_PREFIX}{uuid.uuid4().hex[:16]}"
        until = (datetime.now(UTC) + expire).strftime("%Y-%m-%dT%H:%M:%SZ")
        all_labels = {"containerd.io/gc.expire": until, **(labels or {})}
        await self.leases.create(leases_pb.CreateRequest(id=lease_id, labels=all_labels), what=lease_id)
        try:
            yield lease_id
        finally:
            try:
                await self.leases.delete(leases_pb.DeleteRequest(id=lease_id, sync=sync_delete), what=lease_id)
            except NotFound:
                pass

    async def sweep_leases(self) -> list[str]:
        """Delete every lease of ours in the namespace; the ids deleted.

        Only for start-up, before any call of this process holds a lease: a lease found then
        belongs to a daemon killed inside :meth:`lease`, and would pin what it protects from
        garbage collection until it expires.
        """
        listed = await self.leases.list(leases_pb.ListRequest(), what="leases")
        swept = []
        for lease in listed.leases:
            if lease.id.startswith(LEASE_PREFIX):
                try:
                    await self.leases.delete(leases_pb.DeleteRequest(id=lease.id), what=lease.id)
                except NotFound:
                    continue
                swept.append(lease.id)
        return swept

    async def container_exists(self, container_id: str) -> bool:
        """Whether a container record with this id exists in our namespace."""
        try:
            await self.containers.get(containers_pb.GetContainerRequest(id=container_id), what=container_id)
        except NotFound:
            return False
        return True
