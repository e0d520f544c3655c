"""Event message values in the formats Kafka users run: JSON, Avro, and Confluent Schema Registry framing.

``--value_format``:

- ``json`` (the default): a JSON object per message, the contract's events;
- ``avro``: the spec's Avro record (``rtml schema --format avro``), schemaless, nothing around it;
- ``confluent-avro``, ``confluent-json``: Confluent's wire format (a zero byte, the 4-byte schema id,
  the body), the writer's schema fetched from ``--schema_registry_url`` by its id; a JSON body is
  also checked against its registered JSON Schema.

Reading never raises: a value that cannot be read in its format becomes a ``Decoded`` whose record
is the reason (a wrong magic byte, a schema id the registry does not know, a body that does not
match its schema, a registry answer that is not one), and its dead letter keeps the bytes as they came.
A record that could be read then meets the same contract checks as JSON (``transforms.events.EventParser``).
While the registry cannot answer (unreachable, timing out, a 5xx, 408 or 429, or refusing the credentials,
which an operator mends), reading waits, with a warning every ``_WARN_EVERY_S``: those events are valid, and
a dead letter would make a replay of them someone's chore. A stream asked to stop meanwhile
(``kafka.drain_live_reads``) stops with ``RegistryUnavailable`` instead: the bundle fails, so nothing it read is
committed, and a restart reads those events again. Framing, schema lookup and validation are
confluent-kafka's serializers'; one registry client per configuration per process. Writing (``encode``)
registers the spec's schema under the topic's subject, as Confluent's serializers do by default.

A registry's configuration is confluent-kafka's ``SchemaRegistryClient``'s (``url``, ``basic.auth.user.info``,
``ssl.ca.location`` ...), whose values may be ``transforms.kafka`` secret references, resolved where a client is made.
"""
from __future__ import annotations

import functools
import io
import json
import logging
import time

import httpx2

from transforms import kafka
from transforms.contract import avro_schema, json_schema
from transforms.errors import first_line
from transforms.events import Decoded, event_time_us_of, rfc3339, utc_datetime
from transforms.spec import Spec

FORMATS = ("json", "avro", "confluent-json", "confluent-avro")  # --value_format
_DECODED = FORMATS[1:]  # what a ValueFormat reads and writes; JSON values go to the parser as they are
_REASON_CHARS = 200
_HEADER_BYTES = 5  # a zero byte, then the schema id (4 bytes, big-endian)
_WARN_EVERY_S = 30.0
_CHECK_TIMEOUT_S = 10.0
_LOG = logging.getLogger(__name__)


class RegistryUnavailable(RuntimeError):
    """A stream asked to stop while events waited for the Schema Registry."""


def registry(config: dict):
    """The process's Schema Registry client for ``config``."""
    return _registry(tuple(sorted(config.items())))


@functools.cache
def _registry(items: tuple):
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient(kafka.resolved(dict(items)))


def registry_problem(config: dict) -> str | None:
    """Why the registry of ``config`` cannot serve a stream (unreachable, refusing the credentials, not a
    registry), in one line without a secret; None if it lists its subjects within ``_CHECK_TIMEOUT_S``."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    secrets = kafka.Secrets({key: value for key, value in config.items() if key != "url"})
    try:
        with SchemaRegistryClient({**kafka.resolved(config), "timeout": _CHECK_TIMEOUT_S, "max.retries": 0}) as client:
            client.get_subjects()
    except SchemaRegistryError as error:
        if error.http_status_code in (401, 403):
            return (f"the registry refused the credentials (HTTP {error.http_status_code}); give them with "
                    f"--schema_registry_secret basic.auth.user.info=env:NAME (its value ID:PASSWORD)")
        detail = secrets.scrub(first_line(error))[:_REASON_CHARS]
        return f"not a Schema Registry's answer to GET /subjects (HTTP {error.http_status_code}: {detail})"
    except httpx2.TransportError as error:
        return f"cannot reach the registry ({secrets.scrub(first_line(error))})"
    except (ValueError, TypeError) as error:  # the client's own checks of its settings; a body that is not JSON
        return secrets.scrub(first_line(error))
    return None


def _registry_unavailable(error: Exception) -> bool:
    """Whether ``error`` says the registry cannot answer now, rather than what it answered."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    if isinstance(error, SchemaRegistryError):
        return error.http_status_code in (401, 403, 408, 429) or error.http_status_code >= 500
    return isinstance(error, httpx2.TransportError)


