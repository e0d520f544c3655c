"""Event-time monitoring: per window, input and dead-letter rates, scores, alerts, and drift from training.

``Monitor`` takes the scored batches (``ScoredBatch``: valid events and their scored records) and the
dead letters, and puts them in fixed event-time windows of each size the spec's ``monitoring:`` section
names (``transforms.spec.Monitoring``). Per window and model version it emits one monitoring record:

    {"kind": "window", "window_start", "window_end", "window_s", "pane": "on_time" | "late",
     "baseline_version", "events", "dead_letters", "input_per_s", "dead_letter_rate", "scored", "alerts",
     "alert_rate", "score_mean", "score_counts", "score_psi", "drift": {feature: psi}}

and an alert record when the window has at least ``min_events`` events and a feature's drift is
above ``psi_threshold`` (``"kind": "drift"``, the features and their PSI) or its alert rate is
above ``max_alert_rate`` (``"kind": "alert_rate"``).

Drift is the population stability index (PSI) of a feature's source values in the window against
the training rows, over bins stored in the model manifest at training (``training_baseline``):
about ten quantile bins of a number, the vocabulary terms (plus one for any other value) of a
string. ``time_of_day`` features are left out: a window shorter than a day always differs from a
whole day in time of day. A window with fewer than ``min_events`` events gets ``null`` drift (a
one-minute window of seven events says nothing about a distribution) and raises no alert.
``score_counts`` counts scores in the bins of the holdout's score deciles (``baseline.score.edges``),
and ``score_psi`` compares them with the holdout's.

Lateness: each window fires once the watermark passes its end (the ``on_time`` pane), then once
more for each late arrival within ``allowed_lateness_s``: a ``late`` pane counts only what came
late, and the panes of a window add up to all of it. Data later than that is dropped by the runner,
uncounted here.

``baseline_version``: the events and scores of a batch are compared with the training baseline of the
model version that scored them (``baselines(version)``; a live stream switches versions on a hot
reload), so a window in which the version changed has one record per version, and its dead letters
are counted in the newest one's. A version whose baseline cannot be read is compared with the first
version's, and its record names that one.
Dead letters are placed by the event time their raw input names, if it has a valid one; the others
cannot be placed and are only counted (``untimed_dead_letters``).

Beam metrics, namespace ``rtml.monitor``: counters ``events``, ``dead_letters``,
``untimed_dead_letters``, ``alerts`` (per input), ``windows_<size>s``, ``late_events_<size>s``,
``drift_alerts``, ``alert_rate_alerts`` (per window); distributions per window size of events per
window, alert rate and each feature's PSI, the last two in thousandths (Beam distributions hold
integers).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import apache_beam as beam
import numpy as np
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from transforms.events import METRICS_NAMESPACE, ScoredBatch, dead_letter_time_us, event_time_us_of
from transforms.feature_kinds import KINDS
from transforms.features import raw_columns
from transforms.spec import Spec

MONITOR_METRICS_NAMESPACE = f"{METRICS_NAMESPACE}.monitor"
WINDOWS, ALERTS = "windows", "alerts"
DRIFT_BINS = 10  # quantile bins of a number
SCORE_BINS = 10
PSI_EPSILON = 1e-4  # the share an empty bin counts as: PSI is infinite otherwise
_US = 1_000_000


# ---------------------------------------------------------------------------------------------
# Bins and the population stability index: pure functions.

def quantile_edges(values: np.ndarray, bins: int) -> list[float]:
    """The inner edges of ``bins`` quantile bins of ``values`` (fewer where values repeat)."""
    inner = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1], method="inverted_cdf")
    return np.unique(inner).astype(float).tolist()


class Bins:
    """The bins of one baseline entry: ``{"edges": [...]}`` (numbers) or ``{"terms": [...]}`` (strings).

    ``index(values)`` gives each value's bin: with edges e1 < e2 < ..., bin 0 is below e1 and bin i
    is [e_i, e_i+1); with terms, a term's position, and ``len(terms)`` for any other value.
    """

    def __init__(self, entry: dict):
        self._terms = {term: i for i, term in enumerate(entry["terms"])} if "terms" in entry else None
        self._edges = None if self._terms is not None else np.asarray(entry["edges"], dtype=np.float64)
        self.size = 1 + (len(self._terms) if self._terms is not None else len(self._edges))

    def index(self, values: np.ndarray) -> np.ndarray:
        if self._terms is not None:
            other = len(self._terms)
            return np.fromiter((self._terms.get(v, other) for v in values), dtype=np.int64, count=len(values))
        return np.searchsorted(self._edges, values, side="right")

    def counts(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.index(values), minlength=self.size)


def psi(expected: Iterable[float], counts: Iterable[int]) -> float | None:
    """Population stability index of observed ``counts`` against ``expected`` shares of the same bins.

    sum over bins of (a - e) * ln(a / e), a and e the observed and expected shares, each at least
    ``PSI_EPSILON``. 0 for the same distribution; by convention under 0.1 is stable, over 0.2 a
    shift. None when nothing was observed.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return None
    actual = np.maximum(counts / total, PSI_EPSILON)
    expected = np.maximum(np.asarray(expected, dtype=np.float64), PSI_EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def describe_alert(alert: dict) -> str:
    """An alert record's finding in a few words: the drifted features by PSI, or the alert rate."""
    if alert["kind"] == "drift":
        return "drift " + ", ".join(f"{name} {value:.3f}" for name, value in
                                    sorted(alert["features"].items(), key=lambda item: -item[1]))
    return f"alert rate {alert['alert_rate']:.4f} > {alert['max_alert_rate']:g}"


def drift_features(spec: Spec):
    """The spec's features whose kind is monitored for drift (all but ``time_of_day``'s)."""
    return [f for f in spec.features if KINDS[f.kind].monitored_for_drift]


def training_baseline(spec: Spec, plan: dict, training_columns: dict[str, np.ndarray],
                      holdout_scores: np.ndarray) -> dict:
    """What monitoring compares windows with, for the model manifest.

    ``features``: per drift-monitored feature, its source, bins (quantile ``edges`` of a number on
    the training rows; a vocabulary feature's ``terms``) and the training rows' share in each bin.
    ``score``: the holdout's score decile edges and shares, and its alert rate at the spec's threshold
    (the holdout, not the training rows: a model scores the rows it was fitted on too confidently).
    """
    features = {}
    for feature in drift_features(spec):
        values = training_columns[feature.source]
        terms = KINDS[feature.kind].drift_terms(feature, plan[feature.name])
        entry = {"terms": terms} if terms is not None else {"edges": quantile_edges(values, DRIFT_BINS)}
        counts = Bins(entry).counts(values)
        features[feature.name] = {"source": feature.source, **entry, "shares": (counts / counts.sum()).tolist()}
    score = {"edges": quantile_edges(holdout_scores, SCORE_BINS)}
    counts = Bins(score).counts(holdout_scores)
    score.update(shares=(counts / counts.sum()).tolist(),
                 alert_rate=float(np.mean(holdout_scores >= spec.alert_threshold)))
    return {"training_rows": len(next(iter(training_columns.values()))), "features": features, "score": score}


# ---------------------------------------------------------------------------------------------
# Per-window statistics: what each input contributes, merged per window.

@dataclasses.dataclass
class WindowStats:
    """Counts of one window, or of the part of it one input element holds; ``merge`` adds them up."""

    events: int = 0
    dead_letters: int = 0
    scored: int = 0
    alerts: int = 0
    score_sum: float = 0.0
    score_counts: np.ndarray | int = 0  # per baseline score bin
    feature_counts: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # per baseline bin

    def merge(self, other: WindowStats) -> WindowStats:
        self.events += other.events
        self.dead_letters += other.dead_letters
        self.scored += other.scored
        self.alerts += other.alerts
        self.score_sum += other.score_sum
        self.score_counts = self.score_counts + other.score_counts
        for name, counts in other.feature_counts.items():
            self.feature_counts[name] = self.feature_counts.get(name, 0) + counts
        return self


Baselines = Callable[[str], tuple[str, dict]]  # a model version -> (the version compared with, its baseline)
ByVersion = dict  # baseline version (None: dead letters, which have none) -> its WindowStats


class _MergeStats(beam.CombineFn):
    """``(baseline version, WindowStats)`` in; a window's ``ByVersion`` out."""

    def create_accumulator(self) -> ByVersion:
        return {}

    def add_input(self, accumulator: ByVersion, element: tuple[str | None, WindowStats]) -> ByVersion:
        version, stats = element
        accumulator.setdefault(version, WindowStats()).merge(stats)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[ByVersion]) -> ByVersion:
        merged: ByVersion = {}
        for accumulator in accumulators:
            for version, stats in accumulator.items():
                merged.setdefault(version, WindowStats()).merge(stats)
        return merged

    def extract_output(self, accumulator: ByVersion) -> ByVersion:
        return accumulator


