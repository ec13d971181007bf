"""What a failed outgoing gRPC call says, read one way for every server the daemon calls.

containerd and etcd both answer with a status code and a message; their clients
(``runtime/containerd/errors.py``, ``storage/etcd/errors.py``) read them here and map the codes
onto the scheduler's error tree through ``CLIENT_ERRORS``, adding only what each server means
differently (OUT_OF_RANGE, RESOURCE_EXHAUSTED). The server side's mapping (errors to codes) is
the API's own, in ``api/interceptors.py``.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from scheduler.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SchedulerError,
    Unavailable,
    Unimplemented,
)

CLIENT_ERRORS: Mapping[grpc.StatusCode, type[SchedulerError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    # A server cancels calls when it shuts down: retryable, like UNAVAILABLE.
    grpc.StatusCode.CANCELLED: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDenied,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}
"""Status code -> error class, as every server the daemon calls means them; unlisted codes are Internal."""


def status_code(err: grpc.RpcError) -> grpc.StatusCode:
    """The status code of a gRPC error, UNKNOWN if it carries none."""
    code = getattr(err, "code", None)
    value = code() if callable(code) else None
    return value if isinstance(value, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def status_details(err: grpc.RpcError) -> str:
    """The server's message of a gRPC error."""
    details = getattr(err, "details", None)
    value = details() if callable(details) else None
    return str(value) if value else str(err)


def error_class(
    code: grpc.StatusCode, table: Mapping[grpc.StatusCode, type[SchedulerError]] = CLIENT_ERRORS
) -> type[SchedulerError]:
    """The scheduler error a status code becomes in ``table``: Internal when it is not listed."""
    return table.get(code, Internal)
