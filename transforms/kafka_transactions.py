"""Exactly-once output to Kafka: a bundle's records and the input offsets they cover, in one Kafka transaction.

Where a stream's sinks run in its read's bundle (fused with it, as on the DirectRunner and on Prism with LOOPBACK
workers), a bundle can write its scored records and dead letters and commit, for the stream's consumer group, the
offsets of the input they came from, in one transaction (``send_offsets_to_transaction``). A ``read_committed``
consumer of the outputs then sees a record exactly when the group's offsets move past its input, and a restart reads
on from there: a crash before the commit leaves neither (the next producer with the same transactional id aborts the
open transaction, see ``fence``), a crash after it leaves both.

``WriteInTransactions``: a tuple of PCollections of ``(topic, key, value, position)`` in, nothing out; a position is
the input's ``(topic, partition, covers_from, offset)`` (``transforms.kafka_commit``). The branches are not merged
with a Flatten, which the DirectRunner runs as a stage of its own, after the read's: each gets a sink, and the sinks
of one bundle share its transaction, committed when the last of them finishes the bundle (a runner finishes every
step of a bundle, and every step upstream of a sink before it). A bundle commits a partition's offset only when its
records cover the partition from the group's committed offset on without holes; a bundle that does not (a runner
that split the read from the sinks) fails in one line before its transaction begins, rather than commit what it did
not write. Records below the committed offset (a bundle run again after its commit) are dropped: they are written.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import apache_beam as beam
from apache_beam import pvalue
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from transforms import live_metrics
from transforms.errors import UserError, first_line
from transforms.kafka import BoundedCalls, Secrets, client, enqueue

_LOG = logging.getLogger(__name__)
WAIT_S = 30.0  # for each transactional call: Kafka's own timeouts decide within it
ATTEMPT_S = 15.0  # for a whole transaction, retries of its calls included (one takes well under a second)
ATTEMPTS = 5  # transactions aborted or not answered in a row, each written again, before the stream stops
RETRY_PAUSE_S = 0.5
FENCED_WRITERS = 8  # transactional ids a stream's start fences: at most as many bundles at once (others wait)


class KafkaTransactionError(RuntimeError):
    """A bundle's transaction was not committed: fenced, refused, aborted ``ATTEMPTS`` times in a row, its records
    leaving a gap in a partition, or its group's offsets not found."""


def transactional_id(group_id: str, writer: int) -> str:
    """The transactional id of a stream's ``writer``-th transactional producer in a process (one per bundle that runs
    at once, numbered from 0): stable across restarts, so that a restarted stream fences its predecessor and aborts
    what it left open."""
    return f"{group_id}-transactions-{writer}"


def fence(bootstrap_servers: str, config: dict, group_id: str) -> None:
    """Abort what a previous run of the stream left open (its transactions, and the offsets pending in them, which a
    ``read_committed`` offset lookup waits for until they time out), before the read looks its start up: the
    transactions of its first ``FENCED_WRITERS`` writers (a stream runs at most that many bundles at once). What this
    process remembers of the group (a run before, in the same process) is forgotten: its offsets may have been reset."""
    with _LOCK:
        _IDLE.pop(group_id, None)
        _UNUSED.pop(group_id, None)
        for key in [key for key in _FRONTIERS if key[0] == group_id]:
            del _FRONTIERS[key]
    settings = {**config, "bootstrap.servers": bootstrap_servers}
    secrets = Secrets(settings)
    for writer in range(FENCED_WRITERS):
        try:
            _transactional_producer(settings, secrets, transactional_id(group_id, writer))
        except KafkaException as error:
            raise UserError(f"--delivery exactly_once: Kafka refused transactional id "
                            f"{transactional_id(group_id, writer)} ({secrets.scrub(error)}); on a secured cluster the "
                            f"scorer's principal needs WRITE and DESCRIBE on transactional ids "
                            f"{group_id}-transactions-*") from None


def _transactional_producer(config: dict, secrets: Secrets, transactional: str) -> Producer:
    """A producer with ``transactional`` as its id, started: which fences the previous one and aborts its
    transaction."""
    producer = client(Producer, {**config, "transactional.id": transactional}, secrets)
    _retried("initialisation", secrets, producer.init_transactions, WAIT_S)
    return producer


class WriteInTransactions(beam.PTransform):
    """A tuple of PCollections of ``(topic, key, value, position)`` in; each bundle's records and their input's
    offsets for ``group_id`` committed in one Kafka transaction. Nothing out."""

    def __init__(self, bootstrap_servers: str, group_id: str, config: dict | None = None):
        super().__init__()
        self._config = {**(config or {}), "bootstrap.servers": bootstrap_servers}
        self._group_id = group_id

    def expand(self, branches):
        for number, messages in enumerate(branches):
            messages | f"Sink{number}" >> beam.ParDo(_SinkFn(self._config, self._group_id, len(branches)))
        return pvalue.PDone(branches[0].pipeline)