def _tag(size_s: int) -> str:
    return f"{size_s}s"


class _SplitByWindow(beam.DoFn):
    """An input element in; per window size (one tagged output each), one ``(baseline version, WindowStats)`` per
    window its items fall in, timestamped at the window's start.

    Subclasses say what an element holds: ``items(element)`` returns the baseline version (None for dead letters),
    the items' event times (us) and a function giving the ``WindowStats`` of some of them (by position).
    """

    def __init__(self, window_sizes_s: tuple[int, ...]):
        self._sizes = window_sizes_s

    def items(self, element):
        raise NotImplementedError

    def process(self, element):
        found = self.items(element)
        if found is None:
            return
        version, times_us, stats_of = found
        for size in self._sizes:
            starts = times_us - times_us % (size * _US)
            for start in np.unique(starts).tolist():
                stats = stats_of(np.flatnonzero(starts == start))
                yield beam.pvalue.TaggedOutput(_tag(size),
                                               window.TimestampedValue((version, stats), Timestamp(micros=start)))


class _BatchStats(_SplitByWindow):
    """A ``ScoredBatch`` in: its events, the monitored features' bin counts, its scores (sum and bin counts) and
    alerts, binned by the training baseline of the version that scored it."""

    def __init__(self, spec: Spec, baselines: Baselines, window_sizes_s: tuple[int, ...]):
        super().__init__(window_sizes_s)
        self._spec, self._baselines = spec, baselines
        self._events = beam.metrics.Metrics.counter(MONITOR_METRICS_NAMESPACE, "events")
        self._alerts = beam.metrics.Metrics.counter(MONITOR_METRICS_NAMESPACE, "alerts")

    def setup(self):
        self._bins: dict[str, tuple[dict, Bins]] = {}  # baseline version -> (feature name -> (source, bins), score bins)

    def items(self, scored: ScoredBatch):
        batch, records = scored.events, scored.records
        if not records:
            return None
        version, baseline = self._baselines(scored.model_version)
        if version not in self._bins:
            self._bins[version] = ({name: (entry["source"], Bins(entry)) for name, entry in baseline["features"].items()},
                                   Bins(baseline["score"]))
        feature_bins, score_bins = self._bins[version]
        self._events.inc(len(records))
        columns = raw_columns(batch, self._spec)
        bin_indices = {name: (bins.index(columns[source]), bins.size) for name, (source, bins) in feature_bins.items()}
        scores = np.array([r["score"] for r in records], dtype=np.float64)
        alerts = np.array([r["alert"] for r in records], dtype=bool)
        self._alerts.inc(int(alerts.sum()))
        score_indices = score_bins.index(scores)

        def stats_of(rows: np.ndarray) -> WindowStats:
            return WindowStats(
                events=len(rows), scored=len(rows), alerts=int(alerts[rows].sum()), score_sum=float(scores[rows].sum()),
                score_counts=np.bincount(score_indices[rows], minlength=score_bins.size),
                feature_counts={name: np.bincount(indices[rows], minlength=size)
                                for name, (indices, size) in bin_indices.items()})

        return version, np.asarray(batch.event_time_us, dtype=np.int64), stats_of


