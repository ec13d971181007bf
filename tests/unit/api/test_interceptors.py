import grpc
from google.rpc import error_details_pb2

from scheduler import errors
from scheduler.api.interceptors import ERROR_DOMAIN, STATUS_OF, error_status, status_of


def _leaves() -> list[type[errors.SchedulerError]]:
    return [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.SchedulerError) and cls is not errors.SchedulerError
    ]


def _details(status):
    out = {}
    for item in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if item.Is(kind.DESCRIPTOR):
                value = kind()
                item.Unpack(value)
                out[kind.__name__] = value
    return out


def test_every_error_class_maps_to_a_specific_code() -> None:
    for cls in _leaves():
        code, message = status_of(cls("boom"))
        assert code is STATUS_OF[cls].code
        assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.OK)
        assert message == "boom"


def test_every_error_carries_error_info_with_reason_domain_and_metadata() -> None:
    for cls in _leaves():
        status = error_status(cls("boom", env="demo", service="backend"), request_id="r1")
        info = _details(status)["ErrorInfo"]
        assert info.domain == ERROR_DOMAIN
        assert info.reason == STATUS_OF[cls].reason and info.reason.isupper()
        assert dict(info.metadata) == {"environment": "demo", "service": "backend", "request_id": "r1"}
        assert status.code == STATUS_OF[cls].code.value[0]


def test_a_specific_reason_overrides_the_class_default() -> None:
    info = _details(error_status(errors.Conflict("stale", reason="ETAG_MISMATCH", etag="abc")))["ErrorInfo"]
    assert info.reason == "ETAG_MISMATCH" and info.metadata["etag"] == "abc"


def test_retry_info_only_where_retrying_helps() -> None:
    assert _details(error_status(errors.Unavailable("down")))["RetryInfo"].retry_delay.seconds == 1
    assert "RetryInfo" in _details(error_status(errors.Conflict("stale")))
    assert "RetryInfo" not in _details(error_status(errors.NotFound("gone")))
    assert "RetryInfo" not in _details(error_status(errors.InvalidArgument("bad")))


def test_unexpected_errors_become_internal_without_leaking_details() -> None:
    code, message = status_of(KeyError("secret-internal-name"))
    assert code is grpc.StatusCode.INTERNAL
    assert "secret-internal-name" not in message
    status = error_status(KeyError("secret-internal-name"))
    assert _details(status)["ErrorInfo"].reason == "INTERNAL"
    assert "secret-internal-name" not in str(status)


def test_timeouts_become_deadline_exceeded() -> None:
    assert status_of(TimeoutError())[0] is grpc.StatusCode.DEADLINE_EXCEEDED
    assert _details(error_status(TimeoutError()))["ErrorInfo"].reason == "DEADLINE_EXCEEDED"


def test_every_invalid_argument_carries_bad_request_details() -> None:
    error = errors.InvalidArgument.of(
        [errors.FieldViolation("name", "must be a DNS label"), errors.FieldViolation("spec.stack", "unknown")]
    )
    bad = _details(error_status(error))["BadRequest"]
    assert [v.field for v in bad.field_violations] == ["name", "spec.stack"]
    # An InvalidArgument raised without violations still names its field.
    bare = _details(error_status(errors.InvalidArgument("too long", field="filter")))["BadRequest"]
    assert [(v.field, v.description) for v in bare.field_violations] == [("filter", "too long")]
    assert "BadRequest" not in _details(error_status(errors.NotFound("x")))


def test_messages_and_violations_are_cut() -> None:
    huge = "x" * 1_000_000
    error = errors.InvalidArgument.of([errors.FieldViolation(huge, huge) for _ in range(200)])
    code, message = status_of(error)
    assert code is grpc.StatusCode.INVALID_ARGUMENT and len(message) < 2200
    status = error_status(error)
    assert status.ByteSize() < 64 * 1024
    assert len(_details(status)["BadRequest"].field_violations) == 50


def test_undecodable_request_bytes_become_a_sentinel_not_an_exception() -> None:
    from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
    from scheduler.api.interceptors import _check_decoded, _tolerant

    parse = _tolerant(pb.GetEnvironmentRequest.FromString)
    assert parse is not None
    assert parse(pb.GetEnvironmentRequest(name="a").SerializeToString()).name == "a"
    garbage = parse(b"\xff\xff\xff\xff")
    try:
        _check_decoded(garbage)
    except errors.InvalidArgument as err:
        assert err.violations[0].field == "request"
    else:
        raise AssertionError("undecodable bytes passed")


def test_a_quota_error_names_the_quota_in_a_quota_failure() -> None:
    status = error_status(errors.ResourceExhausted("too many environments", quota="limits.max_environments"))
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    failure = error_details_pb2.QuotaFailure()
    assert any(d.Unpack(failure) for d in status.details)
    assert [v.subject for v in failure.violations] == ["limits.max_environments"]