class _SinkFn(beam.DoFn):
    """One branch's sink: adds its records to the bundle's transaction, and the last to finish commits it."""

    def __init__(self, config: dict, group_id: str, sinks: int):
        self._config, self._group_id, self._sinks = config, group_id, sinks

    def start_bundle(self):
        self._transaction = _Transaction.of_this_bundle(self._config, self._group_id, self._sinks)

    def process(self, element):
        self._transaction.add(*element)

    def finish_bundle(self):
        self._transaction.finished()


# Offsets committed per (group, topic, partition) in this process: where a partition's next record must start. Shared
# by the process's transactions, as a partition's bundles may run in any of its threads.
_FRONTIERS: dict[tuple[str, str, int], int] = {}
_LOCK = threading.Lock()
_RETURNED = threading.Condition(_LOCK)  # a transaction went back to its pool
_IDLE: dict[str, list["_Transaction"]] = {}  # per group: transactions no bundle holds now, for the next one
_UNUSED: dict[str, list[int]] = {}  # per group: writer numbers with no transaction now, lowest first
_BUNDLE = threading.local()  # per group: the transaction of the bundle this thread runs (a bundle runs in one)


class _Transaction:
    """A bundle's records and the offsets they cover, for one group, and the transactional producer that commits
    them; taken by a bundle when its first sink starts, given back when its last sink finishes."""

    @classmethod
    def of_this_bundle(cls, config: dict, group_id: str, sinks: int) -> "_Transaction":
        """The transaction of the bundle this thread runs, taken when its first sink starts. One whose sinks have all
        started already is a failed bundle's (it never finished): dropped, with what it held."""
        held = _BUNDLE.__dict__.setdefault("transactions", {})
        if group_id in held and held[group_id]._started == sinks:
            held.pop(group_id)._give_back(reusable=False)
        if group_id not in held:
            with _RETURNED:
                idle = _IDLE.setdefault(group_id, [])
                unused = _UNUSED.setdefault(group_id, list(range(FENCED_WRITERS)))  # only ids fenced at the start
                while not idle and not unused:
                    _RETURNED.wait()
                found = idle.pop() if idle else None
                writer = None if found else unused.pop(0)
            held[group_id] = found or cls(config, group_id, sinks, writer)
        held[group_id]._started += 1
        return held[group_id]

    def __init__(self, config: dict, group_id: str, sinks: int, writer: int):
        self._config, self._group_id, self._sinks, self._writer = config, group_id, sinks, writer
        self._id = transactional_id(group_id, writer)
        self._secrets = Secrets(config)
        self._consumer = client(Consumer, {**config, "group.id": group_id, "enable.auto.commit": False}, self._secrets)
        self._start_producer()
        _LOG.info("Kafka transactions as %s for group %s", self._id, group_id)
        self._reset()

    def _start_producer(self) -> None:
        self._producer = _transactional_producer(self._config, self._secrets, self._id)
        self._calls = BoundedCalls()

    def _reset(self) -> None:
        self._messages: list[tuple[str, bytes | None, bytes]] = []
        self._spans: dict[tuple[str, int], list[tuple[int, int]]] = {}  # input partition: (covers_from, offset)
        self._started = self._finished = 0

    def add(self, topic: str, key: bytes | None, value: bytes, position: tuple) -> None:
        in_topic, partition, covers_from, offset = position
        if offset < self._frontier(in_topic, partition):
            return  # committed with its input already (a bundle run again)
        self._messages.append((topic, key, value))
        self._spans.setdefault((in_topic, partition), []).append((covers_from, offset))

    def finished(self) -> None:
        """One sink finished the bundle; the last commits it."""
        self._finished += 1
        if self._finished < self._sinks:
            return
        committed = False
        try:
            if self._messages:
                self._commit()
            committed = True
        except KafkaException as error:  # an abort, a new producer or an offset lookup that failed
            raise KafkaTransactionError(self._why(error.args[0] if error.args else error)) from None
        finally:
            del _BUNDLE.transactions[self._group_id]
            self._give_back(reusable=committed)

    def _give_back(self, reusable: bool) -> None:
        """Back to the pool, emptied; not ``reusable`` (its producer may be fenced or failed): only its writer number,
        whose next transaction starts a new producer."""
        self._reset()
        with _RETURNED:
            if reusable:
                _IDLE[self._group_id].append(self)
            else:
                _UNUSED[self._group_id] = sorted([*_UNUSED[self._group_id], self._writer])
            _RETURNED.notify()

    def _commit(self) -> None:
        ends = {part: self._end(part, spans) for part, spans in self._spans.items()}
        offsets = [TopicPartition(topic, partition, end) for (topic, partition), end in ends.items()]
        for _ in range(ATTEMPTS):
            # The attempt gets this producer and these records: one given up may still go on, on them only.
            answered, error = self._calls.call(ATTEMPT_S, self._transaction, self._producer, list(self._messages),
                                               offsets, self._consumer.consumer_group_metadata())
            if answered and error is None:
                break
            if not answered:
                # librdkafka can wait on past every timeout for a group coordinator that went away and came back
                # (confluentinc/librdkafka#5511, #5456): a new producer aborts the transaction, unless it was
                # committed meanwhile, which the group's offsets then say.
                _LOG.warning("Kafka transaction not answered within %g s; starting a new producer as %s",
                             ATTEMPT_S, self._id)
                self._start_producer()
                if self._committed_already(ends):
                    break
            else:
                err = error.args[0] if isinstance(error, KafkaException) else None
                if err is None or not err.txn_requires_abort():
                    raise KafkaTransactionError(self._why(err or error)) from None
                _LOG.warning("Kafka transaction aborted (%s); writing its %d record(s) again",
                             self._secrets.scrub(err.str()), len(self._messages))
                _retried("abort", self._secrets, self._producer.abort_transaction, WAIT_S)
            time.sleep(RETRY_PAUSE_S)
        else:
            raise KafkaTransactionError(f"Kafka transaction of {len(self._messages)} record(s) not committed in "
                                        f"{ATTEMPTS} attempts")
        with _LOCK:
            _FRONTIERS.update({(self._group_id, *part): end for part, end in ends.items()})
        for topic, count in Counter(topic for topic, _, _ in self._messages).items():
            live_metrics.WRITTEN.labels(topic=topic).inc(count)

    def _transaction(self, producer: Producer, messages: list[tuple], offsets: list[TopicPartition], group) -> None:
        producer.begin_transaction()
        for topic, key, value in messages:
            enqueue(producer, topic, key, value, None)
        _retried("offsets", self._secrets, producer.send_offsets_to_transaction, offsets, group, WAIT_S)
        _retried("commit", self._secrets, producer.commit_transaction, WAIT_S)

    def _committed_already(self, ends: dict[tuple[str, int], int]) -> bool:
        """Whether the group's offsets are the bundle's ends (its transaction committed) rather than its starts."""
        found = {(tp.topic, tp.partition): _offset(tp) for tp in _retried(
            "committed-offset lookup", self._secrets, self._consumer.committed,
            [TopicPartition(topic, partition) for topic, partition in ends], WAIT_S)}
        if found == ends:
            return True
        with _LOCK:
            starts = {part: _FRONTIERS.get((self._group_id, *part)) for part in ends}
        if found != starts:
            raise KafkaTransactionError(f"group {self._group_id}'s offsets {found} are neither where this bundle "
                                        f"started nor where it ends: is a second stream running for the group?")
        return False

    def _end(self, part: tuple[str, int], spans: list[tuple[int, int]]) -> int:
        """The offset after the bundle's records of ``part``, which must cover it from the committed offset on."""
        end = self._frontier(*part)
        for covers_from, offset in sorted(spans):
            if covers_from > end:
                raise KafkaTransactionError(
                    f"offsets {end} to {covers_from - 1} of {part[0]}:{part[1]} have no record in the bundle that "
                    f"writes offset {offset}: exactly-once delivery needs the sinks in the read's bundle")
            end = max(end, offset + 1)
        return end

    def _frontier(self, topic: str, partition: int) -> int:
        key = (self._group_id, topic, partition)
        with _LOCK:
            if key in _FRONTIERS:
                return _FRONTIERS[key]
        [found] = _retried("committed-offset lookup", self._secrets, self._consumer.committed,
                           [TopicPartition(topic, partition)], WAIT_S)
        if _offset(found) < 0:
            raise KafkaTransactionError(f"group {self._group_id} has no committed offset for {topic}:{partition}: "
                                        f"the read commits where it starts")
        with _LOCK:
            return _FRONTIERS.setdefault(key, found.offset)

    def _why(self, error: KafkaError | Exception) -> str:
        why = self._secrets.scrub(error.str() if isinstance(error, KafkaError) else first_line(error))
        if isinstance(error, KafkaError) and error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                                                              KafkaError.INVALID_PRODUCER_EPOCH):
            why += (f" (another producer took transactional id {self._id}: is a second stream running for group "
                    f"{self._group_id}?)")
        return f"Kafka transaction of {len(self._messages)} record(s) not committed: {why}"


def _offset(found: TopicPartition) -> int:
    """A committed offset as looked up (negative: none), or the partition's error raised."""
    if found.error is not None:
        raise KafkaException(found.error)
    return found.offset


def _retried(what: str, secrets: Secrets, call, *args):
    """``call(*args)``, again while Kafka calls its error retriable (a broker away, a coordinator moving). Unlike
    ``transforms.kafka``'s retries, the error is raised as it came: whether a transaction must be aborted is in it
    (its text is scrubbed where it becomes a message, ``_Transaction._why``)."""
    while True:
        try:
            return call(*args)
        except KafkaException as error:
            err = error.args[0]
            if not isinstance(err, KafkaError) or not err.retriable():
                raise
            _LOG.warning("Kafka transaction %s: %s; retrying", what, secrets.scrub(err.str()))
            time.sleep(RETRY_PAUSE_S)
