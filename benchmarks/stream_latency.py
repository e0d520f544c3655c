"""End-to-end latency of ``python -m pipelines.score --mode stream`` over Kafka, and the highest
rate it sustains.

    .venv/bin/python benchmarks/stream_latency.py                      # 2,000 events/s for 30 s
    .venv/bin/python benchmarks/stream_latency.py --search             # then 60 s trials: 2,000, 2,500 ... /s
    .venv/bin/python benchmarks/stream_latency.py --spec fraud_entity --runner PrismRunner --rate 1000
    .venv/bin/python benchmarks/stream_latency.py --runner FlinkRunner --kafka_io beam --rate 1000
    .venv/bin/python benchmarks/stream_latency.py --flink_cluster 2 --spec fraud_entity --rate 1000

Starts a local Apache Kafka broker (or uses --bootstrap_servers), trains a small model of --spec
into benchmarks/data/stream-model-<spec> if there is none there, puts 200 events in a 3-partition
topic, starts the stream scorer as a subprocess (--runner, default the DirectRunner) and times its
start-up (from the command to the first of them scored, and to all of them). Then it produces
generated fraud events at a steady rate, each event's time and its message's timestamp (Kafka
CreateTime) set to the moment it is produced, as a live source does. A consumer reads the output
topic; latency per event is the output message's timestamp (the time the scorer produced it)
minus the input message's timestamp, and also the time the checker consumed it minus the input
timestamp. Backlog = events produced - events scored, sampled every second.

With --flink_cluster N, the scorer runs at --parallelism N on a Flink session cluster of N TaskManagers (one slot
each) started for the run (``pipelines.flink_cluster``): the command returns once the job runs, start-up is timed from it too, RSS sums the
cluster's processes (JobManager, TaskManagers, Python workers), and the job is cancelled at the end.

Then the same again, on fresh topics, with the least-work live loop in place of the scorer (unless
--no_reference): one process, one confluent-kafka consumer, what one poll returns (up to 500
messages) checked and scored by the project's model.onnx in one call (``batch_scoring.least_work_scorer``),
produced with no linger. Both rows come from one run.

Last it prints what a Python thread round trip costs here (``thread_round_trip_us``): machines differ
in it, and a keyed stream's rates with it.

A rate is *sustained* when every event is scored within 10 s of the end of production and the
backlog does not grow: its mean over the last quarter of the trial is at most 1.5x its mean over
the second quarter plus half a second of events.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import pathlib
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from benchmarks.batch_scoring import least_work_scorer  # noqa: E402
from pipelines import generate  # noqa: E402
from pipelines.flink_cluster import FlinkCluster  # noqa: E402
from pipelines.flink_rest import FlinkRest  # noqa: E402
from pipelines.kafka_broker import KafkaBroker, create_topic  # noqa: E402

DATA = ROOT / "benchmarks" / "data"
FLOWING_MARGIN_MS = 3000  # p99f: events produced at least this long before the last one (traffic behind them)
WAITING = 200  # events in the topic before the scorer starts: its start-up is timed to the first of them scored
_QUIET = logging.getLogger("benchmarks.stream_latency.librdkafka")
_QUIET.setLevel(logging.CRITICAL)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _rfc3339(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat(timespec="milliseconds")


def ensure_model(model_dir: pathlib.Path, spec: str) -> None:
    if (model_dir / "CURRENT").exists():
        return
    from pipelines import train

    print(f"training a small {spec} model into {model_dir} (once) ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        generate.generate("fraud", 3, pathlib.Path(tmp) / "data", datetime.date(2026, 3, 1), 1500, 0.0, 7,
                          compress=False)
        train.run(["--spec", spec, "--input", f"{tmp}/data/*/*.jsonl", "--model_dir", str(model_dir),
                   "--dead_letter", f"{tmp}/dead"])


class OutputReader(threading.Thread):
    """Consumes the output topic; per event id: (output message timestamp, consume time) in ms."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(daemon=True, name="output-reader")
        self.seen: dict[str, tuple[int, int]] = {}
        self.counts: dict[str, int] = {}  # events seen per trial label
        self.duplicates = 0  # records of an event seen before
        self._halt = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-check-{uuid.uuid4().hex[:6]}",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 10}, logger=_QUIET)
        self._consumer.assign([TopicPartition(topic, 0, 0)])

    def run(self):
        while not self._halt.is_set():
            for message in self._consumer.consume(2000, 0.05):
                if message.error() is None:
                    consumed = _now_ms()
                    event_id = orjson.loads(message.value())["event_id"]
                    if event_id in self.seen:
                        self.duplicates += 1
                    else:
                        self.seen[event_id] = (message.timestamp()[1], consumed)
                        label = event_id.rsplit("-", 1)[0]
                        self.counts[label] = self.counts.get(label, 0) + 1
        self._consumer.close()

    def stop(self):
        self._halt.set()
        self.join(10)


