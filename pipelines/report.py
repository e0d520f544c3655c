r"""One self-contained HTML page of what the pipelines wrote, with charts: ``rtml report``.

    rtml report --spec fraud --report out/report.html --monitoring out/monitoring \
        --scored 'out/scored/*.jsonl' --model_dir models/fraud
    rtml report --spec sensor --report out/clusters.html --snapshots models/sensor-kmeans \
        --assignments 'out/clusters/*.jsonl'

Each section is drawn from the inputs given, and says so where one is missing:
- drift (--monitoring, pipelines.monitor's --output): PSI by feature and window, one heatmap per
  window size, the spec's psi_threshold marked on the colour bar and cells above it crossed;
- rates (--monitoring): input events/s, dead-letter rate and alert rate over event time, in the
  smallest window size, with the monitoring alerts marked;
- scores (--scored, or --monitoring's score counts; --model_dir for the baseline): the share of
  scores in each decile bin of the model's holdout, beside the holdout's own shares;
- quality (--scored records that carry the spec's label): ROC and precision-recall curves; for a
  class label, the top-1 .. top-k hit rates beside always offering the commonest classes, and how
  well the likeliest class's probability is calibrated;
- clusters (--snapshots and --assignments, pipelines.cluster's outputs): the latest snapshot's
  centers by feature, and the distribution of distances to the nearest center per cluster.

The page holds plotly.js itself and needs no network to be viewed. Files are read through Beam's
filesystems (local, gs:// ...); JSON Lines (also .gz) or Parquet. A live stream's monitoring and
scored topics are reported once written to files. Needs the report extra.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
import html

import numpy as np
from apache_beam.io.filesystems import FileSystems

from models import registry
from pipelines import cli
from pipelines.options import ModelOptions, ReportOptions, SpecOptions
from transforms.errors import UserError, first_line
from transforms.features import TOP_K
from transforms.fileio import json_records
from transforms.monitoring import ALERTS, WINDOWS, Bins, describe_alert, psi
from transforms.spec import Spec, load_spec

VIEWS = (SpecOptions, ReportOptions, ModelOptions)
REQUIRED = {"": ("spec", "report")}
CURVE_POINTS = 1000  # a ROC or precision-recall curve is drawn through at most this many of its points
DISTANCE_BINS = 50
QUALITY = "ROC and precision-recall"
CLASS_QUALITY = "Hit rates and calibration"


@dataclasses.dataclass
class Section:
    title: str
    finding: str  # one line: what the chart shows, or why there is none
    figure: object | None = None  # a plotly Figure


def run(argv=None) -> list[Section]:
    """Write the report; returns its sections."""
    options = cli.parse(argv, VIEWS, __doc__, REQUIRED)
    cli.require(options, *REQUIRED[""])
    missing = cli.missing_extra("report", "plotly", "sklearn")
    if missing:
        raise UserError(missing)
    flags, model_flags = options.view_as(ReportOptions), options.view_as(ModelOptions)
    if not (flags.monitoring or flags.scored or flags.snapshots or flags.assignments):
        raise UserError("nothing to report: give --monitoring, --scored, --snapshots or --assignments; see --help")
    spec = load_spec(options.view_as(SpecOptions).spec)
    baseline = (registry.load_for_spec(model_flags.model_dir, spec, model_flags.model_version,
                                       signing_key_env=model_flags.model_signing_key_env).baseline()
                if model_flags.model_dir else None)
    monitoring = flags.monitoring
    windows = json_records(FileSystems.join(monitoring, f"{WINDOWS}-*.jsonl"), "--monitoring") if monitoring else []
    alerts = (json_records(FileSystems.join(monitoring, f"{ALERTS}-*.jsonl"), "--monitoring", may_be_empty=True)
              if monitoring else [])
    scored = _with_keys(json_records(flags.scored, "--scored"), ("event_id", "score"), "--scored", "scored records") \
        if flags.scored else []

    sections = []
    if monitoring and not windows:
        sections.append(Section("Monitoring", f"--monitoring {monitoring}: its window files hold no records"))
    elif monitoring:
        by_size = _windows_by_size(windows)
        sections += [drift_section(spec, size, rows) for size, rows in sorted(by_size.items())]
        sections.append(rates_section(spec, min(by_size), by_size[min(by_size)], alerts))
    if scored or monitoring:  # from the windows, one size's: each score is in one window of each size
        sections.append(scores_section(scored, by_size[min(by_size)] if monitoring and windows else [], baseline))
    if scored:
        sections.append(class_quality_section(spec, scored) if spec.classes else quality_section(spec, scored))
    if flags.snapshots or flags.assignments:
        assignments = _with_keys(json_records(flags.assignments, "--assignments"), ("cluster", "distance"),
                                 "--assignments", "cluster assignments") if flags.assignments else []
        sections += clusters_sections(flags.snapshots, assignments)
    try:
        with FileSystems.create(flags.report, mime_type="text/html") as handle:
            handle.write(page(f"rtml report: {spec.name}", sections).encode("utf-8"))
    except OSError as error:  # Beam's filesystems raise their own kinds of it
        raise UserError(f"--report {flags.report}: cannot write it ({first_line(error)})") from None
    drawn = [section.title for section in sections if section.figure is not None]
    print("\n  ".join([f"report {flags.report}: {len(drawn)} charts", *drawn]))
    return sections


# ---------------------------------------------------------------------------------------------
# Inputs

def _with_keys(records: list[dict], keys: tuple[str, ...], flag: str, what: str) -> list[dict]:
    """``records``, or a one-line error if one lacks a key these records have (another output given by mistake)."""
    for record in records:
        if not all(key in record for key in keys):
            raise UserError(f"{flag}: a record without {' and '.join(keys)}; are these {what}?")
    return records


def _windows_by_size(windows: list[dict]) -> dict[int, list[dict]]:
    """Window records by window size, in event-time order, the panes of each window added up (late panes
    count only what came late; drift is the fullest pane's)."""
    panes = collections.defaultdict(list)
    for record in windows:
        panes[record["window_s"], record["window_start"]].append(record)
    by_size = collections.defaultdict(list)
    for (size, start), parts in sorted(panes.items()):
        total = {key: sum(p[key] for p in parts) for key in ("events", "dead_letters", "scored", "alerts")}
        received = total["events"] + total["dead_letters"]
        by_size[size].append({"start": start, **total, "input_per_s": received / size,  # as rtml monitor counts
                              "dead_letter_rate": total["dead_letters"] / max(received, 1),
                              "alert_rate": total["alerts"] / max(total["scored"], 1),
                              "drift": max(parts, key=lambda p: p["events"])["drift"],
                              "score_counts": np.sum([p["score_counts"] for p in parts], axis=0)})
    return dict(by_size)


# ---------------------------------------------------------------------------------------------
# Sections: one chart each

def drift_section(spec: Spec, size: int, windows: list[dict]) -> Section:
    import plotly.graph_objects as go

    threshold = spec.monitoring.psi_threshold
    features = list(dict.fromkeys(name for w in windows for name in w["drift"]))  # the spec's order
    psis = np.array([[_nan(w["drift"].get(name)) for w in windows] for name in features], dtype=float).reshape(
        len(features), len(windows))
    starts = [w["start"] for w in windows]
    title = f"Drift from training, {_duration(size)} windows"
    if not features:
        return Section(title, f"the spec {spec.name} has no feature monitored for drift")
    if np.isnan(psis).all():
        return Section(title, f"no {_duration(size)} window had the {spec.monitoring.min_events:,} events drift "
                              f"needs (monitoring.min_events); no drift figures")
    top = max(2 * threshold, float(np.nanmax(psis)))
    cut = threshold / top
    figure = go.Figure(go.Heatmap(
        x=starts, y=features, z=np.where(np.isnan(psis), None, psis).tolist(), zmin=0, zmax=top, hoverongaps=False,
        colorscale=[[0, "#f7fbff"], [cut, "#6baed6"], [cut, "#fc9272"], [1, "#67000d"]],
        colorbar={"title": {"text": "PSI"}, "tickvals": [0, threshold, top],
                  "ticktext": ["0", f"threshold {threshold:g}", f"{top:.2f}"]},
        hovertemplate="%{y}<br>%{x}<br>PSI %{z:.3f}<extra></extra>"))
    rows, columns = np.nonzero(np.nan_to_num(psis, nan=0.0) > threshold)
    figure.add_trace(go.Scatter(x=[starts[c] for c in columns], y=[features[r] for r in rows], mode="markers",
                                marker={"symbol": "x-thin", "size": 9, "line": {"width": 2, "color": "black"}},
                                name=f"PSI above {threshold:g}", hoverinfo="skip"))
    figure.update_layout(height=160 + 28 * len(features), xaxis_title="window start (event time, UTC)",
                         legend={"orientation": "h", "y": 1.08})
    measured = int((~np.isnan(psis)).any(axis=0).sum())
    largest = np.unravel_index(np.nanargmax(psis), psis.shape)
    return Section(title, f"{len(windows):,} windows, {measured:,} with the events drift needs; {len(set(columns)):,} "
                          f"above the PSI threshold {threshold:g}; largest: {features[largest[0]]} "
                          f"{psis[largest]:.3f} at {starts[largest[1]]}", figure)


def rates_section(spec: Spec, size: int, windows: list[dict], alerts: list[dict]) -> Section:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    starts = [w["start"] for w in windows]
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.add_trace(go.Scatter(x=starts, y=[w["input_per_s"] for w in windows], name="input events/s",
                                mode="lines"), secondary_y=False)
    for key, name in (("dead_letter_rate", "dead-letter rate"), ("alert_rate", "alert rate")):
        figure.add_trace(go.Scatter(x=starts, y=[100 * w[key] for w in windows], name=f"{name} (%)", mode="lines"),
                         secondary_y=True)
    at = {w["start"]: w for w in windows}
    marked = [a for a in alerts if a["window_s"] == size and a["window_start"] in at]
    if marked:
        figure.add_trace(go.Scatter(x=[a["window_start"] for a in marked],
                                    y=[at[a["window_start"]]["input_per_s"] for a in marked],
                                    text=[describe_alert(a) for a in marked], name="monitoring alert", mode="markers",
                                    marker={"symbol": "triangle-down", "size": 11, "color": "crimson"},
                                    hovertemplate="%{x}<br>%{text}<extra></extra>"), secondary_y=False)
    if spec.monitoring.max_alert_rate is not None:
        figure.add_hline(y=100 * spec.monitoring.max_alert_rate, line_dash="dot", secondary_y=True,
                         annotation_text="max alert rate")
    figure.update_layout(height=380, legend={"orientation": "h", "y": 1.12})
    figure.update_xaxes(title_text="window start (event time, UTC)")
    figure.update_yaxes(title_text="events/s", secondary_y=False, rangemode="tozero")
    figure.update_yaxes(title_text="% of the window's input", secondary_y=True, rangemode="tozero")
    events, dead = sum(w["events"] for w in windows), sum(w["dead_letters"] for w in windows)
    kinds = collections.Counter(a["kind"] for a in alerts if a["window_s"] == size)
    return Section(f"Input, dead letters and alerts, {_duration(size)} windows",
                   f"{events:,} events and {dead:,} placed dead letters in {len(windows):,} windows; monitoring "
                   f"alerts: {', '.join(f'{n:,} {k}' for k, n in sorted(kinds.items())) or 'none'}", figure)


def scores_section(scored: list[dict], windows: list[dict], baseline: dict | None) -> Section:
    import plotly.graph_objects as go

    title = "Scores against the holdout's deciles"
    if baseline is None:
        return Section(title, "no --model_dir: the holdout's score deciles are in the model's manifest")
    if not scored and not windows:
        return Section(title, "no scores: the monitoring windows hold none")
    bins = Bins(baseline["score"])
    if scored:
        counts, where = bins.counts(np.array([r["score"] for r in scored], dtype=float)), "scored records"
    else:
        counts, where = np.sum([w["score_counts"] for w in windows], axis=0), "monitoring windows"
    edges = [f"{e:.3g}" for e in baseline["score"]["edges"]]  # scores may be any number (a reconstruction error)
    inner = ["[" + f"{low}, {high}" + ")" for low, high in zip(edges, edges[1:])]
    labels = [f"< {edges[0]}", *inner, f">= {edges[-1]}"]
    figure = go.Figure([go.Bar(x=labels, y=baseline["score"]["shares"], name="holdout (training)"),
                        go.Bar(x=labels, y=(counts / max(counts.sum(), 1)).tolist(), name=where)])
    figure.update_layout(barmode="group", height=360, xaxis_title="score bin (the holdout's deciles)",
                         yaxis_title="share of scores", yaxis_tickformat=".0%", legend={"orientation": "h", "y": 1.1})
    value = psi(baseline["score"]["shares"], counts)
    return Section(title, f"{int(counts.sum()):,} scores ({where}); PSI against the holdout "
                          + (f"{value:.3f}" if value is not None else "-"), figure)


def quality_section(spec: Spec, scored: list[dict]) -> Section:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    title = QUALITY
    labelled = [r for r in scored if spec.label is not None and r.get(spec.label) is not None]
    labels = np.array([r[spec.label] for r in labelled], dtype=int)
    if len(set(labels.tolist())) < 2:
        return Section(title, "no curves: they need scored records with the spec's label"
                              + (f" ({spec.label})" if spec.label else "") + ", of both classes")
    scores = np.array([r["score"] for r in labelled], dtype=float)
    false_positive, true_positive, _ = roc_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    auc, average_precision = roc_auc_score(labels, scores), average_precision_score(labels, scores)
    figure = make_subplots(rows=1, cols=2, subplot_titles=(f"ROC (AUC {auc:.3f})",
                                                           f"precision-recall (AP {average_precision:.3f})"))
    figure.add_trace(go.Scatter(x=_thin(false_positive), y=_thin(true_positive), name="ROC", mode="lines"), 1, 1)
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], name="chance", mode="lines", line={"dash": "dot"}), 1, 1)
    figure.add_trace(go.Scatter(x=_thin(recall), y=_thin(precision), name="precision-recall", mode="lines"), 1, 2)
    figure.add_hline(y=labels.mean(), line_dash="dot", row=1, col=2, annotation_text="base rate")
    figure.update_xaxes(title_text="false positive rate", row=1, col=1)
    figure.update_yaxes(title_text="true positive rate", row=1, col=1)
    figure.update_xaxes(title_text="recall", row=1, col=2)
    figure.update_yaxes(title_text="precision", row=1, col=2)
    figure.update_layout(height=420, showlegend=False)
    alerts = sum(bool(r.get("alert")) for r in labelled)
    return Section(title, f"{len(labelled):,} labelled records, {int(labels.sum()):,} positive ({spec.label}): "
                          f"ROC AUC {auc:.4f}, average precision {average_precision:.4f}; {alerts:,} alerts", figure)


