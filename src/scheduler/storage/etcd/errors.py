"""etcd's gRPC errors in the scheduler's error tree; which of them are worth another member."""

from __future__ import annotations

import grpc

from scheduler.errors import OutOfRange, ResourceExhausted, SchedulerError
from scheduler.rpcstatus import CLIENT_ERRORS, error_class, status_code, status_details


class Compacted(OutOfRange):
    """The revision asked for was compacted away; re-list instead of resuming from it."""


_CODE_TO_ERROR = {
    **CLIENT_ERRORS,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})
"""Codes after which another member (or the same one after an election) may answer."""

_NEVER_SENT = ("failed to connect", "connection refused", "connect failed", "dns resolution failed")
"""Details of an UNAVAILABLE that the request never reached a member with (safe to resend)."""


def retryable(err: grpc.RpcError) -> bool:
    """Whether another attempt (on the next member) may succeed."""
    return status_code(err) in RETRYABLE


def maybe_applied(err: grpc.RpcError) -> bool:
    """Whether a write that failed with ``err`` may still have been applied by the cluster."""
    if status_code(err) != grpc.StatusCode.UNAVAILABLE:
        return status_code(err) in RETRYABLE
    text = status_details(err).lower()
    return not any(marker in text for marker in _NEVER_SENT)


def from_grpc(err: grpc.RpcError, what: str) -> SchedulerError:
    """Map an etcd gRPC error to the matching scheduler error; the caller raises it ``from err``."""
    code = status_code(err)
    text = status_details(err)
    cls = Compacted if "compacted" in text else error_class(code, _CODE_TO_ERROR)
    return cls(f"etcd {what}: {text} ({code.name})")