class _DeadLetterStats(_SplitByWindow):
    """A dead letter in: placed by the event time its raw input names; counted as untimed without one."""

    def __init__(self, time_field: str, window_sizes_s: tuple[int, ...]):
        super().__init__(window_sizes_s)
        self._time_field = time_field
        self._dead_letters = beam.metrics.Metrics.counter(MONITOR_METRICS_NAMESPACE, "dead_letters")
        self._untimed = beam.metrics.Metrics.counter(MONITOR_METRICS_NAMESPACE, "untimed_dead_letters")

    def items(self, letter: dict):
        self._dead_letters.inc()
        time_us = dead_letter_time_us(letter, self._time_field)
        if time_us is None:
            self._untimed.inc()
            return None
        return None, np.array([time_us], dtype=np.int64), lambda rows: WindowStats(dead_letters=len(rows))


# ---------------------------------------------------------------------------------------------
# Records and alerts.

def window_record(stats: WindowStats, start: Timestamp, size_s: int, late: bool, baseline: dict,
                  baseline_version: str, min_events: int) -> dict:
    """The monitoring record of one window pane (see the module docstring)."""
    enough = stats.events >= min_events
    received = stats.events + stats.dead_letters
    score_counts = np.broadcast_to(stats.score_counts, len(baseline["score"]["shares"]))
    return {
        "kind": "window", "window_start": start.to_rfc3339(), "window_end": (start + size_s).to_rfc3339(),
        "window_s": size_s, "pane": "late" if late else "on_time", "baseline_version": baseline_version,
        "events": stats.events, "dead_letters": stats.dead_letters, "input_per_s": received / size_s,
        "dead_letter_rate": stats.dead_letters / received if received else None,
        "scored": stats.scored, "alerts": stats.alerts,
        "alert_rate": stats.alerts / stats.scored if stats.scored else None,
        "score_mean": stats.score_sum / stats.scored if stats.scored else None,
        "score_counts": score_counts.tolist(),
        "score_psi": psi(baseline["score"]["shares"], score_counts) if enough else None,
        "drift": {name: psi(entry["shares"], stats.feature_counts[name]) if enough else None
                  for name, entry in baseline["features"].items()},
    }


