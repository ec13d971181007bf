"""A typed asyncio client of ``scheduler.v1.SchedulerService``.

It returns the API's own messages (typed by the generated stubs), pages through lists itself,
turns every failed call into an :class:`~scheduler.client.errors.ApiError` carrying the decoded
ErrorInfo, BadRequest and RetryInfo, resumes event streams after a dropped connection, and waits
for a status by watching events::

    async with SchedulerClient.connect("127.0.0.1:50051") as client:
        await client.create("demo", "toolbox")
        env = await client.wait_for("demo", {pb.ENVIRONMENT_STATUS_RUNNING})
        await client.delete("demo", etag=env.etag)
"""

from __future__ import annotations

import asyncio
import builtins
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Sequence
from datetime import timedelta
from types import TracebackType
from typing import TypeVar

import grpc
from google.protobuf import duration_pb2, field_mask_pb2

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from scheduler.client.channel import DEFAULT_ADDRESS, ConnectConfig
from scheduler.client.errors import ApiError, WaitFailed

T = TypeVar("T")

RESUMABLE = {"UNAVAILABLE"}
"""Stream failures after which an event stream reconnects (a daemon restart, a dropped connection)."""


def _later(env: pb.Environment, than: pb.Environment) -> bool:
    now, then = env.update_time, than.update_time
    return (now.seconds, now.nanos) > (then.seconds, then.nanos)


def _duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(seconds=seconds))
    return out


