"""Translate containerd's gRPC status codes into the scheduler's error tree (errdefs' ``ToNative``).

Every RPC error leaves ``runtime/containerd`` through ``from_grpc`` so that callers above never see grpc.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from scheduler.errors import DeadlineExceeded, InvalidArgument, SchedulerError, Unavailable
from scheduler.rpcstatus import CLIENT_ERRORS, error_class, status_code, status_details

# Codes not listed become Internal: containerd reports a shim or runc failure as UNKNOWN, which
# is a fault of the system below us, not of the request.
_CODE_TO_ERROR = {
    **CLIENT_ERRORS,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Unavailable,
}


def from_grpc(err: grpc.RpcError, what: str = "", **details: str) -> SchedulerError:
    """Map a gRPC error to the matching scheduler error; the caller raises it ``from err``.

    Args:
        err: the error raised by a stub (usually ``grpc.aio.AioRpcError``).
        what: the operation and resource, e.g. ``"Tasks.Start web-1"``, put first in the message.
        details: identifying attributes (``container_id``...) copied onto the error.
    """
    code = status_code(err)
    cls = error_class(code, _CODE_TO_ERROR)
    if code == grpc.StatusCode.UNKNOWN and "context deadline exceeded" in status_details(err):
        # A deadline that expired inside containerd (e.g. towards a shim) comes back as UNKNOWN.
        cls = DeadlineExceeded
    prefix = f"containerd {what}: " if what else "containerd: "
    return cls(f"{prefix}{status_details(err)} ({code.name})", **details)


@contextmanager
def translated(what: str, **details: str) -> Iterator[None]:
    """Re-raise any gRPC error raised inside the block as a scheduler error."""
    try:
        yield
    except grpc.RpcError as err:
        raise from_grpc(err, what, **details) from err


def is_code(err: BaseException, *codes: grpc.StatusCode) -> bool:
    """Whether ``err`` is a gRPC error with one of ``codes``."""
    return isinstance(err, grpc.RpcError) and status_code(err) in codes
