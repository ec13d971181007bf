"""Async client of containerd's gRPC API on a unix socket.

Every call carries the namespace header, an optional lease header and a deadline, and every error
leaves through ``errors.from_grpc``. Idempotent calls are retried with backoff on UNAVAILABLE so that
a containerd restart (about a second) is ridden out instead of surfacing as a failure.
Callers use the typed service accessors (``client.tasks.start(req)``); raw stubs stay inside.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from scheduler import log
from scheduler.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from scheduler.retry import exponential
from scheduler.runtime.containerd._gen.containerd.services.containers.v1 import (
    containers_pb2 as containers_pb,
)
from scheduler.runtime.containerd._gen.containerd.services.containers.v1 import (
    containers_pb2_grpc as containers_grpc,
)
from scheduler.runtime.containerd._gen.containerd.services.content.v1 import content_pb2 as content_pb
from scheduler.runtime.containerd._gen.containerd.services.content.v1 import (
    content_pb2_grpc as content_grpc,
)
from scheduler.runtime.containerd._gen.containerd.services.diff.v1 import diff_pb2_grpc as diff_grpc
from scheduler.runtime.containerd._gen.containerd.services.events.v1 import events_pb2_grpc as events_grpc
from scheduler.runtime.containerd._gen.containerd.services.images.v1 import images_pb2_grpc as images_grpc
from scheduler.runtime.containerd._gen.containerd.services.introspection.v1 import (
    introspection_pb2_grpc as introspection_grpc,
)
from scheduler.runtime.containerd._gen.containerd.services.leases.v1 import leases_pb2 as leases_pb
from scheduler.runtime.containerd._gen.containerd.services.leases.v1 import leases_pb2_grpc as leases_grpc
from scheduler.runtime.containerd._gen.containerd.services.namespaces.v1 import (
    namespace_pb2_grpc as namespaces_grpc,
)
from scheduler.runtime.containerd._gen.containerd.services.snapshots.v1 import (
    snapshots_pb2_grpc as snapshots_grpc,
)
from scheduler.runtime.containerd._gen.containerd.services.tasks.v1 import tasks_pb2_grpc as tasks_grpc
from scheduler.runtime.containerd._gen.containerd.services.version.v1 import (
    version_pb2_grpc as version_grpc,
)
from scheduler.runtime.containerd.errors import from_grpc, status_code

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
_S = TypeVar("_S")
CallObserver = Callable[[str, float, str], None]
"""``(method, seconds, status code name)`` of one finished unary call, retries included."""

NAMESPACE_HEADER = "containerd-namespace"
"""gRPC metadata key that scopes a call to a containerd namespace."""
LEASE_HEADER = "containerd-lease"
"""gRPC metadata key that adds every resource a call creates to a lease."""
LEASE_PREFIX = "scheduler-"
"""Every lease the scheduler takes has an id starting so; see :meth:`ContainerdClient.sweep_leases`."""
MIN_VERSION = (1, 6)
"""Oldest containerd whose API matches our protos."""
LOG_PROTOS = False
"""Log every request and response at debug level (noisy; for debugging the wire)."""

_logger = log.get("containerd.client")
_NAME = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for idempotent calls that fail with UNAVAILABLE."""

    attempts: int = 8
    """Total tries, the first one included."""
    initial: float = 0.05
    """Seconds before the second try."""
    maximum: float = 1.0
    """Cap of one wait, in seconds."""
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise InvalidArgument("retry.attempts must be at least 1", field="retry.attempts")
        if self.initial < 0 or self.maximum < self.initial or self.multiplier < 1:
            raise InvalidArgument("retry needs 0 <= initial <= maximum and multiplier >= 1", field="retry")

    def delays(self) -> list[float]:
        """The waits between consecutive tries."""
        return exponential(self.attempts, self.initial, self.maximum, self.multiplier)


NO_RETRY = RetryPolicy(attempts=1)


# ---------------------------------------------------------------------------------------------
# Addresses, sockets and versions
# ---------------------------------------------------------------------------------------------


def socket_path(address: str) -> str:
    """The absolute socket path of ``/abs/path``, ``unix:///abs/path`` or ``unix:/abs/path``.

    Raises:
        InvalidArgument: the address is empty, relative or of another scheme.
    """
    path = address
    if path.startswith("unix://"):
        path = path[len("unix://") :]
    elif path.startswith("unix:"):
        path = path[len("unix:") :]
    if not path or not path.startswith("/"):
        raise InvalidArgument(
            f"containerd address {address!r} must be an absolute unix socket path", field="containerd.socket"
        )
    return os.path.normpath(path)


