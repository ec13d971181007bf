"""TaskEventStream against an in-process Events server: probe-proven liveness, resubscription, bounds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2

from scheduler import domain, errors
from scheduler.runtime.containerd._gen.containerd.events import task_pb2 as ev
from scheduler.runtime.containerd._gen.containerd.services.events.v1 import events_pb2 as pb
from scheduler.runtime.containerd._gen.containerd.services.events.v1 import events_pb2_grpc as pb_grpc
from scheduler.runtime.containerd._gen.containerd.services.version.v1 import version_pb2, version_pb2_grpc
from scheduler.runtime.containerd.client import ContainerdClient, RetryPolicy
from scheduler.runtime.containerd.convert import pack
from scheduler.runtime.containerd.events import TaskEventStream


class Version(version_pb2_grpc.VersionServicer):
    async def Version(self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext) -> version_pb2.VersionResponse:  # type: ignore[override]
        return version_pb2.VersionResponse(version="1.6.20")


class Events(pb_grpc.EventsServicer):
    """Delivers published probes to subscribers; ``break_after`` ends a subscription with UNAVAILABLE."""

    def __init__(self, scripts: list[list[pb.Envelope]], always_fail: bool = False) -> None:
        self.scripts = scripts
        self.always_fail = always_fail
        self.subscriptions = 0
        self.queues: list[asyncio.Queue[pb.Envelope]] = []

    async def Publish(self, request: pb.PublishRequest, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:  # type: ignore[override]
        namespace = dict(context.invocation_metadata() or ()).get("containerd-namespace", "")  # type: ignore[arg-type]
        for queue in self.queues:
            queue.put_nowait(pb.Envelope(namespace=namespace, topic=request.topic, event=request.event))
        return empty_pb2.Empty()

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Envelope]:  # type: ignore[override]
        self.subscriptions += 1
        if self.always_fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")
        queue: asyncio.Queue[pb.Envelope] = asyncio.Queue()
        self.queues.append(queue)
        try:
            probe = await queue.get()
            yield probe
            script = self.scripts.pop(0) if self.scripts else []
            for envelope in script:
                yield envelope
            if self.scripts:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "containerd restarting")
            await asyncio.Event().wait()
        finally:
            self.queues.remove(queue)


def exit_envelope(cid: str, code: int, namespace: str = "ns") -> pb.Envelope:
    return pb.Envelope(
        namespace=namespace,
        topic="/tasks/exit",
        event=pack(ev.TaskExit(container_id=cid, id=cid, pid=1, exit_status=code)),
    )


async def serve(tmp_path: Path, events: Events) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    version_pb2_grpc.add_VersionServicer_to_server(Version(), server)
    pb_grpc.add_EventsServicer_to_server(events, server)
    path = str(tmp_path / "ev.sock")
    server.add_insecure_port(f"unix://{path}")
    await server.start()
    return server, path


async def test_resubscribes_after_unavailable_and_reports_it(tmp_path: Path) -> None:
    events = Events([[exit_envelope("a", 1), exit_envelope("x", 9, namespace="other")], [exit_envelope("b", 2)]])
    server, path = await serve(tmp_path, events)
    client = await ContainerdClient.connect(path, "ns")
    resubscribed = 0

    async def on_resubscribe() -> None:
        nonlocal resubscribed
        resubscribed += 1

    stream = TaskEventStream(client, on_resubscribe=on_resubscribe, retry=RetryPolicy(attempts=5, initial=0.01))
    try:
        await stream.connected(timeout=5)
        async with asyncio.timeout(5):
            first = await anext(stream)
            second = await anext(stream)
        assert (first.kind, first.container_id, first.exit_code) == (domain.TaskEventKind.EXIT, "a", 1)
        assert (second.container_id, second.exit_code) == ("b", 2)  # "x" was another namespace's
        assert events.subscriptions == 2 and resubscribed == 1
    finally:
        await stream.aclose()
        await client.close()
        await server.stop(None)


async def test_gives_up_after_bounded_attempts(tmp_path: Path) -> None:
    events = Events([], always_fail=True)
    server, path = await serve(tmp_path, events)
    client = await ContainerdClient.connect(path, "ns")
    stream = TaskEventStream(client, retry=RetryPolicy(attempts=3, initial=0.01, maximum=0.02))
    try:
        with pytest.raises(errors.Unavailable, match="could not resubscribe"):
            async with asyncio.timeout(5):
                await anext(stream)
        assert events.subscriptions == 3
    finally:
        await stream.aclose()
        await client.close()
        await server.stop(None)


async def test_each_outage_gets_the_whole_retry_budget(tmp_path: Path) -> None:
    events = Events([[exit_envelope(f"c{i}", i)] for i in range(4)])
    server, path = await serve(tmp_path, events)
    client = await ContainerdClient.connect(path, "ns")
    stream = TaskEventStream(client, retry=RetryPolicy(attempts=2, initial=0.01))
    try:
        async with asyncio.timeout(5):
            seen = [(await anext(stream)).container_id for _ in range(4)]
        assert seen == ["c0", "c1", "c2", "c3"] and events.subscriptions == 4
    finally:
        await stream.aclose()
        await client.close()
        await server.stop(None)
