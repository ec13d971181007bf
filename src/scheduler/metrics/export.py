"""The Prometheus side of the metrics, loaded only when the endpoint serves (``metrics.listen``).

The Prometheus client library brings an HTTP server, urllib and email modules with it: a daemon
that serves no metrics never imports it. The registry holds the client library's standard
process and runtime collectors, the :class:`~scheduler.metrics.recorder.Recorder`'s families and
the :class:`~scheduler.metrics.collector.StateCollector`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from scheduler.metrics.collector import StateCollector
from scheduler.metrics.recorder import Distribution, Family, Recorder, Series

__all__ = ["CONTENT_TYPE_LATEST", "generate_latest", "registry_of"]


def generate_latest(registry: CollectorRegistry) -> bytes:
    """Every metric of ``registry`` in the text exposition format."""
    return _generate_latest(registry)


class _Collect(Collector):
    """A collector that calls ``collect``."""

    def __init__(self, collect: Callable[[], Iterator[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        return self._collect()


def registry_of(recorder: Recorder, collector: StateCollector) -> CollectorRegistry:
    """A registry of the standard collectors, ``recorder``'s families and ``collector``'s readings."""
    registry = CollectorRegistry()
    for standard in (ProcessCollector, PlatformCollector, GCCollector):
        standard(registry=registry)
    registry.register(_Collect(lambda: render(recorder.families)))
    registry.register(_Collect(lambda: render(collector.families())))
    return registry


def render(families: list[Family]) -> Iterator[Metric]:
    """The client library's metric families of ``families``, at their current values."""
    for family in families:
        labels = list(family.labels)
        metric: CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
        if family.kind == "histogram":
            metric = HistogramMetricFamily(family.name, family.help, labels=labels)
            for values, series in family.series.items():
                assert isinstance(series, Distribution)
                metric.add_metric(list(values), _cumulative(series), series.sum)
        else:
            kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
            metric = kind(family.name, family.help, labels=labels)
            for values, series in family.series.items():
                assert isinstance(series, Series)
                metric.add_metric(list(values), series.value)
        yield metric


def _cumulative(series: Distribution) -> list[tuple[str, float]]:
    out, running = [], 0
    for bound, count in zip((*series.buckets, float("inf")), series.counts, strict=True):
        running += count
        # The client library's spelling of ``le`` (its Histogram's): repr, and +Inf.
        out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
    return out
