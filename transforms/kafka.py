"""Kafka in and out of Beam, in Python, on confluent-kafka (librdkafka).

Beam's own ``apache_beam.io.kafka`` is a cross-language transform that needs a Java expansion
service; this module needs nothing but confluent-kafka, so it is the default here. It follows
Bytewax's KafkaSource: one source per partition, offsets as the resumable state, and a bounded
form for replays.

``ReadFromKafka``: PBegin -> PCollection[KafkaMessage], each element stamped with its message
timestamp. Live (unbounded) unless a stop is given; with a stop, every partition ends there and
the pipeline finishes.

``WriteToKafka``: PCollection[(key: bytes | None, value: bytes)] -> nothing; a bundle finishes
only once Kafka has acknowledged every record in it.

``drain_live_reads()`` ends every live read running in this process at its next checkpoint (at
most about a second), so an in-process runner (the DirectRunner) finishes the pipeline: the last
bundles complete, their writes are flushed and their offsets committed. It is how a local
streaming job stops cleanly; a distributed runner drains or cancels the job its own way.

Every config value is masked in reprs and display data and scrubbed from log lines and error
messages raised here, but those of settings that never hold a secret (``_PLAIN_KEYS``). A value may
be a reference, resolved where a client is made and never carried: an ``EnvSecret`` (an environment
variable) or a ``SecretManagerSecret`` (a Google Secret Manager secret version).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import threading
import time
import uuid
from typing import NamedTuple, Optional

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider, WatermarkEstimatorProvider
from apache_beam.transforms.display import DisplayDataItem
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import Duration, Timestamp
from confluent_kafka import (TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException,
                             Producer, TopicPartition)

from transforms import live_metrics
from transforms.errors import first_line
from transforms.kafka_queues import PartitionQueues

__all__ = ["KafkaMessage", "ReadFromKafka", "WriteToKafka", "KafkaTopicNotFoundError",
           "KafkaDeliveryError", "mask_config", "drain_live_reads", "reset_drain", "enqueue", "group_positions"]

_LOG = logging.getLogger(__name__)
COMMIT_WAIT_S = 10.0  # then a drain with the broker gone goes on (see BoundedCalls)
CLOSE_WAIT_S = 5.0

# The restriction stop of a partition read that has no stop offset.
UNBOUNDED = sys.maxsize


class KafkaMessage(NamedTuple):
    """One Kafka record as read. ``timestamp_ms`` is the record's timestamp (CreateTime or
    LogAppendTime, whichever the topic keeps; the read time if the record has none).

    ``covers_from``: the first offset this record accounts for, i.e. the offset after the record
    the same read returned before it (or where the read started). It is below ``offset`` where the
    log has a gap (transaction markers, compaction), so the records of a partition cover its
    offsets without holes: what ``CommitWhenWritten`` needs to commit exactly what was written.
    """
    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: Optional[bytes]
    timestamp_ms: int
    covers_from: Optional[int] = None


class KafkaTopicNotFoundError(RuntimeError):
    """The topic does not exist on the cluster (the broker answered UNKNOWN_TOPIC_OR_PART)."""


class KafkaDeliveryError(RuntimeError):
    """Kafka refused or timed out records of a bundle; the bundle is retried by the runner."""


# ---------------------------------------------------------------------------------------------
# Secrets

# Secrets are masked by value, not by key name: any setting may carry one (an OAuth client secret
# inside sasl.oauthbearer.config, a password in a JAAS line). Only the values of these settings,
# which never hold one and say how a client connects, are shown.
_PLAIN_KEYS = frozenset({
    "security.protocol", "sasl.mechanism", "sasl.mechanisms", "acks", "compression.type", "compression.codec",
    "linger.ms", "batch.size", "batch.num.messages", "enable.idempotence", "auto.offset.reset", "client.id",
    "isolation.level", "message.max.bytes", "fetch.max.bytes", "max.poll.interval.ms", "session.timeout.ms",
    "request.timeout.ms", "socket.timeout.ms", "queue.buffering.max.ms", "enable.auto.commit",
    "ssl.endpoint.identification.algorithm", "api.version.request", "debug", "bootstrap.servers", "group.id"})
_MASK = "***"
_MIN_SCRUBBED = 4  # shorter values would mask ordinary words of log lines; they are no secret either


class EnvSecret(NamedTuple):
    """A config value read from an environment variable where a client is made (on a worker too), so
    that the value itself never enters the pipeline graph, a template or a log."""

    name: str


class SecretManagerSecret(NamedTuple):
    """A config value read from Google Secret Manager where a client is made (on a Dataflow worker, with
    the worker's service account), so that the value never enters the pipeline graph, a template or a log.

    ``name``: ``projects/P/secrets/S/versions/V`` (V may be ``latest``)."""

    name: str


class KafkaSecretError(ValueError):
    """A secret reference that cannot be resolved where a client is made."""


def resolved(config: dict) -> dict:
    """``config`` with each ``EnvSecret`` and ``SecretManagerSecret`` replaced by its value."""
    out = {}
    for key, value in config.items():
        if isinstance(value, EnvSecret):
            if not os.environ.get(value.name):
                raise KafkaSecretError(f"setting {key}: environment variable {value.name} is not set (or empty) "
                                       f"here")
            value = os.environ[value.name]
        elif isinstance(value, SecretManagerSecret):
            value = _secret_version(key, value.name)
        out[key] = value
    return out


@functools.lru_cache(maxsize=None)  # once per process: every client of a worker shares it
def _secret_version(key: str, name: str) -> str:
    try:
        from google.cloud import secretmanager
    except ImportError:
        raise KafkaSecretError(f"setting {key}: Secret Manager needs the gcp extra (pip install "
                               f"'beam-rtml[gcp]')") from None
    try:
        payload = _secret_manager_client(secretmanager).access_secret_version(name=name, timeout=30).payload.data
    except Exception as error:  # google.api_core's errors: not found, permission denied, unreachable ...
        message = getattr(error, "message", None)  # a Google API error's, without its status code
        reason = message.splitlines()[0] if message else first_line(error)
        raise KafkaSecretError(f"setting {key}: Secret Manager {name}: {reason}") from None
    try:
        return payload.decode("utf-8")  # as stored: a newline written with it is part of it
    except UnicodeDecodeError:
        raise KafkaSecretError(f"setting {key}: Secret Manager {name} holds bytes that are not UTF-8 "
                               f"text") from None


def _secret_manager_client(secretmanager):
    return secretmanager.SecretManagerServiceClient()


def mask_config(config: dict | None) -> dict:
    """A copy of a librdkafka config for display: every value masked (``***``) but those of ``_PLAIN_KEYS``."""
    return {k: (v if k in _PLAIN_KEYS else _MASK) for k, v in (config or {}).items()}


class Secrets:
    """Removes the values of a config's settings (all but ``_PLAIN_KEYS``', unless given by reference) from text.

    Also serves as confluent-kafka's ``logger``, so librdkafka's own log lines (which can
    quote config values) pass through the same scrubbing into this module's logger.
    """

    def __init__(self, config: dict):
        references = {k for k, v in config.items() if isinstance(v, (EnvSecret, SecretManagerSecret))}
        values = {str(v) for k, v in resolved(config).items()
                  if (k not in _PLAIN_KEYS or k in references) and len(str(v)) >= _MIN_SCRUBBED}
        self._values = sorted(values, key=len, reverse=True)  # longest first: no partial leaks

    def scrub(self, text: object) -> str:
        text = str(text)
        for value in self._values:
            text = text.replace(value, _MASK)
        return text

    def log(self, level: int, msg: str, *args) -> None:
        _LOG.log(level, "librdkafka: %s", self.scrub(msg % args if args else msg))

    def __repr__(self) -> str:
        return "Secrets(***)"


def config_error(config: dict) -> str | None:
    """Why librdkafka refuses ``config`` (an unknown key, a bad value), without its values; None if it takes it."""
    try:
        Consumer({**resolved(config), "group.id": "rtml-config-check"}, logger=_QUIET).close()
    except KafkaException as error:
        return Secrets(config).scrub(error.args[0].str())
    return None


_QUIET = logging.getLogger(f"{__name__}.config_check")  # the check's client may log about connecting; unheard
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())


def client(cls, config: dict, secrets: Secrets):
    """A Consumer or Producer whose construction errors and logs carry no secret values."""
    try:
        return cls(resolved(config), logger=secrets)
    except (KafkaException, ValueError, TypeError) as e:
        # `from None`: the original exception's text may hold the secret.
        raise ValueError(f"invalid Kafka {cls.__name__} config: {secrets.scrub(e)}") from None


# librdkafka reports these while a broker or coordinator is away; it reconnects by itself.
_TRANSIENT = {
    KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT,
    KafkaError._WAIT_COORD, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.REQUEST_TIMED_OUT,
}


def _is_transient(err: KafkaError) -> bool:
    return not err.fatal() and (err.retriable() or err.code() in _TRANSIENT)


def _retry(what: str, fn, secrets: Secrets, pause_s: float = 1.0):
    """``fn()``, retried for as long as the cluster is unreachable (never gives up: a streaming
    job should wait for its broker, not die)."""
    while True:
        try:
            return fn()
        except KafkaException as e:
            err = e.args[0] if e.args and isinstance(e.args[0], KafkaError) else None
            if err is None or not _is_transient(err):
                raise KafkaException(secrets.scrub(e)) from None
            _LOG.warning("Kafka %s failed (%s); retrying", what, secrets.scrub(err.str()))
            time.sleep(pause_s)


# ---------------------------------------------------------------------------------------------
# Draining live reads in this process

_DRAIN = threading.Event()


def drain_live_reads() -> None:
    """Ask every live (unbounded) read in this process to end at its next checkpoint.

    Each one stops claiming records, so what it already emitted is processed, written and
    committed (bundle finalization) and then its partition read is done; once all are, the
    pipeline ends. Only for runners that execute the DoFns in this process (DirectRunner
    in_memory or multi_threading); it has no effect on workers elsewhere.
    """
    _DRAIN.set()


def draining() -> bool:
    """Whether live reads in this process were asked to end (``drain_live_reads``)."""
    return _DRAIN.is_set()


def reset_drain() -> None:
    """Let live reads started from now on run again (after a drain in this process)."""
    _DRAIN.clear()


# ---------------------------------------------------------------------------------------------
# ReadFromKafka


class _PartitionRead(NamedTuple):
    """One partition's share of a read: offsets [start, stop), plus the time bounds."""
    topic: str
    partition: int
    start: int
    stop: int  # UNBOUNDED: live, or ended by stop_ts_ms
    start_ts_ms: Optional[int]
    stop_ts_ms: Optional[int]
    bounded: bool
    partitions: int  # how many partitions the read has


