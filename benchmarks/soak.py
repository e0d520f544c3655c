"""A live scorer run as a service: minutes of steady traffic with a broker restart, a new model version and a
SIGKILL of the scorer in the middle, watched from outside.

    .venv/bin/python benchmarks/soak.py --runner PrismRunner --spec fraud_entity --minutes 30 --rate 200
    make soak SOAK_MINUTES=30        # fraud_entity with monitoring and hot reload on Prism and on Flink, fraud on
                                     # the DirectRunner, one after another
    .venv/bin/python benchmarks/soak.py --runner PrismRunner --spec fraud_entity --overload --rate 400

Starts its own Apache Kafka broker, trains a small model of --spec into a fresh model directory, and starts the
scorer (``python -m pipelines.score --mode stream``, with ``--monitoring_topic`` and ``--model_poll_seconds``) as
a user would. A producer sends generated events at --rate, each stamped with the moment it is sent (event time and
Kafka CreateTime), one in a hundred a broken line. During the run, at fixed fractions of it:
- 30%: the broker is stopped for 10 s and started again (its data kept);
- 50%: ``python -m pipelines.train`` publishes a new model version into the scorer's model directory;
- 70%: the scorer is killed with SIGKILL and started again with the same group.
At the end the producer stops, the run waits for the last events, and the scorer is stopped with SIGTERM.

``--overload``: no disruptions; instead twice --rate for 2 minutes (give a rate the runner holds), then half of it
for 4 minutes, sampled every 10 s: the lag (produced - scored) should grow, then drain, with memory bounded.

``--stops N``: no disruptions; instead the scorer is stopped with SIGTERM N times while traffic flows (evenly
through the run, the first 5 s into it) and started again at once with the same group: each stop should
drain and exit 0 within seconds, and nothing be lost.

Reported: each scorer process's exit status (SIGKILL's aside: 0 expected), events lost (valid events produced and
never scored; records written twice, as after a SIGKILL at least once, are counted apart), p50/p99 latency (output
message timestamp - input timestamp) per 5-minute stretch of production, and every minute the RSS, open file
descriptors and threads of the scorer's process group (the command, and Prism's or Flink's JVM where it runs them).
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import shutil
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
from confluent_kafka import Producer  # noqa: E402

from benchmarks.stream_latency import (  # noqa: E402
    DATA, OutputReader, _QUIET, _now_ms, _rfc3339, ensure_model, process_group_usage)
from pipelines import generate  # noqa: E402
from pipelines.kafka_broker import KafkaBroker  # noqa: E402

STRETCH_S = 300  # latency is reported per stretch of this many seconds of production
BROKEN_EVERY = 100  # one broken line in this many messages
OUTAGE_S = 10.0
OVERLOAD = ((2.0, 120), (0.5, 240))  # (times --rate, seconds)


class Scorer:
    """The stream scorer as a subprocess in its own process group; every exit status it had."""

    def __init__(self, command: list[str], log_dir: pathlib.Path):
        self._command, self._log_dir, self.exits, self.proc = command, log_dir, [], None

    def start(self) -> None:
        self._log = self._log_dir / f"scorer-{len(self.exits)}.log"
        self.proc = subprocess.Popen(self._command, cwd=ROOT, stdout=open(self._log, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.exits.append(("SIGKILL", self.proc.wait(30)))

    def terminate(self) -> None:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = f"{self.proc.wait(40)} in {time.monotonic() - started:.1f} s"
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = f"{self.proc.wait()} (did not stop within 40 s of SIGTERM)"
        # (Flink's stop cancels the job after its drain by design; Prism's only when the drain did not end it)
        stop_line = [line for line in self._log.read_text(errors="replace").splitlines() if " stopped on " in line]
        self.exits.append(("SIGTERM", code + " (cancelled after its drain)" * bool(stop_line and "cancelled" in
                                                                                 stop_line[-1])))

    def check(self) -> None:
        """An exit nobody asked for is recorded, and the scorer started again (as a service manager would)."""
        if self.proc.poll() is not None:
            self.exits.append(("by itself", self.proc.returncode))
            self.start()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runner", default="PrismRunner")
    parser.add_argument("--spec", default="fraud_entity", choices=("fraud", "fraud_entity"))
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=200.0, help="events/s (default 200)")
    parser.add_argument("--no_monitoring", action="store_true", help="no --monitoring_topic")
    parser.add_argument("--overload", action="store_true", help="2x --rate for 2 min, then 0.5x for 4 min; no "
                                                                     "disruptions")
    parser.add_argument("--stops", type=int, default=0, metavar="N",
                        help="SIGTERM and restart the scorer N times under traffic; no other disruptions")
    parser.add_argument("--scorer_flags", default="", help="more flags for the scorer, e.g. '--delivery exactly_once'")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs, model) afterwards")
    args = parser.parse_args(argv)
    if args.stops < 0:
        parser.error("--stops: a number of stops, 0 or more")

    # Stopped with SIGTERM, it still stops its scorer and broker (the finally below), as with Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    run = pathlib.Path(tempfile.mkdtemp(prefix="rtml-soak-"))
    model_dir, trained = run / "model", DATA / f"stream-model-{args.spec}"
    ensure_model(trained, args.spec)
    shutil.copytree(trained, model_dir)
    events = _events(run)
    broker = KafkaBroker().start()
    topics = [f"soak-{name}-{uuid.uuid4().hex[:6]}" for name in ("in", "scored", "dead", "monitoring")]
    for topic, partitions in zip(topics, (3, 1, 1, 1)):
        broker.create_topic(topic, partitions)
    scorer = Scorer([sys.executable, "-m", "pipelines.score", "--mode", "stream", "--spec", args.spec,
                     "--runner", args.runner, "--model_dir", str(model_dir), "--bootstrap_servers", broker.bootstrap,
                     "--input_topic", topics[0], "--output_topic", topics[1], "--dead_letter_topic", topics[2],
                     "--group_id", f"soak-{uuid.uuid4().hex[:6]}", "--offset_reset", "earliest",
                     "--model_poll_seconds", "10",
                     *([] if args.no_monitoring else ["--monitoring_topic", topics[3]]), *args.scorer_flags.split()],
                    run)
    reader = OutputReader(broker.bootstrap, topics[1])
    produced: dict[str, int] = {}
    samples: list[dict] = []
    happened: list[str] = []
    phases = [(args.rate * times, seconds) for times, seconds in OVERLOAD] if args.overload else [
        (args.rate, args.minutes * 60)]
    seconds, sample_s = sum(seconds for _, seconds in phases), 10 if args.overload else 60
    print(f"soak: {args.spec} on {args.runner}, " + ", then ".join(f"{rate:g} events/s for {s / 60:g} min"
                                                                   for rate, s in phases) + f" (folder {run})",
          flush=True)
    try:
        scorer.start()
        reader.start()
        _wait_for_start(broker.bootstrap, topics[0], reader, scorer)
        started = time.monotonic()
        actions = ([] if args.overload else _stops(scorer, args.stops, seconds) if args.stops
                   else _disruptions(broker, scorer, model_dir, args.spec, run))
        producer = threading.Thread(target=_produce, args=(broker.bootstrap, topics[0], events, phases, produced),
                                    daemon=True)
        producer.start()
        next_sample = started
        while producer.is_alive():
            now = time.monotonic()
            if actions and now - started >= actions[0][0] * seconds:
                _, what, act, in_background = actions.pop(0)
                print(f"  {now - started:6.0f} s: {what}", flush=True)
                happened.append(f"{what} at {(now - started) / 60:.1f} min")
                if in_background:
                    threading.Thread(target=act, daemon=True).start()
                else:
                    act()
            if now >= next_sample:
                lag = sum(1 for event_id in list(produced) if event_id not in reader.seen
                          and not event_id.startswith("broken"))
                samples.append({"minute": round((now - started) / 60, 1), "lag": lag,
                                **process_group_usage(scorer.proc.pid)})
                print(f"  {now - started:6.0f} s: {samples[-1]}", flush=True)
                next_sample += sample_s
            scorer.check()
            time.sleep(0.5)
        valid = {event_id for event_id in produced if not event_id.startswith("broken")}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not valid <= reader.seen.keys():
            time.sleep(0.5)
        scorer.terminate()
    finally:
        reader.stop()
        if scorer.proc is not None and scorer.proc.poll() is None:
            os.killpg(scorer.proc.pid, signal.SIGKILL)
        broker.close()
    print(report(args, produced, reader, samples, scorer.exits, happened))
    if not args.keep:
        shutil.rmtree(run, ignore_errors=True)
    return 0


def _disruptions(broker: KafkaBroker, scorer: Scorer, model_dir: pathlib.Path, spec: str, run: pathlib.Path) -> list:
    """(fraction of the run, what, how, whether in the background). The SIGKILL is not: ``Scorer.check``, in the
    same thread, must not see the killed scorer before its restart."""
    return [(0.3, "broker restart", lambda: (broker.stop(), time.sleep(OUTAGE_S), broker.start()), True),
            (0.5, "new model version", lambda: _train_new_version(model_dir, spec, run), True),
            (0.7, "SIGKILL and restart of the scorer", lambda: (scorer.kill(), scorer.start()), False)]


def _stops(scorer: Scorer, stops: int, seconds: float) -> list:
    """SIGTERM and restart: 5 s into the traffic, then evenly through the run."""
    restart = lambda: (scorer.terminate(), scorer.start())  # noqa: E731
    return [(5 / seconds, "SIGTERM 5 s into the traffic, and restart", restart, False)] + [
        (k / stops, f"SIGTERM {k + 1} under traffic, and restart", restart, False) for k in range(1, stops)]


def _events(run: pathlib.Path) -> list[dict]:
    generate.generate("fraud", 1, run / "data", datetime.date(2026, 4, 1), 20_000, 0.0, 3, compress=False)
    return [orjson.loads(line) for line in (run / "data" / "dt=2026-04-01" / "events.jsonl").read_bytes().splitlines()]


def _wait_for_start(bootstrap: str, topic: str, reader: OutputReader, scorer: Scorer) -> None:
    producer = Producer({"bootstrap.servers": bootstrap}, logger=_QUIET)
    ts = _now_ms()
    producer.produce(topic, orjson.dumps({"event_id": "start-0", "event_time": _rfc3339(ts), "card_id": "card-start",
                                          "merchant_id": "m", "merchant_category": "grocery", "amount": 1.0,
                                          "currency": "EUR", "country": "DE", "channel": "pos"}), timestamp=ts)
    producer.flush(30)
    deadline = time.monotonic() + 180
    while "start-0" not in reader.seen:
        if scorer.proc.poll() is not None:
            raise RuntimeError(f"the scorer exited with {scorer.proc.returncode} before it scored an event (its log is "
                               f"in the run's folder; --keep keeps it)")
        if time.monotonic() > deadline:
            raise RuntimeError("the scorer scored no event within 180 s")
        time.sleep(0.2)


def _produce(bootstrap: str, topic: str, events: list[dict], phases: list[tuple[float, float]],
             produced: dict[str, int]) -> None:
    """Each phase's rate (events/s) for its seconds, each event stamped now; through a broker outage librdkafka
    queues them."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "message.timeout.ms": 600_000,
                         "queue.buffering.max.messages": 2_000_000}, logger=_QUIET)
    sent, due_before = 0, 0
    for rate, seconds in phases:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            sent = _send_due(producer, topic, events, due_before + int((time.monotonic() - started) * rate) + 1,
                             sent, produced)
            producer.poll(0)
            time.sleep(0.005)
        due_before = sent
    producer.flush(120)


