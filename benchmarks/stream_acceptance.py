"""Issue 3's acceptance run: a labelled archive, broken lines included, live at 2,000 events/s.

    .venv/bin/python benchmarks/stream_acceptance.py [--rate 2000] [--days 6]

Generates a fraud archive (10k lines a day, 1% broken), starts a local Apache Kafka broker and the
stream scorer (``python -m pipelines.score --mode stream``, DirectRunner), produces every line at
a steady rate to a 3-partition topic keyed by card id, then checks: every valid event scored,
every broken line dead-lettered, end-to-end latency (output message timestamp minus input
message timestamp) p50 and p99, each live score equal to the batch score of the same event, and
a clean exit on SIGTERM. Prints the figures; exits 1 if a check fails.
"""
import argparse
import datetime
import json
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
from confluent_kafka import Consumer, Producer  # noqa: E402

from pipelines.generate import generate  # noqa: E402
from stream_latency import DEFAULT_MODEL_DIR, ensure_model  # noqa: E402
from pipelines.kafka_broker import KafkaBroker  # noqa: E402


def archive_lines(days: int, out: pathlib.Path) -> tuple[list[bytes], dict]:
    manifest = generate("fraud", days, out, datetime.date(2026, 4, 1), 10_000, 0.01, 11, compress=False)
    lines = [line for day in manifest["days"]
             for line in (out / day["file"]).read_bytes().removesuffix(b"\n").split(b"\n")]
    return lines, manifest


def key_of(line: bytes) -> bytes | None:
    try:
        return str(json.loads(line)["card_id"]).encode()
    except Exception:  # a broken line: no key
        return None


def consume(bootstrap: str, topic: str, wanted: int, timeout_s: float) -> list:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{topic}", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    messages, deadline = [], time.monotonic() + timeout_s
    while len(messages) < wanted and time.monotonic() < deadline:
        messages += [m for m in consumer.consume(5000, 0.2) if m.error() is None]
    consumer.close()
    return messages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--days", type=int, default=6, help="days of 10k lines to produce (default 6: 30 s at 2,000/s)")
    args = parser.parse_args()
    ensure_model(DEFAULT_MODEL_DIR)
    with tempfile.TemporaryDirectory() as tmp, KafkaBroker() as broker:
        tmp = pathlib.Path(tmp)
        lines, manifest = archive_lines(args.days, tmp / "archive")
        valid = sum(d["valid"] for d in manifest["days"])
        broken = len(lines) - valid
        broker.create_topic("events", 3), broker.create_topic("scored", 1), broker.create_topic("dead", 1)
        scorer = subprocess.Popen(
            [sys.executable, "-m", "pipelines.score", "--spec", "fraud", "--mode", "stream", "--bootstrap_servers",
             broker.bootstrap, "--input_topic", "events", "--output_topic", "scored", "--dead_letter_topic", "dead",
             "--model_dir", str(DEFAULT_MODEL_DIR)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(15)  # imports and model load, before the clock starts

        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "message.max.bytes": 4 << 20})
        produced_at, started = {}, time.monotonic()
        for sent, line in enumerate(lines):
            while sent >= (time.monotonic() - started) * args.rate:
                time.sleep(0.002)
            stamp = int(time.time() * 1000)
            producer.produce("events", value=line, key=key_of(line), timestamp=stamp)
            produced_at[sent] = stamp
            producer.poll(0)
        producer.flush(30)
        rate = len(lines) / (time.monotonic() - started)

        scored = consume(broker.bootstrap, "scored", valid, 60)
        dead = consume(broker.bootstrap, "dead", broken, 30)
        stop_started = time.monotonic()
        scorer.send_signal(signal.SIGTERM)
        exit_code = scorer.wait(60)
        stop_s = time.monotonic() - stop_started

        input_time = {}
        for line, stamp in zip(lines, produced_at.values()):
            try:
                input_time[json.loads(line)["event_id"]] = stamp
            except Exception:
                pass
        live = {}
        latencies = []
        for message in scored:
            record = orjson.loads(message.value())
            if record["event_id"] not in live:
                live[record["event_id"]] = record["score"]
                latencies.append(message.timestamp()[1] - input_time[record["event_id"]])
        keys_ok = all(m.key().decode() == orjson.loads(m.value())["card_id"] for m in scored)

        subprocess.run([sys.executable, "-m", "pipelines.score", "--spec", "fraud", "--mode", "batch", "--input",
                        str(tmp / "archive" / "*" / "*.jsonl"), "--model_dir", str(DEFAULT_MODEL_DIR),
                        "--output", str(tmp / "batch"), "--dead_letter", str(tmp / "batch_dead")],
                       cwd=ROOT, check=True, capture_output=True)
        bounded = {r["event_id"]: r["score"] for path in (tmp / "batch").glob("*.jsonl")
                   for r in map(json.loads, path.read_text().splitlines())}
        gap = max(abs(live[k] - bounded[k]) for k in live) if live else float("nan")

    p50, p99 = np.percentile(latencies, [50, 99]) if latencies else (float("nan"),) * 2
    checks = {
        f"every valid event scored ({len(live):,} of {valid:,})": len(live) == valid,
        f"every broken line dead-lettered ({len(dead):,} of {broken:,})": len(dead) == broken,
        f"p99 latency under 1 s (p50 {p50:.0f} ms, p99 {p99:.0f} ms at {rate:,.0f} events/s)": p99 < 1000,
        f"live scores equal batch scores (max |difference| {gap:.1e})": gap <= 1e-6 and live.keys() <= bounded.keys(),
        "scored records keyed by card id": keys_ok,
        f"clean exit on SIGTERM (status {exit_code} in {stop_s:.1f} s)": exit_code == 0 and stop_s < 30,
    }
    for check, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {check}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