class ReadFromKafka(beam.PTransform):
    """Reads a Kafka topic: PBegin -> PCollection[KafkaMessage], timestamped by message time.

    Each partition is one restriction of a splittable DoFn (an offset range), read by a
    consumer with ``assign()`` (no group rebalancing), so the runner checkpoints and resumes it
    by offset. Partitions are discovered when the pipeline runs, not when it is built. With
    ``partition_discovery_s`` (a live read), the topic's partitions are listed again that often, and
    a partition added since is read from its beginning (or the group's committed offset): every
    message in it is new to the stream. Without it, added partitions are read after a restart.

    Where a partition starts, first match wins: ``start_offsets[p]``; the first offset whose
    timestamp >= ``start_timestamp_ms`` (looked up with offsets_for_times; an answer that is too
    early, as an approximate broker may give, costs reading only, since records stamped before
    the start are dropped); the offset committed for ``group_id``; otherwise ``offset_reset``
    ('earliest' or 'latest').

    Where it stops (any stop makes the read bounded):
    - ``stop_offsets``: {partition: offset}, exclusive, for every partition of the topic.
    - ``stop_timestamp_ms``: at the first message whose timestamp >= it (Kafka's own definition
      of the offset for a time), or once the partition is caught up and the wall clock has
      passed it by ``max_delay_ms``. This is found by reading rather than by offsets_for_times,
      so it holds on brokers whose time index is approximate (some Kafka-protocol brokers
      answer from append time); with either time bound, messages stamped outside [start, stop) are dropped.
    With no stop the read is live and never ends.

    Watermark, per partition and never decreasing: after each record, its timestamp minus
    ``max_delay_ms``; when the consumer has caught up with the partition's end (the broker
    reported end-of-partition), now minus ``max_delay_ms``, so idle partitions do not hold
    windows back. While the broker is unreachable no such report comes and the watermark holds.
    So a record is late when stamped more than ``max_delay_ms`` before the newest record seen,
    or, on a caught-up partition, before the wall clock. ``one_watermark``: every partition reports the
    lowest of the partitions' watermarks seen in this process (none until each has reported one), for a
    runner that reads every partition in one process and takes a splittable DoFn's watermark from whichever
    restriction's bundle finished last rather than the slowest: Prism does (its ``estimatedOutput``), so a
    partition read ahead (a backlog) made the others' records late. ``one_consumer``: a live read's partitions
    in one DoFn instance share one consumer, each assigned once, a queue each (``kafka_queues.PartitionQueues``),
    for a runner that reads them one after another in one thread: the DirectRunner.

    Delivery, at-least-once: for ``group_id``, unless ``commit_on_finalize`` is False (then
    ``transforms.kafka_commit.CommitWhenWritten`` commits, once the records' outputs are written),
    the next offset after what a bundle claimed is committed by bundle finalization, which the
    runner calls only once the bundle has
    succeeded, including the steps fused after the read (a WriteToKafka there has flushed). A
    crash before that replays the bundle's records on restart (duplicates, never loss). Commits
    are best effort: one that fails is logged and only widens that replay. Without
    ``group_id`` nothing is committed.

    ``consumer_config`` is passed to librdkafka (SASL, TLS, timeouts...); this transform owns
    ``bootstrap.servers``, ``group.id``, ``enable.auto.commit`` and ``enable.partition.eof``.
    An unreachable broker is waited for (librdkafka reconnects by itself); a topic that does not
    exist fails the pipeline with KafkaTopicNotFoundError.
    """

    def __init__(self, bootstrap_servers: str, topic: str, group_id: str | None = None,
                 offset_reset: str = "earliest", consumer_config: dict | None = None, *,
                 start_offsets: dict[int, int] | None = None,
                 stop_offsets: dict[int, int] | None = None,
                 start_timestamp_ms: int | None = None, stop_timestamp_ms: int | None = None,
                 max_delay_ms: int = 1000, commit_on_finalize: bool = True, one_watermark: bool = False,
                 one_consumer: bool = False, partition_discovery_s: float = 0.0):
        super().__init__()
        if offset_reset not in ("earliest", "latest"):
            raise ValueError(f"offset_reset must be 'earliest' or 'latest', not {offset_reset!r}")
        if start_offsets is not None and start_timestamp_ms is not None:
            raise ValueError("give start_offsets or start_timestamp_ms, not both")
        if stop_offsets is not None and stop_timestamp_ms is not None:
            raise ValueError("give stop_offsets or stop_timestamp_ms, not both")
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.group_id = group_id
        self.offset_reset = offset_reset
        self.consumer_config = dict(consumer_config or {})
        self.start_offsets = dict(start_offsets) if start_offsets is not None else None
        self.stop_offsets = dict(stop_offsets) if stop_offsets is not None else None
        self.start_timestamp_ms = start_timestamp_ms
        self.stop_timestamp_ms = stop_timestamp_ms
        self.max_delay_ms = max_delay_ms
        self.commit_on_finalize = commit_on_finalize
        self.one_watermark = one_watermark
        self.one_consumer = one_consumer
        self.partition_discovery_s = partition_discovery_s

    @property
    def bounded(self) -> bool:
        return self.stop_offsets is not None or self.stop_timestamp_ms is not None

    def _config(self) -> dict:
        return {
            "auto.offset.reset": self.offset_reset,
            # The end-of-partition event that marks "caught up" comes one empty fetch after the
            # last message; the broker holds an empty fetch this long (librdkafka: 500 ms).
            "fetch.wait.max.ms": 100,
            **self.consumer_config,
            "bootstrap.servers": self.bootstrap_servers,
            # librdkafka wants a group.id even for assign(); nothing is committed without one.
            "group.id": self.group_id or "beam-kafka-read-uncommitted",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }

    def expand(self, pbegin):
        config = self._config()
        spec = _ReadSpec(self.topic, self.group_id, self.offset_reset, self.start_offsets,
                         self.stop_offsets, self.start_timestamp_ms, self.stop_timestamp_ms,
                         self.bounded, commit_starts=self.group_id is not None and not self.commit_on_finalize)
        commit = self.group_id is not None and self.commit_on_finalize
        live = _ReadLivePartitionFn if commit else _ReadLiveUncommittedPartitionFn
        read_fn = (_ReadPartitionFn if self.bounded else live)(
            config, commit=commit, max_delay_ms=self.max_delay_ms,
            read_id=uuid.uuid4().hex if self.one_watermark else None, one_consumer=self.one_consumer and not self.bounded)
        plan = (_DiscoverPartitionsFn(spec, config, self.partition_discovery_s)
                if self.partition_discovery_s and not self.bounded else _PlanPartitionsFn(spec, config))
        return (
            pbegin
            | "Impulse" >> beam.Impulse()
            | "Partitions" >> beam.ParDo(plan)
            | "Read" >> beam.ParDo(read_fn).with_output_types(KafkaMessage))

    def __repr__(self) -> str:
        return (f"ReadFromKafka(bootstrap_servers={self.bootstrap_servers!r}, "
                f"topic={self.topic!r}, group_id={self.group_id!r}, "
                f"consumer_config={mask_config(self.consumer_config)!r})")

    def display_data(self) -> dict:
        return {"bootstrap_servers": self.bootstrap_servers, "topic": self.topic,
                "group_id": DisplayDataItem(self.group_id).drop_if_none(),
                "consumer_config": str(mask_config(self.consumer_config)),
                "bounded": self.bounded}


