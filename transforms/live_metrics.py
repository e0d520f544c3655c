"""What a live stream counts for Prometheus (prometheus-client), read while it runs.

Beam's counters (``rtml/received`` ...) go to the runner, which reports them when a job ends; these count the same
in the process whose workers run the steps, and ``--metrics_port`` (``pipelines.serving``) serves them with the
consumer group's lag. Every runner this project runs a stream on locally (the DirectRunner, Prism and the embedded
Flink with LOOPBACK workers) runs its Python steps in the command's process.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECEIVED = Counter("rtml_events_received", "Events read (Kafka messages), valid or not")
VALID = Counter("rtml_events_valid", "Events that meet the spec's contract")
DEAD_LETTERS = Counter("rtml_dead_letters", "Events dead-lettered, by reason", ["reason"])
SCORED = Counter("rtml_events_scored", "Events scored by the model")
WRITTEN = Counter("rtml_records_written", "Records Kafka acknowledged, by topic", ["topic"])
EVENT_TO_WRITTEN = Histogram(
    "rtml_event_to_written_seconds", "From a record's event time to Kafka's acknowledgment of it, by topic",
    ["topic"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60, 300, 3600, float("inf")))
MODEL_VERSION = Gauge("rtml_model_version", "1 for the model version that scored the latest batch", ["version"])

_serving: list[str] = []  # (the version MODEL_VERSION shows)


def scored_with(version: str, events: int) -> None:
    SCORED.inc(events)
    if _serving != [version]:
        MODEL_VERSION.clear()
        MODEL_VERSION.labels(version=version).set(1)
        _serving[:] = [version]
