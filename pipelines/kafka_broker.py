"""A local Apache Kafka broker for the tests, the stream demo and the benchmarks.

``KafkaBroker()`` picks free loopback ports and a temporary log directory; ``start()`` formats the
directory (first start only) and runs one KRaft node (broker and controller) from the jars that
``python -m pipelines.artifacts`` fetched, returning once an AdminClient can list topics;
``stop()`` ends it; ``start()`` again brings it back on the same port with the same log directory,
so topics, messages and committed offsets survive a restart as they do on a real cluster.
``close()`` (or leaving the ``with`` block) stops it and deletes the directory.

Measured here (Kafka 4.4.0, Java 17, 2 cores): ready about 1.6 s after launch; a stop by SIGTERM
(controlled shutdown) takes under 2 s. Messages up to 8 MiB are accepted, so the tests can send
events over the pipelines' 1 MiB limit and see them dead-lettered. Messages are kept whatever their timestamp
(``log.retention.ms=-1``): replays are stamped with event times months ago, and a broker's default 7 days would
delete them at its first retention check (30 s after it starts, then every 5 minutes), while a scorer reads them.
"""
from __future__ import annotations

import base64
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

from pipelines import artifacts

_QUIET = logging.getLogger("pipelines.kafka_broker.librdkafka")
_QUIET.setLevel(logging.CRITICAL)
MAX_MESSAGE_BYTES = 8 << 20

_CONFIG = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={log_dir}
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.partitions=1
log.retention.ms=-1
message.max.bytes={max_bytes}
replica.fetch.max.bytes={max_bytes}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(bootstrap: str, timeout: float = 30.0) -> None:
    """Return once the broker at ``bootstrap`` answers a metadata request."""
    # A logger keeps librdkafka's "connection refused" lines (expected here) off stderr.
    admin = AdminClient({"bootstrap.servers": bootstrap}, logger=_QUIET)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=1.0)
            return
        except Exception as e:  # KafkaException while the port is not up yet
            last = e
            time.sleep(0.1)
    raise TimeoutError(f"broker at {bootstrap} not ready after {timeout}s: {last}")


class KafkaBroker:
    """One Apache Kafka node on fixed loopback ports, restartable with its data."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._root = Path(tempfile.mkdtemp(prefix="rtml-kafka-"))
        self._config = self._root / "server.properties"
        self._config.write_text(_CONFIG.format(port=self.port, controller_port=free_port(),
                                               log_dir=self._root / "data", max_bytes=MAX_MESSAGE_BYTES))
        self._proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _java(self, main_class: str, *args: str) -> list[str]:
        jar = artifacts.require(artifacts.kafka_jar(), "Apache Kafka")
        return [artifacts.java(), "-Xmx512m", "-XX:+UseSerialGC", "-cp", str(jar), main_class, *args]

    def start(self, timeout: float = 30.0) -> "KafkaBroker":
        if self.running:
            return self
        if not (self._root / "data" / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            # --cluster-id=: an id may start with "-"
            format_storage = self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                                        "-c", str(self._config))
            subprocess.run(format_storage, check=True, stdin=subprocess.DEVNULL, capture_output=True)
        with open(self._root / "broker.log", "ab") as log:
            self._proc = subprocess.Popen(self._java("kafka.Kafka", str(self._config)), stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until_ready(self.bootstrap, timeout)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """End the broker (a controlled shutdown; killed if it takes longer than ``timeout``)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._root, ignore_errors=True)

    def create_topic(self, name: str, partitions: int = 1, config: dict[str, str] | None = None) -> None:
        create_topic(self.bootstrap, name, partitions, config=config)

    def __enter__(self) -> "KafkaBroker":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()


def create_topic(bootstrap: str, name: str, partitions: int = 1, timeout: float = 10.0,
                 config: dict[str, str] | None = None) -> None:
    """Create ``name`` with ``partitions`` partitions and wait until its metadata shows them."""
    admin = AdminClient({"bootstrap.servers": bootstrap}, logger=_QUIET)
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                            config=config or {})], operation_timeout=timeout)
    futures[name].result(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        md = admin.list_topics(name, timeout=2.0).topics.get(name)
        if md is not None and md.error is None and len(md.partitions) == partitions \
                and all(p.leader >= 0 for p in md.partitions.values()):
            return
        time.sleep(0.05)
    raise TimeoutError(f"topic {name} not visible with {partitions} partitions after {timeout}s")


if __name__ == "__main__":  # a broker for manual runs: python -m pipelines.kafka_broker [PORT]
    broker = KafkaBroker(int(sys.argv[1]) if len(sys.argv) > 1 else None).start()
    print(broker.bootstrap, flush=True)
    try:
        while broker.running:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        broker.close()