@dataclasses.dataclass(frozen=True)
class _ReadSpec:
    """What the planning step needs from a ReadFromKafka (a plain value, cheap to pickle)."""
    topic: str
    group_id: Optional[str]
    offset_reset: str
    start_offsets: Optional[dict]
    stop_offsets: Optional[dict]
    start_timestamp_ms: Optional[int]
    stop_timestamp_ms: Optional[int]
    bounded: bool
    commit_starts: bool  # commit each partition's start for the group if it has no committed offset yet


class _PlanPartitionsFn(beam.DoFn):
    """impulse -> one _PartitionRead per partition of the topic, resolved at run time."""

    def __init__(self, spec: _ReadSpec, config: dict):
        self._spec = spec
        self._config = config

    def process(self, _):
        yield from _plan(self._spec, self._config)


def _plan(spec: _ReadSpec, config: dict, first: int = 0) -> list[_PartitionRead]:
    """A _PartitionRead for each partition of the topic from id ``first`` on, resolved now."""
    secrets = Secrets(config)
    consumer = client(Consumer, config, secrets)
    try:
        every = _retry("metadata", lambda: _partitions(consumer, spec.topic), secrets)
        partitions = [p for p in every if p >= first]
        if spec.stop_offsets is not None:
            missing = sorted(set(partitions) - set(spec.stop_offsets))
            if missing:
                raise ValueError(f"stop_offsets has no offset for partitions {missing} "
                                 f"of topic {spec.topic!r}")
        starts = _retry("offset lookup", lambda: _start_offsets(consumer, spec, partitions), secrets)
        if spec.commit_starts:
            _retry("offset commit", lambda: _commit_missing(consumer, spec.topic, starts), secrets)
    finally:
        consumer.close()
    reads = []
    for p in partitions:
        stop = spec.stop_offsets[p] if spec.stop_offsets is not None else UNBOUNDED
        reads.append(_PartitionRead(spec.topic, p, min(starts[p], stop), stop,
                                    spec.start_timestamp_ms, spec.stop_timestamp_ms, spec.bounded, len(every)))
    return reads