def produce_now(bootstrap: str, topic: str, events: list[dict], count: int, label: str) -> None:
    """``count`` events stamped now, written before this returns."""
    producer = Producer({"bootstrap.servers": bootstrap}, logger=_QUIET)
    for i in range(count):
        ts = _now_ms()
        event = dict(events[i % len(events)], event_id=f"{label}-{i:07d}", event_time=_rfc3339(ts))
        producer.produce(topic, value=orjson.dumps(event), key=event["card_id"].encode(), timestamp=ts)
    producer.flush(30)


def run_trial(bootstrap: str, topic: str, reader: OutputReader, events: list[dict], rate: float, seconds: float,
              label: str, scorer_pgids: tuple[int, ...] = (), burst: int = 1, latencies: str | None = None) -> dict:
    """Produce ``rate`` events/s for ``seconds``, ``burst`` at a time (every burst/rate s); wait for them to be
    scored; the trial's figures (with ``scorer_pgids``, the peak RSS of the scorer's process groups, sampled every
    second). With ``latencies``, each scored event's production time (s into the trial) and latency (ms) to that
    CSV file, to see when a tail happened."""
    total = int(rate * seconds)
    produced_at: dict[str, int] = {}
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "queue.buffering.max.messages": 1_000_000},
                        logger=_QUIET)
    ids = [f"{label}-{i:07d}" for i in range(total)]
    backlog: list[int] = []
    rss_mb: list[float] = []
    started = time.monotonic()
    next_sample = started + 1.0
    sent = 0
    while sent < total:
        due = min(total, (int((time.monotonic() - started) * rate / burst) + 1) * burst)
        while sent < due:
            ts = _now_ms()
            event = dict(events[sent % len(events)], event_id=ids[sent], event_time=_rfc3339(ts))
            producer.produce(topic, value=orjson.dumps(event), key=event["card_id"].encode(), timestamp=ts)
            produced_at[ids[sent]] = ts
            sent += 1
        producer.poll(0)
        if time.monotonic() >= next_sample:
            backlog.append(sent - reader.counts.get(label, 0))
            if scorer_pgids:
                rss_mb.append(sum(process_group_usage(pgid)["rss_mb"] for pgid in scorer_pgids))
            next_sample += 1.0
        time.sleep(0.005)
    producer.flush(30)
    produce_s = time.monotonic() - started
    end_of_production = time.monotonic()
    deadline = end_of_production + 10.0
    while time.monotonic() < deadline and reader.counts.get(label, 0) < total:
        time.sleep(0.1)
    drained_s = time.monotonic() - end_of_production
    scored = [i for i in ids if i in reader.seen]
    to_output = np.array([reader.seen[i][0] - produced_at[i] for i in scored], dtype=float)
    to_consumer = np.array([reader.seen[i][1] - produced_at[i] for i in scored], dtype=float)
    if latencies:
        with open(latencies, "w") as out:
            out.write("produced_s,latency_ms\n")
            for i in scored:
                out.write(f"{(produced_at[i] - produced_at[ids[0]]) / 1000:.3f},{reader.seen[i][0] - produced_at[i]}\n")
    # The last events of a trial have no traffic behind them: they wait for the watermark of idle partitions.
    flowing_until = max(produced_at.values(), default=0) - FLOWING_MARGIN_MS
    while_flowing = np.array([reader.seen[i][0] - produced_at[i] for i in scored if produced_at[i] < flowing_until],
                             dtype=float)
    quarter = max(1, len(backlog) // 4)
    early = float(np.mean(backlog[quarter:2 * quarter])) if len(backlog) >= 2 * quarter else 0.0
    late = float(np.mean(backlog[-quarter:])) if backlog else 0.0
    complete = len(scored) == total
    return {
        "label": label, "rate": rate, "seconds": seconds, "events": total, "achieved_rate": total / produce_s,
        "scored": len(scored), "drain_s": drained_s if complete else float("nan"),
        "p50": _pct(to_output, 50), "p99": _pct(to_output, 99), "p99f": _pct(while_flowing, 99), "max": float(to_output.max()) if scored else float("nan"),
        "c50": _pct(to_consumer, 50), "c99": _pct(to_consumer, 99),
        "backlog_early": early, "backlog_late": late, "backlog_max": max(backlog, default=0),
        "peak_rss_mb": max(rss_mb, default=float("nan")),
        "sustained": complete and late <= 1.5 * early + 0.5 * rate,
    }


def process_group_usage(pgid: int) -> dict:
    """RSS (MB, in all and per program: the command's Python, Prism, Flink's JVM), open file descriptors and threads,
    summed over the live processes of a process group."""
    rss_kb, fds, threads = {}, 0, 0
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:  # the fields after the command: state, ppid, pgrp
                continue
            program = (entry / "comm").read_text().strip()
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss_kb[program] = rss_kb.get(program, 0) + int(line.split()[1])
                elif line.startswith("Threads:"):
                    threads += int(line.split()[1])
            fds += len(os.listdir(entry / "fd"))
        except (OSError, ValueError, IndexError):  # it ended meanwhile
            continue
    return {"rss_mb": sum(rss_kb.values()) / 1024, "fds": fds, "threads": threads,
            "rss_by": " ".join(f"{program} {kb / 1024:.0f}" for program, kb in sorted(rss_kb.items()))}


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else float("nan")


def table(rows: list[dict]) -> str:
    head = (f"{'scorer':<11}{'start s':>8}  {'trial':<10}{'target/s':>9}{'sent/s':>9}{'secs':>6}{'events':>10}{'scored':>10}{'p50 ms':>8}"
            f"{'p99 ms':>8}{'p99f ms':>8}{'max ms':>8}{'p50c ms':>9}{'p99c ms':>9}{'backlog q2':>11}{'q4':>9}{'max':>9}"
            f"{'drain s':>8}{'RSS MB':>8}  sustained")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['scorer']:<11}{r.get('start_s', float('nan')):>8.1f}  {r['label']:<10}{r['rate']:>9,.0f}{r['achieved_rate']:>9,.0f}{r['seconds']:>6.0f}"
                     f"{r['events']:>10,}{r['scored']:>10,}{r['p50']:>8.0f}{r['p99']:>8.0f}{r['p99f']:>8.0f}{r['max']:>8.0f}"
                     f"{r['c50']:>9.0f}{r['c99']:>9.0f}{r['backlog_early']:>11,.0f}{r['backlog_late']:>9,.0f}"
                     f"{r['backlog_max']:>9,}{r['drain_s']:>8.1f}{r['peak_rss_mb']:>8.0f}  {'yes' if r['sustained'] else 'NO'}")
    return "\n".join(lines)


