import pytest

from pipelines.kafka_broker import KafkaBroker

# Fixtures that train a model (tens of seconds each): a test that uses one is slow.
TRAINING_FIXTURES = {"fraud_model", "fraud_scored", "fraud_drift_monitored", "fraud_entity_model", "entity_model",
                     "offers_model", "sensor", "sensor_archive"}
ACCEPTANCE_MODULES = {"test_stream", "test_streaming_runners", "test_model_reload", "test_flink_cluster"}
# Modules whose tests run on one xdist worker, so that the service their fixture starts (a Flink session cluster, the
# Schema Registry, the broker with TLS and SASL) starts once, not on each worker. (--dist loadgroup was for this, but
# with pytest 9.2 pytest-xdist 3.8 groups nothing: pytest-dev/pytest-xdist#1386.)
ONE_WORKER_MODULES = {"test_flink_cluster", "test_kafka_formats", "test_kafka_security"}


def pytest_collection_modifyitems(items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module in ACCEPTANCE_MODULES:
            item.add_marker(pytest.mark.acceptance)
            item.add_marker(pytest.mark.slow)
        elif TRAINING_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


def pytest_xdist_make_scheduler(config, log):
    """With --dist load: each test to the next free worker, but a module of ONE_WORKER_MODULES as one unit."""
    if config.getoption("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class OneWorkerModules(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module.rsplit("/", 1)[-1].removesuffix(".py") in ONE_WORKER_MODULES else nodeid

    return OneWorkerModules(config, log)


@pytest.fixture(scope="session")
def secure_broker():
    """Apache Kafka that takes ``SASL_SSL`` clients (TLS, SCRAM-SHA-512, ACLs) beside its plaintext listener for the
    tests' own clients (``KafkaBroker(secure=True)``); ``tests.kafka_helpers.secure_user`` makes its users."""
    with KafkaBroker(secure=True) as broker:
        yield broker


@pytest.fixture(scope="session")
def schema_registry():
    """A Schema Registry that takes only clients with credentials (Apicurio Registry behind Keycloak,
    ``tests/schema_registry.py``): ``.url``, ``.user_info``, ``.stop()`` and ``.start()`` for an outage."""
    from tests.schema_registry import SchemaRegistry

    registry = SchemaRegistry()
    try:
        yield registry.start()
    finally:
        registry.close()


@pytest.fixture(scope="session")
def dataflow_service():
    """The Dataflow API's methods the project calls, served in-process on loopback (``tests/dataflow_service.py``)."""
    from tests.dataflow_service import FakeDataflow

    server = FakeDataflow()
    yield server
    server.server.stop(None)


@pytest.fixture(scope="session")
def kafka_broker():
    """An Apache Kafka broker on free loopback ports for the whole session.

    Yields a KafkaBroker: ``.bootstrap`` ("127.0.0.1:PORT") and ``.create_topic(name, n)``. A test
    that stops and restarts a broker uses its own ``KafkaBroker()`` rather than this shared one.
    """
    with KafkaBroker() as broker:
        yield broker


@pytest.fixture(scope="session")
def gcs():
    """A Cloud Storage emulator for the session: yields ``gs://rtml-test``, an empty bucket, with this process's
    (and its subprocesses') gs:// pointed at it (``tests/gcs.py``)."""
    from tests.gcs import FakeGcs

    with FakeGcs() as root:
        yield root


# ---------------------------------------------------------------------------------------------
# Archives and models, made once per session: a fraud archive of 19 days, a model trained on
# the first 14 days, and the last 5 days scored in batch mode, as a new user would do it.

import datetime
import json
import pathlib
import shutil

from pipelines.generate import generate

FRAUD_DAYS, FRAUD_TRAIN_DAYS, FRAUD_EVENTS_PER_DAY = 19, 14, 10_000


@pytest.fixture(scope="session")
def fraud_archive(tmp_path_factory) -> dict:
    """``train`` and ``later`` globs over one generated archive, and the generator's manifest."""
    root = tmp_path_factory.mktemp("fraud_archive")
    manifest = generate("fraud", FRAUD_DAYS, root / "all", datetime.date(2026, 3, 1), FRAUD_EVENTS_PER_DAY,
                        0.01, 7, compress=False)
    for index, day in enumerate(manifest["days"]):
        part = "train" if index < FRAUD_TRAIN_DAYS else "later"
        shutil.copytree(root / "all" / pathlib.Path(day["file"]).parent, root / part / pathlib.Path(day["file"]).parent)
    return {"root": root, "train": str(root / "train" / "*" / "*.jsonl"), "later": str(root / "later" / "*" / "*.jsonl"),
            "later_days": manifest["days"][FRAUD_TRAIN_DAYS:]}


@pytest.fixture(scope="session")
def fraud_model(fraud_archive, tmp_path_factory):
    """A fraud model trained on the first 14 days, once for the whole run: ``(model_dir, ModelVersion)``."""
    return _trained_once("fraud", fraud_archive, tmp_path_factory)


@pytest.fixture(scope="session")
def fraud_entity_model(fraud_archive, tmp_path_factory):
    """A fraud_entity model trained on the same 14 days, once for the whole run: ``(model_dir, ModelVersion)``."""
    return _trained_once("fraud_entity", fraud_archive, tmp_path_factory)


def _trained_once(spec: str, fraud_archive: dict, tmp_path_factory) -> tuple:
    from models import registry
    from pipelines import train

    model_dir = _made_once(f"{spec}_model", tmp_path_factory, lambda directory: train.run(
        ["--spec", spec, "--input", fraud_archive["train"], "--model_dir", str(directory)]))
    return str(model_dir), registry.load(str(model_dir))


def _made_once(name: str, tmp_path_factory, make) -> pathlib.Path:
    """A directory that ``make(directory)`` fills once per run, whichever pytest-xdist worker asks first; the others
    wait for it (the generated archives it reads are the same in every worker: fixed seeds)."""
    import fcntl
    import os

    base = tmp_path_factory.getbasetemp()
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # one id for all workers of a run
    root = base.parent if run else base  # the workers' common parent
    name = f"{name}-{run}" if run else name
    directory = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / f"{name}.done").exists():
            shutil.rmtree(directory, ignore_errors=True)
            make(directory)
            (root / f"{name}.done").touch()
    return directory


@pytest.fixture(scope="session")
def entity_model(tmp_path_factory) -> str:
    """A fraud_entity model trained on 3 small generated days, once for the whole run; its model_dir."""
    from pipelines import train

    def make(directory):
        generate("fraud", 3, directory / "data", datetime.date(2026, 3, 1), 1500, 0.0, 7, compress=False)
        train.run(["--spec", "fraud_entity", "--input", str(directory / "data" / "*" / "*.jsonl"),
                   "--model_dir", str(directory / "model")])

    return str(_made_once("entity_model", tmp_path_factory, make) / "model")


@pytest.fixture(scope="session")
def offers_model(tmp_path_factory) -> dict:
    """An ``offers`` model trained on 6 generated days (2,500 lines each, 1% broken), once for the whole run, and a
    later day it never saw: ``{"model_dir", "later" (that day's file)}``."""
    from pipelines import train

    def make(directory):
        generate("offers", OFFERS_DAYS + 1, directory / "data", datetime.date(2026, 3, 1), 2500, 0.01, 7,
                 compress=False)
        train.run(["--spec", "offers", "--input", str(directory / "data" / f"dt=2026-03-0[1-{OFFERS_DAYS}]" / "*.jsonl"),
                   "--model_dir", str(directory / "model")])

    directory = _made_once("offers_model", tmp_path_factory, make)
    return {"model_dir": str(directory / "model"),
            "later": directory / "data" / f"dt=2026-03-0{OFFERS_DAYS + 1}" / "events.jsonl"}


OFFERS_DAYS = 6


@pytest.fixture(scope="session")
def fraud_scored(fraud_archive, fraud_model, tmp_path_factory) -> dict:
    """The 5 later days scored in batch mode: records, dead letters and the run's counters."""
    from pipelines import score

    out = tmp_path_factory.mktemp("fraud_scored")
    totals = score.run(["--spec", "fraud", "--mode", "batch", "--input", fraud_archive["later"],
                        "--model_dir", fraud_model[0], "--output", str(out / "scored"),
                        "--dead_letter", str(out / "dead_letter")])
    return {"out": out, "totals": totals, "records": read_json_lines(out / "scored"),
            "dead_letters": read_json_lines(out / "dead_letter")}


DRIFT_DAY = datetime.date(2026, 3, 22)


@pytest.fixture(scope="session")
def fraud_drift_monitored(fraud_model, tmp_path_factory) -> dict:
    """4 new days whose third has every amount tripled, monitored in hourly windows with the fraud model:
    the generator's manifest, the monitor's output directory, its counters and what it printed."""
    import contextlib
    import io

    from pipelines import monitor

    root = tmp_path_factory.mktemp("fraud_drift")
    manifest = generate("fraud", 4, root / "archive", datetime.date(2026, 3, 20), 10_000, 0.01, 11,
                        compress=False, drift_day=DRIFT_DAY, drift_factor=3.0)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        totals = monitor.run(["--spec", "fraud", "--input", str(root / "archive" / "*" / "*.jsonl"),
                              "--model_dir", fraud_model[0], "--output", str(root / "out"), "--window_s", "3600"])
    return {"manifest": manifest, "out": root / "out", "totals": totals, "printed": printed.getvalue()}


def read_json_lines(directory: pathlib.Path) -> list[dict]:
    return [json.loads(line) for path in sorted(pathlib.Path(directory).glob("*.jsonl"))
            for line in path.read_text(encoding="utf-8").splitlines() if line]


def publish_stand_in_model(model_dir: pathlib.Path | str, scale: float = 100.0, spec_name: str = "fraud",
                           signing_key_env: str | None = None, baseline: dict | None = None) -> str:
    """Publish a stand-in model version in a second; returns its version.

    An ONNX graph over the spec's raw feature sources, published through the registry like a
    trained version: score = sum / (sum + scale) of the number sources. For tests whose guarantees
    do not depend on what a model learned (a trained one costs tens of seconds); it has no
    monitoring baseline unless given one (``stand_in_baseline``).
    """
    from onnx import TensorProto, helper

    from models import registry
    from transforms.spec import load_spec

    spec = load_spec(spec_name)
    types = {"string": TensorProto.STRING, "timestamp": TensorProto.INT64}
    sources = {name: types.get(spec.field(name).type, TensorProto.FLOAT) for name in spec.feature_sources}
    numbers = [name for name, kind in sources.items() if kind == TensorProto.FLOAT]
    nodes = [helper.make_node("Constant", [], ["scale"], value=helper.make_tensor("s", TensorProto.FLOAT, [], [scale])),
             helper.make_node("Sum", numbers, ["total"]),
             helper.make_node("Add", ["total", "scale"], ["denominator"]),
             helper.make_node("Div", ["total", "denominator"], ["ratio"]),
             helper.make_node("Cast", ["ratio"], ["score"], to=TensorProto.DOUBLE)]
    graph = helper.make_graph(nodes, "stand_in", [helper.make_tensor_value_info(n, t, ["rows"]) for n, t in sources.items()],
                              [helper.make_tensor_value_info("score", TensorProto.DOUBLE, ["rows"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    version = registry.new_version() + f"-s{int(scale)}"
    staging = registry.staging_dir(str(model_dir), version)
    (staging / "model.onnx").write_bytes(model.SerializeToString())
    registry.publish(str(model_dir), staging, {"version": version, "spec": {
        "name": spec.name, "fingerprint": spec.fingerprint, "source": spec.source},
        **({"baseline": baseline} if baseline is not None else {})}, signing_key_env)
    return version


def stand_in_baseline(spec, events: list[dict], score) -> dict:
    """A monitoring baseline as training would make it, from ``events`` (their terms its vocabularies) and their
    ``score(event)``s."""
    import numpy as np

    from transforms.events import EventBatch, event_time_us_of
    from transforms.features import raw_columns
    from transforms.monitoring import training_baseline

    plan = {f.name: {"vocabulary": list(dict.fromkeys(e[f.source] for e in events))} if f.kind == "vocabulary"
            else {} for f in spec.features}
    batch = EventBatch(events, [event_time_us_of(e[spec.event_time]) for e in events])
    return training_baseline(spec, plan, raw_columns(batch, spec), np.array([score(e) for e in events]))
