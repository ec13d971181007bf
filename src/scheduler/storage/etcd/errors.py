"""etcd's gRPC errors in the scheduler's error tree; which of them are worth another member."""

from __future__ import annotations

import grpc

from scheduler.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    SchedulerError,
    Unavailable,
    Unimplemented,
)


class Compacted(OutOfRange):
    """The revision asked for was compacted away; re-list instead of resuming from it."""


_CODE_TO_ERROR: dict[grpc.StatusCode, type[SchedulerError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.CANCELLED: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDenied,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})
"""Codes after which another member (or the same one after an election) may answer."""

_NEVER_SENT = ("failed to connect", "connection refused", "connect failed", "dns resolution failed")
"""Details of an UNAVAILABLE that the request never reached a member with (safe to resend)."""


def code_of(err: grpc.RpcError) -> grpc.StatusCode:
    """The status code of a gRPC error, UNKNOWN if it carries none."""
    code = getattr(err, "code", None)
    value = code() if callable(code) else None
    return value if isinstance(value, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def details_of(err: grpc.RpcError) -> str:
    """The server's message of a gRPC error."""
    details = getattr(err, "details", None)
    value = details() if callable(details) else None
    return str(value) if value else str(err)


def retryable(err: grpc.RpcError) -> bool:
    """Whether another attempt (on the next member) may succeed."""
    return code_of(err) in RETRYABLE


def maybe_applied(err: grpc.RpcError) -> bool:
    """Whether a write that failed with ``err`` may still have been applied by the cluster."""
    if code_of(err) != grpc.StatusCode.UNAVAILABLE:
        return code_of(err) in RETRYABLE
    text = details_of(err).lower()
    return not any(marker in text for marker in _NEVER_SENT)


def from_grpc(err: grpc.RpcError, what: str) -> SchedulerError:
    """Map an etcd gRPC error to the matching scheduler error; the caller raises it ``from err``."""
    code = code_of(err)
    text = details_of(err)
    cls = Compacted if "compacted" in text else _CODE_TO_ERROR.get(code, Internal)
    return cls(f"etcd {what}: {text} ({code.name})")
