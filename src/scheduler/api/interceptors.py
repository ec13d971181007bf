"""Per-RPC plumbing: request ids, one access-log line, and exceptions mapped to gRPC status.

The table ``STATUS_OF`` is the one place where scheduler errors become gRPC codes, ErrorInfo
reasons and retry advice. Every failure carries a ``google.rpc.Status`` in the
``grpc-status-details-bin`` trailer: an ErrorInfo always, a BadRequest for INVALID_ARGUMENT and a
RetryInfo where calling again helps.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from scheduler import bounds, errors, log
from scheduler.api.gate import Admission, Gate

_log = log.get("api")

ERROR_DOMAIN = "scheduler.v1"
"""ErrorInfo.domain of every error the API returns."""


@dataclass(frozen=True)
class ErrorMapping:
    """How one class of error reaches a client."""

    code: grpc.StatusCode
    reason: str
    """ErrorInfo reason unless the error names a more specific one."""
    retry_after: float | None = None
    """Seconds after which the same call may succeed (a RetryInfo); None: do not retry as is."""


STATUS_OF: dict[type[errors.SchedulerError], ErrorMapping] = {
    errors.NotFound: ErrorMapping(grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
    errors.AlreadyExists: ErrorMapping(grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS"),
    errors.InvalidArgument: ErrorMapping(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    errors.FailedPrecondition: ErrorMapping(grpc.StatusCode.FAILED_PRECONDITION, "FAILED_PRECONDITION"),
    # Read again, then retry: the usual answer to a lost optimistic-concurrency race.
    errors.Conflict: ErrorMapping(grpc.StatusCode.ABORTED, "CONCURRENT_MODIFICATION", retry_after=0.0),
    errors.OutOfRange: ErrorMapping(grpc.StatusCode.OUT_OF_RANGE, "OUT_OF_RANGE"),
    errors.ResourceExhausted: ErrorMapping(grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED"),
    errors.Unavailable: ErrorMapping(grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", retry_after=1.0),
    errors.DeadlineExceeded: ErrorMapping(grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"),
    errors.PermissionDenied: ErrorMapping(grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
    errors.Unauthenticated: ErrorMapping(grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
    errors.Unimplemented: ErrorMapping(grpc.StatusCode.UNIMPLEMENTED, "UNIMPLEMENTED"),
    errors.Internal: ErrorMapping(grpc.StatusCode.INTERNAL, "INTERNAL"),
}
_TIMEOUT = ErrorMapping(grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED")
_UNEXPECTED = ErrorMapping(grpc.StatusCode.INTERNAL, "INTERNAL")

_METADATA_KEYS = {"env": "environment"}
"""Detail names renamed for clients: the code says ``env``, the API says ``environment``."""

REQUEST_ID_HEADER = "x-request-id"
MAX_MESSAGE = 2048
"""Characters of an error message sent back; longer ones (long lists of violations) are cut."""
MAX_VIOLATIONS = 50
_QUIET_PREFIXES = ("/grpc.health.", "/grpc.reflection.")
_REQUEST_IDS = itertools.count(1)
_ID_PREFIX = os.urandom(4).hex()
"""Generated request ids: this process's random prefix and a counter, unique without a syscall."""


class RpcObserver(Protocol):
    """Told when each RPC starts and ends (the daemon passes its Prometheus recorder)."""

    def rpc_started(self, method: str, kind: str) -> None:
        """An RPC of ``kind`` (``unary`` or ``server_stream``) began."""
        ...

    def rpc_finished(self, method: str, kind: str, code: str, seconds: float) -> None:
        """An RPC ended with status ``code`` (a ``grpc.StatusCode`` name)."""
        ...


def _mapping_of(error: BaseException) -> ErrorMapping:
    if isinstance(error, errors.SchedulerError):
        for cls in type(error).__mro__:
            if cls in STATUS_OF:
                return STATUS_OF[cls]
        return _UNEXPECTED
    if isinstance(error, TimeoutError):
        return _TIMEOUT
    return _UNEXPECTED


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """Return the gRPC code and the client-facing message (cut to ``MAX_MESSAGE``) for an exception."""
    code = _mapping_of(error).code
    if isinstance(error, errors.SchedulerError):
        return code, bounds.clip(error.message, MAX_MESSAGE)
    if isinstance(error, TimeoutError):
        return code, "the operation did not finish in time"
    return code, "internal error; see the daemon log for this request id"