def thread_round_trip_us(round_trips: int = 20_000) -> float:
    """Microseconds for one Python thread to hand a value to another and get it back (two queues): what a
    machine charges for the thread switches that Beam's SDK worker makes for every state request and bundle.
    Virtual machines differ in it far more than in arithmetic, and a keyed stream's rates with it, so the
    benchmark prints it beside its rows."""
    there, back = queue.Queue(), queue.Queue()

    def echo():
        for value in iter(there.get, None):
            back.put(value)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    started = time.perf_counter()
    for value in range(round_trips):
        there.put(value)
        back.get()
    elapsed = time.perf_counter() - started
    there.put(None)
    thread.join()
    return elapsed / round_trips * 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2000, help="events/s of the latency run (default 2000)")
    parser.add_argument("--seconds", type=float, default=30, help="length of the latency run (default 30)")
    parser.add_argument("--burst", type=int, default=1, metavar="N",
                        help="produce the latency run's events N at a time, every N/rate s (default 1: smooth)")
    parser.add_argument("--search", action="store_true",
                        help="then look for the highest rate sustained for --search_seconds, from --rate up")
    parser.add_argument("--search_seconds", type=float, default=60)
    parser.add_argument("--search_rates", default="",
                        help="comma-separated rates to try, all of them (default: --rate, then --search_step "
                             "more each time, until one is not sustained; at most 6)")
    parser.add_argument("--search_step", type=float, default=500)
    parser.add_argument("--spec", default="fraud", choices=("fraud", "fraud_entity"))
    parser.add_argument("--runner", default="DirectRunner", help="the scorer's --runner (default DirectRunner)")
    parser.add_argument("--kafka_io", choices=("python", "beam"), default="python",
                        help="the scorer's --kafka_io (beam: Beam's Java KafkaIO, FlinkRunner only)")
    parser.add_argument("--model_dir", help="default: benchmarks/data/stream-model-<spec>")
    parser.add_argument("--scorer_flags", default="", help="more flags for the scorer, e.g. '--direct_num_workers 3'")
    parser.add_argument("--flink_cluster", type=int, default=0, metavar="N",
                        help="run the scorer at --parallelism N on a Flink session cluster of N TaskManagers started "
                             "for the run")
    parser.add_argument("--bootstrap_servers", help="an existing cluster (default: a local Apache Kafka broker)")
    parser.add_argument("--profile", metavar="PATH", help="run the scorer under cProfile, stats to PATH")
    parser.add_argument("--no_reference", action="store_true", help="skip the least-work live loop")
    parser.add_argument("--latencies", metavar="CSV",
                        help="write the latency trial's events to CSV: production time (s into the trial), latency "
                             "(ms)")
    parser.add_argument("--serve_least_work", nargs=4, metavar=("BOOTSTRAP", "IN", "OUT", "MODEL_VERSION_DIR"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_least_work:  # the reference, in its own process
        serve_least_work(*args.serve_least_work)
        return 0

    model_dir = pathlib.Path(args.model_dir or DATA / f"stream-model-{args.spec}")
    ensure_model(model_dir, args.spec)
    broker = None if args.bootstrap_servers else KafkaBroker().start()
    bootstrap = args.bootstrap_servers or broker.bootstrap
    cluster = FlinkCluster(taskmanagers=args.flink_cluster).start() if args.flink_cluster else None
    # (on the cluster one slot a TaskManager: --parallelism N uses them all)
    runner = [*cluster.flags, "--parallelism", str(args.flink_cluster)] if cluster else ["--runner", args.runner]
    scorer = [sys.executable, *(["-m", "cProfile", "-o", args.profile] if args.profile else []), "-m", "pipelines.score",
              "--mode", "stream", "--spec", args.spec, *runner, "--model_dir", str(model_dir),
              "--offset_reset", "earliest", "--kafka_io", args.kafka_io, *args.scorer_flags.split()]
    try:
        rows = _measure(args, "project", bootstrap, cluster=cluster, command=lambda topics, group: [
            *scorer, "--bootstrap_servers", bootstrap, "--input_topic", topics[0], "--output_topic", topics[1],
            "--dead_letter_topic", topics[2], "--group_id", group])
        if not args.no_reference:
            version_dir = model_dir / "versions" / (model_dir / "CURRENT").read_text().split()[0]
            rows += _measure(args, "least_work", bootstrap, command=lambda topics, group: [
                sys.executable, __file__, "--serve_least_work", bootstrap, topics[0], topics[1], str(version_dir)],
                search=False)
    finally:
        if cluster is not None:
            cluster.close()
        if broker is not None:
            broker.close()
    shape = f", bursts of {args.burst}" if args.burst > 1 else ""
    where = f"a Flink cluster of {args.flink_cluster} TaskManagers" if cluster else args.runner
    print(f"\n{args.spec} on {where} ({args.scorer_flags or 'no more flags'}), --kafka_io {args.kafka_io}"
          f"{shape}\n{table(rows)}\n(start s: from the command to "
          f"the first of {WAITING} waiting events scored; p50/p99/max: output message timestamp - input timestamp; "
          f"p99f: the same, of events with traffic behind them (produced {FLOWING_MARGIN_MS / 1000:g} s or more before the last); "
          f"p50c/p99c: checker's consume time - input timestamp; backlog: produced - scored, per second, "
          f"mean over the 2nd and 4th quarter; RSS: the scorer's peak, with its runner's processes, sampled every second)\nthis machine: a Python thread round trip takes "
          f"{thread_round_trip_us():.0f} us")
    return 0


def serve_least_work(bootstrap: str, input_topic: str, output_topic: str, model_version_dir: str) -> None:
    """The least-work live loop, until SIGTERM."""
    score = least_work_scorer(model_version_dir)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-least-work-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10},
                        logger=_QUIET)
    consumer.subscribe([input_topic])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0}, logger=_QUIET)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        ids, scores = score([m.value() for m in consumer.consume(500, 0.01) if m.error() is None])
        for event_id, event_score in zip(ids, scores):
            producer.produce(output_topic, orjson.dumps({"event_id": event_id, "score": event_score}))
        producer.poll(0)
    producer.flush(10)
    consumer.close()


