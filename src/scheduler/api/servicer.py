"""The thin SchedulerService servicer: proto in, service call, proto out. Nothing else."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from scheduler import domain, errors
from scheduler.api import convert, fieldmask
from scheduler.api import filter as list_filter
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from scheduler.api.gate import CALLER
from scheduler.domain import LogQuery
from scheduler.service import EnvironmentService

Context = grpc.aio.ServicerContext[Any, Any]

MAX_REPLY_BYTES = 3 * 1024 * 1024
"""Largest page of ListEnvironments; clients refuse replies over 4 MB by default."""


class EnvironmentProtos:
    """Converted environments by (uid, revision), so reads convert each stored revision once.

    A stored revision never changes (every write makes a new one), so neither does its message;
    messages are only read after this (grpc serialises them, a list response copies them).
    Revision 0 (not stored: a validate-only create) is never cached. Bounded, oldest out first.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._items: collections.OrderedDict[tuple[str, int], pb.Environment] = collections.OrderedDict()
        self._capacity = capacity

    def of(self, env: domain.Environment) -> pb.Environment:
        """The message of ``env``, converted now or earlier."""
        if env.revision == 0:
            return convert.environment_to_proto(env)
        key = (env.uid, env.revision)
        message = self._items.get(key)
        if message is None:
            message = self._items[key] = convert.environment_to_proto(env)
            if len(self._items) > self._capacity:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return message


def _masked_edit(
    spec: pb.EnvironmentSpecification, paths: list[str], *, replace_when_empty: bool
) -> Callable[[domain.EnvironmentRequest], domain.EnvironmentRequest]:
    """The stored request with the masked fields of ``spec`` applied (no mask: replaced, or kept)."""

    def edit(stored: domain.EnvironmentRequest) -> domain.EnvironmentRequest:
        if not paths:
            return convert.request_from_proto(spec) if replace_when_empty else stored
        return convert.request_from_proto(fieldmask.apply(convert.request_to_proto(stored), spec, paths))

    return edit


class ListReplies:
    """Recent ListEnvironments replies, each reused while its page holds the very same environments.

    The service returns the same redacted object for an environment until it changes (any
    write makes a new one), so a page whose environments are all the same objects, with the
    same next token, would be rebuilt identical: the reply built for it is served again.
    Replies are never modified after this (the gate filters into a copy). Bounded, oldest out first.
    """

    def __init__(self, capacity: int = 64) -> None:
        self._items: collections.OrderedDict[
            tuple[str, str, int], tuple[tuple[domain.Environment, ...], str, pb.ListEnvironmentsResponse, bool]
        ] = collections.OrderedDict()
        self._capacity = capacity

    def reply(
        self, key: tuple[str, str, int], envs: list[domain.Environment], token: str, protos: EnvironmentProtos
    ) -> tuple[pb.ListEnvironmentsResponse, bool]:
        """The reply for this page, and whether it fits ``MAX_REPLY_BYTES``."""
        held = self._items.get(key)
        if (
            held is not None
            and held[1] == token
            and len(held[0]) == len(envs)
            and all(a is b for a, b in zip(held[0], envs, strict=True))
        ):
            self._items.move_to_end(key)
            return held[2], held[3]
        reply = pb.ListEnvironmentsResponse(environments=[protos.of(e) for e in envs], next_page_token=token)
        fits = reply.ByteSize() <= MAX_REPLY_BYTES
        self._items[key] = (tuple(envs), token, reply, fits)
        self._items.move_to_end(key)
        if len(self._items) > self._capacity:
            self._items.popitem(last=False)
        return reply, fits


def _actor(context: Context) -> str:
    return CALLER.get() or context.peer() or "unknown"


