"""Pure wire helpers: error mapping, Any packing, labels, metrics and event decoding, signals."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import timestamp_pb2

from scheduler import domain, errors
from scheduler.runtime.containerd import labels as L
from scheduler.runtime.containerd._gen.containerd.cgroups.v1 import metrics_pb2 as v1
from scheduler.runtime.containerd._gen.containerd.cgroups.v2 import metrics_pb2 as v2
from scheduler.runtime.containerd._gen.containerd.events import task_pb2 as ev
from scheduler.runtime.containerd._gen.containerd.runc.v1 import options_pb2 as runc_pb
from scheduler.runtime.containerd._gen.containerd.services.events.v1 import events_pb2
from scheduler.runtime.containerd._gen.containerd.types import metrics_pb2 as types_pb
from scheduler.runtime.containerd.convert import pack, to_datetime, type_name, unpack
from scheduler.runtime.containerd.errors import from_grpc, translated
from scheduler.runtime.containerd.events import decode as decode_event
from scheduler.runtime.containerd.events import subscription_filters
from scheduler.runtime.containerd.metrics import decode as decode_metric
from scheduler.runtime.containerd.metrics import oom_kills
from scheduler.runtime.containerd.tasks import parse_signal


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExists),
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
        (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPrecondition),
        (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
        (grpc.StatusCode.UNIMPLEMENTED, errors.Unimplemented),
        (grpc.StatusCode.UNKNOWN, errors.Internal),
        (grpc.StatusCode.INTERNAL, errors.Internal),
    ],
)
def test_status_codes_map_to_scheduler_errors(code: grpc.StatusCode, cls: type[errors.SchedulerError]) -> None:
    err = from_grpc(FakeRpcError(code, "boom"), "Tasks.Start web-1", container_id="web-1")
    assert type(err) is cls
    assert err.message == f"containerd Tasks.Start web-1: boom ({code.name})"
    assert err.details == {"container_id": "web-1"}


def test_shim_deadline_reported_as_unknown_is_a_deadline() -> None:
    err = from_grpc(FakeRpcError(grpc.StatusCode.UNKNOWN, "context deadline exceeded: unknown"))
    assert isinstance(err, errors.DeadlineExceeded)


def test_translated_keeps_the_cause() -> None:
    original = FakeRpcError(grpc.StatusCode.NOT_FOUND, "container x: not found")
    with pytest.raises(errors.NotFound) as caught, translated("Containers.Get x"):
        raise original
    assert caught.value.cause is original


def test_any_uses_bare_type_urls() -> None:
    value = pack(runc_pb.Options(root="/x/runc"))
    assert value.type_url == "containerd.runc.v1.Options"
    assert unpack(value, runc_pb.Options) == runc_pb.Options(root="/x/runc")
    assert unpack(value, ev.TaskExit) is None
    value.type_url = "type.googleapis.com/containerd.runc.v1.Options"
    assert type_name(value) == "containerd.runc.v1.Options"
    assert unpack(value, runc_pb.Options) is not None


def test_zero_timestamps_are_none() -> None:
    assert to_datetime(timestamp_pb2.Timestamp(seconds=-62135596800)) is None
    assert to_datetime(timestamp_pb2.Timestamp()) is None
    assert to_datetime(timestamp_pb2.Timestamp(seconds=1_700_000_000)) == datetime.fromtimestamp(1_700_000_000, UTC)


def test_label_filters_quote_keys_and_values() -> None:
    assert L.filters({}) == []
    assert L.filters({L.ENV: "shop", L.SERVICE: 'we"ird'}) == [
        'labels."io.scheduler/env"=="shop",labels."io.scheduler/service"=="we\\"ird"'
    ]
    assert L.filters({L.ENV: ""}) == ['labels."io.scheduler/env"']
    assert L.owned({L.OWNER: "scheduler"}) and not L.owned({})


def _metric(data: object, cid: str = "c1") -> types_pb.Metric:
    metric = types_pb.Metric(id=cid, data=pack(data))  # type: ignore[arg-type]
    metric.timestamp.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC))
    return metric


def test_cgroup_v1_metrics_decode() -> None:
    m = v1.Metrics(
        cpu=v1.CPUStat(usage=v1.CPUUsage(total=29_900_000)),
        memory=v1.MemoryStat(usage=v1.MemoryEntry(usage=942080, limit=67108864)),
        pids=v1.PidsStat(current=2, limit=64),
        blkio=v1.BlkIOStat(
            io_service_bytes_recursive=[
                v1.BlkIOEntry(op="Read", value=100),
                v1.BlkIOEntry(op="Write", value=7),
                v1.BlkIOEntry(op="read", value=1),
                v1.BlkIOEntry(op="Total", value=108),
            ]
        ),
        memory_oom_control=v1.MemoryOomControl(oom_kill=1),
    )
    sample = decode_metric(_metric(m))
    assert sample == domain.TaskMetrics(
        container_id="c1",
        at=datetime(2026, 1, 1, tzinfo=UTC),
        cpu_usage_ns=29_900_000,
        memory_usage_bytes=942080,
        memory_limit_bytes=67108864,
        pids_current=2,
        pids_limit=64,
        io_read_bytes=101,
        io_write_bytes=7,
    )
    assert oom_kills(_metric(m)) == 1


def test_cgroup_v2_metrics_decode_and_unlimited_is_zero() -> None:
    m = v2.Metrics(
        cpu=v2.CPUStat(usage_usec=1500),
        memory=v2.MemoryStat(usage=4096, usage_limit=(1 << 64) - 1),
        pids=v2.PidsStat(current=3, limit=0),
        io=v2.IOStat(usage=[v2.IOEntry(rbytes=10, wbytes=20), v2.IOEntry(rbytes=1, wbytes=2)]),
        memory_events=v2.MemoryEvents(oom_kill=2),
    )
    sample = decode_metric(_metric(m))
    assert sample is not None
    assert (sample.cpu_usage_ns, sample.memory_usage_bytes, sample.memory_limit_bytes) == (1_500_000, 4096, 0)
    assert (sample.pids_current, sample.io_read_bytes, sample.io_write_bytes) == (3, 11, 22)
    assert oom_kills(_metric(m)) == 2
    v1_unlimited = v1.Metrics(memory=v1.MemoryStat(usage=v1.MemoryEntry(limit=9223372036854771712)))
    assert decode_metric(_metric(v1_unlimited)).memory_limit_bytes == 0  # type: ignore[union-attr]
    assert decode_metric(_metric(ev.TaskOOM())) is None


def _envelope(event: object, namespace: str = "ns", topic: str = "/tasks/exit") -> events_pb2.Envelope:
    return events_pb2.Envelope(namespace=namespace, topic=topic, event=pack(event))  # type: ignore[arg-type]


def test_task_events_decode() -> None:
    exit_ = ev.TaskExit(container_id="c1", id="c1", pid=42, exit_status=137)
    exit_.exited_at.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC))
    event = decode_event(_envelope(exit_), "ns")
    assert event == domain.TaskEvent(
        domain.TaskEventKind.EXIT, "c1", pid=42, exit_code=137, at=datetime(2026, 1, 1, tzinfo=UTC)
    )
    assert decode_event(_envelope(ev.TaskExit(container_id="c1", id="exec-1", pid=9)), "ns") is None
    assert decode_event(_envelope(exit_, namespace="other"), "ns") is None
    start = decode_event(_envelope(ev.TaskStart(container_id="c2", pid=7), topic="/tasks/start"), "ns")
    assert start is not None and (start.kind, start.container_id, start.pid) == (domain.TaskEventKind.START, "c2", 7)
    oom = decode_event(_envelope(ev.TaskOOM(container_id="c3"), topic="/tasks/oom"), "ns")
    assert oom is not None and oom.kind is domain.TaskEventKind.OOM
    deleted = decode_event(_envelope(ev.TaskDelete(container_id="c4", exit_status=3), topic="/tasks/delete"), "ns")
    assert deleted is not None and (deleted.kind, deleted.exit_code) == (domain.TaskEventKind.DELETE, 3)
    assert decode_event(_envelope(ev.TaskExecAdded(container_id="c1")), "ns") is None


def test_subscription_filters_scope_the_namespace() -> None:
    assert subscription_filters("ns", ("/tasks/exit", "/tasks/oom")) == [
        'namespace==ns,topic=="/tasks/exit"',
        'namespace==ns,topic=="/tasks/oom"',
    ]


@pytest.mark.parametrize(("value", "number"), [("SIGTERM", 15), ("term", 15), ("KILL", 9), ("15", 15), (2, 2)])
def test_parse_signal(value: str | int, number: int) -> None:
    assert parse_signal(value) == number


@pytest.mark.parametrize("value", ["SIGNOPE", "0", 999, ""])
def test_bad_signals_name_the_field(value: str | int) -> None:
    with pytest.raises(errors.InvalidArgument) as err:
        parse_signal(value)
    assert err.value.details["field"] == "signal"