def window_alerts(record: dict, spec: Spec) -> list[dict]:
    """The alert records a monitoring record raises under the spec's thresholds (none below min_events)."""
    settings = spec.monitoring
    if record["events"] < settings.min_events:
        return []
    where = {key: record[key]
             for key in ("window_start", "window_end", "window_s", "pane", "baseline_version", "events")}
    alerts = []
    drifted = {name: value for name, value in record["drift"].items() if value > settings.psi_threshold}
    if drifted:
        alerts.append({"kind": "drift", **where, "features": drifted, "psi_threshold": settings.psi_threshold})
    if settings.max_alert_rate is not None and record["alert_rate"] is not None \
            and record["alert_rate"] > settings.max_alert_rate:
        alerts.append({"kind": "alert_rate", **where, "alert_rate": record["alert_rate"],
                       "max_alert_rate": settings.max_alert_rate})
    return alerts


class _WindowRecords(beam.DoFn):
    """A window's ``ByVersion`` in; a monitoring record per baseline version out, and their alerts (tagged
    ``alerts``). The window's dead letters count in the newest version's record (the first version's if it has no
    events)."""

    def __init__(self, spec: Spec, baselines: Baselines, first_version: str, size_s: int):
        self._spec, self._baselines, self._first_version, self._size = spec, baselines, first_version, size_s
        metric = beam.metrics.Metrics
        self._windows = metric.counter(MONITOR_METRICS_NAMESPACE, f"windows_{size_s}s")
        self._late = metric.counter(MONITOR_METRICS_NAMESPACE, f"late_events_{size_s}s")
        self._alert_counters = {kind: metric.counter(MONITOR_METRICS_NAMESPACE, f"{kind}_alerts")
                                for kind in ("drift", "alert_rate")}
        self._events = metric.distribution(MONITOR_METRICS_NAMESPACE, f"events_per_window_{size_s}s")
        self._alert_rate = metric.distribution(MONITOR_METRICS_NAMESPACE, f"alert_rate_x1000_{size_s}s")
        self._psi = {feature.name: metric.distribution(MONITOR_METRICS_NAMESPACE, f"psi_x1000_{feature.name}_{size_s}s")
                     for feature in drift_features(spec)}

    def process(self, by_version: ByVersion, pane=beam.DoFn.PaneInfoParam, bounds=beam.DoFn.WindowParam):
        # (version names sort by when they were made)
        versions = sorted(version for version in by_version if version is not None) or [self._first_version]
        late = pane.timing == PaneInfoTiming.LATE
        for version in versions:
            stats = WindowStats().merge(by_version.get(version, WindowStats()))  # (a copy: the input stays as it is)
            if version == versions[-1] and None in by_version:
                stats.merge(by_version[None])
            if not (stats.events or stats.dead_letters or stats.scored):
                # An empty pane. Beam's Python windowing asks runners to close each window with a final pane even
                # when nothing came after the last one (ClosingBehavior EMIT_ALWAYS); Flink does, and its empty
                # record after each window's own read as a window of 0 events.
                continue
            yield from self._record(stats, version, late, bounds.start)

    def _record(self, stats: WindowStats, version: str, late: bool, start: Timestamp):
        record = window_record(stats, start, self._size, late, self._baselines(version)[1], version,
                               self._spec.monitoring.min_events)
        self._windows.inc()
        if late:
            self._late.inc(stats.events + stats.dead_letters)
        self._events.update(stats.events)
        if record["alert_rate"] is not None:
            self._alert_rate.update(round(record["alert_rate"] * 1000))
        for name, value in record["drift"].items():
            if value is not None:
                self._psi[name].update(round(value * 1000))
        yield record
        for alert in window_alerts(record, self._spec):
            self._alert_counters[alert["kind"]].inc()
            yield beam.pvalue.TaggedOutput(ALERTS, alert)