class SchedulerClient:
    """The scheduler's API as coroutines; use ``async with`` or call :meth:`close`."""

    def __init__(self, config: ConnectConfig | None = None) -> None:
        self.config = config or ConnectConfig()
        self._channel = self.config.channel()
        self._stub = pb_grpc.SchedulerServiceStub(self._channel)

    @classmethod
    def connect(cls, address: str = DEFAULT_ADDRESS, **options: object) -> SchedulerClient:
        """A client of the daemon at ``address``; ``options`` are :class:`ConnectConfig` fields."""
        return cls(ConnectConfig(address, **options))  # type: ignore[arg-type]

    async def close(self) -> None:
        """Close the channel, cancelling calls in flight."""
        await self._channel.close()

    async def __aenter__(self) -> SchedulerClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _unary(self, call: Callable[..., Awaitable[T]], request: object, seconds: float | None = None) -> T:
        try:
            return await call(request, timeout=seconds or self.config.timeout, metadata=self.config.metadata())
        except grpc.aio.AioRpcError as err:
            raise ApiError.from_rpc(err) from err

    # --- environments -----------------------------------------------------------------------------

    async def create(
        self,
        name: str,
        spec: pb.EnvironmentSpecification | str,
        *,
        request_id: str = "",
        validate_only: bool = False,
    ) -> pb.Environment:
        """Create environment ``name`` from a spec (or just a stack name); returns it PENDING.

        A request id is generated when none is given, so a retry of this call is idempotent.
        """
        if isinstance(spec, str):
            spec = pb.EnvironmentSpecification(stack=spec)
        request = pb.CreateEnvironmentRequest(
            name=name, spec=spec, request_id=request_id or uuid.uuid4().hex, validate_only=validate_only
        )
        return await self._unary(self._stub.CreateEnvironment, request)

    async def clone(
        self,
        source: str,
        name: str,
        *,
        spec: pb.EnvironmentSpecification | None = None,
        update_mask: Sequence[str] = (),
        request_id: str = "",
        validate_only: bool = False,
    ) -> pb.Environment:
        """Create environment ``name`` as a copy of ``source`` (its spec and data); returns it PENDING.

        The ``update_mask`` paths of ``spec`` override the source's specification. A request id
        is generated when none is given, so a retry of this call is idempotent.
        """
        request = pb.CloneEnvironmentRequest(
            source=source,
            name=name,
            spec=spec,
            update_mask=field_mask_pb2.FieldMask(paths=list(update_mask)),
            request_id=request_id or uuid.uuid4().hex,
            validate_only=validate_only,
        )
        return await self._unary(self._stub.CloneEnvironment, request)

    async def get(self, name: str) -> pb.Environment:
        """Return environment ``name``."""
        return await self._unary(self._stub.GetEnvironment, pb.GetEnvironmentRequest(name=name))

    async def list(self, filter: str = "", *, page_size: int = 0) -> builtins.list[pb.Environment]:
        """Every environment matching ``filter`` (the ListEnvironments grammar), oldest first."""
        found: builtins.list[pb.Environment] = []
        token = ""
        while True:
            request = pb.ListEnvironmentsRequest(page_size=page_size, page_token=token, filter=filter)
            page = await self._unary(self._stub.ListEnvironments, request)
            found.extend(page.environments)
            if not page.next_page_token or page.next_page_token == token:
                return found
            token = page.next_page_token

    async def update(
        self,
        name: str,
        spec: pb.EnvironmentSpecification,
        *,
        update_mask: Sequence[str] = (),
        etag: str = "",
        validate_only: bool = False,
        drain: float | None = None,
    ) -> pb.UpdateEnvironmentResponse:
        """Change environment ``name``: the whole spec, or only the ``update_mask`` paths of it.

        With ``etag``, fails with ``ApiError`` reason ``ETAG_MISMATCH`` if it changed meanwhile.
        """
        request = pb.UpdateEnvironmentRequest(
            name=name,
            spec=spec,
            update_mask=field_mask_pb2.FieldMask(paths=list(update_mask)),
            etag=etag,
            validate_only=validate_only,
        )
        if drain is not None:
            request.drain.CopyFrom(_duration(drain))
        return await self._unary(self._stub.UpdateEnvironment, request)

    async def delete(self, name: str, *, etag: str = "", keep_volumes: bool = False) -> pb.Environment:
        """Start deleting environment ``name``; returns it DELETING."""
        request = pb.DeleteEnvironmentRequest(name=name, etag=etag, keep_volumes=keep_volumes)
        return await self._unary(self._stub.DeleteEnvironment, request)

    async def stop(
        self, name: str, *, etag: str = "", request_id: str = "", validate_only: bool = False
    ) -> pb.Environment:
        """Put environment ``name`` to sleep (containers stopped, all else kept); returns at once."""
        request = pb.StopEnvironmentRequest(name=name, etag=etag, request_id=request_id, validate_only=validate_only)
        return await self._unary(self._stub.StopEnvironment, request)

    async def start(
        self, name: str, *, etag: str = "", request_id: str = "", validate_only: bool = False
    ) -> pb.Environment:
        """Wake environment ``name`` (containers started in dependency order); returns at once."""
        request = pb.StartEnvironmentRequest(name=name, etag=etag, request_id=request_id, validate_only=validate_only)
        return await self._unary(self._stub.StartEnvironment, request)

    async def history(self, name: str) -> builtins.list[pb.HistoryEntry]:
        """The whole audit trail of environment ``name``, oldest first."""
        entries: builtins.list[pb.HistoryEntry] = []
        token = ""
        while True:
            request = pb.GetEnvironmentHistoryRequest(name=name, page_token=token)
            page = await self._unary(self._stub.GetEnvironmentHistory, request)
            entries.extend(page.entries)
            if not page.next_page_token or page.next_page_token == token:
                return entries
            token = page.next_page_token

    async def backup(self, name: str) -> pb.Backup:
        """Archive environment ``name`` on the daemon's host; database dumps can take minutes."""
        return await self._unary(
            self._stub.BackupEnvironment, pb.BackupEnvironmentRequest(name=name), max(self.config.timeout, 600)
        )

    async def backups(self, name: str) -> builtins.list[pb.Backup]:
        """Archives of environment ``name``, newest first."""
        reply = await self._unary(self._stub.ListBackups, pb.ListBackupsRequest(name=name))
        return list(reply.backups)

    async def templates(self) -> builtins.list[pb.DataTemplate]:
        """The data-directory templates on the daemon's host, oldest first."""
        reply = await self._unary(self._stub.ListTemplates, pb.ListTemplatesRequest())
        return list(reply.templates)

    async def restore(self, backup: str, name: str = "") -> pb.Environment:
        """Create environment ``name`` (default: the archived one) from ``backup``; returns it running."""
        request = pb.RestoreEnvironmentRequest(backup=backup, name=name)
        return await self._unary(self._stub.RestoreEnvironment, request, max(self.config.timeout, 900))

    async def operations(self, name: str) -> builtins.list[pb.Operation]:
        """Timelines of environment ``name``'s recent deploys, updates and deletions, oldest first."""
        reply = await self._unary(self._stub.ListOperations, pb.ListOperationsRequest(name=name))
        return list(reply.operations)

    async def reload_configuration(self) -> pb.ReloadConfigurationResponse:
        """Make the daemon re-read its configuration file (admin only)."""
        return await self._unary(self._stub.ReloadConfiguration, pb.ReloadConfigurationRequest())

    async def nodes(self) -> builtins.list[pb.Node]:
        """The live nodes of the fleet, by name (a daemon running alone reports itself)."""
        reply = await self._unary(self._stub.ListNodes, pb.ListNodesRequest())
        return list(reply.nodes)

    async def drain_node(self, name: str) -> pb.Node:
        """Mark node ``name`` draining: no new environment goes there and its own move away."""
        return await self._unary(self._stub.DrainNode, pb.DrainNodeRequest(node=name))

    async def undrain_node(self, name: str) -> pb.Node:
        """Make drained node ``name`` eligible for new environments again."""
        return await self._unary(self._stub.UndrainNode, pb.UndrainNodeRequest(node=name))

    async def stacks(self) -> builtins.list[pb.Stack]:
        """The whole catalogue of stacks, by name."""
        found: builtins.list[pb.Stack] = []
        token = ""
        while True:
            page = await self._unary(self._stub.ListStacks, pb.ListStacksRequest(page_token=token))
            found.extend(page.stacks)
            if not page.next_page_token or page.next_page_token == token:
                return found
            token = page.next_page_token

    async def metrics(self, name: str, *, window: float | None = None) -> pb.EnvironmentMetrics:
        """A resource sample of every container of environment ``name``, CPU over ``window`` seconds."""
        request = pb.GetEnvironmentMetricsRequest(name=name)
        if window is not None:
            request.window.CopyFrom(_duration(window))
        return await self._unary(self._stub.GetEnvironmentMetrics, request, self.config.timeout + (window or 1))

    async def logs(
        self,
        name: str,
        *,
        services: Collection[str] = (),
        tail: int = 0,
        follow: bool = False,
        stream: pb.LogStream.ValueType = pb.LOG_STREAM_UNSPECIFIED,
    ) -> AsyncIterator[pb.LogLine]:
        """Log lines of environment ``name``: the retained ones (or a tail), then new ones with ``follow``."""
        request = pb.GetEnvironmentLogsRequest(
            name=name, services=list(services), tail=tail, follow=follow, stream=stream
        )
        call = self._stub.GetEnvironmentLogs(
            request, timeout=None if follow else self.config.timeout, metadata=self.config.metadata()
        )
        try:
            async for line in call:
                yield line
        except grpc.aio.AioRpcError as err:
            raise ApiError.from_rpc(err) from err
        finally:
            call.cancel()

    # --- events -----------------------------------------------------------------------------------

    async def events(
        self,
        name: str = "",
        *,
        since: int | None = None,
        heartbeats: bool = False,
        heartbeat_interval: float = 15.0,
        reconnect_delay: float = 1.0,
        max_reconnects: int = 60,
    ) -> AsyncGenerator[pb.Event]:
        """Events (of one environment, or all) after ``since``, then live ones, forever.

        When the stream breaks (a daemon restart, a dropped connection), it reconnects with
        ``since`` set to the last sequence seen, so no event is missed or repeated; after
        ``max_reconnects`` failed attempts in a row the last error is raised. Heartbeats are
        yielded only with ``heartbeats``. Until the first event or heartbeat arrives there is no
        sequence to resume from, so a reconnect then starts with live events.
        """
        last = since
        failures = 0
        while True:
            request = pb.WatchEventsRequest(name=name, heartbeat_interval=_duration(heartbeat_interval))
            if last is not None:
                request.since = last
            call = self._stub.WatchEvents(request, metadata=self.config.metadata())
            try:
                async for event in call:
                    failures = 0
                    last = event.sequence if event.type != pb.EVENT_TYPE_EVENTS_LOST else last
                    if event.type != pb.EVENT_TYPE_HEARTBEAT or heartbeats:
                        yield event
            except grpc.aio.AioRpcError as err:
                error = ApiError.from_rpc(err)
                failures += 1
                if error.code not in RESUMABLE or failures > max_reconnects:
                    raise error from err
            finally:
                call.cancel()
            # The stream failed or the daemon ended it (a shutdown): resume from the last sequence.
            await asyncio.sleep(reconnect_delay)

    async def wait_for(
        self,
        name: str,
        statuses: Collection[pb.EnvironmentStatus.ValueType],
        *,
        generation: int = 0,
        since: pb.Environment | None = None,
        observe: Callable[[pb.Environment], None] | None = None,
    ) -> pb.Environment:
        """Wait until environment ``name`` has one of ``statuses`` with ``generation`` rolled out.

        Watches the environment's events and re-reads it after each (and at every heartbeat), so
        a change is seen at once and nothing depends on catching one particular event. Bound it
        with ``asyncio.timeout()``. A FAILED status set after ``since`` (the environment as the
        create or update returned it) ends the wait at once, even though a failed rollout is not
        an observed generation. ``observe`` sees every state read (for progress displays).

        Raises:
            WaitFailed: it FAILED (when FAILED is not waited for) or was deleted.
        """
        watch = self.events(name, heartbeats=True, heartbeat_interval=1.0)
        try:
            while True:
                try:
                    env = await self.get(name)
                except ApiError as err:
                    if err.code == "NOT_FOUND":
                        raise WaitFailed("NOT_FOUND", f"environment {name!r} no longer exists") from err
                    raise
                if observe is not None:
                    observe(env)
                failed_since = env.status == pb.ENVIRONMENT_STATUS_FAILED and since is not None and _later(env, since)
                if env.observed_generation >= generation or failed_since:
                    if env.status in statuses:
                        return env
                    if env.status == pb.ENVIRONMENT_STATUS_FAILED:
                        problem = next((c.message for c in env.conditions if c.status == pb.CONDITION_STATUS_FALSE), "")
                        raise WaitFailed("FAILED_PRECONDITION", f"environment {name!r} failed: {problem}")
                await anext(watch)
        finally:
            await watch.aclose()

    async def wait_deleted(self, name: str) -> None:
        """Wait until environment ``name`` no longer exists; bound it with ``asyncio.timeout()``."""
        watch = self.events(name, heartbeats=True, heartbeat_interval=1.0)
        try:
            while True:
                try:
                    await self.get(name)
                except ApiError as err:
                    if err.code == "NOT_FOUND":
                        return
                    raise
                await anext(watch)
        finally:
            await watch.aclose()
