"""The flex templates agree with their pipelines: parameters are flags, required flags are parameters,
regexes compile (in the subset Java shares), accept the documented examples and refuse shell or path
tricks; the build files name every template."""
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from pipelines import score, train
from templates import build, launch

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "templates"
# template -> (pipeline module, the case of its REQUIRED flags)
PIPELINES = {
    "score_batch": (score, "--mode batch"),
    "score_stream": (score, "--mode stream"),
    "train": (train, ""),
}
BEAM_FLAGS_USED = {"bootstrap_servers"}  # Beam's own flag (KafkaStreamsRunnerOptions) that stream mode reads
GOOD = {
    "spec": ["fraud", "sensor", "/template/specs/mine.yaml"],
    "input": ["gs://rtml-bucket/events/*/*.jsonl.gz", "gs://rtml-bucket/events/dt=2026-03-01/events.parquet"],
    "output": ["gs://rtml-bucket/scored", "gs://my.bucket_1/out/run-7/"],
    "dead_letter": ["gs://rtml-bucket/dead_letter"],
    "model_dir": ["/template/model_store/fraud"],
    "model_version": ["20261121T150102.123456Z-3fa9", "20261121T150102Z-3fa9"],
    "engine": ["onnx"],
    "output_format": ["jsonl", "parquet"],
    "batch_size": ["1", "512", "100000"],
    "bootstrap_servers": ["localhost:9092", "b-1.kafka.internal:9092,10.0.0.7:9093"],
    "input_topic": ["events", "fraud.events_v2"],
    "output_topic": ["scored"],
    "dead_letter_topic": ["dead-letters"],
    "group_id": ["rtml-score-fraud"],
    "offset_reset": ["earliest", "latest"],
    "kafka_config": ["security.protocol=SSL", "linger.ms=5"],
    "kafka_secret": ["sasl.password=secretmanager:projects/my-project/secrets/kafka-password/versions/3"],
    "holdout_fraction": ["0.2", ".05"],
    "model_poll_seconds": ["0", "60", "2.5"],
    "partition_discovery_s": ["0", "60", "0.5"],
    "monitoring_topic": ["monitoring"],
    "value_format": ["json", "avro", "confluent-json"],
    "schema_registry_url": ["http://10.0.0.8:8081", "https://registry.example.com/apis/ccompat/v7"],
    "schema_registry_config": ["ssl.ca.location=/etc/ssl/ca.pem"],
    "schema_registry_secret": ["basic.auth.user.info=secretmanager:projects/my-project/secrets/sr/versions/2"],
}
BAD = {
    "spec": ["../etc/passwd.yaml", "fraud; rm -rf /", "gs://b/spec.yaml", "$(id)"],
    "input": ["/local/*.jsonl", "gs://b/x", "gs://rtml-bucket/a b", "gs://rtml-bucket/$(id)", "gs://Bucket/x"],
    "output": ["gs://rtml-bucket/out/*", "gs://rtml-bucket/`id`", "gs://rtml-bucket", "out/scored"],
    "dead_letter": ["gs://rtml-bucket/x;rm", "file:///tmp/x"],
    "model_dir": ["models/fraud", "/template/../etc", "gs://b/models", "/a b", "gs://rtml-bucket/m;id"],
    "model_version": ["latest", "../x"],
    "engine": ["torch", "onnx ", "sklearn"],  # the scoring images have no scikit-learn
    "output_format": ["csv"],
    "batch_size": ["0", "-1", "1e3", "5000000"],
    "bootstrap_servers": ["localhost", "host:9092;id", "host:9092, host2:9092"],
    "input_topic": ["a b", "x;y", "", "a/b"],
    "output_topic": ["$(id)"],
    "dead_letter_topic": ["dead letters"],
    "group_id": ["g id"],
    "offset_reset": ["none"],
    "kafka_config": ["security.protocol", "x=$(id)", "a=b c", "sasl.password=hunter2"],  # (secrets: kafka_secret)
    "kafka_secret": ["sasl.password=hunter2", "sasl.password=env:KAFKA_PASSWORD",  # values and local references
                     "sasl.password=secretmanager:projects/p/secrets/s/versions/1;id",
                     "sasl.password=secretmanager:projects/my-project/secrets/s/versions/0"],
    "holdout_fraction": ["0", "1", "1.5", "-0.2", "0.0"],
    "model_poll_seconds": ["-1", "1e3", "60 s"],
    "partition_discovery_s": ["-1", "1e3", "60s", "100000"],
    "monitoring_topic": ["a b", "$(id)"],
    "value_format": ["protobuf", "JSON"],
    "schema_registry_url": ["https://user:secret@registry:8081", "registry:8081", "http://r:8081/$(id)",
                            "file:///etc/passwd"],
    "schema_registry_config": ["basic.auth.user.info", "x=`id`", "basic.auth.user.info=me:hunter2"],
    "schema_registry_secret": ["basic.auth.user.info=me:hunter2", "basic.auth.user.info=env:SR_USER_INFO"],
}
# A model directory on Cloud Storage, or in the image, for training and scoring alike.
GOOD_IN = {name: {"model_dir": ["gs://rtml-bucket/models/fraud"]} for name in ("score_batch", "score_stream", "train")}
SHELL_OR_PATH = {"spec", "input", "output", "dead_letter", "model_dir", "model_version", "bootstrap_servers",
                 "input_topic", "output_topic", "dead_letter_topic", "group_id", "kafka_config", "kafka_secret",
                 "monitoring_topic", "schema_registry_url", "schema_registry_config", "schema_registry_secret"}


