r"""Monitor archived events by event time: per window, rates, scores, alerts and drift from training.

    python -m pipelines.monitor --spec fraud --input 'data/fraud/*/*.jsonl' --model_dir models/fraud \
        --output out/monitoring [--window_s 3600]

Scores the archive with the model version as pipelines.score does (same graph), and writes per
fixed event-time window of each size (--window_s, repeatable; default: the spec's
monitoring.windows) one monitoring record to OUTPUT/windows-*.jsonl and, where a window crosses the
spec's monitoring thresholds (drift of a feature from training, alert rate), alert records to
OUTPUT/alerts-*.jsonl; see transforms/monitoring.py for both. Prints a summary per window size and
UTC day, then the alerts.
"""
from __future__ import annotations

import collections
import time

from apache_beam.io.filesystems import FileSystems

from models import registry
from pipelines import cli, graph, runners
from pipelines.options import ArchiveOptions, EngineOptions, ModelOptions, MonitorOptions, SpecOptions
from transforms.fileio import ReadEventFiles, WriteJsonLines, check_input, json_records
from transforms.monitoring import ALERTS, MONITOR_METRICS_NAMESPACE, WINDOWS, Monitor, describe_alert

VIEWS = (SpecOptions, MonitorOptions, ModelOptions, EngineOptions, cli.only(ArchiveOptions, "input", "output", "batch_size"))
REQUIRED = {"": ("spec", "input", "model_dir", "output")}
ALERTS_SHOWN = 20


def run(argv=None, test_pipeline=None) -> dict[str, int]:
    """Monitor an archive; returns the run's counters (those of scoring and ``rtml.monitor/...``)."""
    options = cli.parse(argv, VIEWS, __doc__, REQUIRED)
    runners.apply_runner_presets(options)
    cli.require(options, *REQUIRED[""])
    flags = options.view_as(ArchiveOptions)
    spec, model = graph.spec_and_model(options)
    model_flags = options.view_as(ModelOptions)
    monitor = Monitor(spec, registry.Baselines(model_flags.model_dir, spec, model), model.version,
                      options.view_as(MonitorOptions).window_s)
    check_input(flags.input)

    started = time.monotonic()
    pipeline = cli.create_pipeline(options, test_pipeline)
    scored = (pipeline
              | "ReadEvents" >> ReadEventFiles(flags.input, flags.batch_size)
              | "ScoreRaw" >> graph.ScoreRaw(spec, model, model_flags.model_dir, options.view_as(EngineOptions).engine,
                                             batch_size=flags.batch_size))
    monitored = {"scored": scored.batches, "dead_letters": scored.dead_letters} | "Monitor" >> monitor
    monitored[WINDOWS] | "WriteWindows" >> WriteJsonLines(flags.output, WINDOWS)
    monitored[ALERTS] | "WriteAlerts" >> WriteJsonLines(flags.output, ALERTS)
    result = pipeline.run()
    result.wait_until_finish()

    totals = cli.counters(result)
    print(cli.summary(f"{spec.name} monitoring with model {model.version}", totals, time.monotonic() - started,
                      {"windows": f"{flags.output}/{WINDOWS}-*.jsonl", "alerts": f"{flags.output}/{ALERTS}-*.jsonl"}))
    outputs = {kind: json_records(FileSystems.join(flags.output, f"{kind}-*.jsonl"), "--output", may_be_empty=True)
               for kind in (WINDOWS, ALERTS)}
    print(report(outputs[WINDOWS], outputs[ALERTS], totals, spec.monitoring.min_events))
    cli.check_whole_input(totals, "the rest of the input was monitored")
    return totals


def report(windows: list[dict], alerts: list[dict], totals: dict[str, int], min_events: int) -> str:
    """Per window size and UTC day: windows, events, dead letters, alerts, the largest drift; then the alerts."""
    days = collections.defaultdict(list)
    for record in windows:
        days[record["window_s"], record["window_start"][:10]].append(record)
    alert_days = collections.Counter((a["window_s"], a["window_start"][:10], a["kind"]) for a in alerts)
    lines = [f"  {'window':>8}  {'day':<10}  {'windows':>7}  {'measured':>8}  {'events':>9}  {'dead letters':>12}  "
             f"{'alerts':>7}  {'largest drift':<24}  {'drift alerts':>12}  {'rate alerts':>11}"]
    for (size, day), records in sorted(days.items()):
        drifts = [(value, name) for r in records for name, value in r["drift"].items() if value is not None]
        largest = "{1} {0:.3f}".format(*max(drifts)) if drifts else "-"
        measured = sum(r["events"] >= min_events for r in records)
        lines.append(f"  {size:>6} s  {day:<10}  {len(records):>7}  {measured:>8}"
                     f"  {sum(r['events'] for r in records):>9,}  {sum(r['dead_letters'] for r in records):>12,}"
                     f"  {sum(r['alerts'] for r in records):>7,}  {largest:<24}  {alert_days[size, day, 'drift']:>12}"
                     f"  {alert_days[size, day, 'alert_rate']:>11}")
    late = sum(count for key, count in totals.items() if key.startswith(f"{MONITOR_METRICS_NAMESPACE}/late_events_"))
    untimed = totals.get(f"{MONITOR_METRICS_NAMESPACE}/untimed_dead_letters", 0)
    lines.append(f"  measured: windows of at least {min_events:,} events, with drift figures and alerts; "
                 f"{late:,} late events; {untimed:,} dead letters without a usable event time (in no window)")
    lines.append(f"  {len(alerts):,} alerts" + (":" if alerts else ""))
    ordered = sorted(alerts, key=lambda a: (a["window_start"], a["window_s"], a["kind"]))
    for alert in ordered[:ALERTS_SHOWN]:
        lines.append(f"    {alert['window_start']}  {alert['window_s']} s  {describe_alert(alert)}  "
                     f"({alert['events']:,} events)")
    if len(ordered) > ALERTS_SHOWN:
        lines.append(f"    ... {len(ordered) - ALERTS_SHOWN:,} more in the alerts files")
    return "\n".join(lines)


if __name__ == "__main__":
    cli.main(run)
