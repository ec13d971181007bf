"""The metrics collector's cache and parsing, and the recorder's labels, without a daemon."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from scheduler import domain
from scheduler.domain import ContainerState, ContainerStatus, Environment, EnvironmentSpec, EnvironmentStatus
from scheduler.metrics.collector import StateCollector, read_net_dev
from scheduler.metrics.export import registry_of
from scheduler.metrics.recorder import Recorder, split_method
from scheduler.storage.memory import MemoryStateStore

NET_DEV = """Inter-|   Receive
 face |bytes    packets errs drop fifo frame compressed mult
  lo:  900  9  0  0  0  0  0  0  900  9  0  0  0  0  0  0
  eth0:  1500  10  0  0  0  0  0  0  700  5  0  0  0  0  0  0
  eth1:  100  1  0  0  0  0  0  0  50  1  0  0  0  0  0  0
"""


class CountingRuntime:
    """Answers ``metrics`` with fixed counters and counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def metrics(self, container_ids: Sequence[str]) -> list[domain.TaskMetrics]:
        self.calls += 1
        at = datetime.now(UTC)
        return [
            domain.TaskMetrics(cid, at, cpu_usage_ns=2_500_000_000, memory_usage_bytes=4096) for cid in container_ids
        ]


def values(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_net_dev_sums_every_interface_but_loopback(tmp_path: Path) -> None:
    (tmp_path / "42" / "net").mkdir(parents=True)
    (tmp_path / "42" / "net" / "dev").write_text(NET_DEV)
    assert read_net_dev(42, tmp_path) == (1600, 750)
    assert read_net_dev(43, tmp_path) == (0, 0)


async def test_a_reading_is_reused_within_the_interval_and_labels_name_the_replica() -> None:
    store = MemoryStateStore()
    running = ContainerStatus("web", 1, "c-web-1", state=ContainerState.RUNNING)
    exited = ContainerStatus("job", 0, "c-job-0", state=ContainerState.EXITED)
    env = Environment("demo", "u1", EnvironmentSpec("toolbox", ()), status=EnvironmentStatus.RUNNING)
    created = await store.create(env)
    await store.put(
        Environment("demo", "u1", env.spec, status=EnvironmentStatus.RUNNING, containers=(running, exited)),
        expected_revision=created.revision,
    )
    runtime = CountingRuntime()
    now = [100.0]
    collector = StateCollector(store, runtime, interval=5.0, clock=lambda: now[0])  # type: ignore[arg-type]
    registry = registry_of(Recorder(), collector)

    for _ in range(3):
        await collector.refresh()
    assert runtime.calls == 1
    now[0] += 5.0
    await collector.refresh()
    assert runtime.calls == 2

    got = values(registry)
    labels = (("environment", "demo"), ("replica", "1"), ("service", "web"))
    assert got[("scheduler_container_cpu_seconds_total", labels)] == 2.5
    assert got[("scheduler_container_memory_usage_bytes", labels)] == 4096
    assert got[("scheduler_environments", (("status", "running"),))] == 1
    assert got[("scheduler_environments", (("status", "failed"),))] == 0
    assert got[("scheduler_containers", (("state", "exited"),))] == 1
    assert got[("scheduler_container_stats_reads_total", ())] == 2
    # Only running containers are read.
    assert not any(dict(k[1]).get("service") == "job" for k in got)


def test_recorder_labels_rpcs_by_service_method_and_code() -> None:
    assert split_method("/scheduler.v1.SchedulerService/GetEnvironment") == (
        "scheduler.v1.SchedulerService",
        "GetEnvironment",
    )
    recorder = Recorder()
    registry = registry_of(recorder, StateCollector(MemoryStateStore(), CountingRuntime(), interval=5.0))  # type: ignore[arg-type]
    recorder.rpc_started("/scheduler.v1.SchedulerService/WatchEvents", "server_stream")
    recorder.rpc_started("/scheduler.v1.SchedulerService/GetEnvironment", "unary")
    recorder.rpc_finished("/scheduler.v1.SchedulerService/GetEnvironment", "unary", "NOT_FOUND", 0.01)
    recorder.image_ensured("present", 0.001, 0)
    recorder.image_ensured("pulled", 2.0, 1000)
    recorder.containerd_call("Tasks.Start", 0.02, "OK")
    recorder.containerd_call("Tasks.Kill", 0.02, "NOT_FOUND")
    got = values(registry)
    stream = (("grpc_method", "WatchEvents"), ("grpc_service", "scheduler.v1.SchedulerService"))
    assert got[("grpc_server_streams_in_flight", stream)] == 1
    handled = (
        ("grpc_code", "NOT_FOUND"),
        ("grpc_method", "GetEnvironment"),
        ("grpc_service", "scheduler.v1.SchedulerService"),
        ("grpc_type", "unary"),
    )
    assert got[("grpc_server_handled_total", handled)] == 1
    assert got[("scheduler_image_pull_bytes_total", ())] == 1000
    assert got[("scheduler_image_pull_duration_seconds_count", ())] == 1
    assert got[("scheduler_containerd_request_errors_total", (("code", "NOT_FOUND"), ("method", "Tasks.Kill")))] == 1
    assert ("scheduler_containerd_request_errors_total", (("code", "OK"), ("method", "Tasks.Start"))) not in got


def test_recorded_series_expose_as_the_client_librarys_own_counters_and_histograms() -> None:
    from prometheus_client import Counter, Histogram

    from scheduler.metrics.recorder import LATENCY_BUCKETS

    recorder = Recorder()
    theirs = CollectorRegistry()
    histogram = Histogram(
        "scheduler_containerd_request_duration_seconds", "d", ["method"], buckets=LATENCY_BUCKETS, registry=theirs
    )
    counter = Counter("scheduler_containerd_request_errors_total", "e", ["method", "code"], registry=theirs)
    for seconds in (0.0005, 0.001, 0.02, 0.02, 3.0, 50.0):
        recorder.containerd_call("Tasks.Kill", seconds, "NOT_FOUND")
        histogram.labels("Tasks.Kill").observe(seconds)
        counter.labels("Tasks.Kill", "NOT_FOUND").inc()
    ours = values(registry_of(recorder, StateCollector(MemoryStateStore(), CountingRuntime(), interval=5.0)))  # type: ignore[arg-type]
    wanted = {key: value for key, value in values(theirs).items() if not key[0].endswith("_created")}
    assert len(wanted) == len(LATENCY_BUCKETS) + 1 + 2 + 1  # buckets with +Inf, sum and count, the counter
    assert {key: ours.get(key) for key in wanted} == wanted
