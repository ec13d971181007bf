import dataclasses
import json
from datetime import timedelta

import pytest

from scheduler.domain import Environment, HealthCheck, ServiceSpec
from scheduler.errors import Internal
from scheduler.storage import codec
from tests.unit.storage.factories import full_environment, full_service, history_entry


def _non_default_fields(value: object) -> set[str]:
    assert dataclasses.is_dataclass(value)
    changed = set()
    for f in dataclasses.fields(value):
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        if getattr(value, f.name) != default:
            changed.add(f.name)
    return changed


def test_factories_set_every_field_so_the_round_trip_is_exhaustive():
    service = full_service()
    assert _non_default_fields(service) == {f.name for f in dataclasses.fields(ServiceSpec)}
    for nested in (service.health, service.restart, service.resources, service.ports[0]):
        missing = {f.name for f in dataclasses.fields(nested)} - _non_default_fields(nested)
        assert missing <= {"protocol"}, (type(nested).__name__, missing)
    env = full_environment(request_id="r1")
    assert _non_default_fields(env) == {f.name for f in dataclasses.fields(Environment)}
    assert _non_default_fields(env.containers[0]) == {f.name for f in dataclasses.fields(env.containers[0])}
    assert env.request is not None
    assert _non_default_fields(env.request) == {f.name for f in dataclasses.fields(env.request)}
    override = env.request.services["frontend"]
    assert _non_default_fields(override) == {f.name for f in dataclasses.fields(override)}


def test_environment_round_trips_exactly():
    env = full_environment(request_id="req-1")
    text = codec.environment_to_json(env)
    back = codec.environment_from_json(text)
    assert back == env
    assert type(back.spec.services) is tuple and type(back.spec.services[0].ports) is tuple
    assert back.spec.services[0].secret_env == frozenset({"A", "PASSWORD"})
    assert back.containers[0].finished_at is not None
    assert back.containers[0].finished_at.utcoffset() == timedelta(hours=2)
    assert codec.environment_to_json(back) == text
    assert back.request is not None and back.request.services["frontend"].command == ("nginx",)


def test_encoding_is_plain_json_with_readable_values():
    data = json.loads(codec.environment_to_json(full_environment()))
    backend = data["spec"]["services"][0]
    assert backend["health"]["kind"] == "http"
    assert backend["health"]["interval"] == 1_500_000
    assert backend["secret_env"] == ["A", "PASSWORD"]
    assert backend["ports"][1]["protocol"] == "udp"
    assert data["status"] == "RUNNING"
    assert data["spec"]["ttl"] == 2 * 3600 * 1_000_000
    assert data["created_at"] == "2026-01-02T03:04:05.678901+00:00"


def test_history_round_trips():
    entry = history_entry()
    assert codec.history_from_json(codec.history_to_json(entry)) == entry


def test_missing_fields_take_their_defaults():
    data = json.loads(codec.environment_to_json(full_environment()))
    del data["spec"]["services"][0]["health"]["retries"]
    del data["observed_generation"]
    back = codec.decode(data, Environment)
    assert back.spec.services[0].health.retries == HealthCheck().retries
    assert back.observed_generation == 0


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda d: d.__setitem__("status", "SLEEPING"), "$.status"),
        (lambda d: d.__setitem__("generation", True), "$.generation"),
        (lambda d: d.__setitem__("generation", "3"), "$.generation"),
        (lambda d: d.__setitem__("created_at", "yesterday"), "$.created_at"),
        (lambda d: d["spec"].__setitem__("ttl", 1.5), "$.spec.ttl"),
        (lambda d: d["spec"]["services"][0].__setitem__("ports", {}), "$.spec.services[0].ports"),
        (lambda d: d["spec"]["services"][0].__setitem__("colour", "red"), "$.spec.services[0]"),
        (lambda d: d["spec"]["labels"].__setitem__("x", 1), "$.spec.labels.x"),
    ],
)
def test_documents_that_do_not_fit_the_types_are_refused_with_their_path(mutate, where):
    data = json.loads(codec.environment_to_json(full_environment()))
    mutate(data)
    with pytest.raises(Internal) as err:
        codec.decode(data, Environment)
    assert err.value.message.startswith(where)


def test_invalid_json_text_is_an_internal_error():
    with pytest.raises(Internal, match="not valid JSON"):
        codec.environment_from_json("{nope")


def test_values_the_codec_cannot_encode_are_refused():
    with pytest.raises(Internal, match="cannot encode"):
        codec.encode(object())
