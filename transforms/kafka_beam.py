"""Beam's own Kafka IO (Java's KafkaIO, cross-language) in the shapes of ``transforms.kafka``.

``ReadWithBeamKafkaIO`` gives the same ``KafkaMessage``s as ``transforms.kafka.ReadFromKafka``, stamped with
their message timestamps (CreateTime); ``WriteWithBeamKafkaIO`` takes the same (key, value) pairs. Both run
as Java transforms, expanded by ``expansion_service`` (see ``pipelines.artifacts``).

Differences from the project's own IO, by Java KafkaIO's design:
- ``consumer_config`` and ``producer_config`` are Java client properties (``sasl.jaas.config``, not
  librdkafka's ``sasl.username``).
- The watermark allows no delay (KafkaIO's external read fixes ``withCreateTime(Duration.ZERO)``): an event
  stamped before a later one of its partition that was already read is late.
- Offsets are committed when a bundle is finalized, which Flink does once a checkpoint holding it completes.

Why a payload of its own rather than ``apache_beam.io.kafka.ReadFromKafka``: that wrapper sends the
configuration fields of its release (2.77), and the Java KafkaIO the Flink runner can run here is older
(2.62) and refuses fields it does not know; this read names only those it knows, under the same URN.
"""
# No `from __future__ import annotations`: the payload's schema is read from _ReadConfiguration's annotations,
# which must be types, not strings.
import typing

import apache_beam as beam
import numpy as np
from apache_beam.io.kafka import WriteToKafka
from apache_beam.transforms.external import ExternalTransform, NamedTupleBasedPayloadBuilder

from transforms.kafka import KafkaMessage

READ_URN = "beam:transform:org.apache.beam:kafka_read_with_metadata:v1"
_BYTES = "org.apache.kafka.common.serialization.ByteArrayDeserializer"


class _ReadConfiguration(typing.NamedTuple):
    """KafkaIO.Read.External.Configuration, as of Beam 2.62."""

    consumer_config: typing.Mapping[str, str]
    topics: typing.List[str]
    key_deserializer: str
    value_deserializer: str
    start_read_time: typing.Optional[int]
    max_num_records: typing.Optional[int]
    max_read_time: typing.Optional[int]
    commit_offset_in_finalize: bool
    timestamp_policy: str
    consumer_polling_timeout: typing.Optional[int]
    redistribute: typing.Optional[bool]
    redistribute_num_keys: typing.Optional[np.int32]
    allow_duplicates: typing.Optional[bool]


class ReadWithBeamKafkaIO(beam.PTransform):
    """A topic read live for ``group_id`` from ``offset_reset`` where the group has no offset: ``KafkaMessage``s."""

    def __init__(self, bootstrap_servers: str, topic: str, group_id: str, offset_reset: str,
                 consumer_config: dict, expansion_service):
        super().__init__()
        config = {**consumer_config, "bootstrap.servers": bootstrap_servers, "group.id": group_id,
                  "auto.offset.reset": offset_reset}
        self._configuration = _ReadConfiguration(
            consumer_config=config, topics=[topic], key_deserializer=_BYTES, value_deserializer=_BYTES,
            start_read_time=None, max_num_records=None, max_read_time=None, commit_offset_in_finalize=True,
            timestamp_policy="CreateTime", consumer_polling_timeout=None, redistribute=False,
            redistribute_num_keys=np.int32(0), allow_duplicates=False)
        self._expansion_service = expansion_service

    def expand(self, pbegin):
        return (pbegin
                | "KafkaIO" >> ExternalTransform(READ_URN, NamedTupleBasedPayloadBuilder(self._configuration),
                                                 self._expansion_service)
                | "ToMessages" >> beam.Map(_message))


def _message(row) -> KafkaMessage:
    return KafkaMessage(row.topic, row.partition, row.offset, row.key, row.value, row.timestamp, row.offset)


class WriteWithBeamKafkaIO(beam.PTransform):
    """(key, value) pairs of bytes (a key may be None) written to ``topic``; flushed when a bundle ends."""

    def __init__(self, bootstrap_servers: str, topic: str, producer_config: dict, expansion_service):
        super().__init__()
        self._write = WriteToKafka({**producer_config, "bootstrap.servers": bootstrap_servers}, topic,
                                   expansion_service=expansion_service)

    def expand(self, pairs):
        return (pairs
                | "Typed" >> beam.Map(lambda pair: (pair[0] or b"", pair[1])).with_output_types(
                    typing.Tuple[bytes, bytes])
                | "KafkaIO" >> self._write)