def class_quality_section(spec: Spec, scored: list[dict]) -> Section:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from models.estimator import calibration, calibration_error, commonest

    labelled = [r for r in scored if r.get(spec.label) is not None and r.get(TOP_K)]
    if not labelled:
        return Section(CLASS_QUALITY, f"no hit rates: they need scored records with the spec's label ({spec.label})")
    truth = np.array([r[spec.label] for r in labelled], dtype=object)
    ranked = [[entry["class"] for entry in r[TOP_K]] for r in labelled]
    k = max(len(classes) for classes in ranked)
    popular = commonest(truth)
    hit_rates = [float(np.mean([t in classes[:j] for t, classes in zip(truth, ranked)])) for j in range(1, k + 1)]
    popular_rates = [float(np.isin(truth, popular[:j]).mean()) for j in range(1, k + 1)]
    bins = calibration(np.array([r[TOP_K][0]["probability"] for r in labelled], dtype=float),
                       np.array([classes[0] == t for t, classes in zip(truth, ranked)]))
    figure = make_subplots(rows=1, cols=2, subplot_titles=("hit rate of the top classes",
                                                           "calibration of the likeliest class"))
    tops = [f"top {j}" for j in range(1, k + 1)]
    figure.add_trace(go.Bar(x=tops, y=hit_rates, name="model"), 1, 1)
    figure.add_trace(go.Bar(x=tops, y=popular_rates, name="always the commonest classes"), 1, 1)
    figure.add_trace(go.Scatter(x=[b["mean_probability"] for b in bins], y=[b["hit_rate"] for b in bins],
                                text=[f"{b['rows']:,} records" for b in bins], name="model", mode="lines+markers"), 1, 2)
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], name="calibrated", mode="lines", line={"dash": "dot"}), 1, 2)
    figure.update_yaxes(title_text="share of records", tickformat=".0%", row=1, col=1)
    figure.update_xaxes(title_text="probability of the likeliest class", row=1, col=2)
    figure.update_yaxes(title_text="how often it was right", row=1, col=2)
    figure.update_layout(height=420, barmode="group", legend={"orientation": "h", "y": 1.15})
    return Section(CLASS_QUALITY, f"{len(labelled):,} labelled records ({spec.label}): top-{k} hit rate "
                                  f"{hit_rates[-1]:.4f} (always the {k} commonest classes here: {popular_rates[-1]:.4f}), "
                                  f"top-1 {hit_rates[0]:.4f}; calibration error {calibration_error(bins):.4f}", figure)


