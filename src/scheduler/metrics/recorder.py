"""Counters and histograms of what the daemon does, fed by hooks in the API, orchestrator and runtime.

Every label takes its values from a closed set (documented in docs/metrics.md): gRPC methods the
server implements, status code names, operation kinds, stack names of the catalogue, probe kinds,
restart reasons and containerd methods the client calls. Nothing a client sends becomes a label.

The series are plain numbers here: the Prometheus client library (and the HTTP stack it brings)
is loaded only when the metrics endpoint serves, by :mod:`scheduler.metrics.export`, which renders
these families at each scrape. Counting therefore starts with the daemon whether or not
``metrics.listen`` is set, so an endpoint enabled by a reload shows everything since the start.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Literal

# From 1 ms to 10 s: local unary calls are fast, a log follow or a slow pull is not.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Deploys take seconds to minutes (image pulls, health gates).
OPERATION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
PULL_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

Kind = Literal["counter", "gauge", "histogram"]


def split_method(full: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` as ``(pkg.Service, Method)``."""
    _, service, method = (full.split("/") + ["", ""])[:3]
    return service, method


class Series:
    """One labelled series of a counter or gauge."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class Distribution:
    """One labelled series of a histogram: a count per bucket (not cumulative), the sum and count."""

    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        """Observations per bucket: ``counts[i]`` fell in ``(buckets[i-1], buckets[i]]``; the last is +Inf."""
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1


@dataclass
class Family:
    """A metric: its name (counters with ``_total``), help, type, label names and series by label values."""

    name: str
    help: str
    kind: Kind
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    series: dict[tuple[str, ...], Series | Distribution] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.labels:
            self.labelled(())  # an unlabelled series exists (at 0) from the start

    def labelled(self, values: tuple[str, ...]) -> Series | Distribution:
        found = self.series.get(values)
        if found is None:
            found = self.series[values] = Distribution(self.buckets) if self.kind == "histogram" else Series()
        return found

    def scalar(self, *values: str) -> Series:
        found = self.labelled(values)
        assert isinstance(found, Series)
        return found

    def histogram(self, *values: str) -> Distribution:
        found = self.labelled(values)
        assert isinstance(found, Distribution)
        return found


class Recorder:
    """Implements the orchestrator's ``Observer``, the server's ``RpcObserver`` and containerd's call hook."""

    def __init__(self) -> None:
        grpc_labels = ("grpc_service", "grpc_method", "grpc_type")
        # Methods the server implements and status codes: closed sets, so these stay small.
        self._rpc: dict[tuple[str, str], tuple[Series, Distribution, Series | None]] = {}
        self._rpc_handled: dict[tuple[str, str, str], Series] = {}
        self.rpc_started_total = Family(
            "grpc_server_started_total", "RPCs started on the server.", "counter", grpc_labels
        )
        self.rpc_handled_total = Family(
            "grpc_server_handled_total",
            "RPCs completed on the server, whatever their status.",
            "counter",
            (*grpc_labels, "grpc_code"),
        )
        self.rpc_seconds = Family(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status (a stream: its whole life).",
            "histogram",
            grpc_labels,
            LATENCY_BUCKETS,
        )
        self.streams_in_flight = Family(
            "grpc_server_streams_in_flight",
            "Server-streaming RPCs open now (log follows, event watches).",
            "gauge",
            ("grpc_service", "grpc_method"),
        )
        self.operation_seconds = Family(
            "scheduler_operation_duration_seconds",
            "Duration of deploys, updates and deletions of environments, by stack and outcome.",
            "histogram",
            ("operation", "stack", "outcome"),
            OPERATION_BUCKETS,
        )
        self.restarts_total = Family(
            "scheduler_container_restarts_total",
            "Restarts scheduled by the restart policy, by reason.",
            "counter",
            ("reason",),
        )
        self.probes_total = Family(
            "scheduler_health_probes_total", "Health probes run, by kind and result.", "counter", ("kind", "result")
        )
        self.probe_seconds = Family(
            "scheduler_health_probe_duration_seconds",
            "Duration of one health probe.",
            "histogram",
            ("kind",),
            LATENCY_BUCKETS,
        )
        self.images_total = Family(
            "scheduler_image_ensures_total",
            "Images made present for a service: pulled, already present, or failed.",
            "counter",
            ("outcome",),
        )
        self.pull_seconds = Family(
            "scheduler_image_pull_duration_seconds",
            "Duration of image pulls that fetched something.",
            "histogram",
            buckets=PULL_BUCKETS,
        )
        self.pull_bytes_total = Family(
            "scheduler_image_pull_bytes_total", "Bytes fetched from registries by image pulls.", "counter"
        )
        self.containerd_seconds = Family(
            "scheduler_containerd_request_duration_seconds",
            "Duration of unary containerd calls, retries included.",
            "histogram",
            ("method",),
            LATENCY_BUCKETS,
        )
        self.containerd_errors_total = Family(
            "scheduler_containerd_request_errors_total",
            "Unary containerd calls that failed, by method and status code.",
            "counter",
            ("method", "code"),
        )

    @property
    def families(self) -> list[Family]:
        """Every metric, in the order they are exposed."""
        return [value for value in vars(self).values() if isinstance(value, Family)]

    # --- the gRPC server ---------------------------------------------------------------------

    def rpc_started(self, method: str, kind: str) -> None:
        started, _, in_flight = self._rpc_series(method, kind)
        started.inc()
        if in_flight is not None:
            in_flight.inc()

    def rpc_finished(self, method: str, kind: str, code: str, seconds: float) -> None:
        _, latency, in_flight = self._rpc_series(method, kind)
        handled = self._rpc_handled.get((method, kind, code))
        if handled is None:
            service, name = split_method(method)
            handled = self._rpc_handled[(method, kind, code)] = self.rpc_handled_total.scalar(service, name, kind, code)
        handled.inc()
        latency.observe(seconds)
        if in_flight is not None:
            in_flight.dec()

    def _rpc_series(self, method: str, kind: str) -> tuple[Series, Distribution, Series | None]:
        """The labelled series of one method, looked up once."""
        series = self._rpc.get((method, kind))
        if series is None:
            service, name = split_method(method)
            series = self._rpc[(method, kind)] = (
                self.rpc_started_total.scalar(service, name, kind),
                self.rpc_seconds.histogram(service, name, kind),
                None if kind == "unary" else self.streams_in_flight.scalar(service, name),
            )
        return series

    # --- the orchestrator --------------------------------------------------------------------

    def operation_started(self, operation: str, env: str) -> None:
        return None

    def operation_finished(self, operation: str, env: str, stack: str, outcome: str, seconds: float) -> None:
        if stack:  # an operation on an environment that was already gone has no stack to label
            self.operation_seconds.histogram(operation, stack, outcome).observe(seconds)

    def step(self, env: str, step: str, service: str = "", detail: str = "") -> None:
        return None

    def probe_finished(self, kind: str, ok: bool, seconds: float) -> None:
        self.probes_total.scalar(kind, "success" if ok else "failure").inc()
        self.probe_seconds.histogram(kind).observe(seconds)

    def container_restarted(self, reason: str) -> None:
        self.restarts_total.scalar(reason).inc()

    def image_ensured(self, outcome: str, seconds: float, fetched_bytes: int) -> None:
        self.images_total.scalar(outcome).inc()
        if fetched_bytes:
            self.pull_seconds.histogram().observe(seconds)
            self.pull_bytes_total.scalar().inc(fetched_bytes)

    # --- containerd ----------------------------------------------------------------------------

    def containerd_call(self, method: str, seconds: float, code: str) -> None:
        self.containerd_seconds.histogram(method).observe(seconds)
        if code != "OK":
            self.containerd_errors_total.scalar(method, code).inc()