def _partitions(consumer: Consumer, topic: str, timeout_s: float = 10.0) -> list[int]:
    meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if meta is not None and meta.error is not None:
        if meta.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise KafkaTopicNotFoundError(f"Kafka topic {topic!r} does not exist")
        raise KafkaException(meta.error)
    if meta is None or not meta.partitions:
        raise KafkaException(KafkaError(KafkaError.LEADER_NOT_AVAILABLE,
                                        f"no partitions yet for topic {topic!r}"))
    return sorted(meta.partitions)


def _start_offsets(consumer: Consumer, spec: _ReadSpec, partitions: list[int]) -> dict:
    """Each partition's first offset (see ReadFromKafka for the order of precedence)."""
    tps = [TopicPartition(spec.topic, p) for p in partitions]
    starts = {}
    if spec.start_offsets is not None:
        starts = {p: o for p, o in spec.start_offsets.items() if p in partitions}
    elif spec.start_timestamp_ms is not None:
        found = consumer.offsets_for_times(
            [TopicPartition(spec.topic, p, spec.start_timestamp_ms) for p in partitions],
            timeout=10)
        # -1: no message that late yet; such a partition starts at its end (below).
        starts = {tp.partition: tp.offset for tp in found if tp.offset >= 0}
    if spec.group_id is not None and spec.start_timestamp_ms is None:
        for tp in consumer.committed(tps, timeout=10):
            if tp.offset >= 0:
                starts.setdefault(tp.partition, tp.offset)
    to_end = spec.offset_reset == "latest" or spec.start_timestamp_ms is not None
    for tp in tps:
        if tp.partition not in starts:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            starts[tp.partition] = high if to_end else low
    return starts