class Monitor(beam.PTransform):
    """``{"scored": ScoredBatch, "dead_letters": dicts}`` in; ``{"windows": monitoring records, "alerts": alert
    records}`` out (dicts; see the module docstring).

    Windows: ``window_sizes_s`` if given, else the spec's ``monitoring.windows``. ``baselines`` gives a model
    version's training baseline (``models.registry.Baselines``); ``first_version`` is the version scoring when the
    pipeline starts.
    """

    def __init__(self, spec: Spec, baselines: Baselines, first_version: str,
                 window_sizes_s: tuple[int, ...] | None = None):
        super().__init__()
        self._spec, self._baselines, self._first_version = spec, baselines, first_version
        self._sizes = tuple(sorted(set(window_sizes_s or spec.monitoring.window_sizes_s)))

    def expand(self, inputs):
        spec, sizes = self._spec, self._sizes
        tags = [_tag(size) for size in sizes]
        parts = [
            inputs["scored"] | "BatchStats" >> beam.ParDo(_BatchStats(spec, self._baselines, sizes)).with_outputs(*tags),
            inputs["dead_letters"] | "DeadLetterStats" >> beam.ParDo(
                _DeadLetterStats(spec.event_time, sizes)).with_outputs(*tags),
        ]
        windows, alerts = [], []
        for size, tag in zip(sizes, tags):
            records = ([part[tag] for part in parts]
                       | f"Gather{tag}" >> beam.Flatten()
                       | f"Window{tag}" >> beam.WindowInto(
                           window.FixedWindows(size), trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                           accumulation_mode=trigger.AccumulationMode.DISCARDING,
                           allowed_lateness=spec.monitoring.allowed_lateness_s)
                       | f"Merge{tag}" >> beam.CombineGlobally(_MergeStats()).without_defaults()
                       | f"Records{tag}" >> beam.ParDo(
                           _WindowRecords(spec, self._baselines, self._first_version, size)).with_outputs(
                           ALERTS, main=WINDOWS))
            # Out of their windows, so that the records of every size can be one PCollection.
            windows.append(records[WINDOWS] | f"Unwindow{tag}" >> beam.WindowInto(window.GlobalWindows()))
            alerts.append(records[ALERTS] | f"UnwindowAlerts{tag}" >> beam.WindowInto(window.GlobalWindows()))
        return {WINDOWS: windows | "Windows" >> beam.Flatten(), ALERTS: alerts | "Alerts" >> beam.Flatten()}
