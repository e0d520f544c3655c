"""Kafka helpers the tests share."""
from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, AdminClient, NewPartitions,
                                   ResourcePatternType, ResourceType)

from pipelines.kafka_broker import KafkaBroker

ROOT = Path(__file__).resolve().parents[1]
_QUIET = logging.getLogger("tests.kafka.librdkafka")
_QUIET.setLevel(logging.CRITICAL)
_COORDINATOR_MOVING = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                       KafkaError.COORDINATOR_NOT_AVAILABLE}


def committed(bootstrap: str, group: str, topic: str, partitions: int, timeout: float = 20.0) -> dict[int, int]:
    """The group's committed offsets; retried while the group's coordinator is still loading (a new broker)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group}, logger=_QUIET)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
                return {tp.partition: tp.offset for tp in tps}
            except KafkaException as error:
                if error.args[0].code() not in _COORDINATOR_MOVING or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        consumer.close()


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def json_lines(directory: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(directory.glob("*.jsonl")) for line in p.read_text().splitlines() if line]


def entity_key(line: bytes, field: str = "card_id") -> bytes | None:
    """A line's entity id (``field``) as its message key, as ``rtml produce`` keys it; None where it has none."""
    try:
        entity = orjson.loads(line).get(field)
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return entity.encode() if isinstance(entity, str) else None


def event_time_ms(line: bytes | None) -> int | None:
    """The event time a line names, in ms, if it names a valid one."""
    try:
        value = orjson.loads(line).get("event_time")
        return int(datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None


def produce(bootstrap: str, topic: str, values: list[bytes | None], keys: list[bytes | None] | None = None,
            rate: float | None = None, partitions: list[int] | None = None,
            delivered: list | None = None, stamp_event_time: bool = False) -> dict[int, int]:
    """Produce values keyed by card_id (or ``keys``), to ``partitions`` if given; {partition: last offset + 1}.
    ``delivered`` gets (partition, offset, value) of each record as the broker stored it.
    ``stamp_event_time``: each message's timestamp is its event time (as a producer should stamp it), and a line
    without a valid one gets the last event's (as ``rtml produce`` does)."""
    ends: dict[int, int] = {}

    def on_delivery(err, msg):
        assert err is None, err
        ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)
        if delivered is not None:
            delivered.append((msg.partition(), msg.offset(), msg.value()))

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 4 << 20},
                        logger=_QUIET)
    started, last_ms = time.monotonic(), None
    for number, value in enumerate(values):
        if rate is not None:
            time.sleep(max(0.0, started + number / rate - time.monotonic()))
        key = keys[number] if keys is not None else entity_key(value)
        extra = {"partition": partitions[number]} if partitions is not None else {}
        if stamp_event_time:
            last_ms = event_time_ms(value) or last_ms
            if last_ms is not None:
                extra["timestamp"] = last_ms
        producer.produce(topic, value=value, key=key, on_delivery=on_delivery, **extra)
        producer.poll(0)
    assert producer.flush(15) == 0
    return ends