def _commit_missing(consumer: Consumer, topic: str, starts: dict[int, int]) -> None:
    """Commit ``starts`` for the partitions the group has no offset for, so that where a read begins is
    always the group's committed offset (what CommitWhenWritten counts from)."""
    committed = consumer.committed([TopicPartition(topic, p) for p in starts], timeout=10)
    missing = [TopicPartition(topic, tp.partition, starts[tp.partition]) for tp in committed if tp.offset < 0]
    if missing:
        consumer.commit(offsets=missing, asynchronous=False)


def group_positions(bootstrap_servers: str, config: dict, topic: str, group_id: str,
                    timeout_s: float = 5.0) -> dict[int, tuple[int, int]] | None:
    """{partition: (the group's committed offset, the log's end)}: between the two are the messages not yet written,
    or not yet read, which a restart with the group reads (the group's lag). Partitions without a committed offset
    are left out. None if the cluster does not answer within ``timeout_s`` (each call)."""
    secrets = Secrets(config)
    try:
        consumer = client(Consumer, {**config, "bootstrap.servers": bootstrap_servers, "group.id": group_id,
                                     "enable.auto.commit": False}, secrets)
    except ValueError:
        return None
    try:
        tps = [TopicPartition(topic, p) for p in _partitions(consumer, topic, timeout_s)]
        return {tp.partition: (tp.offset, consumer.get_watermark_offsets(tp, timeout=timeout_s)[1])
                for tp in consumer.committed(tps, timeout=timeout_s) if tp.offset >= 0}
    except (KafkaException, KafkaTopicNotFoundError):
        return None
    finally:
        consumer.close()


def retention_ms(bootstrap_servers: str, config: dict, topic: str, timeout_s: float = 10.0) -> int | None:
    """How long ``topic`` keeps a message after its timestamp (``retention.ms``, where ``cleanup.policy`` deletes and
    timestamps are the producer's, CreateTime); None if it keeps messages whatever their time, or does not say
    (no access to its configuration, or no answer)."""
    from confluent_kafka.admin import AdminClient, ConfigResource

    secrets = Secrets(config)
    try:
        admin = AdminClient({**resolved(config), "bootstrap.servers": bootstrap_servers}, logger=secrets)
        future = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
        found = next(iter(future.values())).result(timeout=timeout_s)
    except Exception:  # noqa: BLE001 - no answer is no limit known; the produce goes on and says nothing of it
        return None
    if "delete" not in found["cleanup.policy"].value or found["message.timestamp.type"].value != "CreateTime":
        return None
    retention = int(found["retention.ms"].value)
    return retention if retention >= 0 else None


class _PartitionTracker(OffsetRestrictionTracker):
    """An offset range that refuses fractional splits of an open-ended range (splitting
    [n, sys.maxsize) in half would make a restriction of offsets that will never exist);
    checkpoints (fraction 0) still work."""

    def try_split(self, fraction_of_remainder):
        if self.current_restriction().stop == UNBOUNDED and fraction_of_remainder > 0:
            return None
        return super().try_split(fraction_of_remainder)


class _Discoveries(RestrictionProvider):
    """The partition ids a _DiscoverPartitionsFn has yet to plan: from 0, open-ended."""

    def initial_restriction(self, element):
        return OffsetRange(0, UNBOUNDED)

    def create_tracker(self, restriction):
        return _PartitionTracker(restriction)

    def restriction_size(self, element, restriction):
        return 1

    def truncate(self, element, restriction):
        return None  # on drain, no partition more


class _Restrictions(RestrictionProvider):
    def initial_restriction(self, element: _PartitionRead):
        return OffsetRange(element.start, element.stop)

    def create_tracker(self, restriction):
        return _PartitionTracker(restriction)

    def restriction_size(self, element, restriction):
        return restriction.size()

    def truncate(self, element, restriction):
        # On drain a live read stops at its next checkpoint; a bounded one finishes.
        return restriction if element.bounded else None


class _Watermarks(WatermarkEstimatorProvider):
    def initial_estimator_state(self, element, restriction):
        return None

    def create_watermark_estimator(self, estimator_state):
        return ManualWatermarkEstimator(estimator_state)