def check_socket(path: str) -> None:
    """Fail early, and clearly, when ``path`` cannot be a usable containerd socket.

    Raises:
        Unavailable: the socket is missing, is not a socket, or may not be opened by this process.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError as err:
        raise Unavailable(
            f"containerd socket {path} does not exist: is containerd running with --address {path}?",
            socket=path,
        ) from err
    except PermissionError as err:
        raise Unavailable(
            f"permission denied reaching containerd socket {path}: run as root or fix its directory mode",
            socket=path,
        ) from err
    if not stat.S_ISSOCK(info.st_mode):
        raise Unavailable(f"containerd socket {path} exists but is not a unix socket", socket=path)
    if not os.access(path, os.R_OK | os.W_OK):
        raise Unavailable(
            f"permission denied opening containerd socket {path}: run as root or add this user to its group",
            socket=path,
        )


def parse_version(text: str) -> tuple[int, int, int]:
    """Parse ``1.6.20~ds1`` or ``v1.7.0-rc.1`` into ``(major, minor, patch)``.

    Raises:
        FailedPrecondition: the text has no recognisable version number.
    """
    match = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if not match:
        raise FailedPrecondition(f"containerd reported an unparsable version {text!r}")
    return int(match[1]), int(match[2]), int(match[3] or 0)


def check_version(text: str) -> None:
    """Refuse a containerd older than ``MIN_VERSION``.

    Raises:
        FailedPrecondition: naming the version found and the one required.
    """
    if parse_version(text)[:2] < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        raise FailedPrecondition(f"containerd {text} is too old: the scheduler needs containerd {need} or newer")


def check_name(value: str, field: str) -> str:
    """Validate a containerd identifier (container, exec, lease, snapshot key).

    Raises:
        InvalidArgument: naming ``field``.
    """
    if not value or len(value) > 76 or not _NAME.match(value):
        raise InvalidArgument(
            f"{field} {value!r} must be 1-76 letters and digits, separated by single '.', '_' or '-'",
            field=field,
        )
    return value


# ---------------------------------------------------------------------------------------------
# Typed call wrappers
# ---------------------------------------------------------------------------------------------


class UnaryCall(Generic[Req, Resp]):
    """One unary RPC: namespace and lease headers, a deadline, retry if idempotent, error translation."""

    __slots__ = ("_client", "_method", "name", "idempotent", "namespaced")

    def __init__(
        self,
        client: ContainerdClient,
        name: str,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        *,
        idempotent: bool,
        namespaced: bool = True,
    ) -> None:
        self._client = client
        self._method = method
        self.name = name
        self.idempotent = idempotent
        self.namespaced = namespaced

    async def __call__(
        self,
        request: Req,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, sent to the server
        retry: RetryPolicy | None = None,
        lease: str | None = None,
        what: str = "",
    ) -> Resp:
        """Send ``request``; ``timeout`` bounds all tries together (default: the client's).

        Raises:
            SchedulerError: the translated gRPC status; ``what`` names the resource in its message.
        """
        budget = self._client.timeout if timeout is None else timeout
        policy = retry if retry is not None else (self._client.retry if self.idempotent else NO_RETRY)
        metadata = self._client.metadata(lease=lease, namespaced=self.namespaced)
        deadline = time.monotonic() + budget
        delays = policy.delays()
        label = f"{self.name} {what}".strip()
        if LOG_PROTOS:
            _logger.debug("containerd request", method=self.name, request=str(request))
        started = time.monotonic()
        observer = self._client.call_observer
        while True:
            remaining = deadline - time.monotonic()
            try:
                response = await self._method(request, timeout=max(remaining, 0.001), metadata=metadata)
            except grpc.aio.AioRpcError as err:
                retryable = status_code(err) == grpc.StatusCode.UNAVAILABLE and delays
                if retryable and deadline - time.monotonic() > delays[0]:
                    await asyncio.sleep(delays.pop(0))
                    continue
                if observer is not None:
                    observer(self.name, time.monotonic() - started, status_code(err).name)
                raise from_grpc(err, label) from err
            if observer is not None:
                observer(self.name, time.monotonic() - started, "OK")
            if LOG_PROTOS:
                _logger.debug("containerd response", method=self.name, response=str(response))
            return response


class ServerStreamCall(Generic[Req, Resp]):
    """One server-streaming RPC; iterate the responses, errors translated."""

    __slots__ = ("_client", "_method", "name")

    def __init__(
        self, client: ContainerdClient, name: str, method: grpc.aio.UnaryStreamMultiCallable[Req, Resp]
    ) -> None:
        self._client = client
        self._method = method
        self.name = name

    def open(
        self, request: Req, *, timeout: float | None = None, lease: str | None = None
    ) -> grpc.aio.UnaryStreamCall[Req, Resp]:
        """The raw call, for callers that manage it themselves; errors are ``grpc.aio.AioRpcError``."""
        budget = self._client.timeout if timeout is None else timeout
        return self._method(
            request, timeout=budget or None, metadata=self._client.metadata(lease=lease, namespaced=True)
        )

    async def __call__(
        self,
        request: Req,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, sent to the server
        lease: str | None = None,
        what: str = "",
    ) -> AsyncIterator[Resp]:
        """Yield every response; ``timeout=0`` means no deadline (for long-lived subscriptions)."""
        call = self.open(request, timeout=timeout, lease=lease)
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, f"{self.name} {what}".strip()) from err
        finally:
            call.cancel()


# ---------------------------------------------------------------------------------------------
# Service accessors: one per containerd service, typed, never the raw stub
# ---------------------------------------------------------------------------------------------


class VersionService:
    """containerd.services.version.v1.Version."""

    def __init__(self, c: ContainerdClient) -> None:
        s = version_grpc.VersionStub(c.channel)
        self.version = c.unary("Version.Version", s.Version, idempotent=True, namespaced=False)


class NamespacesService:
    """containerd.services.namespaces.v1.Namespaces."""

    def __init__(self, c: ContainerdClient) -> None:
        s = namespaces_grpc.NamespacesStub(c.channel)
        self.get = c.unary("Namespaces.Get", s.Get, idempotent=True, namespaced=False)
        self.list = c.unary("Namespaces.List", s.List, idempotent=True, namespaced=False)
        self.create = c.unary("Namespaces.Create", s.Create, idempotent=False, namespaced=False)
        self.delete = c.unary("Namespaces.Delete", s.Delete, idempotent=False, namespaced=False)


class IntrospectionService:
    """containerd.services.introspection.v1.Introspection."""

    def __init__(self, c: ContainerdClient) -> None:
        s = introspection_grpc.IntrospectionStub(c.channel)
        self.plugins = c.unary("Introspection.Plugins", s.Plugins, idempotent=True, namespaced=False)
        self.server = c.unary("Introspection.Server", s.Server, idempotent=True, namespaced=False)


class ContainersService:
    """containerd.services.containers.v1.Containers: container records."""

    def __init__(self, c: ContainerdClient) -> None:
        s = containers_grpc.ContainersStub(c.channel)
        self.get = c.unary("Containers.Get", s.Get, idempotent=True)
        self.list = c.unary("Containers.List", s.List, idempotent=True)
        self.create = c.unary("Containers.Create", s.Create, idempotent=False)
        self.update = c.unary("Containers.Update", s.Update, idempotent=False)
        self.delete = c.unary("Containers.Delete", s.Delete, idempotent=False)


class TasksService:
    """containerd.services.tasks.v1.Tasks: processes, through the shim."""

    def __init__(self, c: ContainerdClient) -> None:
        s = tasks_grpc.TasksStub(c.channel)
        self.create = c.unary("Tasks.Create", s.Create, idempotent=False)
        self.start = c.unary("Tasks.Start", s.Start, idempotent=False)
        self.delete = c.unary("Tasks.Delete", s.Delete, idempotent=False)
        self.delete_process = c.unary("Tasks.DeleteProcess", s.DeleteProcess, idempotent=False)
        self.get = c.unary("Tasks.Get", s.Get, idempotent=True)
        self.list = c.unary("Tasks.List", s.List, idempotent=True)
        # Signals are not idempotent in general, but re-sending a stop signal is what a caller wants.
        self.kill = c.unary("Tasks.Kill", s.Kill, idempotent=True)
        self.exec = c.unary("Tasks.Exec", s.Exec, idempotent=False)
        self.close_io = c.unary("Tasks.CloseIO", s.CloseIO, idempotent=True)
        self.pause = c.unary("Tasks.Pause", s.Pause, idempotent=False)
        self.resume = c.unary("Tasks.Resume", s.Resume, idempotent=False)
        self.list_pids = c.unary("Tasks.ListPids", s.ListPids, idempotent=True)
        self.update = c.unary("Tasks.Update", s.Update, idempotent=True)
        self.metrics = c.unary("Tasks.Metrics", s.Metrics, idempotent=True)
        # Wait blocks until exit; retrying after a restart resumes waiting, which is what callers mean.
        self.wait = c.unary("Tasks.Wait", s.Wait, idempotent=True)


class ContentService:
    """containerd.services.content.v1.Content: blobs by digest."""

    def __init__(self, c: ContainerdClient) -> None:
        self._client = c
        self._stub = content_grpc.ContentStub(c.channel)
        s = self._stub
        self.info = c.unary("Content.Info", s.Info, idempotent=True)
        self.update = c.unary("Content.Update", s.Update, idempotent=True)
        self.delete = c.unary("Content.Delete", s.Delete, idempotent=False)
        self.status = c.unary("Content.Status", s.Status, idempotent=True)
        self.list_statuses = c.unary("Content.ListStatuses", s.ListStatuses, idempotent=True)
        self.abort = c.unary("Content.Abort", s.Abort, idempotent=False)
        self.list = c.server_stream("Content.List", s.List)
        self.read = c.server_stream("Content.Read", s.Read)

    def write(
        self, *, lease: str | None = None, timeout: float | None = None
    ) -> grpc.aio.StreamStreamCall[content_pb.WriteContentRequest, content_pb.WriteContentResponse]:
        """Open a Write stream: ``await call.write(req)``, ``await call.read()``, ``call.done_writing()``.

        Errors surface as ``grpc.aio.AioRpcError``: wrap the exchange in ``errors.translated(...)``.
        """
        budget = self._client.timeout if timeout is None else timeout
        return self._stub.Write(timeout=budget or None, metadata=self._client.metadata(lease=lease))


class ImagesService:
    """containerd.services.images.v1.Images: image records (GC roots)."""

    def __init__(self, c: ContainerdClient) -> None:
        s = images_grpc.ImagesStub(c.channel)
        self.get = c.unary("Images.Get", s.Get, idempotent=True)
        self.list = c.unary("Images.List", s.List, idempotent=True)
        self.create = c.unary("Images.Create", s.Create, idempotent=False)
        self.update = c.unary("Images.Update", s.Update, idempotent=True)
        self.delete = c.unary("Images.Delete", s.Delete, idempotent=False)


class SnapshotsService:
    """containerd.services.snapshots.v1.Snapshots: layers and container rootfs."""

    def __init__(self, c: ContainerdClient) -> None:
        s = snapshots_grpc.SnapshotsStub(c.channel)
        self.prepare = c.unary("Snapshots.Prepare", s.Prepare, idempotent=False)
        self.view = c.unary("Snapshots.View", s.View, idempotent=False)
        self.mounts = c.unary("Snapshots.Mounts", s.Mounts, idempotent=True)
        self.commit = c.unary("Snapshots.Commit", s.Commit, idempotent=False)
        self.remove = c.unary("Snapshots.Remove", s.Remove, idempotent=False)
        self.stat = c.unary("Snapshots.Stat", s.Stat, idempotent=True)
        self.update = c.unary("Snapshots.Update", s.Update, idempotent=True)
        self.usage = c.unary("Snapshots.Usage", s.Usage, idempotent=True)
        self.list = c.server_stream("Snapshots.List", s.List)


class DiffService:
    """containerd.services.diff.v1.Diff: apply layers onto mounts."""

    def __init__(self, c: ContainerdClient) -> None:
        s = diff_grpc.DiffStub(c.channel)
        self.apply = c.unary("Diff.Apply", s.Apply, idempotent=False)
        self.diff = c.unary("Diff.Diff", s.Diff, idempotent=False)


class LeasesService:
    """containerd.services.leases.v1.Leases: GC protection while resources are assembled."""

    def __init__(self, c: ContainerdClient) -> None:
        s = leases_grpc.LeasesStub(c.channel)
        self.create = c.unary("Leases.Create", s.Create, idempotent=False)
        self.delete = c.unary("Leases.Delete", s.Delete, idempotent=False)
        self.list = c.unary("Leases.List", s.List, idempotent=True)
        self.add_resource = c.unary("Leases.AddResource", s.AddResource, idempotent=True)
        self.delete_resource = c.unary("Leases.DeleteResource", s.DeleteResource, idempotent=True)
        self.list_resources = c.unary("Leases.ListResources", s.ListResources, idempotent=True)


class EventsService:
    """containerd.services.events.v1.Events: the (non-replaying) event exchange."""

    def __init__(self, c: ContainerdClient) -> None:
        s = events_grpc.EventsStub(c.channel)
        self.subscribe = c.server_stream("Events.Subscribe", s.Subscribe)
        self.publish = c.unary("Events.Publish", s.Publish, idempotent=False)


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------


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
