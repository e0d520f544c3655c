"""Whether a Kafka cluster lets this client do what a command is about to do, asked before anything starts.

librdkafka retries a refused password or an untrusted certificate without end, as it would a broker that is away,
and a missing ACL shows only as a topic or group error deep in a running pipeline. So a command asks first, with
an admin client: a refused login, a failed TLS handshake and each missing ACL (READ on a topic read, WRITE on a
topic written, READ on the consumer group) is a one-line ``UserError`` naming which, with no secret in it. A
cluster that does not answer at all is not an error here: a stream waits for its broker.
"""
from __future__ import annotations

import re
from typing import Iterable

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AclOperation, AdminClient

from transforms.errors import UserError
from transforms.kafka import Secrets, resolved

_REFUSED = {KafkaError._AUTHENTICATION: "refused the login of {who}", KafkaError._SSL: "TLS failed"}
_WHERE = re.compile(r"^\S+://\S+?: |\s*\(after \d+ms in state \w+\)$")  # librdkafka's broker name and timing


def check_access(bootstrap_servers: str, config: dict, read: Iterable[str] = (), write: Iterable[str] = (),
                 group: str | None = None, timeout_s: float = 10.0) -> set[str] | None:
    """The topics of ``read`` and ``write`` that exist, once the cluster has let this client in and its ACLs let it
    READ ``read``, WRITE ``write`` and READ ``group``; None if the cluster did not answer within ``timeout_s``.
    Raises UserError for a refused login, a failed TLS handshake or a missing ACL."""
    secrets, errors = Secrets(config), []
    admin = AdminClient({**resolved(config), "bootstrap.servers": bootstrap_servers, "error_cb": errors.append},
                        logger=secrets)
    who = f"user {config['sasl.username']!r}" if config.get("sasl.username") else "this client"
    where = f"Kafka at {bootstrap_servers}"
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException:
        admin.poll(0)  # (error_cb is called from poll)
        refused = next((error for error in errors if error.code() in _REFUSED), None)
        if refused is None:
            return None
        reason = _WHERE.sub("", secrets.scrub(refused.str()))
        raise UserError(f"{where} {_REFUSED[refused.code()].format(who=who)}: {reason}") from None

    def refuse(operation: AclOperation, what: str) -> UserError:
        return UserError(f"{where}: no ACL lets {who} {operation.name} {what}")

    found, needs = set(), [*((t, AclOperation.READ) for t in read), *((t, AclOperation.WRITE) for t in write)]
    descriptions = admin.describe_topics(TopicCollection(list(dict.fromkeys(topic for topic, _ in needs))),
                                         request_timeout=timeout_s, include_authorized_operations=True)
    for topic, operation in needs:
        try:
            described = descriptions[topic].result()
        except KafkaException as error:
            code = error.args[0].code()
            if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                raise refuse(operation, f"topic {topic!r}") from None
            if code == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue
            return None
        found.add(topic)
        if described.authorized_operations is not None and operation not in described.authorized_operations:
            raise refuse(operation, f"topic {topic!r}")
    if group is not None:
        try:
            described = admin.describe_consumer_groups([group], request_timeout=timeout_s,
                                                       include_authorized_operations=True)[group].result()
        except KafkaException as error:
            if error.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
                raise refuse(AclOperation.READ, f"consumer group {group!r}") from None
            return None
        if described.authorized_operations is not None and AclOperation.READ not in described.authorized_operations:
            raise refuse(AclOperation.READ, f"consumer group {group!r}")
    return found