def _metadata(name):
    return json.loads((TEMPLATES / "metadata" / f"{name}.json").read_text())


def _flags(views) -> set[str]:
    parser = _BeamArgumentParser()
    for view in views:
        view._add_argparse_args(parser)
    return {action.dest for action in parser._actions if action.option_strings}


def _beam_flags() -> set[str]:
    return _flags({str(c): c for c in PipelineOptions.__subclasses__()}.values())


def test_every_pipeline_has_metadata_and_an_image():
    names = sorted(p.stem for p in (TEMPLATES / "metadata").glob("*.json"))
    assert names == sorted(PIPELINES) == sorted(build.PIPELINES) == sorted(launch.PIPELINES)
    cloudbuild = yaml.safe_load((TEMPLATES / "cloudbuild.yaml").read_text())
    assert [step["id"] for step in cloudbuild["steps"]] == list(build.PIPELINES)
    for name in names:
        step = next(step for step in cloudbuild["steps"] if step["id"] == name)
        assert f"PIPELINE={name}" in step["args"]
        assert any(image.endswith(f"/{name}:${{_TAG}}") for image in cloudbuild["images"])


def _image(pipeline: str) -> dict[str, str]:
    """What templates/Dockerfile sets for one pipeline, its ARG and ENV values substituted (no Docker
    engine here to build it): base images, and the launcher's environment."""
    found, values = {"FROM": []}, {"PIPELINE": pipeline}
    for line in (TEMPLATES / "Dockerfile").read_text().replace("\\\n", " ").splitlines():
        instruction, _, rest = line.strip().partition(" ")
        rest = re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), rest)
        if instruction == "FROM":
            found["FROM"].append(rest.split()[0])
        elif instruction in ("ARG", "ENV"):
            name, _, value = rest.partition("=")
            values.setdefault(name, value.strip('"'))
    return {**values, "FROM": found["FROM"]}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_each_image_launches_its_entry_file_on_the_sdk_the_project_pins(name):
    """The launcher runs an entry file and setup file that exist in the build context, and the workers'
    SDK image is the apache-beam release and Python that constraints.txt and the launcher use."""
    image = _image(name)
    context = lambda path: ROOT / pathlib.Path(path).relative_to(image["WORKDIR"])
    assert context(image["FLEX_TEMPLATE_PYTHON_PY_FILE"]) == TEMPLATES / f"{name}.py"
    assert context(image["FLEX_TEMPLATE_PYTHON_SETUP_FILE"]).is_file()
    beam_pin = re.search(r"^apache-beam==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    launcher, sdk = image["FROM"][0].split(" ")[0], image["FROM"][1]
    assert sdk == f"apache/beam_python{sys.version_info.major}.{sys.version_info.minor}_sdk:{beam_pin}"
    assert launcher.endswith(f"/python{sys.version_info.major}{sys.version_info.minor}-template-launcher-base")


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_parameters_are_the_pipelines_flags_and_cover_its_required_ones(name):
    module, case = PIPELINES[name]
    metadata = _metadata(name)
    assert set(metadata) >= {"name", "description", "parameters"}
    parameters = {p["name"]: p for p in metadata["parameters"]}
    assert len(parameters) == len(metadata["parameters"])
    own = _flags(module.VIEWS)
    for parameter in parameters:
        assert parameter in own or (parameter in BEAM_FLAGS_USED and parameter in _beam_flags()), parameter
    required = set(module.REQUIRED[case])
    assert required <= set(parameters)
    for parameter, spec in parameters.items():
        assert set(spec) <= {"name", "label", "helpText", "isOptional", "regexes", "paramType"}
        assert spec["label"] and spec["helpText"]
        assert spec["isOptional"] is (parameter not in required), parameter


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_regexes_compile_accept_the_examples_and_refuse_the_rest(name):
    for parameter in _metadata(name)["parameters"]:
        key = parameter["name"]
        regexes = parameter.get("regexes", [])
        if key in SHELL_OR_PATH:
            assert regexes, f"{name}.{key} reaches a path or a shell: it needs a regex"
        for regex in regexes:
            assert regex.startswith("^") and regex.endswith("$")
            assert "(?P" not in regex and "\\Z" not in regex  # the Dataflow service checks them in Java
            re.compile(regex)
        examples = GOOD[key] + GOOD_IN.get(name, {}).get(key, [])
        documented = re.search(r"e\.g\. (.+?)\.?$", parameter["helpText"])
        if documented:
            examples = examples + documented.group(1).split(" or ")
        for value in examples:
            assert all(re.fullmatch(r, value) for r in regexes), (name, key, value)
        for value in BAD[key]:
            assert not all(re.fullmatch(r, value) for r in regexes), (name, key, value)


@pytest.mark.parametrize("name, missing", [
    ("score_batch", "--input, --model_dir, --output, --dead_letter"),
    ("score_stream", "--model_dir, --input_topic, --output_topic, --dead_letter_topic"),
    ("train", "--input, --model_dir"),
])
def test_entry_files_run_their_pipeline_and_mode(name, missing):
    """As the template launcher runs them: ``python FILE --flags`` (the image installs the project)."""
    flags = ["--spec", "fraud"] + (["--bootstrap_servers", "localhost:9092"] if name == "score_stream" else [])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(TEMPLATES / f"{name}.py"), *flags], capture_output=True, text=True,
                          cwd="/", env=env, timeout=120)
    assert (done.returncode, done.stderr.splitlines()[-1]) == (2, f"error: missing {missing}; see --help")


def test_the_stream_templates_registry_parameters_reach_its_pipeline(kafka_broker, tmp_path):
    """As the launcher passes them: the stream checks the registry at its start, before anything is read."""
    from pipelines.kafka_broker import free_port
    from tests.conftest import publish_stand_in_model
    from tests.kafka_helpers import make_topics

    publish_stand_in_model(tmp_path / "model")
    closed = f"http://127.0.0.1:{free_port()}"
    topics = make_topics(kafka_broker, "template")
    flags = ["--spec=fraud", f"--bootstrap_servers={kafka_broker.bootstrap}", f"--input_topic={topics[0]}",
             f"--output_topic={topics[1]}", f"--dead_letter_topic={topics[2]}", f"--model_dir={tmp_path / 'model'}",
             "--value_format=confluent-avro", f"--schema_registry_url={closed}",
             "--schema_registry_config=timeout=5"]
    done = subprocess.run([sys.executable, str(TEMPLATES / "score_stream.py"), *flags], capture_output=True, text=True,
                          cwd="/", env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert done.returncode == 2, done.stderr
    assert re.fullmatch(rf"error: --schema_registry_url {re.escape(closed)}: cannot reach the registry \(.+\)",
                        done.stderr.splitlines()[-1]), done.stderr
