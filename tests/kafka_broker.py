"""Moved to ``transforms.kafka_broker`` (the embedded stream demo starts it too); re-exported here."""
from transforms.kafka_broker import KafkaBroker, create_topic, free_port, tansu_binary, wait_until_ready  # noqa: F401