def clusters_sections(snapshot_dir: str | None, assignments: list[dict]) -> list[Section]:
    import plotly.graph_objects as go

    sections = []
    if snapshot_dir:
        snapshot = registry.load(snapshot_dir).manifest
        if snapshot.get("kind") != "kmeans":
            raise UserError(f"--snapshots {snapshot_dir}: its current version is not a k-means snapshot "
                            f"(rtml cluster's --snapshot_dir)")
        centers, names = np.array(snapshot["centers"]), snapshot["features"]
        rows = [f"cluster {i} ({n:,} learned)" for i, n in enumerate(snapshot["counts"])]
        limit = float(np.abs(centers).max()) or 1.0
        figure = go.Figure(go.Heatmap(x=names, y=rows, z=centers.tolist(), zmid=0, zmin=-limit, zmax=limit,
                                      colorscale="RdBu_r", colorbar={"title": {"text": "center"}},
                                      hovertemplate="%{y}<br>%{x}<br>%{z:.3f}<extra></extra>"))
        figure.update_layout(height=160 + 40 * len(rows), xaxis_title="feature (as the model sees it)")
        sections.append(Section(f"k-means centers, snapshot {snapshot['version']}",
                                f"k = {snapshot['k']}, {snapshot['events']:,} events assigned, learned from "
                                f"{snapshot['learned']:,}; event time {snapshot['event_time']['from']} to "
                                f"{snapshot['event_time']['to']}", figure))
    if assignments:
        distances = np.array([a["distance"] for a in assignments], dtype=float)
        clusters = np.array([a["cluster"] for a in assignments], dtype=int)
        edges = np.histogram_bin_edges(distances, bins=DISTANCE_BINS)
        figure = go.Figure([go.Bar(x=((edges[:-1] + edges[1:]) / 2).tolist(),
                                   y=np.histogram(distances[clusters == c], bins=edges)[0].tolist(),
                                   width=float(edges[1] - edges[0]), name=f"cluster {c}", opacity=0.75)
                            for c in sorted(set(clusters.tolist()))])
        figure.update_layout(barmode="overlay", height=360, xaxis_title="distance to the nearest center",
                             yaxis_title="events", yaxis_type="log", legend={"orientation": "h", "y": 1.1})
        far = np.quantile(distances, 0.99)
        sections.append(Section("Distance to the nearest center", f"{len(distances):,} assignments; median distance "
                                                                  f"{np.median(distances):.3f}, 99th percentile "
                                                                  f"{far:.3f}", figure))
    return sections


