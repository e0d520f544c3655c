"""A confluent-avro stream run past the Schema Registry's time limits: sparse traffic, an outage, a new schema.

    .venv/bin/python benchmarks/registry_soak.py --minutes 12

Starts a broker, the tests' registry with credentials (Apicurio behind Keycloak, ``tests/schema_registry.py``), a
stand-in model and a DirectRunner scorer that logs in with ``--schema_registry_secret``; produces one event every
5 s; at half time stops the registry for 15 s (the scorer has the schema: it should not need the registry); a
minute before the end, writes three events with a new schema version (an added optional field), which the scorer
must fetch. Keycloak's tokens last 5 minutes and Apicurio keeps a credential's token 10 minutes, so a run past 11
minutes fetches the new version after both expired. Prints what was sent, scored (distinct) and dead-lettered, and
the scorer's exit status on SIGTERM.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from pipelines.kafka_broker import KafkaBroker  # noqa: E402
from tests.conftest import publish_stand_in_model  # noqa: E402
from tests.kafka_helpers import Outputs, make_topics, produce, stream_scorer, unique_name  # noqa: E402
from tests.schema_registry import SchemaRegistry  # noqa: E402
from transforms.kafka_formats import ValueFormat  # noqa: E402
from transforms.spec import Field, load_spec  # noqa: E402

EVERY_S = 5.0
OUTAGE_S = 15.0
USER_INFO_ENV = "RTML_SOAK_REGISTRY_USER_INFO"


def _event(number: int) -> dict:
    return {"event_id": f"soak-{number}", "event_time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "card_id": f"c-{number % 7}", "merchant_id": "m-1", "merchant_category": "grocery",
            "amount": 10.0 + number, "currency": "EUR", "country": "DE", "channel": "pos"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=12.0)
    args = parser.parse_args(argv)
    spec = load_spec("fraud")
    grown = dataclasses.replace(spec, fields=(*spec.fields, Field("terminal_id", "string", required=False)))
    broker, registry = KafkaBroker(), SchemaRegistry()
    with tempfile.TemporaryDirectory() as work:
        try:
            broker.start()
            registry.start()
            os.environ[USER_INFO_ENV] = registry.user_info
            config = {"url": registry.url, "basic.auth.user.info": registry.user_info}
            publish_stand_in_model(f"{work}/model")
            topics = make_topics(broker, "registry-soak")
            first, second = ValueFormat("confluent-avro", spec, config), ValueFormat("confluent-avro", grown, config)

            def send(value_format: ValueFormat, number: int, **extra) -> None:
                produce(broker.bootstrap, topics[0], [value_format.encode({**_event(number), **extra}, topics[0])],
                        [f"c-{number % 7}".encode()])

            send(first, 0)
            sent, outage_done, grown_sent = 1, False, False
            outputs = Outputs(broker.bootstrap, topics[1], topics[2])
            scorer = stream_scorer(f"{work}/model", broker.bootstrap, topics, unique_name("registry-soak"),
                                   "--value_format", "confluent-avro", "--schema_registry_url", registry.url,
                                   f"--schema_registry_secret=basic.auth.user.info=env:{USER_INFO_ENV}")
            with scorer:
                started = time.monotonic()
                while (elapsed := time.monotonic() - started) < args.minutes * 60:
                    if not outage_done and elapsed > args.minutes * 30:
                        registry.stop()
                        print(f"{elapsed:.0f} s: registry stopped for {OUTAGE_S:g} s", flush=True)
                        time.sleep(OUTAGE_S)
                        registry.start()
                        outage_done = True
                    if not grown_sent and elapsed > (args.minutes - 1) * 60:
                        for _ in range(3):
                            send(second, sent, terminal_id="t-1")
                            sent += 1
                        grown_sent = True
                        print(f"{elapsed:.0f} s: 3 events of a new schema version sent", flush=True)
                    send(first, sent)
                    sent += 1
                    time.sleep(EVERY_S)
                    scorer.check_alive()
                outputs.wait(lambda o: len(o.scored) + len(o.dead) >= sent, 120, "every event scored", scorer)
                code, took = scorer.terminate()
                waits = [line for line in scorer.log(None).splitlines() if "Schema Registry" in line]
            ids = [record["event_id"] for _, record in outputs.scored]
            outputs.close()
        finally:
            registry.close()
            broker.close()
    print(f"sent {sent}, scored {len(ids)} ({len(set(ids))} distinct), dead letters {len(outputs.dead)}, "
          f"scorer exit {code} in {took:.1f} s on SIGTERM; its registry lines: {waits or 'none'}")
    return 0 if len(set(ids)) == len(ids) == sent and code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