class _DiscoverPartitionsFn(beam.DoFn):
    """impulse -> a _PartitionRead for each partition of a live read's topic: those there at the start at once, each
    added later within ``every_s``. Its restriction is the partition ids not planned yet (Kafka gives an added
    partition the next id and never removes one), so a restart or a retried bundle plans each partition once."""

    def __init__(self, spec: _ReadSpec, config: dict, every_s: float):
        self._spec, self._config, self._every_s = spec, config, every_s

    @beam.DoFn.unbounded_per_element()
    def process(self, _, tracker=beam.DoFn.RestrictionParam(_Discoveries()),
                watermark=beam.DoFn.WatermarkEstimatorParam(_Watermarks())):
        if _DRAIN.is_set():
            _finish(tracker)
            return
        first = tracker.current_restriction().start
        # a partition added while the stream runs starts at its beginning, whatever offset_reset says
        spec = self._spec if first == 0 else dataclasses.replace(self._spec, offset_reset="earliest")
        now_ms = int(time.time() * 1000)
        for read in _plan(spec, self._config, first):
            if not tracker.try_claim(read.partition):
                return
            yield beam.window.TimestampedValue(read, Timestamp(micros=now_ms * 1000))
        # The reads hold the stream's watermark with their records' times; this step only promises that it plans
        # no partition stamped before its next look.
        _advance(watermark, now_ms + round(self._every_s * 1000))
        tracker.defer_remainder(Duration(seconds=self._every_s))


_SEEN_LOCK = threading.Lock()
_SEEN_WATERMARKS: dict[str, dict[int, int]] = {}  # read_id -> partition -> its watermark (ms), this process


def _lowest_partition(read_id: str, part: _PartitionRead, ms: int) -> int | None:
    """The lowest watermark among the read's partitions, with ``part``'s now ``ms``; None until each has one."""
    with _SEEN_LOCK:
        seen = _SEEN_WATERMARKS.setdefault(read_id, {})
        seen[part.partition] = max(ms, seen.get(part.partition, ms))
        return min(seen.values()) if len(seen) >= part.partitions else None


def _advance(estimator: ManualWatermarkEstimator, ms: int | None) -> None:
    if ms is None:
        return
    candidate = Timestamp(micros=ms * 1000)
    current = estimator.current_watermark()
    if current is None or candidate > current:
        estimator.set_watermark(candidate)


def _finish(tracker) -> None:
    """Mark the rest of the restriction done: claiming its stop fails and ends the range."""
    tracker.try_claim(tracker.current_restriction().stop)