def error_status(error: BaseException, request_id: str = "") -> status_pb2.Status:
    """Build the google.rpc.Status a client receives for ``error``, details included."""
    mapping = _mapping_of(error)
    code, message = status_of(error)
    metadata: dict[str, str] = {}
    reason = mapping.reason
    if isinstance(error, errors.SchedulerError):
        metadata = {_METADATA_KEYS.get(k, k): v for k, v in error.details.items()}
        reason = error.reason or reason
    if request_id:
        metadata["request_id"] = request_id
    details: list[Message] = [error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)]
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        details.append(_bad_request(error))
    if isinstance(error, errors.ResourceExhausted):
        violation = error_details_pb2.QuotaFailure.Violation(
            subject=error.details.get("quota", ""), description=message
        )
        details.append(error_details_pb2.QuotaFailure(violations=[violation]))
    if mapping.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(mapping.retry_after * 1000))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)
        packed.append(item)
    return status_pb2.Status(code=code.value[0], message=message, details=packed)


def _bad_request(error: BaseException) -> Message:
    """Every field an INVALID_ARGUMENT names; an error without violations names its ``field`` detail."""
    violations: list[errors.FieldViolation] = []
    if isinstance(error, errors.InvalidArgument):
        violations = list(error.violations)
    if not violations and isinstance(error, errors.SchedulerError):
        violations = [errors.FieldViolation(error.details.get("field", ""), error.message)]
    bad_request: Message = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field=bounds.clip(v.field, 256), description=bounds.clip(v.description, 512)
            )
            for v in violations[:MAX_VIOLATIONS]
        ]
    )
    return bad_request


def error_trailer(error: BaseException, request_id: str = "") -> tuple[str, bytes]:
    """The ``grpc-status-details-bin`` trailing metadata entry for ``error``."""
    return "grpc-status-details-bin", bytes(error_status(error, request_id).SerializeToString())


_OK = grpc.StatusCode.OK
_CODE_NAMES = {code: code.name for code in grpc.StatusCode}
"""Status codes' names, read once: an enum member's ``name`` (and the member itself, through its
class) is a Python-level descriptor call in Python 3.11, twice per RPC otherwise."""


class _Call:
    """Bookkeeping of one RPC: request id, timing, final code, and the error translation.

    Made when the RPC starts (which binds its request id and tells the observer) and ended by
    :meth:`finish`; slotted, and with no more method calls than that, as it costs every RPC.
    """

    __slots__ = (
        "code",
        "context",
        "kind",
        "metadata",
        "method",
        "observer",
        "peer",
        "principal",
        "quiet",
        "request_id",
        "started",
    )

    def __init__(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        kind: str,
        observer: RpcObserver | None,
        quiet: bool = False,
    ) -> None:
        self.method = method
        self.kind = kind
        self.observer = observer
        self.quiet = quiet
        """Whether the method's calls are logged at debug level whatever their outcome (health, reflection)."""
        self.context = context
        self.metadata: dict[str, str | bytes] = dict(context.invocation_metadata() or ())
        supplied = self.metadata.get(REQUEST_ID_HEADER)
        self.request_id = (
            supplied if isinstance(supplied, str) and supplied else f"{_ID_PREFIX}{next(_REQUEST_IDS):08x}"
        )
        self.started = time.monotonic()
        self.code = _OK
        # Read now: asking a cancelled call for its peer dereferences a freed call (a segfault).
        self.peer = context.peer()
        self.principal = ""
        log.REQUEST_ID.set(self.request_id)
        if observer is not None:
            observer.rpc_started(method, kind)

    async def fail(self, error: BaseException) -> None:
        """Abort the RPC with the status the error maps to (this raises, as grpc requires)."""
        code, message = status_of(error)
        self.code = code
        if code == grpc.StatusCode.INTERNAL and not isinstance(error, errors.SchedulerError):
            _log.error("rpc.unhandled", method=self.method, exc_info=error)
        trailing = ((REQUEST_ID_HEADER, self.request_id), error_trailer(error, self.request_id))
        await self.context.abort(code, message, trailing_metadata=trailing)

    def finish(self) -> None:
        """Write the RPC's one access-log line (debug level if it succeeded), tell the observer, unbind the id.

        A busy client makes thousands of calls a minute; logging each at info level cost more
        than serving it and buried what matters. Failures stay at info, and the daemon's own log
        lines record every change an RPC causes.
        """
        seconds = time.monotonic() - self.started
        code = self.code
        name = _CODE_NAMES.get(code) or code.name
        quiet = code == _OK or self.quiet
        if not quiet or log.enabled(logging.DEBUG):  # a filtered line still costs a logger bind
            emit = _log.debug if quiet else _log.info
            emit(
                "rpc",
                method=self.method,
                principal=self.principal,
                peer=self.peer,
                code=name,
                duration_ms=round(seconds * 1000, 2),
            )
        if self.observer is not None:
            self.observer.rpc_finished(self.method, self.kind, name, seconds)
        log.REQUEST_ID.set("")  # not reset(): a stream's generator may be closed from another context


class RequestInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler: binds the request id, logs the call once, maps exceptions to status."""

    def __init__(self, observer: RpcObserver | None = None, gate: Gate | None = None) -> None:
        self._observer = observer
        self._gate = gate
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]] = {}
        """Per method: the handler grpc found and its wrapped form, built once, not per call."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return self.wrap(handler_call_details.method, handler)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        """``handler`` of ``method`` with the request id, access log, gate and error mapping around it."""
        held = self._wrapped.get(method)
        if held is not None and held[0] is handler:
            return held[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        deserializer = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, handler.unary_unary, self._observer, self._gate),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(method, handler.unary_stream, self._observer, self._gate),  # type: ignore[arg-type]
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


class _Undecodable:
    """Request bytes that do not decode: the handler answers INVALID_ARGUMENT, not grpc's INTERNAL."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as err:  # noqa: BLE001 - any decoding failure is the client's
            return _Undecodable(type(err).__name__)

    return parse


def _check_decoded(request: Any) -> None:
    if isinstance(request, _Undecodable):
        raise errors.InvalidArgument.of(
            [errors.FieldViolation("request", f"is not a valid encoded message ({request.problem})")]
        )


def _admitted(
    gate: Gate | None, call: _Call, request: Any, context: grpc.aio.ServicerContext[Any, Any]
) -> Admission | None:
    _check_decoded(request)
    if gate is None:
        return None
    admission = gate.admission(call.method, context, call.peer, call.metadata)
    if admission is not None:
        call.principal = admission.principal.name
    return admission


def _wrap_unary(
    method: str, inner: Callable[..., Any], observer: RpcObserver | None, gate: Gate | None
) -> Callable[..., Awaitable[Any]]:
    quiet = method.startswith(_QUIET_PREFIXES)

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        call = _Call(method, context, "unary", observer, quiet)
        try:
            admission = _admitted(gate, call, request, context)
            if admission is None or admission.unrestricted:  # the usual case, without a coroutine more
                return await inner(request, context)
            assert gate is not None
            await gate.check_scope(admission, request)
            return await gate.visible(admission, await inner(request, context))
        except asyncio.CancelledError:
            call.code = grpc.StatusCode.CANCELLED
            raise
        except Exception as error:  # noqa: BLE001 - every error must become a status
            if _is_abort(error):
                call.code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            await call.fail(error)
        finally:
            call.finish()

    return unary


def _wrap_stream(
    method: str, inner: Callable[..., AsyncIterator[Any]], observer: RpcObserver | None, gate: Gate | None
) -> Callable[..., AsyncIterator[Any]]:
    quiet = method.startswith(_QUIET_PREFIXES)

    async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        call = _Call(method, context, "server_stream", observer, quiet)
        try:
            admission = _admitted(gate, call, request, context)
            scoped = gate if admission is not None and not admission.unrestricted else None
            if scoped is not None and admission is not None:
                await scoped.check_scope(admission, request)
            async for response in inner(request, context):
                shown = response if scoped is None else await scoped.visible(admission, response)
                if shown is not None:
                    yield shown
        except asyncio.CancelledError:
            call.code = grpc.StatusCode.CANCELLED
            raise
        except Exception as error:  # noqa: BLE001 - every error must become a status
            if _is_abort(error):
                raise
            await call.fail(error)
        finally:
            call.finish()

    return stream


def _is_abort(error: BaseException) -> bool:
    # grpc.aio raises AbortError out of context.abort(); it must propagate untouched.
    return isinstance(error, grpc.aio.AbortError)
