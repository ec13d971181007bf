"""Tasks: the processes of containers (start, wait, stop, exec, delete), through containerd's shim.

Output goes through the log program that the shim starts for each task (``binary://`` stdio,
see :mod:`scheduler.runtime.logger`): it hands the pipes to the host's shared log writer, which
timestamps every line into ``<log_dir>/stdout.log`` and ``<log_dir>/stderr.log`` and rotates
them by itself, as their only writer. Neither is the daemon's child, so writing goes on through a
daemon restart; Tasks.Delete waits until the task's streams are drained.

One cohesive thing, a little longer than a screen: :class:`TaskManager` is the life cycle of a
task and of its execs through the shim, whose steps share the ordering rules written here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal as signals
import uuid
from collections.abc import Awaitable, Sequence
from datetime import timedelta

from scheduler import domain, log
from scheduler.errors import DeadlineExceeded, Internal, InvalidArgument, NotFound, SchedulerError
from scheduler.retry import linear, retry
from scheduler.runtime import logger
from scheduler.runtime.containerd import spec as oci
from scheduler.runtime.containerd import stopping
from scheduler.runtime.containerd._gen.containerd.services.tasks.v1 import tasks_pb2 as tasks_pb
from scheduler.runtime.containerd._gen.containerd.types.task import task_pb2 as task_pb
from scheduler.runtime.containerd.client import ContainerdClient, check_name
from scheduler.runtime.containerd.containers import ContainerStore, Fresh
from scheduler.runtime.containerd.convert import exit_status, json_any
from scheduler.runtime.containerd.metrics import oom_kills
from scheduler.runtime.containerd.stdio import (
    EXEC_OUTPUT_LIMIT,
    OutputRing,
    prepare_logs,
)
from scheduler.runtime.containerd.stdio import install_logger as install_logger

_log = log.get("containerd.tasks")

STDOUT_LOG = "stdout.log"
STDERR_LOG = "stderr.log"
LOGGER_NAME = logger.PROGRAM
"""File name of the log program under ``<work_dir>/bin``: the logger package zipped behind a shebang."""
WAIT_FOREVER = 10 * 365 * 86400.0
"""Deadline of a Wait that has no timeout: gRPC needs a finite one."""
KILL_WAIT = 10.0
"""Seconds to wait for a process to die after SIGKILL before giving up."""
EXIT_EXEC_FAILED = 127
"""Exit code reported when an exec cannot even start (binary missing), as shells do."""


def parse_signal(value: str | int) -> int:
    """``SIGTERM``, ``TERM``, ``15`` or 15 as a signal number.

    Raises:
        InvalidArgument: an unknown signal, naming the ``signal`` field.
    """
    if isinstance(value, int) or value.isdigit():
        number = int(value)
        if 0 < number < signals.NSIG:
            return number
    else:
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        member = getattr(signals.Signals, name, None)
        if member is not None:
            return int(member)
    raise InvalidArgument(f"unknown signal {value!r}", field="signal")


class TaskManager:
    """Start, wait for, stop, exec into and delete the tasks of our containers."""

    def __init__(self, client: ContainerdClient, containers: ContainerStore, *, work_dir: str) -> None:
        self._client = client
        self._containers = containers
        self.exec_dir = os.path.join(work_dir, "exec")
        """Where the FIFOs of running execs live."""
        self._logger = os.path.join(work_dir, "bin", LOGGER_NAME)
        self._unstarted: set[str] = set()
        """Containers whose task this manager created and has not started: their start is one call."""

    # --- queries ---------------------------------------------------------------------------

    async def get(self, container_id: str, exec_id: str = "") -> task_pb.Process | None:
        """The task (or exec process) of a container, None when it has none."""
        try:
            reply = await self._client.tasks.get(
                tasks_pb.GetRequest(container_id=container_id, exec_id=exec_id), what=container_id
            )
        except NotFound:
            return None
        return reply.process

    async def all(self) -> dict[str, task_pb.Process]:
        """Every task of the namespace, by container id."""
        reply = await self._client.tasks.list(tasks_pb.ListTasksRequest())
        return {t.id: t for t in reply.tasks}

    async def pid(self, container_id: str) -> int | None:
        """The init pid of a live (created, running or paused) task, else None."""
        task = await self.get(container_id)
        if task is None or task.status in (task_pb.STOPPED, task_pb.UNKNOWN):
            return None
        return task.pid

    async def pids(self, container_id: str) -> list[int]:
        """Every pid in the task's cgroup.

        Raises:
            NotFound: the container has no task.
        """
        try:
            reply = await self._client.tasks.list_pids(
                tasks_pb.ListPidsRequest(container_id=container_id), what=container_id
            )
        except NotFound as err:
            raise NotFound(f"container {container_id} has no task", container_id=container_id) from err
        return [p.pid for p in reply.processes]

    # --- life cycle ------------------------------------------------------------------------

    async def start(self, container_id: str) -> int:
        """Create and start the container's task; return its pid.

        A running task is left alone (its pid is returned); a stopped one is deleted and replaced,
        which is how a container restarts.

        Raises:
            NotFound: no such container, or its snapshot is gone.
        """
        if container_id in self._unstarted:
            # Created ahead by :meth:`create`: started without looking it up first.
            self._unstarted.discard(container_id)
            with contextlib.suppress(NotFound):
                return await self._start(container_id)
        fresh = self._containers.take_fresh(container_id)
        existing = None if fresh is not None else await self.get(container_id)
        if existing is not None:
            if existing.status in (task_pb.RUNNING, task_pb.PAUSED, task_pb.PAUSING):
                return existing.pid
            if existing.status == task_pb.CREATED:
                return await self._start(container_id)
            await self._delete_task(container_id)
        await self._create(container_id, fresh)
        try:
            return await self._start(container_id)
        except BaseException:
            await asyncio.shield(self._force_delete_task(container_id))
            raise

    async def create(self, container_id: str) -> None:
        """Create the container's task without starting it; :meth:`start` then only starts it.

        A task that exists already (created, running or exited) is left for :meth:`start`.

        Raises:
            NotFound: no such container, or its snapshot is gone.
        """
        # A container created just now has no task, and its record and mounts are known.
        fresh = self._containers.take_fresh(container_id)
        if fresh is not None or await self.get(container_id) is None:
            await self._create(container_id, fresh)
            self._unstarted.add(container_id)

    async def cancel_created(self, container_id: str) -> None:
        """Delete the task if it was created and never started; any other task is left alone."""
        self._unstarted.discard(container_id)
        task = await self.get(container_id)
        if task is not None and task.status == task_pb.CREATED:
            await self._force_delete_task(container_id)

    async def _create(self, container_id: str, fresh: Fresh | None = None) -> None:
        if fresh is None:
            record = await self._containers.get(container_id)
            fresh = Fresh(dict(record.labels), await self._containers.mounts(record))
        stdout, stderr = await asyncio.to_thread(prepare_logs, self._logger, fresh.labels)
        creating = asyncio.ensure_future(
            self._client.tasks.create(
                tasks_pb.CreateTaskRequest(
                    container_id=container_id, rootfs=fresh.mounts, stdout=stdout, stderr=stderr
                ),
                what=container_id,
            )
        )
        try:
            await asyncio.shield(creating)
        except asyncio.CancelledError:
            # Never cancelled midway: containerd runs the shim's ``start`` command under this
            # call's context, and kills it with the call; a shim it had forked by then runs on
            # with no task in containerd (nothing would ever stop it, see orphans.py). The call
            # runs to its end, and the task it made for a caller that is gone is deleted.
            await asyncio.shield(self._discard_created(creating, container_id))
            raise

    async def _discard_created(self, creating: Awaitable[object], container_id: str) -> None:
        """Once a creation whose caller is gone has ended, delete the task it made (if it made one)."""
        try:
            await creating
        except Exception:  # noqa: BLE001 - it failed: containerd removed what it had started itself
            return
        try:
            await self._force_delete_task(container_id)
        except SchedulerError as err:
            _log.warning("task.discard_failed", container=container_id, error=err.message)

    async def _start(self, container_id: str, exec_id: str = "") -> int:
        reply = await self._client.tasks.start(
            tasks_pb.StartRequest(container_id=container_id, exec_id=exec_id), what=container_id
        )
        return reply.pid

    async def wait(
        self,
        container_id: str,
        exec_id: str = "",
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, sent to the server
    ) -> domain.ExitStatus:
        """Block until the process exits and return how; immediate for an exited one.

        Raises:
            NotFound: the container has no task (or no such exec).
            DeadlineExceeded: it did not exit within ``timeout`` seconds.
        """
        # The bound is kept on our side: a gRPC deadline would reach the shim, whose expiry
        # containerd reports as UNKNOWN rather than DEADLINE_EXCEEDED.
        try:
            async with asyncio.timeout(timeout):
                reply = await self._client.tasks.wait(
                    tasks_pb.WaitRequest(container_id=container_id, exec_id=exec_id),
                    timeout=WAIT_FOREVER,
                    what=container_id,
                )
        except TimeoutError as err:
            raise DeadlineExceeded(
                f"{exec_id or 'task'} of container {container_id} did not exit within {timeout:g}s",
                container_id=container_id,
            ) from err
        except NotFound as err:
            raise NotFound(f"container {container_id} has no task to wait for", container_id=container_id) from err
        oom = False
        if not exec_id and reply.exit_status == 128 + signals.SIGKILL:
            oom = await self._oom_killed(container_id)
        return exit_status(reply.exit_status, reply.exited_at, oom)

    async def _oom_killed(self, container_id: str) -> bool:
        # A stopped but undeleted task still reports its cgroup counters.
        try:
            reply = await self._client.tasks.metrics(tasks_pb.MetricsRequest(filters=[f"id=={container_id}"]))
        except NotFound:
            return False
        return any(oom_kills(m) > 0 for m in reply.metrics if m.id == container_id)

    async def kill(self, container_id: str, signal: str | int = "SIGTERM", *, all_processes: bool = False) -> bool:
        """Send a signal; False when the process had already finished.

        Raises:
            NotFound: the container has no task.
        """
        number = parse_signal(signal)
        try:
            await self._client.tasks.kill(
                tasks_pb.KillRequest(container_id=container_id, signal=number, all=all_processes),
                what=container_id,
            )
        except NotFound as err:
            if await self.get(container_id) is None:
                raise NotFound(f"container {container_id} has no task", container_id=container_id) from err
            return False
        return True

    async def pause(self, container_id: str) -> None:
        """Freeze the task (runc pause: the cgroup freezer).

        Raises:
            NotFound: the container has no task.
        """
        await self._client.tasks.pause(tasks_pb.PauseTaskRequest(container_id=container_id), what=container_id)

    async def resume(self, container_id: str) -> None:
        """Thaw a paused task; a task that is not paused is left as it is.

        Raises:
            NotFound: the container has no task.
        """
        task = await self.get(container_id)
        if task is None:
            raise NotFound(f"container {container_id} has no task", container_id=container_id)
        if task.status in (task_pb.PAUSED, task_pb.PAUSING):
            await self._client.tasks.resume(tasks_pb.ResumeTaskRequest(container_id=container_id), what=container_id)

    async def stop(self, container_id: str, grace: timedelta, signal: str | int = "SIGTERM") -> domain.ExitStatus:
        """Send ``signal``, wait up to ``grace``, then SIGKILL every process; return the exit status.

        The signal is sent again (see :mod:`~scheduler.runtime.containerd.stopping`) until it
        reached a handler: a process caught starting drops it.

        Raises:
            NotFound: the container has no task.
            InvalidArgument: a negative grace or an unknown signal.
        """
        if grace < timedelta(0):
            raise InvalidArgument("stop grace must not be negative", field="grace")
        number = parse_signal(signal)
        clock = asyncio.get_running_loop().time
        sent = clock()
        deadline = sent + grace.total_seconds()
        pid = await self.pid(container_id)
        # Read before sending: a handler installed after the signal was dropped must not hide the drop.
        sent_to = stopping.receiver(pid, number)
        await self.kill(container_id, number)
        after = stopping.FIRST_RESEND
        while sent + after < deadline:
            try:
                return await self.wait(container_id, timeout=max(sent + after - clock(), 0.001))
            except DeadlineExceeded:
                pass
            now = stopping.receiver(pid, number)
            if sent_to.got(now):
                break
            sent_to = now
            if not await self.kill(container_id, number):
                break
            after *= 2
        try:
            return await self.wait(container_id, timeout=max(deadline - clock(), 0.001))
        except DeadlineExceeded:
            pass
        await self.kill(container_id, signals.SIGKILL, all_processes=True)
        return await self.wait(container_id, timeout=KILL_WAIT)

    async def delete(self, container_id: str) -> None:
        """Remove the task, the container record and its snapshot, whatever state they are in.

        Idempotent: missing pieces are skipped. Order matters (containerd does not check it):
        kill -> wait -> task delete -> record delete -> snapshot remove. A task whose record was
        deleted first (an orphan) is recovered by re-creating a stub record to delete it through.
        """
        check_name(container_id, "container.id")
        try:
            record = await self._containers.get(container_id)
        except NotFound:
            record = None
        if record is not None:
            orphan = False
            has_task = await self.get(container_id) is not None
        else:
            # Tasks.Get needs the record; only the task list shows an orphan.
            orphan = has_task = container_id in await self.all()
        if has_task:
            if orphan:
                await self._containers.create_stub(container_id)
            await self._force_delete_task(container_id)
        await self._containers.delete(container_id)
        await self._containers.remove_snapshot(record.snapshot_key if record and record.snapshot_key else container_id)

    async def _force_delete_task(self, container_id: str) -> None:
        task = await self.get(container_id)
        if task is None:
            return
        if task.status != task_pb.STOPPED:
            try:
                await self.kill(container_id, signals.SIGKILL, all_processes=True)
                await self.wait(container_id, timeout=KILL_WAIT)
            except NotFound:
                return
        await self._delete_task(container_id)

    async def release(self, container_id: str) -> None:
        """Delete an exited or never started task (its shim goes with it); a running one, or none, is left alone."""
        task = await self.get(container_id)
        if task is None or task.status in (task_pb.RUNNING, task_pb.PAUSED, task_pb.PAUSING):
            return
        await self._force_delete_task(container_id)

    async def _delete_task(self, container_id: str) -> None:
        self._unstarted.discard(container_id)

        async def delete() -> None:
            with contextlib.suppress(NotFound):
                await self._client.tasks.delete(
                    tasks_pb.DeleteTaskRequest(container_id=container_id), what=container_id
                )

        # Delete can still see a running process right after an exit; retry briefly.
        await retry(delete, lambda err: isinstance(err, Internal), linear(5, 0.05))

    # --- exec ------------------------------------------------------------------------------

    async def exec(
        self,
        container_id: str,
        argv: Sequence[str],
        timeout: timedelta,  # noqa: ASYNC109 - the command's own run time limit, enforced by killing it
    ) -> domain.ExecResult:
        """Run ``argv`` in the running container with its env, user and capabilities; capture output.

        Output (stdout, then stderr; the last 64 KiB) goes through FIFOs read as it comes, into a
        ring: a command writing gigabytes costs neither disk nor memory. The rings are drained
        after the process is deleted, which ends the shim's copy. A command that cannot start
        reports exit code 127.

        Raises:
            NotFound: no such container, or it has no running task.
            DeadlineExceeded: the command ran longer than ``timeout`` (it is killed).
            InvalidArgument: empty argv or a non-positive timeout.
        """
        if timeout <= timedelta(0):
            raise InvalidArgument("exec timeout must be positive", field="timeout")
        process = oci.exec_process(await self._containers.spec(container_id), argv)
        if await self.pid(container_id) is None:
            raise NotFound(f"container {container_id} has no running task to exec in", container_id=container_id)
        exec_id = f"exec-{uuid.uuid4().hex[:12]}"
        directory = os.path.join(self.exec_dir, f"{container_id}-{exec_id}")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        rings = (OutputRing(os.path.join(directory, "stdout")), OutputRing(os.path.join(directory, "stderr")))
        output = (rings[0].path, rings[1].path)
        try:
            await self._client.tasks.exec(
                tasks_pb.ExecProcessRequest(
                    container_id=container_id,
                    exec_id=exec_id,
                    spec=json_any(oci.PROCESS_TYPE_URL, json.dumps(process).encode()),
                    stdout=output[0],
                    stderr=output[1],
                ),
                what=f"{container_id} {exec_id}",
            )
            try:
                exit_code, failure = await self._run_exec(container_id, exec_id, argv, timeout)
            finally:
                await asyncio.shield(self._delete_exec(container_id, exec_id))
            if failure is not None:
                return domain.ExecResult(exit_code=exit_code, output=failure)
            text = (rings[0].close() + rings[1].close()).decode("utf-8", errors="replace")
            return domain.ExecResult(exit_code=exit_code, output=text[-EXEC_OUTPUT_LIMIT:])
        finally:
            for ring in rings:
                ring.close()
            await asyncio.to_thread(shutil.rmtree, directory, True)

    async def _run_exec(
        self,
        container_id: str,
        exec_id: str,
        argv: Sequence[str],
        timeout: timedelta,  # noqa: ASYNC109 - see exec
    ) -> tuple[int, str | None]:
        """The exit code, and the reason when the command could not even start."""
        try:
            await self._start(container_id, exec_id)
        except Internal as err:
            return EXIT_EXEC_FAILED, err.message
        try:
            status = await self.wait(container_id, exec_id, timeout=timeout.total_seconds())
        except DeadlineExceeded as err:
            try:
                await self._client.tasks.kill(
                    tasks_pb.KillRequest(container_id=container_id, exec_id=exec_id, signal=signals.SIGKILL)
                )
                await self.wait(container_id, exec_id, timeout=KILL_WAIT)
            except NotFound:
                pass
            raise DeadlineExceeded(
                f"exec {list(argv)} in {container_id} ran longer than {timeout.total_seconds():g}s",
                container_id=container_id,
            ) from err
        await self._delete_exec(container_id, exec_id)
        return status.code, None

    async def _delete_exec(self, container_id: str, exec_id: str) -> None:
        # After a failed start the shim may still count the process as running for a moment:
        # each retry kills it (and waits briefly for the exit) before deleting it again.
        request = tasks_pb.DeleteProcessRequest(container_id=container_id, exec_id=exec_id)
        tries = 0

        async def attempt() -> None:
            nonlocal tries
            if tries:
                try:
                    await self._client.tasks.kill(
                        tasks_pb.KillRequest(container_id=container_id, exec_id=exec_id, signal=signals.SIGKILL)
                    )
                    await self.wait(container_id, exec_id, timeout=1.0)
                except (NotFound, DeadlineExceeded, Internal):
                    pass
            tries += 1
            with contextlib.suppress(NotFound):
                await self._client.tasks.delete_process(request, what=exec_id)

        await retry(attempt, lambda err: isinstance(err, Internal), linear(6, 0.05))