def _measure(args, scorer_name: str, bootstrap: str, command, search: bool = True,
             cluster: FlinkCluster | None = None) -> list[dict]:
    """Start-up, the latency trial and (--search) the sustained-rate trials of one scorer: ``command(topics,
    group)`` on fresh topics; on ``cluster``, the command sends the job there and ends."""
    run_id = uuid.uuid4().hex[:6]
    topics = (f"bench-in-{run_id}", f"bench-scored-{run_id}", f"bench-dead-{run_id}")
    create_topic(bootstrap, topics[0], 3)
    create_topic(bootstrap, topics[1], 1)
    create_topic(bootstrap, topics[2], 1)
    with tempfile.TemporaryDirectory() as tmp:
        generate.generate("fraud", 1, pathlib.Path(tmp) / "data", datetime.date(2026, 4, 1), 20_000, 0.0, 3,
                          compress=False)
        events = [orjson.loads(line) for line in
                  (pathlib.Path(tmp) / "data" / "dt=2026-04-01" / "events.jsonl").read_bytes().splitlines()]

    reader = OutputReader(bootstrap, topics[1])
    reader.start()
    produce_now(bootstrap, topics[0], events, WAITING, "waiting")
    log = tempfile.NamedTemporaryFile(prefix=f"stream-{scorer_name}-", suffix=".log", delete=False)
    started = time.monotonic()
    scorer = subprocess.Popen(command(topics, f"bench-{run_id}"), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    pgids = tuple(cluster.process_ids) if cluster else (scorer.pid,)
    sent_status = 0 if cluster else None  # (the command's status while its stream runs)
    rows = []
    try:
        first_s = None
        while reader.counts.get("waiting", 0) < WAITING:
            if first_s is None and reader.counts.get("waiting", 0):
                first_s = time.monotonic() - started
            if scorer.poll() not in (None, sent_status) or time.monotonic() - started > 120:
                raise RuntimeError(f"{scorer_name} did not start; see {log.name}")
            time.sleep(0.01)
        first_s = first_s or time.monotonic() - started
        print(f"{scorer_name}: the first of {WAITING} waiting events scored {first_s:.1f} s after the command, all of "
              f"them after {time.monotonic() - started:.1f} s (log: {log.name}); producing {args.rate:,.0f} events/s "
              f"for {args.seconds:g} s", flush=True)
        rows.append(run_trial(bootstrap, topics[0], reader, events, args.rate, args.seconds, "latency", pgids,
                              args.burst, args.latencies if scorer_name == "project" else None)
                    | {"scorer": scorer_name, "start_s": first_s})
        print(table(rows), flush=True)
        if args.search and search:
            rates = ([float(r) for r in args.search_rates.split(",") if r] if args.search_rates
                     else [args.rate + args.search_step * k for k in range(0, 6)])
            for number, rate in enumerate(rates):
                print(f"search: {rate:,.0f} events/s for {args.search_seconds:g} s ...", flush=True)
                row = run_trial(bootstrap, topics[0], reader, events, rate, args.search_seconds,
                                f"search{number}", pgids) | {"scorer": scorer_name}
                rows.append(row)
                print(table(rows), flush=True)
                if not row["sustained"] and not args.search_rates:
                    break
                time.sleep(5)  # let a backlog drain before the next trial
            best = max((r["rate"] for r in rows[1:] if r["sustained"]), default=None)
            capped = rows[-1]["sustained"] and not args.search_rates
            print(f"highest rate sustained for {args.search_seconds:g} s: "
                  + (f"{best:,.0f} events/s" if best else "none of those tried")
                  + (" (every rate tried was sustained; try higher --rate)" if capped else ""), flush=True)
    finally:
        stop_started = time.monotonic()
        if cluster is not None:
            flink = FlinkRest(cluster.master)
            for job in flink.jobs():
                if job.state == "RUNNING":
                    flink.cancel(job.id)
                    print(f"{scorer_name}: cancelled job {job.id} on the cluster")
        elif scorer.poll() is None:
            scorer.send_signal(signal.SIGTERM)
            try:
                code = scorer.wait(35)
            except subprocess.TimeoutExpired:
                os.killpg(scorer.pid, signal.SIGKILL)
                code = scorer.wait()
            print(f"{scorer_name} stopped on SIGTERM in {time.monotonic() - stop_started:.1f} s, exit status {code}")
        reader.stop()
    return rows


if __name__ == "__main__":
    sys.exit(main())
