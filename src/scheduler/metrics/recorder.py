"""Counters and histograms of what the daemon does, fed by hooks in the API, orchestrator and runtime.

Every label takes its values from a closed set (documented in docs/metrics.md): gRPC methods the
server implements, status code names, operation kinds, stack names of the catalogue, probe kinds,
restart reasons and containerd methods the client calls. Nothing a client sends becomes a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# From 1 ms to 10 s: local unary calls are fast, a log follow or a slow pull is not.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Deploys take seconds to minutes (image pulls, health gates).
OPERATION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
PULL_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def split_method(full: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` as ``(pkg.Service, Method)``."""
    _, service, method = (full.split("/") + ["", ""])[:3]
    return service, method


class Recorder:
    """Implements the orchestrator's ``Observer``, the server's ``RpcObserver`` and containerd's call hook."""

    def __init__(self, registry: CollectorRegistry) -> None:
        grpc_labels = ["grpc_service", "grpc_method", "grpc_type"]
        # Methods the server implements and status codes: closed sets, so these stay small.
        self._rpc: dict[tuple[str, str], tuple[Counter, Histogram, Gauge | None]] = {}
        self._rpc_handled: dict[tuple[str, str, str], Counter] = {}
        self.rpc_started_total = Counter(
            "grpc_server_started_total", "RPCs started on the server.", grpc_labels, registry=registry
        )
        self.rpc_handled_total = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, whatever their status.",
            [*grpc_labels, "grpc_code"],
            registry=registry,
        )
        self.rpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status (a stream: its whole life).",
            grpc_labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.streams_in_flight = Gauge(
            "grpc_server_streams_in_flight",
            "Server-streaming RPCs open now (log follows, event watches).",
            ["grpc_service", "grpc_method"],
            registry=registry,
        )
        self.operation_seconds = Histogram(
            "scheduler_operation_duration_seconds",
            "Duration of deploys, updates and deletions of environments, by stack and outcome.",
            ["operation", "stack", "outcome"],
            buckets=OPERATION_BUCKETS,
            registry=registry,
        )
        self.restarts_total = Counter(
            "scheduler_container_restarts_total",
            "Restarts scheduled by the restart policy, by reason.",
            ["reason"],
            registry=registry,
        )
        self.probes_total = Counter(
            "scheduler_health_probes_total",
            "Health probes run, by kind and result.",
            ["kind", "result"],
            registry=registry,
        )
        self.probe_seconds = Histogram(
            "scheduler_health_probe_duration_seconds",
            "Duration of one health probe.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.images_total = Counter(
            "scheduler_image_ensures_total",
            "Images made present for a service: pulled, already present, or failed.",
            ["outcome"],
            registry=registry,
        )
        self.pull_seconds = Histogram(
            "scheduler_image_pull_duration_seconds",
            "Duration of image pulls that fetched something.",
            buckets=PULL_BUCKETS,
            registry=registry,
        )
        self.pull_bytes_total = Counter(
            "scheduler_image_pull_bytes_total", "Bytes fetched from registries by image pulls.", registry=registry
        )
        self.containerd_seconds = Histogram(
            "scheduler_containerd_request_duration_seconds",
            "Duration of unary containerd calls, retries included.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.containerd_errors_total = Counter(
            "scheduler_containerd_request_errors_total",
            "Unary containerd calls that failed, by method and status code.",
            ["method", "code"],
            registry=registry,
        )

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
            handled = self._rpc_handled[(method, kind, code)] = self.rpc_handled_total.labels(service, name, kind, code)
        handled.inc()
        latency.observe(seconds)
        if in_flight is not None:
            in_flight.dec()

    def _rpc_series(self, method: str, kind: str) -> tuple[Counter, Histogram, Gauge | None]:
        """The labelled series of one method, looked up once (``labels()`` locks and hashes per call)."""
        series = self._rpc.get((method, kind))
        if series is None:
            service, name = split_method(method)
            series = self._rpc[(method, kind)] = (
                self.rpc_started_total.labels(service, name, kind),
                self.rpc_seconds.labels(service, name, kind),
                None if kind == "unary" else self.streams_in_flight.labels(service, name),
            )
        return series

    # --- the orchestrator --------------------------------------------------------------------

    def operation_started(self, operation: str, env: str) -> None:
        return None

    def operation_finished(self, operation: str, env: str, stack: str, outcome: str, seconds: float) -> None:
        if stack:  # an operation on an environment that was already gone has no stack to label
            self.operation_seconds.labels(operation, stack, outcome).observe(seconds)

    def step(self, env: str, step: str, service: str = "", detail: str = "") -> None:
        return None

    def probe_finished(self, kind: str, ok: bool, seconds: float) -> None:
        self.probes_total.labels(kind, "success" if ok else "failure").inc()
        self.probe_seconds.labels(kind).observe(seconds)

    def container_restarted(self, reason: str) -> None:
        self.restarts_total.labels(reason).inc()

    def image_ensured(self, outcome: str, seconds: float, fetched_bytes: int) -> None:
        self.images_total.labels(outcome).inc()
        if fetched_bytes:
            self.pull_seconds.observe(seconds)
            self.pull_bytes_total.inc(fetched_bytes)

    # --- containerd ----------------------------------------------------------------------------

    def containerd_call(self, method: str, seconds: float, code: str) -> None:
        self.containerd_seconds.labels(method).observe(seconds)
        if code != "OK":
            self.containerd_errors_total.labels(method, code).inc()
