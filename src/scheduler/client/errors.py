"""Failures of the client library, decoded from the daemon's google.rpc.Status details."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

STATUS_DETAILS_KEY = "grpc-status-details-bin"


class ClientError(Exception):
    """Base of every error the client library raises."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        """The gRPC status code name, e.g. ``NOT_FOUND`` (or ``DEADLINE_EXCEEDED`` for a wait)."""
        self.message = message


@dataclass(frozen=True)
class Violation:
    """One bad field of a request (a google.rpc.BadRequest field violation)."""

    field: str
    description: str


@dataclass(frozen=True)
class ErrorDetails:
    """What the daemon attaches to a failure: ErrorInfo, BadRequest and RetryInfo, flattened."""

    reason: str = ""
    """ErrorInfo reason, e.g. ``ETAG_MISMATCH``, ``NOT_FOUND``, ``EVENTS_EXPIRED``."""
    domain: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    """ErrorInfo metadata, e.g. ``environment``, ``service``, ``etag``, ``oldest_sequence``."""
    violations: tuple[Violation, ...] = ()
    retry_after: float | None = None
    """Seconds after which retrying may succeed; None when the daemon gave no RetryInfo."""


class ApiError(ClientError):
    """The daemon answered a call with an error status."""

    def __init__(self, code: str, message: str, details: ErrorDetails) -> None:
        super().__init__(code, message)
        self.details = details

    @property
    def reason(self) -> str:
        """The ErrorInfo reason."""
        return self.details.reason

    @classmethod
    def from_rpc(cls, err: grpc.RpcError) -> ApiError:
        """Decode a failed call (sync or asyncio) into an ``ApiError``."""
        code = err.code() if isinstance(err, grpc.Call | grpc.aio.AioRpcError) else None
        message = (err.details() if isinstance(err, grpc.Call | grpc.aio.AioRpcError) else None) or str(err)
        trailing = err.trailing_metadata() if isinstance(err, grpc.Call | grpc.aio.AioRpcError) else None
        raw = next((v for k, v in trailing or () if k == STATUS_DETAILS_KEY), None)
        return cls(code.name if code is not None else "UNKNOWN", message, _decode(raw))


def _decode(raw: object) -> ErrorDetails:
    if not isinstance(raw, bytes):
        return ErrorDetails()
    status = status_pb2.Status.FromString(raw)
    reason, domain, metadata = "", "", {}
    violations: tuple[Violation, ...] = ()
    retry_after = None
    for item in status.details:
        info, bad, retry = (
            error_details_pb2.ErrorInfo(),
            error_details_pb2.BadRequest(),
            error_details_pb2.RetryInfo(),
        )
        if item.Unpack(info):
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif item.Unpack(bad):
            violations = tuple(Violation(v.field, v.description) for v in bad.field_violations)
        elif item.Unpack(retry):
            retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    return ErrorDetails(reason, domain, metadata, violations, retry_after)


class WaitFailed(ClientError):
    """An environment settled in a state the caller did not wait for (FAILED, or deleted)."""