def _send_due(producer: Producer, topic: str, events: list[dict], due: int, sent: int, produced: dict[str, int]) -> int:
    """Sends events number ``sent`` to ``due`` - 1; returns how many are sent."""
    while sent < due:
        ts = _now_ms()
        if sent % BROKEN_EVERY == BROKEN_EVERY - 1:
            event_id, value = f"broken-{sent:08d}", b'{"event_id": "broken", "amount": '
        else:
            event = dict(events[sent % len(events)], event_id=f"soak-{sent:08d}", event_time=_rfc3339(ts))
            event_id, value = event["event_id"], orjson.dumps(event)
        producer.produce(topic, value=value, key=str(sent % 5000).encode(), timestamp=ts)
        produced[event_id] = ts
        sent += 1
    return sent


def _train_new_version(model_dir: pathlib.Path, spec: str, run: pathlib.Path) -> None:
    subprocess.run([sys.executable, "-m", "pipelines.train", "--spec", spec, "--input",
                    str(run / "data" / "*" / "*.jsonl"), "--model_dir", str(model_dir),
                    "--dead_letter", str(run / "train-dead")], cwd=ROOT, check=True, capture_output=True)


def report(args, produced: dict[str, int], reader: OutputReader, samples: list[dict], exits: list,
           happened: list[str]) -> str:
    valid = {event_id: ts for event_id, ts in produced.items() if not event_id.startswith("broken")}
    lost = [event_id for event_id in valid if event_id not in reader.seen]
    start = min(valid.values(), default=0)
    stretches: dict[int, list[float]] = {}
    for event_id, ts in valid.items():
        if event_id in reader.seen:
            stretches.setdefault(int((ts - start) / 1000 // STRETCH_S), []).append(reader.seen[event_id][0] - ts)
    lines = [f"\n{args.spec} on {args.runner}, {'overload from ' * args.overload}{args.rate:g} events/s"
             f"{'' if args.overload else f' for {args.minutes:g} min'}, {args.scorer_flags or 'no more flags'}, "
             f"{datetime.date.today()}",
             f"during the run: {'; '.join(happened) or 'nothing'}; peak RSS {max(s['rss_mb'] for s in samples):.0f} MB",
             f"exits: {', '.join(f'{how}: {code}' for how, code in exits)}",
             f"valid events produced {len(valid):,}, scored {len(valid) - len(lost):,}, lost {len(lost):,}"
             + (f" (first: {sorted(lost)[:3]})" if lost else "") + f", records written twice {reader.duplicates:,}",
             "latency per 5-minute stretch of production (ms): "
             + "; ".join(f"{k * STRETCH_S // 60}-{(k + 1) * STRETCH_S // 60} min p50 {np.percentile(v, 50):,.0f} "
                         f"p99 {np.percentile(v, 99):,.0f}" for k, v in sorted(stretches.items())),
             "minute  RSS MB  fds  threads      lag  RSS MB by program"]
    lines += [f"{s['minute']:>6}  {s['rss_mb']:>6.0f}  {s['fds']:>3}  {s['threads']:>7}  {s['lag']:>7,}  {s['rss_by']}"
              for s in samples]
    warm = [s for s in samples if s["minute"] >= 5 and s["threads"] > 1]  # (not a sample taken during the SIGKILL)
    if warm:
        lines.append(f"after 5 min: RSS {min(s['rss_mb'] for s in warm):.0f}-{max(s['rss_mb'] for s in warm):.0f} MB, "
                     f"fds {min(s['fds'] for s in warm)}-{max(s['fds'] for s in warm)}, "
                     f"threads {min(s['threads'] for s in warm)}-{max(s['threads'] for s in warm)}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