class _ReadPartitionFn(beam.DoFn):
    """_PartitionRead -> KafkaMessage, for the offsets its restriction covers."""

    BATCH = 500  # messages per consume() call
    POLL_S = 0.01  # consume() waits this long when fewer than BATCH messages are ready
    # A slice of a read ends, and the read checkpoints so that bundles end and offsets get committed,
    # once a consume() returns fewer than BATCH messages (what the broker had sent is read), and at
    # most this long after the broker's first reply. Short, because a local runner serves one
    # partition's read at a time: the others wait. (Reading on until MAX_PROCESS_S with 100 ms polls,
    # p50 was 451 ms at 2,000 events/s into 3 partitions on the DirectRunner; now 44 ms.) The
    # first reply may take up to FIRST_REPLY_S (a fresh assign starts a fetch): a slice that ended
    # before it would never see a message or the partition's end.
    MAX_PROCESS_S = 0.1
    FIRST_REPLY_S = 1.0
    # How soon a checkpointed read asks to go on. A message produced just after a slice waits this
    # long plus the runner's rescheduling: at 200 ms, a fraud_entity stream on Prism measured p50 2.0 s
    # at 200 events/s; at 20 ms, 1.3 s.
    RESUME_AFTER = Duration(micros=20_000)

    # With one consumer for all partitions (ReadFromKafka's one_consumer), a slice with nothing to read waits this
    # long for any partition's next message: it paces the runner's loop while the topic is quiet. Not in a bundle
    # that has read messages: they wait for the bundle's end (a partition's end-of-log event, which would end the
    # wait, comes a broker's fetch hold, 100 ms, after its last message: bursts' p99 was 116 ms, docs/design.md).
    IDLE_WAIT_S = 0.1

    def __init__(self, config: dict, commit: bool, max_delay_ms: int, read_id: str | None = None,
                 one_consumer: bool = False):
        self._config = config
        self._commit = commit
        self._max_delay_ms = max_delay_ms
        self._read_id = read_id  # set: one watermark for all the read's partitions (ReadFromKafka's one_watermark)
        self._one_consumer = one_consumer

    def setup(self):
        self._secrets = Secrets(self._config)
        self._consumer = client(Consumer, self._config, self._secrets)
        self._queues = PartitionQueues(self._consumer) if self._one_consumer else None
        self._calls = BoundedCalls()  # commits and the close

    def start_bundle(self):
        self._claimed: dict[tuple[str, int], int] = {}  # next offset per partition, this bundle
        self._finalizer_registered = False

    # The finalizer comes first: Beam passes it by position and the other two by keyword.
    def process(self, part: _PartitionRead,
                finalizer=beam.DoFn.BundleFinalizerParam,
                tracker=beam.DoFn.RestrictionParam(_Restrictions()),
                watermark=beam.DoFn.WatermarkEstimatorParam(_Watermarks())):
        if self._commit and not self._finalizer_registered:
            finalizer.register(functools.partial(self._commit_offsets, self._claimed))
            self._finalizer_registered = True
        yield from self._read(part, tracker, watermark)

    def _read(self, part: _PartitionRead, tracker, watermark):
        start = tracker.current_restriction().start
        if start >= tracker.current_restriction().stop:
            return
        draining = _DRAIN.is_set if not part.bounded else (lambda: False)
        if draining():
            _finish(tracker)
            return
        queues = self._queues
        if queues is not None:
            queues.start(part.topic, part.partition, start)
        else:
            # Assign on every call: the restriction may have moved here from another instance, and
            # a fresh fetch is what yields a current end-of-partition event.
            self._consumer.assign([TopicPartition(part.topic, part.partition, start)])
        deadline, replied = time.monotonic() + self.FIRST_REPLY_S, False
        uncovered = start  # the next message emitted accounts for the offsets from here
        at_end = caught_up = False
        while not caught_up and time.monotonic() < deadline:
            if draining():
                break
            if queues is not None:
                batch, caught_up = queues.take(part.topic, part.partition, self.BATCH,
                                               0 if self._claimed else self.IDLE_WAIT_S)
            else:
                batch = self._consumer.consume(self.BATCH, timeout=self.POLL_S)
            for msg in batch:
                if not replied:
                    deadline, replied = time.monotonic() + self.MAX_PROCESS_S, True
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        self._on_error(err)
                    elif msg.offset() >= tracker.current_restriction().stop:
                        _finish(tracker)  # nothing left below the stop (offsets can have gaps)
                        return
                    else:
                        at_end = True
                    continue
                at_end = False
                offset = msg.offset()
                if offset < start:
                    continue  # delivered again after an offset reset; claimed already
                ts_type, ts = msg.timestamp()
                if ts_type == TIMESTAMP_NOT_AVAILABLE or ts < 0:
                    ts = int(time.time() * 1000)
                if part.stop_ts_ms is not None and ts >= part.stop_ts_ms:
                    _finish(tracker)
                    return
                if not tracker.try_claim(offset):
                    return
                start = offset + 1
                self._claimed[(part.topic, part.partition)] = start
                if part.start_ts_ms is None or ts >= part.start_ts_ms:
                    _advance(watermark, self._watermark_ms(part, ts - self._max_delay_ms))
                    yield beam.window.TimestampedValue(
                        KafkaMessage(part.topic, part.partition, offset, msg.key(), msg.value(),
                                     ts, uncovered),
                        Timestamp(micros=ts * 1000))
                    uncovered = start
                if start >= tracker.current_restriction().stop:  # claimed the last offset
                    return
            caught_up = caught_up or (replied and len(batch) < self.BATCH)
        if draining():  # what was claimed so far goes on through the pipeline; nothing more
            _finish(tracker)
            return
        if at_end or (queues is not None and queues.at_end(part.topic, part.partition)):  # caught up with the broker
            now_ms = int(time.time() * 1000)
            if part.stop_ts_ms is not None and now_ms >= part.stop_ts_ms + self._max_delay_ms:
                _finish(tracker)
                return
            _advance(watermark, self._watermark_ms(part, now_ms - self._max_delay_ms))
        tracker.defer_remainder(self.RESUME_AFTER)

    def _watermark_ms(self, part: _PartitionRead, ms: int) -> int | None:
        return ms if self._read_id is None else _lowest_partition(self._read_id, part, ms)

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            raise KafkaException(self._secrets.scrub(err.str()))
        # Anything else (broker down, leader moving...) librdkafka retries by itself.
        _LOG.warning("Kafka consumer: %s", self._secrets.scrub(err.str()))

    def _commit_offsets(self, claimed: dict) -> None:
        """Bundle finalization: the bundle's outputs are committed, so its offsets may be. Not fatal if it fails or
        the broker does not answer: an uncommitted offset only means a replay after a restart."""
        if not claimed:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in claimed.items()]
        answered, error = self._calls.call(COMMIT_WAIT_S, self._consumer.commit, offsets=offsets, asynchronous=False)
        if not answered:
            _LOG.warning("Kafka offset commit not answered within %g s, or an earlier one still waiting (is the broker "
                         "reachable?)", COMMIT_WAIT_S)
        elif error is not None:
            _LOG.warning("Kafka offset commit failed: %s", self._secrets.scrub(error))

    def teardown(self):
        consumer, self._consumer = getattr(self, "_consumer", None), None
        if consumer is not None:
            self._calls.call(CLOSE_WAIT_S, consumer.close)


class BoundedCalls:
    """Kafka calls that may wait for as long as the broker is away (librdkafka has no timeout for a synchronous
    commit, nor for a consumer's close while one is pending), each waited for at most a while and made one at a
    time: while one goes on in the background, the next is not made. A commit then waits for its next try (a
    restart reads a little more again); a close is left to the process's end."""

    def __init__(self):
        self._running: threading.Thread | None = None

    def call(self, seconds: float, call, *args, **kwargs) -> tuple[bool, Exception | None]:
        """(answered within ``seconds``, its error); (False, None) at once while an earlier call goes on."""
        if self._running is not None and self._running.is_alive():
            return False, None
        outcome: list = []

        def run():
            try:
                call(*args, **kwargs)
                outcome.append(None)
            except Exception as error:  # noqa: BLE001 - handed to the caller
                outcome.append(error)

        self._running = threading.Thread(target=run, name="kafka-call", daemon=True)
        self._running.start()
        self._running.join(seconds)
        return (True, outcome[0]) if outcome else (False, None)


