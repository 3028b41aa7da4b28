"""Counters and histograms of the running router, kept in a prometheus-client registry.

`incr`/`observe` are what the per-event path calls; `/metrics` exposes the registry; `get` sums a
counter for `status` and tests. Every metric and its labels are declared here, once. Label values must
stay bounded: the pipeline labels triggers by their schema (`consumption.relationshipEvent.*`, not each
relationship id) and unknown ones as `unknown`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "event_router_"

COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "events_received": ("Events taken from an input (before validation)", ("input", "trigger")),
    "validation_failures": ("Events that failed schema validation", ("input", "trigger")),
    "events_routed": ("Events a route matched", ("route",)),
    "events_unmatched": ("Events no route matched", ("trigger",)),
    "dead_letters": ("Events or deliveries moved to the dead letters", ("reason", "output")),
    "deliveries": (
        "Delivery attempts by outcome (delivered, retry, permanent, retries_exhausted)",
        ("output", "outcome"),
    ),
    "spool_full_rejections": ("Submissions refused because the spool was full", ("input",)),
    "requests_rejected": (
        "Requests an input answered with an error status (401, 413, 429, 503...): the Connector never retries",
        ("input", "status"),
    ),
    "unknown_triggers": ("Events whose trigger no schema knows (the log names each trigger once)", ("input",)),
    "recovered_events": (
        "Events gap recovery rebuilt and stored (no stored event announced them)",
        ("input", "trigger"),
    ),
    "recovery_looks": ("Gap-recovery looks by outcome (recovered, nothing, failed)", ("input", "outcome")),
    "duplicates": ("Repeated messages (a message id already stored) answered and not stored again", ("input",)),
    "reloads": ("Configuration reloads by result", ("result",)),
    "outcome_commit_failures": ("Failed commits of delivery outcomes (each is tried again)", ("output",)),
    "rate_limited": ("Waits of an output for its rate_limit before attempts (a wait is no attempt)", ("output",)),
    "output_breaker_openings": ("Times an output's breaker opened after consecutive failures", ("output",)),
}
HISTOGRAMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "delivery_latency_seconds": ("From spooling an event to its successful delivery", ("output",)),
}
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class Stats:
    """The router's metrics. One instance per running app (its own registry, so tests do not share)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._counters = {
            name: Counter(PREFIX + name, text, labels, registry=self.registry)
            for name, (text, labels) in COUNTERS.items()
        }
        self._histograms = {
            name: Histogram(PREFIX + name, text, labels, registry=self.registry, buckets=LATENCY_BUCKETS)
            for name, (text, labels) in HISTOGRAMS.items()
        }
        #: (name, labels as given) -> the labelled series: several lookups per event, so skip
        #: prometheus-client's checks and locks after the first (label values are bounded, see above)
        self._series: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}

    def _child(self, name: str, metric: Any, names: tuple[str, ...], labels: dict[str, str]) -> Any:
        key = (name, tuple(labels.items()))
        child = self._series.get(key)
        if child is None:
            # a label not given is empty, so every call site of a metric has the same label names
            child = self._series[key] = metric.labels(*(labels.get(label, "") for label in names))
        return child

    def incr(self, name: str, amount: int = 1, **labels: str) -> None:
        self._child(name, self._counters[name], COUNTERS[name][1], labels).inc(amount)

    def observe(self, name: str, value: float, **labels: str) -> None:
        self._child(name, self._histograms[name], HISTOGRAMS[name][1], labels).observe(value)

    def observe_all(self, name: str, values: Iterable[float], **labels: str) -> None:
        """`observe` each of `values` (a batch's), looking the series up once."""
        series = self._child(name, self._histograms[name], HISTOGRAMS[name][1], labels)
        for value in values:
            series.observe(value)

    def get(self, name: str, **labels: str) -> int:
        """Sum of counter `name` over every label set that contains `labels`."""
        total = 0.0
        for metric in self._counters[name].collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return int(total)

    def add_gauges(self, collect: Callable[[], Iterable[tuple[str, str, dict[str, str], float]]]) -> None:
        """Register gauges computed at scrape time: `collect` yields (name, help, labels, value)."""
        self.registry.register(_GaugeCollector(collect))


class _GaugeCollector(Collector):
    def __init__(self, source: Callable[[], Iterable[tuple[str, str, dict[str, str], float]]]):
        self._source = source

    def collect(self) -> Iterable[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        for name, text, labels, value in self._source():
            family = families.get(name)
            if family is None:
                family = families[name] = GaugeMetricFamily(PREFIX + name, text, labels=list(labels))
            family.add_metric(list(labels.values()), value)
        return list(families.values())

    def describe(self) -> Iterable[Metric]:
        return []
