"""Task events of our namespace from containerd's event exchange, as ``domain.TaskEvent``.

containerd replays nothing: events published while we are not subscribed are lost. After a
containerd restart the stream ends with UNAVAILABLE; we resubscribe with bounded backoff and call
``on_resubscribe`` so that the caller can reconcile (list tasks) for what it missed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf import empty_pb2

from scheduler import domain, log
from scheduler.errors import SchedulerError, Unavailable
from scheduler.runtime.containerd._gen.containerd.events import task_pb2 as events_pb
from scheduler.runtime.containerd._gen.containerd.services.events.v1 import events_pb2 as service_pb
from scheduler.runtime.containerd.client import ContainerdClient, RetryPolicy
from scheduler.runtime.containerd.convert import pack, to_datetime, unpack
from scheduler.runtime.containerd.errors import from_grpc

TOPICS = ("/tasks/start", "/tasks/exit", "/tasks/oom", "/tasks/delete")
"""Topics the scheduler listens to."""

RESUBSCRIBE = RetryPolicy(attempts=40, initial=0.05, maximum=2.0)
"""Backoff between resubscription attempts; after the last one the stream fails with Unavailable."""

_logger = log.get("containerd.events")


def subscription_filters(namespace: str, topics: tuple[str, ...] = TOPICS) -> list[str]:
    """Filters for Events.Subscribe: one per topic (OR'd), each AND'd with our namespace."""
    return [f'namespace=={namespace},topic=="{topic}"' for topic in topics]


def decode(envelope: service_pb.Envelope, namespace: str) -> domain.TaskEvent | None:
    """The TaskEvent in an envelope; None for another namespace, an exec's exit or an unknown payload."""
    if envelope.namespace != namespace:
        return None
    at = to_datetime(envelope.timestamp)
    exit_ = unpack(envelope.event, events_pb.TaskExit)
    if exit_ is not None:
        if exit_.id and exit_.id != exit_.container_id:
            return None
        return domain.TaskEvent(
            kind=domain.TaskEventKind.EXIT,
            container_id=exit_.container_id,
            pid=exit_.pid,
            exit_code=exit_.exit_status,
            at=to_datetime(exit_.exited_at) or at,
        )
    start = unpack(envelope.event, events_pb.TaskStart)
    if start is not None:
        return domain.TaskEvent(kind=domain.TaskEventKind.START, container_id=start.container_id, pid=start.pid, at=at)
    oom = unpack(envelope.event, events_pb.TaskOOM)
    if oom is not None:
        return domain.TaskEvent(kind=domain.TaskEventKind.OOM, container_id=oom.container_id, at=at)
    delete = unpack(envelope.event, events_pb.TaskDelete)
    if delete is not None:
        if delete.id and delete.id != delete.container_id:
            return None
        return domain.TaskEvent(
            kind=domain.TaskEventKind.DELETE,
            container_id=delete.container_id,
            pid=delete.pid,
            exit_code=delete.exit_status,
            at=to_datetime(delete.exited_at) or at,
        )
    return None


class TaskEventStream:
    """An async iterator of our task events that survives containerd restarts.

    ``await stream.connected()`` returns once the subscription is live, so that a caller can
    subscribe before starting a task and be sure not to miss its events.
    """

    def __init__(
        self,
        client: ContainerdClient,
        *,
        on_resubscribe: Callable[[], Awaitable[None]] | None = None,
        retry: RetryPolicy = RESUBSCRIBE,
    ) -> None:
        self._client = client
        self._on_resubscribe = on_resubscribe
        self._retry = retry
        self._queue: asyncio.Queue[domain.TaskEvent | BaseException] = asyncio.Queue()
        self._live = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None

    def _ensure_started(self) -> None:
        if self._pump is None:
            self._pump = asyncio.create_task(self._run(), name="containerd-events")

    async def connected(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - a plain bound
        """Wait until the subscription is established.

        Raises:
            Unavailable: it was not within ``timeout`` seconds.
        """
        self._ensure_started()
        try:
            async with asyncio.timeout(timeout):
                await self._live.wait()
        except TimeoutError as err:
            raise Unavailable("could not subscribe to containerd events") from err

    def __aiter__(self) -> TaskEventStream:
        return self

    async def __anext__(self) -> domain.TaskEvent:
        self._ensure_started()
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def aclose(self) -> None:
        """Stop the subscription."""
        if self._pump is not None:
            self._pump.cancel()
            try:
                await self._pump
            except asyncio.CancelledError:
                pass
            self._pump = None

    async def _run(self) -> None:
        delays = self._retry.delays()
        first = True
        try:
            while True:
                try:
                    await self._subscribe_once(first)
                except Unavailable as err:
                    if self._live.is_set():
                        # It had been live: a fresh outage, with the whole retry budget again.
                        delays = self._retry.delays()
                    self._live.clear()
                    if not delays:
                        raise Unavailable(f"lost containerd events and could not resubscribe: {err.message}") from err
                    delay = delays.pop(0)
                    _logger.warning("containerd event stream lost; resubscribing", delay=delay, error=err.message)
                    await asyncio.sleep(delay)
                first = False
        except asyncio.CancelledError:
            raise
        except BaseException as err:
            await self._queue.put(err)

    async def _subscribe_once(self, first: bool) -> None:
        """One subscription, until the stream breaks (raises Unavailable) or ends."""
        namespace = self._client.namespace
        # A probe event on a topic of our own proves the subscription is registered server-side.
        probe = f"/scheduler/probe/{uuid.uuid4().hex}"
        filters = [*subscription_filters(namespace), f'namespace=={namespace},topic=="{probe}"']
        call = self._client.events.subscribe.open(service_pb.SubscribeRequest(filters=filters), timeout=0)
        prober = asyncio.create_task(self._probe(probe))
        try:
            async for envelope in call:
                if envelope.topic == probe:
                    if not self._live.is_set():
                        prober.cancel()
                        # Server-side the subscription is live already: reconcile, then report it.
                        if not first and self._on_resubscribe is not None:
                            await self._on_resubscribe()
                        self._live.set()
                    continue
                event = decode(envelope, namespace)
                if event is not None:
                    await self._queue.put(event)
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, "Events.Subscribe") from err
        finally:
            prober.cancel()
            call.cancel()
        raise Unavailable("containerd closed the event stream")

    async def _probe(self, topic: str) -> None:
        request = service_pb.PublishRequest(topic=topic, event=pack(empty_pb2.Empty()))
        for _ in range(100):
            if self._live.is_set():
                return
            try:
                await self._client.events.publish(request, timeout=2.0)
            except SchedulerError as err:
                _logger.debug("event probe not published", error=err.message)
            await asyncio.sleep(0.1)


def events(
    client: ContainerdClient, *, on_resubscribe: Callable[[], Awaitable[None]] | None = None
) -> AsyncIterator[domain.TaskEvent]:
    """A ``TaskEventStream`` over ``client``'s namespace."""
    return TaskEventStream(client, on_resubscribe=on_resubscribe)
