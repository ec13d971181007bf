import grpc

from scheduler import errors
from scheduler.api.interceptors import STATUS_OF, _status_details, status_of


def test_every_error_class_maps_to_a_specific_code() -> None:
    leaves = [cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.SchedulerError)]
    for cls in leaves:
        if cls is errors.SchedulerError:
            continue
        code, message = status_of(cls("boom"))
        assert code is STATUS_OF[cls]
        assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.OK)
        assert message == "boom"


def test_unexpected_errors_become_internal_without_leaking_details() -> None:
    code, message = status_of(KeyError("secret-internal-name"))
    assert code is grpc.StatusCode.INTERNAL
    assert "secret-internal-name" not in message


def test_timeouts_become_deadline_exceeded() -> None:
    assert status_of(TimeoutError())[0] is grpc.StatusCode.DEADLINE_EXCEEDED


def test_invalid_argument_carries_bad_request_details() -> None:
    from google.rpc import error_details_pb2, status_pb2

    error = errors.InvalidArgument.of(
        [errors.FieldViolation("name", "must be a DNS label"), errors.FieldViolation("spec.stack", "unknown")]
    )
    raw = _status_details(grpc.StatusCode.INVALID_ARGUMENT, error.message, error)
    assert raw is not None
    status = status_pb2.Status.FromString(raw)
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert [v.field for v in bad.field_violations] == ["name", "spec.stack"]
    assert _status_details(grpc.StatusCode.NOT_FOUND, "x", errors.NotFound("x")) is None


def test_messages_and_violations_are_cut() -> None:
    from google.rpc import error_details_pb2, status_pb2

    huge = "x" * 1_000_000
    error = errors.InvalidArgument.of([errors.FieldViolation(huge, huge) for _ in range(200)])
    code, message = status_of(error)
    assert code is grpc.StatusCode.INVALID_ARGUMENT and len(message) < 2200
    raw = _status_details(code, message, error)
    assert raw is not None and len(raw) < 64 * 1024
    bad = error_details_pb2.BadRequest()
    assert status_pb2.Status.FromString(raw).details[0].Unpack(bad)
    assert len(bad.field_violations) == 50


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