class ValueFormat:
    """Reads (``decode``) and writes (``encode``) a spec's events as message values of one of ``_DECODED``.

    Picklable: serializers and registry clients are made where first used, on the worker.
    """

    def __init__(self, name: str, spec: Spec, registry_config: dict | None = None):
        if name not in _DECODED:
            raise ValueError(f"value format {name!r}: one of {', '.join(_DECODED)}")
        if name.startswith("confluent-") and not (registry_config or {}).get("url"):
            raise ValueError(f"value format {name} needs a schema registry URL")
        self.name, self._spec, self._registry_config = name, spec, registry_config
        self._made: dict = {}

    def __getstate__(self):
        return {**self.__dict__, "_made": {}}

    def decode(self, value: bytes | None, topic: str) -> Decoded | None:
        """A message value of ``topic`` read for the parser (None, a null value, stays None); waits while the
        registry cannot answer."""
        if value is None:
            return None
        waiting_since = warned = None
        while True:
            try:
                record = self._read(value, topic)
                break
            except Exception as error:  # the serializers raise their own kinds; a reason, never a crash
                if not _registry_unavailable(error):
                    return self._unreadable(value, error)
                if kafka.draining():
                    raise RegistryUnavailable(
                        f"Schema Registry {self._registry_config['url']} cannot answer ({first_line(error)}): the "
                        f"stream stopped without the events that wait for it, which it reads again when it "
                        f"restarts") from None
                now = time.monotonic()
                waiting_since = waiting_since or now
                if warned is None or now - warned >= _WARN_EVERY_S:
                    warned = now
                    _LOG.warning("Schema Registry %s cannot answer (%s): reading %s waits for it (%.0f s so far)",
                                 self._registry_config["url"], first_line(error), topic,
                                 now - waiting_since)
                time.sleep(1.0)
        if waiting_since is not None:
            _LOG.warning("Schema Registry %s answers again after %.0f s", self._registry_config["url"],
                         time.monotonic() - waiting_since)
        if not isinstance(record, dict):
            return Decoded(f"not {self.name} (not a record)", value)
        return Decoded(record, value)

    def _unreadable(self, value: bytes, error: Exception) -> Decoded:
        first_sentence = " ".join(str(error).split()).split(". ")[0]
        detail = first_sentence[:_REASON_CHARS] or type(error).__name__
        return Decoded(f"not {self.name} ({detail})", value)

    def encode(self, event: dict, topic: str) -> bytes:
        """A valid event as this format's message value for ``topic`` (registering the spec's schema there)."""
        from confluent_kafka.serialization import MessageField, SerializationContext

        context = SerializationContext(topic, MessageField.VALUE)
        if self.name == "confluent-json":
            return self._made_once("json_out", self._json_serializer)(self._typed(event, avro=False), context)
        record = self._typed(event, avro=True)
        if self.name == "confluent-avro":
            return self._made_once("avro_out", self._avro_serializer)(record, context)
        import fastavro

        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, self._made_once("schema", self._parsed_avro_schema), record)
        return buffer.getvalue()

    def _typed(self, event: dict, avro: bool) -> dict:
        """The event's values as the schema types them: times as Avro's datetimes (JSON: RFC 3339 text, as a
        Parquet row's datetimes are not), 0 or 1 as Avro's int."""
        record = dict(event)
        for field in self._spec.fields:
            value = record.get(field.name)
            if value is None:
                continue
            if field.type == "timestamp" and (avro or not isinstance(value, str)):
                time_us = event_time_us_of(value)
                record[field.name] = utc_datetime(time_us) if avro else rfc3339(time_us)
            elif field.type == "binary" and avro:
                record[field.name] = int(value)
        return record

    def _read(self, value: bytes, topic: str):
        if self.name.startswith("confluent-"):
            from confluent_kafka.serialization import MessageField, SerializationContext

            # Said here, in the same words for both formats; Confluent's deserializers word these differently.
            if len(value) < _HEADER_BYTES:
                raise ValueError(f"shorter than the {_HEADER_BYTES}-byte Schema Registry header")
            if value[0] != 0:
                raise ValueError(f"no Schema Registry header: the first byte is {value[0]:#04x}, not 0x00")
            self._check_writer_schema(int.from_bytes(value[1:_HEADER_BYTES], "big"))
            deserializer = self._made_once(self.name, lambda: _deserializer(self.name, registry(self._registry_config)))
            return deserializer(value, SerializationContext(topic, MessageField.VALUE))
        import fastavro

        buffer = io.BytesIO(value)
        record = fastavro.schemaless_reader(buffer, self._made_once("schema", self._parsed_avro_schema))
        if buffer.tell() != len(value):
            raise ValueError(f"{len(value) - buffer.tell()} bytes after the record")
        return record

    def _check_writer_schema(self, schema_id: int) -> None:
        """Fetches schema ``schema_id`` (the registry client keeps it), so that an answer that is not a schema, as a
        proxy's error page, is said to be that, rather than failing in the deserializer in its own words."""
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        checked = self._made_once("checked_ids", set)
        if schema_id in checked:
            return
        try:
            text = registry(self._registry_config).get_schema(schema_id).schema_str
            if not isinstance(json.loads(text), (dict, list, str, bool)):
                raise ValueError("not a schema")
        except (SchemaRegistryError, httpx2.TransportError):
            raise  # an unknown id, or the registry away: said as they are (decode waits for the latter)
        except Exception as error:  # whatever the client made of a malformed answer
            raise ValueError(f"the Schema Registry's answer for schema id {schema_id} is not a schema "
                             f"({first_line(error)})") from None
        checked.add(schema_id)

    def _made_once(self, what: str, make):
        if what not in self._made:
            self._made[what] = make()
        return self._made[what]

    def _parsed_avro_schema(self):
        import fastavro

        return fastavro.parse_schema(avro_schema(self._spec))

    def _avro_serializer(self):
        from confluent_kafka.schema_registry.avro import AvroSerializer

        return AvroSerializer(registry(self._registry_config), json.dumps(avro_schema(self._spec)))

    def _json_serializer(self):
        from confluent_kafka.schema_registry.json_schema import JSONSerializer

        return JSONSerializer(json.dumps(json_schema(self._spec)), registry(self._registry_config))


def _deserializer(name: str, client):
    if name == "confluent-avro":
        from confluent_kafka.schema_registry.avro import AvroDeserializer

        return AvroDeserializer(client)
    from confluent_kafka.schema_registry.json_schema import JSONDeserializer

    return JSONDeserializer(None, schema_registry_client=client)