def _unbounded(process):
    """``process`` marked unbounded-per-element. The mark is an attribute on the function
    object, so it goes on a wrapper (Beam finds the parameters through functools.wraps)."""
    @functools.wraps(process)
    def wrapper(*args, **kwargs):
        return process(*args, **kwargs)
    return beam.DoFn.unbounded_per_element()(wrapper)


class _ReadLivePartitionFn(_ReadPartitionFn):
    """The same reader, declared unbounded so runners treat its output as a stream."""
    process = _unbounded(_ReadPartitionFn.process)


class _ReadLiveUncommittedPartitionFn(_ReadPartitionFn):
    """A live read that commits nothing itself (``CommitWhenWritten`` does): without a bundle finalizer in its
    signature, no bundle of it asks the runner for finalization. Prism's finalization requests now and then
    found the SDK's bundle gone ("Bundle is not in a finalizable state"), and the stream stopped scoring."""

    @beam.DoFn.unbounded_per_element()
    def process(self, part: _PartitionRead,
                tracker=beam.DoFn.RestrictionParam(_Restrictions()),
                watermark=beam.DoFn.WatermarkEstimatorParam(_Watermarks())):
        yield from self._read(part, tracker, watermark)


# ---------------------------------------------------------------------------------------------
# WriteToKafka


class WriteToKafka(beam.PTransform):
    """Writes (key: bytes | None, value: bytes) pairs to a topic; outputs nothing, or what it wrote.

    One idempotent producer per DoFn instance (``enable.idempotence`` defaults to true; set it
    in ``producer_config`` to override). Every bundle ends with a flush, and fails with
    KafkaDeliveryError if any of its records was not acknowledged, so the runner retries it:
    at-least-once into Kafka (a retried bundle can write some records twice).

    ``report_written``: elements are (key, value, position), and once a bundle's records are
    acknowledged their positions come out (for ``transforms.kafka_commit.CommitWhenWritten``).
    """

    def __init__(self, bootstrap_servers: str, topic: str, producer_config: dict | None = None,
                 report_written: bool = False):
        super().__init__()
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.producer_config = dict(producer_config or {})
        self.report_written = report_written

    def expand(self, pcoll):
        config = {"enable.idempotence": True, **self.producer_config,
                  "bootstrap.servers": self.bootstrap_servers}
        return pcoll | "Produce" >> beam.ParDo(_ProduceFn(config, self.topic, self.report_written))

    def __repr__(self) -> str:
        return (f"WriteToKafka(bootstrap_servers={self.bootstrap_servers!r}, "
                f"topic={self.topic!r}, producer_config={mask_config(self.producer_config)!r})")

    def display_data(self) -> dict:
        return {"bootstrap_servers": self.bootstrap_servers, "topic": self.topic,
                "producer_config": str(mask_config(self.producer_config))}


def enqueue(producer: Producer, topic: str, key: bytes | None, value: bytes, on_delivery, **extra) -> None:
    """``producer.produce``, waiting for deliveries to drain the local queue while it is full."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=on_delivery, **extra)
            return
        except BufferError:
            producer.poll(0.1)


class _ProduceFn(beam.DoFn):
    FLUSH_STEP_S = 1.0

    def __init__(self, config: dict, topic: str, report_written: bool = False):
        self._config = config
        self._topic = topic
        self._report_written = report_written

    def setup(self):
        self._secrets = Secrets(self._config)
        self._producer = client(Producer, self._config, self._secrets)

    def start_bundle(self):
        self._failures: list[KafkaError] = []
        self._written: list[tuple] = []  # (position, timestamp) of this bundle's records
        self._records = 0

    def _on_delivery(self, err, msg):
        if err is not None:
            self._failures.append(err)

    def process(self, element, timestamp=beam.DoFn.TimestampParam):
        key, value, *position = element
        if self._report_written:
            self._written.append((position[0], timestamp))
        self._records += 1
        enqueue(self._producer, self._topic, key, value, self._on_delivery)
        self._producer.poll(0)

    def finish_bundle(self):
        # flush() returns what is still queued; librdkafka fails records only after
        # message.timeout.ms, so this waits out a broker outage up to that limit.
        while self._producer.flush(self.FLUSH_STEP_S) > 0:
            pass
        if self._failures:
            first, n = self._failures[0], len(self._failures)
            self._failures = []
            raise KafkaDeliveryError(f"{n} record(s) not delivered to {self._topic!r}: "
                                     f"{self._secrets.scrub(first.str())}")
        live_metrics.WRITTEN.labels(topic=self._topic).inc(self._records)
        self._records = 0
        written, self._written = self._written, []
        for position, timestamp in written:
            yield GlobalWindows.windowed_value(position, timestamp)

    def teardown(self):
        producer, self._producer = getattr(self, "_producer", None), None
        if producer is not None:
            producer.flush(5)
