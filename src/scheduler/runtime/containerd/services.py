"""Typed accessors, one per containerd service: callers never touch a raw stub."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

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
from scheduler.runtime.containerd.addresses import (
    _NAME as _NAME,
)
from scheduler.runtime.containerd.addresses import (
    MIN_VERSION as MIN_VERSION,
)
from scheduler.runtime.containerd.addresses import (
    check_name as check_name,
)
from scheduler.runtime.containerd.addresses import (
    check_socket as check_socket,
)
from scheduler.runtime.containerd.addresses import (
    check_version as check_version,
)
from scheduler.runtime.containerd.addresses import (
    parse_version as parse_version,
)
from scheduler.runtime.containerd.addresses import (
    socket_path as socket_path,
)
from scheduler.runtime.containerd.calls import (
    LOG_PROTOS as LOG_PROTOS,
)
from scheduler.runtime.containerd.calls import (
    NO_RETRY as NO_RETRY,
)
from scheduler.runtime.containerd.calls import (
    Req as Req,
)
from scheduler.runtime.containerd.calls import (
    Resp as Resp,
)
from scheduler.runtime.containerd.calls import (
    RetryPolicy as RetryPolicy,
)
from scheduler.runtime.containerd.calls import (
    ServerStreamCall as ServerStreamCall,
)
from scheduler.runtime.containerd.calls import (
    UnaryCall as UnaryCall,
)
from scheduler.runtime.containerd.calls import (
    _logger as _logger,
)

if TYPE_CHECKING:
    from scheduler.runtime.containerd.client import ContainerdClient


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
