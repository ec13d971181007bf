"""``FakeRuntime``: an in-memory ``ContainerRuntime`` for unit tests of the layers above.

It behaves like the real one at the Protocol level (ids validated, NotFound/AlreadyExists where
containerd would raise them, events on start and exit, ``wait`` blocking until an exit) and records
every call. Tests drive crashes with ``crash()`` and inject failures with ``fail_next()``.
"""

from __future__ import annotations

import asyncio
import builtins
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from scheduler import domain
from scheduler.errors import AlreadyExists, InvalidArgument, NotFound
from scheduler.runtime.base import ContainerRuntime, ProgressCallback

_NAME = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")

ExecHandler = Callable[[str, Sequence[str]], domain.ExecResult]
"""Answers an exec: (container id, argv) -> result."""


def _check_id(container_id: str) -> None:
    if not container_id or not _NAME.match(container_id):
        raise InvalidArgument(f"container.id {container_id!r} is not a valid identifier", field="container.id")


def fake_image(ref: str, config: domain.ImageConfig | None = None) -> domain.Image:
    """An image record as the fake runtime would return it."""
    digest = "sha256:" + f"{abs(hash(ref)):x}".rjust(64, "0")[:64]
    return domain.Image(
        name=ref,
        digest=digest,
        config=config or domain.ImageConfig(cmd=("sh",)),
        chain_id="sha256:" + digest[-64:],
    )


@dataclass
class FakeContainer:
    """One container held by the fake."""

    config: domain.ContainerConfig
    state: domain.TaskState | None = None
    pid: int = 0
    exit: domain.ExitStatus | None = None
    starts: int = 0
    exited: asyncio.Event = field(default_factory=asyncio.Event)


