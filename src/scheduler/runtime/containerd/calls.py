"""Typed containerd calls: deadline, metadata, retry on UNAVAILABLE for idempotent calls, one error translation."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import grpc
from google.protobuf.message import Message

from scheduler import log
from scheduler.errors import InvalidArgument
from scheduler.retry import exponential
from scheduler.retry import retry as retry_call
from scheduler.rpcstatus import status_code
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
from scheduler.runtime.containerd.errors import from_grpc

if TYPE_CHECKING:
    from scheduler.runtime.containerd.client import ContainerdClient

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
LOG_PROTOS = False
"""Log every request and response at debug level (noisy; for debugging the wire)."""
_logger = log.get("containerd.client")


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

        async def attempt() -> Resp:
            return await self._method(request, timeout=max(deadline - time.monotonic(), 0.001), metadata=metadata)

        def unavailable(err: Exception) -> bool:
            return isinstance(err, grpc.aio.AioRpcError) and status_code(err) == grpc.StatusCode.UNAVAILABLE

        try:
            response = await retry_call(attempt, unavailable, delays, deadline=deadline)
        except grpc.aio.AioRpcError as err:
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
