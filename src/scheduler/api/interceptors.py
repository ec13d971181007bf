"""Per-RPC plumbing: request ids, one access-log line, and exceptions mapped to gRPC status.

The table ``STATUS_OF`` is the one place where scheduler errors become gRPC codes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]

from scheduler import errors, log

_log = log.get("api")

STATUS_OF: dict[type[errors.SchedulerError], grpc.StatusCode] = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Conflict: grpc.StatusCode.ABORTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}

REQUEST_ID_HEADER = "x-request-id"
_QUIET_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """Return the gRPC code and the client-facing message for an exception."""
    if isinstance(error, errors.SchedulerError):
        for cls in type(error).__mro__:
            if cls in STATUS_OF:
                return STATUS_OF[cls], error.message
        return grpc.StatusCode.INTERNAL, error.message
    if isinstance(error, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "the operation did not finish in time"
    return grpc.StatusCode.INTERNAL, "internal error; see the daemon log for this request id"


def _status_details(code: grpc.StatusCode, message: str, error: BaseException) -> bytes | None:
    """Encode google.rpc.BadRequest details for invalid arguments, so clients see every field."""
    if not isinstance(error, errors.InvalidArgument) or not error.violations:
        return None
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in error.violations
        ]
    )
    detail = any_pb2.Any()
    detail.Pack(bad_request)
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[detail])
    return bytes(status.SerializeToString())


class _Call:
    """Bookkeeping of one RPC: request id, timing, final code, and the error translation."""

    def __init__(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.method = method
        self.context = context
        metadata = dict(context.invocation_metadata() or ())
        supplied = metadata.get(REQUEST_ID_HEADER)
        self.request_id = supplied if isinstance(supplied, str) and supplied else uuid.uuid4().hex[:16]
        self.started = time.monotonic()
        self.code = grpc.StatusCode.OK
        # Read now: asking a cancelled call for its peer dereferences a freed call (a segfault).
        self.peer = context.peer()

    def __enter__(self) -> _Call:
        structlog.contextvars.bind_contextvars(request_id=self.request_id)
        return self

    def __exit__(self, *exc: object) -> None:
        structlog.contextvars.unbind_contextvars("request_id")

    async def fail(self, error: BaseException) -> None:
        """Abort the RPC with the status the error maps to (this raises, as grpc requires)."""
        code, message = status_of(error)
        self.code = code
        if code == grpc.StatusCode.INTERNAL and not isinstance(error, errors.SchedulerError):
            _log.error("rpc.unhandled", method=self.method, exc_info=error)
        trailing: list[tuple[str, str | bytes]] = [(REQUEST_ID_HEADER, self.request_id)]
        details = _status_details(code, message, error)
        if details is not None:
            trailing.append(("grpc-status-details-bin", details))
        await self.context.abort(code, message, trailing_metadata=tuple(trailing))

    def log(self) -> None:
        """Write the one access-log line of this RPC: at debug level when it succeeded.

        A busy client makes thousands of calls a minute; logging each at info level cost more
        than serving it and buried what matters. Failures stay at info, and the daemon's own log
        lines record every change an RPC causes.
        """
        quiet = self.code == grpc.StatusCode.OK or self.method.startswith(_QUIET_PREFIXES)
        emit = _log.debug if quiet else _log.info
        emit(
            "rpc",
            method=self.method,
            peer=self.peer,
            code=self.code.name,
            duration_ms=round((time.monotonic() - self.started) * 1000, 2),
        )


class RequestInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler: binds the request id, logs the call once, maps exceptions to status."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(method, handler.unary_stream),  # type: ignore[arg-type]
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _wrap_unary(method: str, inner: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        with _Call(method, context) as call:
            try:
                return await inner(request, context)
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.CANCELLED
                raise
            except Exception as error:  # noqa: BLE001 - every error must become a status
                if _is_abort(error):
                    call.code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                await call.fail(error)
            finally:
                call.log()

    return unary


def _wrap_stream(method: str, inner: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        with _Call(method, context) as call:
            try:
                async for response in inner(request, context):
                    yield response
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.CANCELLED
                raise
            except Exception as error:  # noqa: BLE001 - every error must become a status
                if _is_abort(error):
                    raise
                await call.fail(error)
            finally:
                call.log()

    return stream


def _is_abort(error: BaseException) -> bool:
    # grpc.aio raises AbortError out of context.abort(); it must propagate untouched.
    return type(error).__name__ == "AbortError"
