"""The ``ContainerRuntime`` Protocol: everything the orchestrator asks of a container runtime.

Implemented by ``runtime.containerd.runtime.ContainerdRuntime`` (real) and ``runtime.fake.FakeRuntime``
(in memory, for unit tests). Only domain types cross this boundary.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from scheduler import domain

ProgressCallback = Callable[[domain.PullProgress], None]
"""Called as blobs of an image are fetched."""


class EventStream(Protocol):
    """A subscription to task events: iterate it; ``connected`` says when it is live."""

    def __aiter__(self) -> AsyncIterator[domain.TaskEvent]:
        """The events, in the order the runtime published them."""
        ...

    async def connected(self) -> None:
        """Return once the subscription is live: every event published from now on is delivered.

        Raises:
            Unavailable: the runtime could not be subscribed to.
        """
        ...

    async def aclose(self) -> None:
        """End the subscription."""
        ...


class ContainerRuntime(Protocol):
    """Images, containers and tasks of one runtime namespace.

    Errors are ``scheduler.errors``: ``NotFound`` for an unknown container, image or task,
    ``AlreadyExists``, ``InvalidArgument`` naming the bad field, ``Unavailable`` when the runtime
    cannot be reached, ``DeadlineExceeded`` when a bounded wait ran out.
    """

    async def ensure_image(
        self, ref: str, policy: domain.PullPolicy, progress: ProgressCallback | None = None
    ) -> domain.Image:
        """Make ``ref`` available and unpacked according to ``policy``; return it."""
        ...

    async def import_archive(self, path: Path) -> list[domain.Image]:
        """Import an OCI or docker-archive tarball; return the images it named, unpacked."""
        ...

    async def create(self, config: domain.ContainerConfig) -> None:
        """Create a container (rootfs snapshot + record); it has no process yet."""
        ...

    async def start(self, container_id: str) -> int:
        """Start the container's process (replacing an exited one); return its pid."""
        ...

    async def prepare_start(self, container_id: str) -> None:
        """Set up the container's process without running it, so that :meth:`start` is only the exec.

        For a container that waits on others: the costly part (a shim, namespaces, mounts) then
        happens during the wait instead of after it. A no-op when it already has a process.
        """
        ...

    async def cancel_start(self, container_id: str) -> None:
        """Remove the process :meth:`prepare_start` set up if it never ran; a no-op otherwise."""
        ...

    async def stop(self, container_id: str, grace: timedelta, signal: str | None = None) -> domain.ExitStatus:
        """Send ``signal`` (default: the image's StopSignal, else SIGTERM), then SIGKILL after ``grace``."""
        ...

    async def wait(self, container_id: str) -> domain.ExitStatus:
        """Block until the container's process exits; immediate if it has."""
        ...

    async def delete(self, container_id: str) -> None:
        """Remove the container, its process and rootfs; missing pieces are fine."""
        ...

    async def release(self, container_id: str) -> None:
        """Delete the container's exited process (and with it its shim and log writer).

        The container and its filesystem stay, so a later ``start`` runs it again. A running
        process is left alone; no process at all is fine.
        """
        ...

    async def exec(
        self,
        container_id: str,
        argv: Sequence[str],
        timeout: timedelta,  # noqa: ASYNC109 - the command's run time limit, enforced by killing it
    ) -> domain.ExecResult:
        """Run a command inside the running container; return exit code and output."""
        ...

    async def pause(self, container_id: str) -> None:
        """Freeze every process of the container (the cgroup freezer); its files stop changing."""
        ...

    async def resume(self, container_id: str) -> None:
        """Thaw a paused container; resuming one that is not paused is not an error."""
        ...

    async def list(self, labels: Mapping[str, str]) -> list[domain.ContainerInfo]:
        """Containers carrying every given label (all of ours when empty), with their task state."""
        ...

    async def task_pid(self, container_id: str) -> int | None:
        """Pid of the container's live process, None when it has none."""
        ...

    async def metrics(self, container_ids: Sequence[str]) -> builtins.list[domain.TaskMetrics]:
        """One sample per container that has a task."""
        ...

    def events(self) -> EventStream:
        """Task start/exit/OOM/delete events of our containers, subscribed from this call on."""
        ...

    async def resources(self) -> dict[str, int]:
        """Counts of containers, tasks, snapshots and leases we hold: for leak accounting."""
        ...

    async def close(self) -> None:
        """Release connections; running containers keep running."""
        ...
