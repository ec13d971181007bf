import grpc
import pytest

from scheduler import errors
from scheduler.api.interceptors import error_trailer
from scheduler.client import ApiError, ConnectConfig, Violation


def _failed(error: errors.SchedulerError, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata(error_trailer(error, "req-1"))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=error.message)


def test_api_errors_carry_the_decoded_error_info_bad_request_and_retry_info() -> None:
    bad = ApiError.from_rpc(
        _failed(
            errors.InvalidArgument.of([errors.FieldViolation("name", "too long")]), grpc.StatusCode.INVALID_ARGUMENT
        )
    )
    assert (bad.code, bad.reason, bad.details.domain) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT", "scheduler.v1")
    assert bad.details.violations == (Violation("name", "too long"),) and bad.details.retry_after is None
    stale = ApiError.from_rpc(
        _failed(errors.Conflict("stale", reason="ETAG_MISMATCH", env="demo", etag="e2"), grpc.StatusCode.ABORTED)
    )
    assert stale.reason == "ETAG_MISMATCH" and stale.details.retry_after == 0.0
    assert dict(stale.details.metadata) == {"environment": "demo", "etag": "e2", "request_id": "req-1"}
    assert str(stale) == "ABORTED: stale"


def test_a_failure_without_details_still_has_its_code() -> None:
    plain = ApiError.from_rpc(
        grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="down")
    )
    assert (plain.code, plain.message, plain.reason) == ("UNAVAILABLE", "down", "")


def test_connect_config_checks_its_options() -> None:
    assert not ConnectConfig().tls and ConnectConfig(token="t").metadata() == (("authorization", "Bearer t"),)
    with pytest.raises(ValueError, match="together"):
        ConnectConfig(cert_file="c.pem")  # type: ignore[arg-type]