class FakeEventStream:
    """The ``EventStream`` of the fake: live from creation, ended by ``aclose``."""

    def __init__(self, queue: asyncio.Queue[domain.TaskEvent], unsubscribe: Callable[[], None]) -> None:
        self._queue = queue
        self._unsubscribe: Callable[[], None] | None = unsubscribe

    def __aiter__(self) -> FakeEventStream:
        return self

    async def __anext__(self) -> domain.TaskEvent:
        if self._unsubscribe is None:
            raise StopAsyncIteration
        return await self._queue.get()

    async def connected(self) -> None:
        """Live from the start: nothing to wait for."""

    async def aclose(self) -> None:
        """Unsubscribe; iteration ends."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


class FakeRuntime:
    """In-memory ContainerRuntime; see the module docstring."""

    def __init__(
        self,
        images: Mapping[str, domain.Image] | None = None,
        *,
        exec_handler: ExecHandler | None = None,
        stop_exit_code: int = 0,
        ignores_sigterm: frozenset[str] = frozenset(),
    ) -> None:
        self.images: dict[str, domain.Image] = dict(images or {})
        self.containers: dict[str, FakeContainer] = {}
        self.calls: list[tuple[str, ...]] = []
        self.exec_handler: ExecHandler = exec_handler or (lambda cid, argv: domain.ExecResult(0, ""))
        self.stop_exit_code = stop_exit_code
        self.ignores_sigterm = set(ignores_sigterm)
        """Container ids whose process needs SIGKILL: stop reports 137 for them."""
        self.pullable: set[str] = set()
        """Refs ``ensure_image`` may 'pull' when they are not in ``images``."""
        self.closed = False
        self._next_pid = 1000
        self._failures: dict[str, list[BaseException]] = {}
        self._subscribers: list[asyncio.Queue[domain.TaskEvent]] = []

    # --- test controls ---------------------------------------------------------------------

    def fail_next(self, method: str, error: BaseException) -> None:
        """Make the next call of ``method`` raise ``error``."""
        self._failures.setdefault(method, []).append(error)

    def crash(self, container_id: str, code: int = 1, *, oom: bool = False) -> None:
        """Make a running container's process exit on its own, as if it crashed."""
        container = self._get(container_id)
        if container.state != domain.TaskState.RUNNING:
            raise AssertionError(f"{container_id} is not running")
        if oom:
            self._emit(domain.TaskEvent(domain.TaskEventKind.OOM, container_id, at=datetime.now(UTC)))
        self._exit(container, code, oom=oom)

    def calls_of(self, method: str) -> builtins.list[tuple[str, ...]]:
        """The recorded calls of one method."""
        return [c for c in self.calls if c[0] == method]

    # --- internals ---------------------------------------------------------------------------

    def _record(self, method: str, *args: str) -> None:
        self.calls.append((method, *args))
        pending = self._failures.get(method)
        if pending:
            raise pending.pop(0)

    def _get(self, container_id: str) -> FakeContainer:
        _check_id(container_id)
        found = self.containers.get(container_id)
        if found is None:
            raise NotFound(f"container {container_id} not found", container_id=container_id)
        return found

    def _emit(self, event: domain.TaskEvent) -> None:
        for queue in self._subscribers:
            queue.put_nowait(event)

    def _exit(self, container: FakeContainer, code: int, *, oom: bool = False) -> domain.ExitStatus:
        now = datetime.now(UTC)
        container.state = domain.TaskState.STOPPED
        container.exit = domain.ExitStatus(code=code, exited_at=now, oom_killed=oom)
        container.exited.set()
        self._emit(domain.TaskEvent(domain.TaskEventKind.EXIT, container.config.id, container.pid, code, now))
        return container.exit

    # --- the Protocol ----------------------------------------------------------------------

    async def ensure_image(
        self, ref: str, policy: domain.PullPolicy, progress: ProgressCallback | None = None
    ) -> domain.Image:
        self._record("ensure_image", ref, policy.value)
        image = self.images.get(ref)
        if image is not None and policy is not domain.PullPolicy.ALWAYS:
            return image
        if policy is domain.PullPolicy.NEVER:
            raise NotFound(f"image {ref} is not present and the pull policy is never", image=ref)
        if image is None and ref not in self.pullable:
            raise NotFound(f"image {ref} not found in any registry", image=ref)
        image = image or fake_image(ref)
        if progress is not None:
            progress(domain.PullProgress(image=ref, digest=image.digest, done=1, total=1))
        self.images[ref] = image
        return image

    async def import_archive(self, path: Path) -> builtins.list[domain.Image]:
        self._record("import_archive", str(path))
        if not Path(path).is_file():
            raise NotFound(f"image archive {path} does not exist", path=str(path))
        return []

    async def create(self, config: domain.ContainerConfig) -> None:
        self._record("create", config.id)
        _check_id(config.id)
        if config.id in self.containers:
            raise AlreadyExists(f"container {config.id} already exists", container_id=config.id)
        self.containers[config.id] = FakeContainer(config=config)

    async def start(self, container_id: str) -> int:
        self._record("start", container_id)
        container = self._get(container_id)
        if container.state == domain.TaskState.RUNNING:
            return container.pid
        self._next_pid += 1
        container.pid = self._next_pid
        container.state = domain.TaskState.RUNNING
        container.exit = None
        container.exited = asyncio.Event()
        container.starts += 1
        self._emit(domain.TaskEvent(domain.TaskEventKind.START, container_id, container.pid, at=datetime.now(UTC)))
        return container.pid

    async def prepare_start(self, container_id: str) -> None:
        self._record("prepare_start", container_id)
        self._get(container_id)

    async def cancel_start(self, container_id: str) -> None:
        self._record("cancel_start", container_id)

    async def stop(self, container_id: str, grace: timedelta, signal: str | None = None) -> domain.ExitStatus:
        self._record("stop", container_id, signal or "SIGTERM")
        container = self._get(container_id)
        if container.state is None:
            raise NotFound(f"container {container_id} has no task", container_id=container_id)
        if container.state == domain.TaskState.STOPPED and container.exit is not None:
            return container.exit
        code = 137 if container_id in self.ignores_sigterm else self.stop_exit_code
        return self._exit(container, code)

    async def pause(self, container_id: str) -> None:
        self._record("pause", container_id)
        container = self._get(container_id)
        if container.state != domain.TaskState.RUNNING:
            raise NotFound(f"container {container_id} has no running task to pause", container_id=container_id)
        container.state = domain.TaskState.PAUSED

    async def resume(self, container_id: str) -> None:
        self._record("resume", container_id)
        container = self._get(container_id)
        if container.state is None:
            raise NotFound(f"container {container_id} has no task", container_id=container_id)
        if container.state == domain.TaskState.PAUSED:
            container.state = domain.TaskState.RUNNING

    async def wait(self, container_id: str) -> domain.ExitStatus:
        self._record("wait", container_id)
        container = self._get(container_id)
        if container.state is None:
            raise NotFound(f"container {container_id} has no task to wait for", container_id=container_id)
        await container.exited.wait()
        assert container.exit is not None
        return container.exit

    async def delete(self, container_id: str) -> None:
        self._record("delete", container_id)
        _check_id(container_id)
        container = self.containers.pop(container_id, None)
        if container is not None and container.state is not None:
            if container.state != domain.TaskState.STOPPED:
                self._exit(container, 137)
            self._emit(domain.TaskEvent(domain.TaskEventKind.DELETE, container_id, container.pid, at=datetime.now(UTC)))

    async def release(self, container_id: str) -> None:
        self._record("release", container_id)
        container = self._get(container_id)
        if container.state == domain.TaskState.STOPPED:
            container.state = None

    async def exec(
        self,
        container_id: str,
        argv: Sequence[str],
        timeout: timedelta,  # noqa: ASYNC109 - mirrors the Protocol
    ) -> domain.ExecResult:
        self._record("exec", container_id, *argv)
        container = self._get(container_id)
        if container.state != domain.TaskState.RUNNING:
            raise NotFound(f"container {container_id} has no running task to exec in", container_id=container_id)
        if not argv:
            raise InvalidArgument("exec needs a command", field="argv")
        return self.exec_handler(container_id, argv)

    async def list(self, labels: Mapping[str, str]) -> builtins.list[domain.ContainerInfo]:
        self._record("list")
        out = []
        for cid, c in self.containers.items():
            if all(c.config.labels.get(k) == v if v else k in c.config.labels for k, v in labels.items()):
                out.append(
                    domain.ContainerInfo(
                        id=cid,
                        labels=dict(c.config.labels),
                        image=c.config.image.name,
                        task_state=c.state,
                        pid=c.pid if c.state is not None else 0,
                        exit_status=c.exit.code if c.exit is not None else None,
                    )
                )
        return out

    async def task_pid(self, container_id: str) -> int | None:
        self._record("task_pid", container_id)
        container = self.containers.get(container_id)
        if container is None or container.state != domain.TaskState.RUNNING:
            return None
        return container.pid

    async def metrics(self, container_ids: Sequence[str]) -> builtins.list[domain.TaskMetrics]:
        self._record("metrics", *container_ids)
        now = datetime.now(UTC)
        out = []
        for cid in container_ids:
            c = self.containers.get(cid)
            if c is None or c.state is None:
                continue
            res = c.config.resources
            out.append(
                domain.TaskMetrics(
                    container_id=cid,
                    at=now,
                    cpu_usage_ns=c.starts * 1_000_000,
                    memory_usage_bytes=1 << 20,
                    memory_limit_bytes=res.memory_bytes,
                    pids_current=1 if c.state == domain.TaskState.RUNNING else 0,
                    pids_limit=res.pids,
                )
            )
        return out

    def events(self) -> FakeEventStream:
        # Subscribe now, not on first iteration, so that nothing emitted in between is lost.
        queue: asyncio.Queue[domain.TaskEvent] = asyncio.Queue()
        self._subscribers.append(queue)
        return FakeEventStream(queue, lambda: self._subscribers.remove(queue))

    async def resources(self) -> dict[str, int]:
        tasks = sum(1 for c in self.containers.values() if c.state is not None)
        return {
            "containers": len(self.containers),
            "tasks": tasks,
            "snapshots": len(self.containers),
            "active_snapshots": len(self.containers),
            "leases": 0,
        }

    async def close(self) -> None:
        self.closed = True

    def with_image(self, ref: str, config: domain.ImageConfig | None = None) -> FakeRuntime:
        """Register an image as present; returns self for chaining."""
        self.images[ref] = replace(fake_image(ref, config))
        return self


if TYPE_CHECKING:  # the type checker proves the fake keeps up with the Protocol
    _conforms: ContainerRuntime = FakeRuntime()
