"""Fuzz every RPC of a real daemon with requests generated from the proto descriptors, and with raw
bytes: no call may end UNKNOWN, INTERNAL or UNAVAILABLE, the daemon stays up and its memory bounded.

``FUZZ_EXAMPLES`` sets the examples per RPC and for raw bytes (CI: 150 each, about 2,400 calls; ``make
fuzz``: 3,000 each).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as d
from google.protobuf import message_factory
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.api._gen.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from tests.support.daemon import DaemonProcess, running_daemon

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
SERVICE = pb.DESCRIPTOR.services_by_name["SchedulerService"]
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE}
MAX_RSS_GROWTH = 300 * 1024 * 1024
CALL_TIMEOUT = 5.0
"""Long metrics windows end by this deadline; that is not a failure."""
STREAM_TIMEOUT = 0.2
"""Streams (follows, watches) run until the client leaves: this deadline is how it leaves."""

_INT_RANGES = {
    d.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    d.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_WORDS = ["", "toolbox", "demo", "a", "fz-1", "*", "x" * 300, "\x00", "../../etc", "labels.a=b", "名前", "sch_x"]


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [v for v in (0, 1, -1, low, high, 2**31 - 1, 2**53) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def _scalar(field: d.FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _INT_RANGES:
        return _integers(*_INT_RANGES[kind])
    if kind == d.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == d.FieldDescriptor.TYPE_STRING:
        return st.one_of(st.sampled_from(_WORDS), st.text(max_size=40))
    if kind == d.FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=40)
    if kind == d.FieldDescriptor.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-3, 1000))
    if kind in (d.FieldDescriptor.TYPE_DOUBLE, d.FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32 if kind == d.FieldDescriptor.TYPE_FLOAT else 64)
    raise AssertionError(f"unhandled field type {kind} of {field.full_name}")


def _value(field: d.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == d.FieldDescriptor.TYPE_MESSAGE:
        return message_of(field.message_type, depth + 1)
    return _scalar(field)


def message_of(descriptor: d.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor`` with any subset of fields set, nested a few levels deep."""
    cls = message_factory.GetMessageClass(descriptor)
    if depth > 4:
        return st.just(cls())
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if is_map:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            optional[field.name] = st.dictionaries(_value(key, depth), _value(value, depth), max_size=4)
        elif field.is_repeated:
            optional[field.name] = st.lists(_value(field, depth), max_size=4)
        else:
            optional[field.name] = _value(field, depth)
    return st.fixed_dictionaries({}, optional=optional).map(lambda values: _build(cls, descriptor, values))


def _build(cls: type[Message], descriptor: d.Descriptor, values: dict[str, Any]) -> Message:
    out = cls()
    for name, value in values.items():
        field = descriptor.fields_by_name[name]
        target = getattr(out, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for k, v in value.items():
                if isinstance(v, Message):
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            if field.type == d.FieldDescriptor.TYPE_MESSAGE:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif field.type == d.FieldDescriptor.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(out, name, value)
    return out


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, image_archives: dict[str, Path]) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("fuzz"), image_archives.values()) as process:
        yield process


@pytest.fixture(scope="module")
def channel(daemon: DaemonProcess) -> Iterator[grpc.Channel]:
    with daemon.channel() as channel:
        yield channel


@pytest.fixture(scope="module")
def outcomes(daemon: DaemonProcess) -> Iterator[Counter[str]]:
    """Codes seen per RPC; at the end the daemon must still serve, within its memory bound."""
    counts: Counter[str] = Counter()
    # A running environment under a name the generators often draw, so that calls reach past
    # the lookup into logs, metrics, updates and deletes.
    with daemon.channel() as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        stub.CreateEnvironment(
            pb.CreateEnvironmentRequest(name="fz-1", spec=pb.EnvironmentSpecification(stack="toolbox")), timeout=10
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            env = stub.GetEnvironment(pb.GetEnvironmentRequest(name="fz-1"), timeout=10)
            if env.status == pb.ENVIRONMENT_STATUS_RUNNING:
                break
            time.sleep(0.2)
    before = _rss(daemon.process.pid)
    started = time.monotonic()
    yield counts
    assert daemon.process.poll() is None, daemon.log()[-3000:]
    growth = _rss(daemon.process.pid) - before
    print(f"\nfuzz: {sum(counts.values())} calls in {time.monotonic() - started:.1f}s, RSS +{growth >> 20} MiB")
    print("fuzz outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    assert growth < MAX_RSS_GROWTH


def _call(channel: grpc.Channel, method: d.MethodDescriptor, payload: bytes) -> grpc.StatusCode:
    path = f"/{SERVICE.full_name}/{method.name}"
    try:
        if method.server_streaming:
            for _ in channel.unary_stream(path)(payload, timeout=STREAM_TIMEOUT):
                pass
        else:
            channel.unary_unary(path)(payload, timeout=CALL_TIMEOUT)
    except grpc.RpcError as err:
        code: grpc.StatusCode = err.code()
        assert code not in FORBIDDEN, f"{method.name}: {code} {err.details()}"
        return code
    return grpc.StatusCode.OK


# Deletes last, so that the environment the others may reach lives through them.
@pytest.mark.parametrize(
    "method", sorted(SERVICE.methods, key=lambda m: m.name == "DeleteEnvironment"), ids=lambda m: m.name
)
def test_generated_requests(channel: grpc.Channel, outcomes: Counter[str], method: d.MethodDescriptor) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(message_of(method.input_type))
    def one(request: Message) -> None:
        code = _call(channel, method, request.SerializeToString())
        outcomes[f"{method.name}:{code.name}"] += 1

    one()


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(method=st.sampled_from(list(SERVICE.methods)), payload=st.binary(max_size=200))
def test_raw_bytes(channel: grpc.Channel, outcomes: Counter[str], method: d.MethodDescriptor, payload: bytes) -> None:
    code = _call(channel, method, payload)
    outcomes[f"raw:{code.name}"] += 1