class Outputs:
    """Reads the output and dead-letter topics from the start; ``read()`` adds what has arrived."""

    def __init__(self, bootstrap: str, output: str, dead_letter: str):
        self.output, self.dead_letter = output, dead_letter
        self.scored: list[tuple[bytes, dict]] = []
        self.dead: list[tuple[bytes, dict]] = []
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("check"),
                                   "enable.auto.commit": False, "isolation.level": "read_committed"}, logger=_QUIET)
        self._consumer.assign([TopicPartition(output, 0, 0), TopicPartition(dead_letter, 0, 0)])

    def read(self, seconds: float = 0.3) -> "Outputs":
        for message in self._consumer.consume(1000, seconds):
            if message.error() is None:
                into = self.scored if message.topic() == self.output else self.dead
                into.append((message.key(), orjson.loads(message.value())))
        return self

    def wait(self, done, timeout: float, what: str, scorer: "StreamProcess | None" = None) -> None:
        deadline = time.monotonic() + timeout
        while not done(self):
            assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}" + (
                f"\n{scorer.log()}" if scorer else "")
            if scorer is not None:
                scorer.check_alive()
            self.read()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class StreamProcess:
    """A streaming command (``python -m pipelines.score --mode stream ...``) in a subprocess, in its own process
    group, ended on exit."""

    def __init__(self, command: list[str]):
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def check_alive(self) -> None:
        assert self.proc.poll() is None, f"the scorer exited with {self.proc.returncode}:\n{self.log()}"

    def log(self, tail: int | None = 5000) -> str:
        """What the command printed: its last ``tail`` characters (None: all)."""
        self._log.seek(0)
        text = self._log.read().decode(errors="replace")
        return text[-tail:] if tail else text

    def wait(self, timeout: float) -> int:
        """The exit status; a failure showing the log if the command has not exited within ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the scorer had not exited after {timeout:g} s:\n{self.log()}") from None

    def terminate(self, timeout: float = 30.0) -> tuple[int, float]:
        """SIGTERM; (exit status, seconds it took)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.wait(timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def __enter__(self) -> "StreamProcess":
        return self

    def __exit__(self, *_exc) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._log.close()


def stream_scorer(model_dir: str, bootstrap: str, topics: tuple[str, str, str], group: str, *extra: str,
                  spec: str = "fraud") -> StreamProcess:
    return StreamProcess([sys.executable, "-m", "pipelines.score", "--mode", "stream", "--spec", spec,
                          "--model_dir", model_dir, "--bootstrap_servers", bootstrap, "--input_topic", topics[0],
                          "--output_topic", topics[1], "--dead_letter_topic", topics[2], "--group_id", group, *extra])


def make_topics(broker: KafkaBroker, prefix: str, partitions: int = 3) -> tuple[str, str, str]:
    """Input (``partitions``), output and dead-letter topics."""
    topics = (unique_name(f"{prefix}-in"), unique_name(f"{prefix}-scored"), unique_name(f"{prefix}-dead"))
    broker.create_topic(topics[0], partitions)
    broker.create_topic(topics[1], 1)
    broker.create_topic(topics[2], 1)
    return topics


def grow_topic(bootstrap: str, topic: str, partitions: int, timeout: float = 10.0) -> None:
    """Give ``topic`` ``partitions`` partitions in all, and wait until its metadata shows them with leaders."""
    admin = AdminClient({"bootstrap.servers": bootstrap}, logger=_QUIET)
    admin.create_partitions([NewPartitions(topic, partitions)])[topic].result(timeout)
    deadline = time.monotonic() + timeout
    while True:
        found = admin.list_topics(topic, timeout=2.0).topics[topic].partitions
        if len(found) == partitions and all(p.leader >= 0 for p in found.values()):
            return
        assert time.monotonic() < deadline, f"{topic} still has {len(found)} partitions"
        time.sleep(0.1)


def event_id(line: bytes) -> str | None:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return value.get("event_id") if isinstance(value, dict) else None


def read_topic(bootstrap: str, topic: str, quiet_s: float = 2.0) -> list[tuple[bytes | None, dict]]:
    """Every message of a 1-partition topic, as (key, JSON value), once none has come for ``quiet_s``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("check"),
                         "enable.auto.commit": False}, logger=_QUIET)
    consumer.assign([TopicPartition(topic, 0, 0)])
    got, last = [], time.monotonic()
    try:
        while time.monotonic() - last < quiet_s:
            messages = [m for m in consumer.consume(1000, 0.2) if m.error() is None]
            if messages:
                got += [(m.key(), orjson.loads(m.value())) for m in messages]
                last = time.monotonic()
    finally:
        consumer.close()
    return got


def stop_once_committed(process: StreamProcess, bootstrap: str, group: str, topic: str,
                        ends: dict[int, int]) -> None:
    """Wait until ``group`` has committed ``topic`` up to ``ends`` (every record written), then SIGTERM
    ``process``: it must exit 0 within 30 s."""
    wait_for(lambda: committed(bootstrap, group, topic, len(ends)) == ends, 30, "every offset committed once written")
    code, took = process.terminate()
    assert code == 0 and took < 30, process.log()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def secure_user(broker: KafkaBroker, read=(), write=(), groups=()) -> tuple[str, str]:
    """A new SCRAM-SHA-512 user of ``broker``'s ``SASL_SSL`` listener whose ACLs allow only READ of ``read``, WRITE
    of ``write`` and READ of the consumer groups ``groups``: (its name, its password)."""
    name, password = unique_name("user"), uuid.uuid4().hex
    broker.add_user(name, password)
    allowed = [(ResourceType.TOPIC, topic, AclOperation.READ) for topic in read]
    allowed += [(ResourceType.TOPIC, topic, AclOperation.WRITE) for topic in write]
    allowed += [(ResourceType.GROUP, group, AclOperation.READ) for group in groups]
    if allowed:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap}, logger=_QUIET)
        bindings = [AclBinding(kind, resource, ResourcePatternType.LITERAL, f"User:{name}", "*", operation,
                               AclPermissionType.ALLOW) for kind, resource, operation in allowed]
        for future in admin.create_acls(bindings).values():
            future.result(10)
    return name, password


PASSWORD_ENV = "RTML_TEST_KAFKA_PASSWORD"


def secure_login(broker: KafkaBroker, monkeypatch, read=(), write=(), groups=()) -> tuple[str, list[str]]:
    """A new user allowed only ``read``, ``write`` and ``groups`` (``secure_user``), its password in
    $RTML_TEST_KAFKA_PASSWORD: (its password, the flags that log in as it at ``broker.secure_bootstrap``)."""
    name, password = secure_user(broker, read, write, groups)
    monkeypatch.setenv(PASSWORD_ENV, password)
    flags = [f"--kafka_config={setting}" for setting in (
        "security.protocol=SASL_SSL", "sasl.mechanisms=SCRAM-SHA-512", f"sasl.username={name}",
        f"ssl.ca.location={broker.ca_file}")]
    return password, [*flags, f"--kafka_secret=sasl.password=env:{PASSWORD_ENV}"]
