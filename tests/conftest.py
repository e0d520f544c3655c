import pytest

from tests.kafka_broker import KafkaBroker


@pytest.fixture(scope="session")
def kafka_broker():
    """A Tansu broker on a free loopback port for the whole session.

    Yields a KafkaBroker: ``.bootstrap`` ("127.0.0.1:PORT"), ``.create_topic(name, n)``, and
    ``.stop()`` / ``.start()`` / ``.restart()`` on the same port. Storage is in memory, so a
    restart loses every topic and committed offset: a test that restarts a broker should use
    its own ``KafkaBroker()`` rather than this shared one.
    """
    with KafkaBroker() as broker:
        yield broker
