"""Every size a request can carry is bounded, and the refusal names the field and the bound."""

from datetime import timedelta

import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from scheduler import bounds
from scheduler.api import convert
from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.domain import EnvironmentRequest, LogQuery, PortSpec, ServiceOverride
from scheduler.errors import InvalidArgument
from scheduler.redaction import looks_secret
from scheduler.storage.base import PageKey, decode_page_token, encode_page_token


def _refusal(request: EnvironmentRequest) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        bounds.check_request(request)
    return caught.value


def test_a_request_within_bounds_passes() -> None:
    bounds.check_request(EnvironmentRequest("toolbox", parameters={"command": "sleep 1"}))


@pytest.mark.parametrize(
    ("request_", "field", "bound"),
    [
        (EnvironmentRequest("toolbox", parameters={"command": "x" * (1 << 20)}), "spec.parameters.command", "65536"),
        (
            EnvironmentRequest(
                "toolbox",
                services={"toolbox": ServiceOverride(ports=tuple(PortSpec(p, publish=True) for p in range(1, 10001)))},
            ),
            "spec.services.toolbox.ports",
            "at most 64",
        ),
        (
            EnvironmentRequest("toolbox", services={"toolbox": ServiceOverride(command=("a",) * 5000)}),
            "spec.services.toolbox.command",
            "at most 1024",
        ),
        (
            EnvironmentRequest("toolbox", services={"toolbox": ServiceOverride(env={"A": "v" * 40000})}),
            "spec.services.toolbox.env.A",
            "32768",
        ),
        (
            EnvironmentRequest(
                "toolbox", services={"toolbox": ServiceOverride(env={f"K{i}": "v" for i in range(300)})}
            ),
            "spec.services.toolbox.env",
            "at most 256",
        ),
        (EnvironmentRequest("toolbox", labels={f"k{i}": "v" for i in range(100)}), "spec.labels", "at most 64"),
        (
            EnvironmentRequest("toolbox", services={f"s{i}": ServiceOverride() for i in range(40)}),
            "spec.services",
            "32",
        ),
        (EnvironmentRequest("toolbox", ttl=timedelta(days=400)), "spec.ttl", "365 days"),
    ],
)
def test_each_bound_names_field_and_limit(request_: EnvironmentRequest, field: str, bound: str) -> None:
    error = _refusal(request_)
    assert [v.field for v in error.violations] == [field]
    assert bound in error.violations[0].description
    assert len(error.message) < 500


def test_a_huge_key_is_not_echoed() -> None:
    error = _refusal(EnvironmentRequest("toolbox", labels={"k" * 100_000: "v"}))
    assert len(error.message) < 500


def test_list_and_log_bounds() -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        bounds.check_page_token("a" * 10_000)
    with pytest.raises(InvalidArgument, match="tail"):
        bounds.check_logs(LogQuery(tail=10**12))
    with pytest.raises(InvalidArgument, match="name: is longer"):
        bounds.check_name("n" * 1_000_000)


@pytest.mark.parametrize(
    "token",
    [
        encode_page_token(PageKey(10**30, "x")),
        encode_page_token(PageKey(-1, "x")),
        "W" * 400 + "1" * 10,
        __import__("base64").urlsafe_b64encode(b"[" * 100_000).decode(),
        __import__("base64").urlsafe_b64encode(b'{"v":1,"s":1,"n":' + b"[" * 300 + b"]" * 300 + b"}").decode(),
    ],
)
def test_hostile_page_tokens_are_invalid_arguments(token: str) -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        decode_page_token(token)


def test_durations_and_times_out_of_range_are_invalid_arguments() -> None:
    with pytest.raises(InvalidArgument, match="drain: must be at most 3650 days"):
        convert.duration_from_proto(duration_pb2.Duration(seconds=10**12), "drain")
    with pytest.raises(InvalidArgument, match="since"):
        convert.time_from_proto(timestamp_pb2.Timestamp(seconds=-(10**12)), "since")
    with pytest.raises(InvalidArgument, match="since"):
        convert.time_from_proto(timestamp_pb2.Timestamp(seconds=10**15), "since")
    spec = pb.EnvironmentSpecification(stack="toolbox", ttl=duration_pb2.Duration(seconds=2**62))
    with pytest.raises(InvalidArgument, match="spec.ttl"):
        convert.request_from_proto(spec)


def test_an_oversized_spec_is_refused_by_encoded_size() -> None:
    spec = pb.EnvironmentSpecification(stack="toolbox", parameters={"command": "x" * (bounds.MAX_SPEC_BYTES + 1)})
    with pytest.raises(InvalidArgument, match="at most 524288 are allowed"):
        convert.request_from_proto(spec)


@pytest.mark.parametrize(
    "key", ["POSTGRES_PASSWORD", "PGPASSWORD", "API_KEY", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "KEY", "DB_PASS"]
)
def test_secret_looking_names(key: str) -> None:
    assert looks_secret(key)


@pytest.mark.parametrize("key", ["LOG_LEVEL", "MONKEY", "KEYBOARD_LAYOUT", "PATH", "PASSAGE", "AUTHOR"])
def test_ordinary_names(key: str) -> None:
    assert not looks_secret(key)
