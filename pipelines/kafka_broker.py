"""A local Apache Kafka broker for the tests, the stream demo and the benchmarks.

``KafkaBroker()`` picks free loopback ports and a temporary log directory; ``start()`` formats the
directory (first start only) and runs one KRaft node (broker and controller) from the jars that
``python -m pipelines.artifacts`` fetched, returning once an AdminClient can list topics;
``stop()`` ends it; ``start()`` again brings it back on the same port with the same log directory,
so topics, messages and committed offsets survive a restart as they do on a real cluster.
``close()`` (or leaving the ``with`` block) stops it and deletes the directory.

``KafkaBroker(secure=True)`` also listens for ``SASL_SSL`` clients (``secure_bootstrap``), as a company's cluster
does: TLS with a certificate for 127.0.0.1 signed by a certificate authority made at start-up with the JDK's
``keytool`` (its certificate in ``ca_file``, what a client trusts), SCRAM-SHA-512 passwords (``add_user``) and ACLs
(Kafka's ``StandardAuthorizer``: a user may do only what an ACL allows). The plaintext listener stays for the
tests' own clients, as a super user. Making the certificates takes about 5 s (seven ``keytool`` runs).

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

from confluent_kafka.admin import (AdminClient, NewTopic, ScramCredentialInfo, ScramMechanism,
                                   UserScramCredentialUpsertion)

from pipelines import artifacts

_QUIET = logging.getLogger("pipelines.kafka_broker.librdkafka")
_QUIET.setLevel(logging.CRITICAL)
MAX_MESSAGE_BYTES = 8 << 20

_SECURE_CONFIG = """\
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port},SASL_SSL://127.0.0.1:{secure_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{secure_port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location={keystore}
ssl.keystore.password={store_password}
ssl.key.password={store_password}
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
"""
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

    def __init__(self, port: int | None = None, secure: bool = False):
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._root = Path(tempfile.mkdtemp(prefix="rtml-kafka-"))
        self._config = self._root / "server.properties"
        ports = {"port": self.port, "controller_port": free_port()}
        config = _CONFIG.format(**ports, log_dir=self._root / "data", max_bytes=MAX_MESSAGE_BYTES)
        self.secure_bootstrap = self.ca_file = None
        if secure:
            ports["secure_port"] = free_port()
            self.secure_bootstrap = f"127.0.0.1:{ports['secure_port']}"
            keystore, store_password, self.ca_file = self._certificates()
            secure_config = _SECURE_CONFIG.format(**ports, keystore=keystore, store_password=store_password)
            replaced = {line.split("=", 1)[0] for line in secure_config.splitlines()}  # (listeners and their maps)
            config = "".join(line + "\n" for line in config.splitlines()
                             if line.split("=", 1)[0] not in replaced) + secure_config
        self._config.write_text(config)
        self._proc: subprocess.Popen | None = None

    def _certificates(self) -> tuple[Path, str, Path]:
        """A certificate authority and a broker key whose certificate it signed for 127.0.0.1 and localhost:
        (the broker's PKCS12 keystore, its password, the authority's certificate as PEM)."""
        password, names = uuid.uuid4().hex, "SAN=IP:127.0.0.1,DNS:localhost"
        ca, broker = self._root / "ca.p12", self._root / "broker.p12"
        ca_pem, request, signed = self._root / "ca.pem", self._root / "broker.csr", self._root / "broker.pem"

        def keytool(*args) -> None:
            subprocess.run([str(Path(artifacts.java()).resolve().with_name("keytool")), *args, "-storepass", password],
                           check=True, capture_output=True, stdin=subprocess.DEVNULL)

        keytool("-genkeypair", "-alias", "ca", "-keyalg", "RSA", "-keysize", "2048", "-dname", "CN=rtml test CA",
                "-ext", "bc:c", "-validity", "7", "-keystore", str(ca), "-storetype", "PKCS12")
        keytool("-exportcert", "-rfc", "-alias", "ca", "-keystore", str(ca), "-file", str(ca_pem))
        keytool("-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048", "-dname", "CN=127.0.0.1",
                "-ext", names, "-validity", "7", "-keystore", str(broker), "-storetype", "PKCS12")
        keytool("-certreq", "-alias", "broker", "-keystore", str(broker), "-file", str(request))
        keytool("-gencert", "-alias", "ca", "-keystore", str(ca), "-infile", str(request), "-outfile", str(signed),
                "-ext", names, "-rfc", "-validity", "7")
        keytool("-importcert", "-alias", "ca", "-file", str(ca_pem), "-keystore", str(broker), "-noprompt")
        keytool("-importcert", "-alias", "broker", "-file", str(signed), "-keystore", str(broker))
        return broker, password, ca_pem

    def add_user(self, name: str, password: str) -> None:
        """A SCRAM-SHA-512 user of the ``SASL_SSL`` listener (``secure=True``), who may do what ACLs allow it."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap}, logger=_QUIET)
        upsert = UserScramCredentialUpsertion(name, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                                              password.encode())
        for future in admin.alter_user_scram_credentials([upsert]).values():
            future.result(10)

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
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops and removes it as Ctrl-C does
    broker = KafkaBroker(int(sys.argv[1]) if len(sys.argv) > 1 else None).start()
    print(broker.bootstrap, flush=True)
    try:
        while broker.running:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        broker.close()
