"""``ContainerdRuntime``: the ``ContainerRuntime`` Protocol on containerd, composed of the pieces here.

Containers (``containers.py``), tasks (``tasks.py``), events (``events.py``) and metrics
(``metrics.py``) share one client; image methods delegate to ``images.ImageService``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from scheduler import domain
from scheduler.errors import NotFound
from scheduler.runtime.base import ContainerRuntime, ProgressCallback
from scheduler.runtime.containerd import labels as L
from scheduler.runtime.containerd import orphans as orphans_of
from scheduler.runtime.containerd._gen.containerd.services.containers.v1 import (
    containers_pb2 as containers_pb,
)
from scheduler.runtime.containerd._gen.containerd.services.leases.v1 import leases_pb2 as leases_pb
from scheduler.runtime.containerd._gen.containerd.services.snapshots.v1 import snapshots_pb2 as snapshots_pb
from scheduler.runtime.containerd._gen.containerd.services.tasks.v1 import tasks_pb2 as tasks_pb
from scheduler.runtime.containerd.client import ContainerdClient, RetryPolicy, check_name, socket_path
from scheduler.runtime.containerd.containers import ContainerStore
from scheduler.runtime.containerd.convert import container_info
from scheduler.runtime.containerd.events import TaskEventStream
from scheduler.runtime.containerd.image_options import ImageOptions
from scheduler.runtime.containerd.images import ImageService
from scheduler.runtime.containerd.metrics import decode
from scheduler.runtime.containerd.tasks import TaskManager

_FEW = 8
"""Up to this many containers, :meth:`ContainerdRuntime.list` asks for each one's task alone."""