# ---------------------------------------------------------------------------------------------
# The page

def page(title: str, sections: list[Section]) -> str:
    """The HTML page: plotly.js once, inline, then each section's heading, finding and chart."""
    from plotly.offline import get_plotlyjs

    body = []
    for number, section in enumerate(sections):
        body.append(f"<section><h2>{html.escape(section.title)}</h2><p>{html.escape(section.finding)}</p>")
        if section.figure is not None:
            section.figure.update_layout(margin={"t": 60, "b": 50}, template="plotly_white")
            body.append(section.figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"chart-{number}",
                                               config={"displaylogo": False, "responsive": True}))
        body.append("</section>")
    made = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}}"
            f"section{{margin-bottom:2.5em}}p{{color:#555}}</style>"
            f"<script>{get_plotlyjs()}</script></head><body><h1>{html.escape(title)}</h1>"
            f"<p>Written {made} by rtml report.</p>{''.join(body)}</body></html>\n")


def _nan(value: float | None) -> float:
    return np.nan if value is None else value


def _thin(values: np.ndarray) -> list[float]:
    """At most CURVE_POINTS of a curve's points, its first and last kept."""
    if len(values) <= CURVE_POINTS:
        return values.tolist()
    return values[np.unique(np.linspace(0, len(values) - 1, CURVE_POINTS).round().astype(int))].tolist()


def _duration(seconds: int) -> str:
    for unit, name in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds % unit == 0:
            return f"{seconds // unit}-{name}"
    return f"{seconds}-second"


if __name__ == "__main__":
    cli.main(run)
