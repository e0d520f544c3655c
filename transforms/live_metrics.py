"""What a live stream counts for Prometheus (prometheus-client), read while it runs.

Beam's counters (``rtml/received`` ...) go to the runner, which reports them when a job ends; these count the same
in the process whose workers run the steps, and ``--metrics_port`` (``pipelines.serving``) serves them with the
consumer group's lag. Every runner this project runs a stream on locally (the DirectRunner, Prism and the embedded
Flink with LOOPBACK workers) runs its Python steps in the command's process.
"""
from __future__ import annotations

import math
import threading
import time

import numpy as np
from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily

RECEIVED = Counter("rtml_events_received", "Events read (Kafka messages), valid or not")
VALID = Counter("rtml_events_valid", "Events that meet the spec's contract")
DEAD_LETTERS = Counter("rtml_dead_letters", "Events dead-lettered, by reason", ["reason"])
SCORED = Counter("rtml_events_scored", "Events scored by the model")
WRITTEN = Counter("rtml_records_written", "Records Kafka acknowledged, by topic", ["topic"])
MODEL_VERSION = Gauge("rtml_model_version", "1 for the model version that scored the latest batch", ["version"])


class _BatchHistogram:
    """A Prometheus histogram filled a batch at a time: prometheus-client observes one value per call, about a
    microsecond each, which bounded scoring would pay per event; here a batch costs one ``searchsorted``."""

    BOUNDS = np.array([0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60, 300, 3600, math.inf])

    def __init__(self, name: str, documentation: str):
        self._name, self._documentation = name, documentation
        self._counts, self._sum, self._lock = np.zeros(len(self.BOUNDS), np.int64), 0.0, threading.Lock()

    def observe(self, values: np.ndarray) -> None:
        counts = np.bincount(np.searchsorted(self.BOUNDS, values), minlength=len(self.BOUNDS))
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def cumulative(self) -> dict[float, float]:
        """{bucket bound: how many values were at most it}."""
        with self._lock:
            return dict(zip(self.BOUNDS.tolist(), np.cumsum(self._counts).tolist()))

    def describe(self) -> list:
        return self.collect()

    def collect(self):
        with self._lock:
            total = self._sum
        buckets = [("+Inf" if math.isinf(bound) else repr(bound), count) for bound, count in self.cumulative().items()]
        yield HistogramMetricFamily(self._name, self._documentation, buckets=buckets, sum_value=total)


EVENT_TO_SCORED = _BatchHistogram("rtml_event_to_scored_seconds", "From each event's time to its scoring")
REGISTRY.register(EVENT_TO_SCORED)

_serving: list[str] = []  # (the version MODEL_VERSION shows)


def scored(version: str, event_time_us: list[int]) -> None:
    """A batch of events scored by ``version``, each at its event time."""
    SCORED.inc(len(event_time_us))
    EVENT_TO_SCORED.observe(time.time() - np.asarray(event_time_us, dtype=np.float64) / 1e6)
    if _serving != [version]:
        MODEL_VERSION.clear()
        MODEL_VERSION.labels(version=version).set(1)
        _serving[:] = [version]


def quantile(q: float, now: dict[float, float], before: dict[float, float]) -> float | None:
    """The ``q`` quantile of what a histogram's ``cumulative()`` counted between ``before`` and ``now``, interpolated
    within its bucket as Prometheus's ``histogram_quantile`` does; None if nothing was counted (inf: beyond every
    bound)."""
    bounds = sorted(now)
    counts = [now[bound] - before.get(bound, 0) for bound in bounds]
    if not counts or not counts[-1]:
        return None
    rank, lower, below = q * counts[-1], 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= rank:
            return math.inf if math.isinf(bound) else lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return math.inf