class ContainerdRuntime:
    """Containers, tasks, images and events of one containerd namespace."""

    def __init__(
        self,
        client: ContainerdClient,
        *,
        state_dir: Path,
        snapshotter: str = "overlayfs",
        runtime_name: str = "io.containerd.runc.v2",
        images: ImageOptions | None = None,
    ) -> None:
        self.client = client
        self.state_dir = Path(state_dir)
        self.snapshotter = snapshotter
        self.containers = ContainerStore(
            client,
            snapshotter=snapshotter,
            runtime_name=runtime_name,
            runc_root=str(self.state_dir / "runc"),
        )
        self.tasks = TaskManager(client, self.containers, work_dir=str(self.state_dir))
        self._image_settings = images
        self._images: ImageService | None = None
        self._preload: asyncio.Future[None] | None = None

    @classmethod
    async def connect(
        cls,
        socket: str,
        *,
        namespace: str = "scheduler",
        state_dir: Path,
        snapshotter: str = "overlayfs",
        runtime_name: str = "io.containerd.runc.v2",
        images: ImageOptions | None = None,
        call_timeout: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> ContainerdRuntime:
        """Connect to containerd at ``socket`` and scope everything to ``namespace``.

        ``state_dir`` holds runc's state (a private root, so that other containerds on the host
        never see our containers) and exec output files. ``images`` (pull policy, registries) goes to
        the image service.

        Raises:
            Unavailable: containerd cannot be reached (the message says why).
            FailedPrecondition: containerd is older than 1.6.
        """
        client = await ContainerdClient.connect(socket, namespace, timeout=call_timeout, retry=retry)
        state = Path(state_dir).absolute()
        state.mkdir(parents=True, exist_ok=True)
        return cls(client, state_dir=state, snapshotter=snapshotter, runtime_name=runtime_name, images=images)

    async def close(self) -> None:
        """Close the connection; containers keep running under their shims."""
        await self.client.close()

    # --- images ----------------------------------------------------------------------------

    def image_service(self) -> ImageService:
        """The ``ImageService`` over our client (pull, import, unpack), built on first use."""
        if self._images is None:
            self._images = ImageService(self.client, self._image_settings, self.snapshotter)
        return self._images

    def preloading(self, task: asyncio.Future[None]) -> None:
        """Image archives are imported by ``task``: an image missing meanwhile waits for it first."""
        self._preload = task

    async def ensure_image(
        self, ref: str, policy: domain.PullPolicy, progress: ProgressCallback | None = None
    ) -> domain.Image:
        """Make ``ref`` available and unpacked according to ``policy``.

        While the preload runs, an image that is not present yet is looked for again once it is
        done, before the policy pulls it or calls it missing (the preload's own lookups never wait).
        """
        images = self.image_service()
        preload = self._preload
        if (
            preload is not None
            and not preload.done()
            and policy is not domain.PullPolicy.ALWAYS
            and asyncio.current_task() is not preload
        ):
            try:
                return await images.ensure_image(ref, domain.PullPolicy.NEVER, progress)
            except NotFound:
                await asyncio.wait([preload])
        return await images.ensure_image(ref, policy, progress)

    async def import_archive(self, path: Path) -> builtins.list[domain.Image]:
        """Import an OCI or docker-archive tarball; return its images, unpacked."""
        return await self.image_service().import_archive(Path(path))

    # --- containers and tasks --------------------------------------------------------------

    async def create(self, config: domain.ContainerConfig) -> None:
        """Create a container from ``config`` (no process yet)."""
        await self.containers.create(config)

    async def start(self, container_id: str) -> int:
        """Start (or restart) the container's process; return its pid."""
        check_name(container_id, "container.id")
        return await self.tasks.start(container_id)

    async def prepare_start(self, container_id: str) -> None:
        """Create the container's task (shim, ``runc create``) without starting its process."""
        check_name(container_id, "container.id")
        await self.tasks.create(container_id)

    async def cancel_start(self, container_id: str) -> None:
        """Delete the container's task if it is only created (never started)."""
        check_name(container_id, "container.id")
        await self.tasks.cancel_created(container_id)

    async def stop(self, container_id: str, grace: timedelta, signal: str | None = None) -> domain.ExitStatus:
        """Signal (by default the image's stop signal), wait up to ``grace``, then SIGKILL; return the exit status."""
        check_name(container_id, "container.id")
        if signal is None:
            record = await self.containers.get(container_id)
            signal = record.labels.get(L.STOP_SIGNAL, "SIGTERM")
        return await self.tasks.stop(container_id, grace, signal)

    async def release(self, container_id: str) -> None:
        """Delete the container's exited task, keeping the container and its snapshot."""
        check_name(container_id, "container.id")
        await self.tasks.release(container_id)

    async def wait(self, container_id: str) -> domain.ExitStatus:
        """Block until the process exits."""
        check_name(container_id, "container.id")
        return await self.tasks.wait(container_id)

    async def delete(self, container_id: str) -> None:
        """Remove task, record and snapshot; idempotent.

        Once begun it runs to its end even when the caller is cancelled (a daemon stopping with
        deletes in flight): a task delete cut off inside containerd can leave the task's shim and
        bundle behind with no record pointing at them. Every step is bounded by its call timeout.
        """
        work = asyncio.ensure_future(self.tasks.delete(container_id))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await work
            raise

    async def exec(
        self,
        container_id: str,
        argv: Sequence[str],
        timeout: timedelta,  # noqa: ASYNC109 - the command's run time limit, enforced by killing it
    ) -> domain.ExecResult:
        """Run ``argv`` inside the running container."""
        check_name(container_id, "container.id")
        return await self.tasks.exec(container_id, argv, timeout)

    async def pause(self, container_id: str) -> None:
        """Freeze the container's processes."""
        check_name(container_id, "container.id")
        await self.tasks.pause(container_id)

    async def resume(self, container_id: str) -> None:
        """Thaw the container's processes."""
        check_name(container_id, "container.id")
        await self.tasks.resume(container_id)

    async def list(self, labels: Mapping[str, str]) -> builtins.list[domain.ContainerInfo]:
        """Our containers carrying every label in ``labels``, with task state."""
        selector = {L.OWNER: L.OWNER_VALUE, **labels}
        records = await self.containers.find(selector)
        if len(records) <= _FEW:
            # An environment's few containers: their tasks one by one, not every task of the
            # host (hundreds of environments deleted at once each listed all of them).
            found = await asyncio.gather(*(self.tasks.get(r.id) for r in records))
            return [container_info(r, t) for r, t in zip(records, found, strict=True)]
        tasks = await self.tasks.all()
        return [container_info(r, tasks.get(r.id)) for r in records]

    async def task_pid(self, container_id: str) -> int | None:
        """Pid of the live process, or None."""
        check_name(container_id, "container.id")
        return await self.tasks.pid(container_id)

    async def metrics(self, container_ids: Sequence[str]) -> builtins.list[domain.TaskMetrics]:
        """One sample per container that has a task; others are skipped."""
        if not container_ids:
            return []
        for cid in container_ids:
            check_name(cid, "container.id")
        reply = await self.client.tasks.metrics(tasks_pb.MetricsRequest(filters=[f"id=={c}" for c in container_ids]))
        wanted = set(container_ids)
        out = []
        for metric in reply.metrics:
            sample = decode(metric)
            if sample is not None and sample.container_id in wanted:
                out.append(sample)
        return out

    def events(self) -> TaskEventStream:
        """Task events of our namespace; ``await stream.connected()`` before relying on them."""
        return TaskEventStream(self.client)

    async def sweep_leases(self) -> builtins.list[str]:
        """At start-up only: delete the leases a killed predecessor left (see ``ContainerdClient.sweep_leases``)."""
        return await self.client.sweep_leases()

    async def sweep_orphan_shims(self, socket: str) -> builtins.list[str]:
        """At start-up only: end shims of our namespace that serve no task containerd knows; their task ids.

        ``socket`` is the containerd's address as its shims were given it.
        """
        listed = await self.client.tasks.list(tasks_pb.ListTasksRequest())
        known = {task.id for task in listed.tasks}
        # /proc is read in a thread: with hundreds of containers it holds a thousand processes.
        running = await asyncio.to_thread(orphans_of.shims, socket_path(socket), self.client.namespace)
        orphans = await asyncio.to_thread(orphans_of.orphans, running, known)
        for shim in orphans:
            await asyncio.to_thread(orphans_of.end, shim)
        return [shim.task_id for shim in orphans]

    async def resources(self) -> dict[str, int]:
        """Counts of containers, tasks, snapshots (all and active) and leases in our namespace."""
        containers = await self.client.containers.list(containers_pb.ListContainersRequest())
        tasks = await self.client.tasks.list(tasks_pb.ListTasksRequest())
        leases = await self.client.leases.list(leases_pb.ListRequest())
        snapshots = 0
        active = 0
        async for page in self.client.snapshots.list(snapshots_pb.ListSnapshotsRequest(snapshotter=self.snapshotter)):
            for info in page.info:
                snapshots += 1
                active += info.kind == snapshots_pb.ACTIVE
        return {
            "containers": len(containers.containers),
            "tasks": len(tasks.tasks),
            "snapshots": snapshots,
            "active_snapshots": active,
            "leases": len(leases.leases),
        }


if TYPE_CHECKING:  # the type checker proves the implementation keeps up with the Protocol

    def _conforms(runtime: ContainerdRuntime) -> ContainerRuntime:
        return runtime