class SchedulerServicer(pb_grpc.SchedulerServiceServicer):
    """Maps each RPC onto one use case of :class:`EnvironmentService`."""

    def __init__(self, service: EnvironmentService) -> None:
        self._service = service
        self._protos = EnvironmentProtos()
        self._pages = ListReplies()
        self.reload: Callable[[], Awaitable[domain.ReloadReport]] | None = None
        """Re-reads the configuration (set by the daemon once its reloader exists)."""

    async def CreateEnvironment(self, request: pb.CreateEnvironmentRequest, context: Context) -> pb.Environment:
        env = await self._service.create(
            request.name,
            convert.request_from_proto(request.spec),
            request_id=request.request_id,
            actor=_actor(context),
            validate_only=request.validate_only,
        )
        return convert.environment_to_proto(env)

    async def CloneEnvironment(self, request: pb.CloneEnvironmentRequest, context: Context) -> pb.Environment:
        env = await self._service.clone(
            request.source,
            request.name,
            _masked_edit(request.spec, list(request.update_mask.paths), replace_when_empty=False),
            request_id=request.request_id,
            actor=_actor(context),
            validate_only=request.validate_only,
        )
        return convert.environment_to_proto(env)

    async def GetEnvironment(self, request: pb.GetEnvironmentRequest, context: Context) -> pb.Environment:
        return self._protos.of(await self._service.get(request.name))

    async def UpdateEnvironment(
        self, request: pb.UpdateEnvironmentRequest, context: Context
    ) -> pb.UpdateEnvironmentResponse:
        drain = convert.duration_from_proto(request.drain, "drain") if request.HasField("drain") else None
        env, plan = await self._service.update(
            request.name,
            _masked_edit(request.spec, list(request.update_mask.paths), replace_when_empty=True),
            validate_only=request.validate_only,
            drain=drain,
            actor=_actor(context),
            etag=request.etag,
        )
        return pb.UpdateEnvironmentResponse(
            environment=convert.environment_to_proto(env),
            plan=[convert.change_to_proto(change) for change in plan],
        )

    async def DeleteEnvironment(self, request: pb.DeleteEnvironmentRequest, context: Context) -> pb.Environment:
        env = await self._service.delete(
            request.name, keep_volumes=request.keep_volumes, actor=_actor(context), etag=request.etag
        )
        return convert.environment_to_proto(env)

    async def StopEnvironment(self, request: pb.StopEnvironmentRequest, context: Context) -> pb.Environment:
        env = await self._service.stop(
            request.name,
            etag=request.etag,
            request_id=request.request_id,
            actor=_actor(context),
            validate_only=request.validate_only,
        )
        return convert.environment_to_proto(env)

    async def StartEnvironment(self, request: pb.StartEnvironmentRequest, context: Context) -> pb.Environment:
        env = await self._service.start(
            request.name,
            etag=request.etag,
            request_id=request.request_id,
            actor=_actor(context),
            validate_only=request.validate_only,
        )
        return convert.environment_to_proto(env)

    async def ListEnvironments(
        self, request: pb.ListEnvironmentsRequest, context: Context
    ) -> pb.ListEnvironmentsResponse:
        where = list_filter.parse(request.filter)
        page_size = request.page_size
        while True:
            envs, token = await self._service.list(page_size=page_size, page_token=request.page_token, where=where)
            key = (request.page_token, request.filter, page_size)
            reply, fits = self._pages.reply(key, envs, token, self._protos)
            # A page must fit the client's default 4 MB limit: ask again for fewer environments.
            if len(envs) <= 1 or fits:
                return reply
            page_size = len(envs) // 2

    async def GetEnvironmentLogs(
        self, request: pb.GetEnvironmentLogsRequest, context: Context
    ) -> AsyncIterator[pb.LogLine]:
        query = LogQuery(
            services=tuple(request.services),
            tail=request.tail,
            since=convert.time_from_proto(request.since_time, "since_time") if request.HasField("since_time") else None,
            follow=request.follow,
            stream=convert.log_stream_from_proto(request.stream),
        )
        async for line in self._service.logs(request.name, query):
            yield convert.log_line_to_proto(line)

    async def GetEnvironmentMetrics(
        self, request: pb.GetEnvironmentMetricsRequest, context: Context
    ) -> pb.EnvironmentMetrics:
        window = convert.duration_from_proto(request.window, "window") if request.HasField("window") else None
        samples = await self._service.metrics(request.name, window=window)
        return convert.metrics_to_proto(request.name, samples)

    async def ListStacks(self, request: pb.ListStacksRequest, context: Context) -> pb.ListStacksResponse:
        stacks, token = self._service.stacks(page_size=request.page_size, page_token=request.page_token)
        return pb.ListStacksResponse(stacks=[convert.stack_to_proto(s) for s in stacks], next_page_token=token)

    async def WatchEvents(self, request: pb.WatchEventsRequest, context: Context) -> AsyncIterator[pb.Event]:
        since = request.since if request.HasField("since") else None
        heartbeat = (
            convert.duration_from_proto(request.heartbeat_interval) if request.HasField("heartbeat_interval") else None
        )
        async for event in self._service.watch(request.name, since=since, heartbeat=heartbeat):
            yield convert.event_to_proto(event)

    async def GetEnvironmentHistory(
        self, request: pb.GetEnvironmentHistoryRequest, context: Context
    ) -> pb.GetEnvironmentHistoryResponse:
        entries, token = await self._service.history(
            request.name, page_size=request.page_size, page_token=request.page_token
        )
        return convert.history_to_proto(entries, token)

    async def BackupEnvironment(self, request: pb.BackupEnvironmentRequest, context: Context) -> pb.Backup:
        return convert.backup_to_proto(await self._service.backup(request.name))

    async def ListBackups(self, request: pb.ListBackupsRequest, context: Context) -> pb.ListBackupsResponse:
        return pb.ListBackupsResponse(
            backups=[convert.backup_to_proto(b) for b in await self._service.backups(request.name)]
        )

    async def ListOperations(self, request: pb.ListOperationsRequest, context: Context) -> pb.ListOperationsResponse:
        records = await self._service.operations(request.name)
        return pb.ListOperationsResponse(operations=[convert.operation_to_proto(r) for r in records])

    async def ListTemplates(self, request: pb.ListTemplatesRequest, context: Context) -> pb.ListTemplatesResponse:
        return pb.ListTemplatesResponse(
            templates=[convert.template_to_proto(t) for t in await self._service.templates()]
        )

    async def ListNodes(self, request: pb.ListNodesRequest, context: Context) -> pb.ListNodesResponse:
        return pb.ListNodesResponse(nodes=[convert.node_to_proto(n) for n in await self._service.nodes()])

    async def DrainNode(self, request: pb.DrainNodeRequest, context: Context) -> pb.Node:
        return convert.node_to_proto(await self._service.drain_node(request.node))

    async def UndrainNode(self, request: pb.UndrainNodeRequest, context: Context) -> pb.Node:
        return convert.node_to_proto(await self._service.undrain_node(request.node))

    async def ReloadConfiguration(
        self, request: pb.ReloadConfigurationRequest, context: Context
    ) -> pb.ReloadConfigurationResponse:
        if self.reload is None:
            raise errors.Unimplemented("this daemon cannot reload its configuration")
        report = await self.reload()
        if report.error:
            raise errors.FailedPrecondition(f"configuration not reloaded, nothing changed: {report.error}")
        return pb.ReloadConfigurationResponse(applied=report.applied, needs_restart=report.needs_restart)

    async def RestoreEnvironment(self, request: pb.RestoreEnvironmentRequest, context: Context) -> pb.Environment:
        restored = await self._service.restore(request.backup, request.name, actor=_actor(context))
        return convert.environment_to_proto(restored)
