"""templates.launch against an in-process FlexTemplatesService on loopback (``tests/dataflow_service.py``), through
the real client, so the request is checked as it arrived on the wire.
"""
import grpc
import pytest
from google.cloud import dataflow_v1beta3 as dataflow

from templates import build, launch

SPEC = "gs://rtml-bucket/templates/score_batch.json"
BATCH_PARAMS = ["--param", "spec=fraud", "--param", "input=gs://rtml-bucket/events/*/*.jsonl.gz",
                "--param", "model_dir=/template/model_store/fraud", "--param", "output=gs://rtml-bucket/scored",
                "--param", "dead_letter=gs://rtml-bucket/dead_letter"]


def _with(name, value):
    """BATCH_PARAMS with ``name`` set to ``value``."""
    items = [item for item in BATCH_PARAMS[1::2] if not item.startswith(f"{name}=")] + [f"{name}={value}"]
    return [token for item in items for token in ("--param", item)]


@pytest.fixture
def service(dataflow_service):
    dataflow_service.reset()
    return dataflow_service


def _launch(service, *args):
    return launch.main(["--api_endpoint", f"127.0.0.1:{service.port}", *args])


def test_launch_sends_every_field_and_prints_job_id_and_link(service, capsys):
    status = _launch(service, "score_stream", "--project", "my-project", "--region", "europe-west4",
                     "--template_spec", "gs://rtml-bucket/templates/score_stream.json",
                     "--param", "spec=fraud", "--param", "bootstrap_servers=k1.internal:9092,k2.internal:9092",
                     "--param", "input_topic=events", "--param", "output_topic=scored",
                     "--param", "dead_letter_topic=dead-letters", "--param", "model_dir=/template/model_store/fraud",
                     "--param", "offset_reset=latest",
                     "--job_name", "score-fraud", "--num_workers", "2", "--max_workers", "12",
                     "--machine_type", "n2-standard-4", "--enable_streaming_engine",
                     "--sdk_container_image", "europe-west4-docker.pkg.dev/my-project/rtml/score_stream:v1",
                     "--service_account", "rtml-worker@my-project.iam.gserviceaccount.com",
                     "--temp_location", "gs://rtml-bucket/tmp", "--staging_location", "gs://rtml-bucket/staging",
                     "--update", "--transform_name_mapping", "ScoreEvents=ScoreEventsV2",
                     "--transform_name_mapping", "Batch=BatchV2")
    out, err = capsys.readouterr()
    assert status == 0, err
    [request] = service.requests
    assert request.project_id == "my-project"
    assert request.location == "europe-west4"
    assert request.validate_only is False
    parameter = request.launch_parameter
    assert parameter.job_name == "score-fraud"
    assert parameter.container_spec_gcs_path == "gs://rtml-bucket/templates/score_stream.json"
    assert dict(parameter.parameters) == {
        "spec": "fraud", "bootstrap_servers": "k1.internal:9092,k2.internal:9092", "input_topic": "events",
        "output_topic": "scored", "dead_letter_topic": "dead-letters", "model_dir": "/template/model_store/fraud",
        "offset_reset": "latest"}
    assert parameter.update is True
    assert dict(parameter.transform_name_mappings) == {"ScoreEvents": "ScoreEventsV2", "Batch": "BatchV2"}
    environment = parameter.environment
    assert environment.num_workers == 2
    assert environment.max_workers == 12
    assert environment.machine_type == "n2-standard-4"
    assert environment.enable_streaming_engine is True
    assert environment.sdk_container_image == "europe-west4-docker.pkg.dev/my-project/rtml/score_stream:v1"
    assert environment.service_account_email == "rtml-worker@my-project.iam.gserviceaccount.com"
    assert environment.temp_location == "gs://rtml-bucket/tmp"
    assert environment.staging_location == "gs://rtml-bucket/staging"
    assert out.splitlines() == [
        "launched job 2026-11-21_07_00_00-1234567890 (score-fraud) in europe-west4",
        "https://console.cloud.google.com/dataflow/jobs/europe-west4/2026-11-21_07_00_00-1234567890"
        "?project=my-project"]


def test_defaults_leave_the_environment_to_the_template(service, capsys):
    assert _launch(service, "score_batch", "--project", "my-project", "--region", "us-central1",
                   "--template_spec", SPEC, *BATCH_PARAMS) == 0
    [request] = service.requests
    parameter = request.launch_parameter
    assert parameter.job_name.startswith("score-batch-")
    assert parameter.environment == dataflow.FlexTemplateRuntimeEnvironment()
    assert parameter.update is False and not parameter.transform_name_mappings
    assert "?project=my-project" in capsys.readouterr().out


def test_validate_only(service, capsys):
    assert _launch(service, "score_batch", "--project", "my-project", "--region", "us-central1",
                   "--template_spec", SPEC, *BATCH_PARAMS, "--validate_only") == 0
    assert service.requests[0].validate_only is True
    assert capsys.readouterr().out.startswith("validated: ")


@pytest.mark.parametrize("params, expected", [
    (BATCH_PARAMS + ["--param", "ouput_format=parquet"], "--param ouput_format: not a parameter of template "
                                                         "rtml-score-batch (did you mean output_format?)"),
    (BATCH_PARAMS[:-2], "missing --param dead_letter=... (required by template rtml-score-batch)"),
    (_with("dead_letter", "gs://rtml-bucket/x;rm -rf /"), "--param dead_letter: value does not match"),
    (_with("dead_letter", "/local/dir"), "--param dead_letter: value does not match"),
    (_with("input", "gs://b/events/*.jsonl"), "--param input: value does not match"),
    (_with("model_dir", "/template/../etc"), "--param model_dir: value does not match"),
    (_with("spec", "$(id)"), "--param spec: value does not match"),
    (BATCH_PARAMS + ["--param", "spec=sensor"], "--param spec given twice"),
    (BATCH_PARAMS + ["--param", "engine"], "--param 'engine' is not NAME=VALUE"),
])
def test_bad_parameters_are_one_line_errors_before_any_call(service, capsys, params, expected):
    assert _launch(service, "score_batch", "--project", "my-project", "--region", "us-central1",
                   "--template_spec", SPEC, *params) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {expected}") and err.count("\n") == 1
    assert "rm -rf" not in err  # values are never echoed
    assert service.requests == []


@pytest.mark.parametrize("args, expected", [
    (["--project", "My Project"], "argument --project: not a valid project id"),
    (["--template_spec", "gs://rtml-bucket/spec.yaml"], "argument --template_spec: not a valid"),
    (["--transform_name_mapping", "a=b"], "--transform_name_mapping only applies with --update"),
    (["--credentials", "key.json"], "unrecognized arguments: --credentials key.json"),
    (["--job_name", "Score_Batch"], "argument --job_name: not a valid job name"),
])
def test_bad_flags_are_one_line_errors(service, capsys, args, expected):
    base = {"--project": "my-project", "--region": "us-central1", "--template_spec": SPEC}
    base.update(dict(zip(args[::2], args[1::2])))
    argv = [token for pair in base.items() for token in pair]
    assert _launch(service, "score_batch", *argv, *BATCH_PARAMS) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {expected}") and err.count("\n") == 1
    assert service.requests == []


def test_refused_launch_is_one_line_without_traceback(service, capsys):
    service.refuse = (grpc.StatusCode.PERMISSION_DENIED,
                      "Permission 'dataflow.jobs.create' denied on project my-project\nmore detail")
    status = _launch(service, "score_batch", "--project", "my-project", "--region", "us-central1",
                     "--template_spec", SPEC, *BATCH_PARAMS)
    out, err = capsys.readouterr()
    assert status == 1 and out == ""
    assert err == ("error: launch refused: PERMISSION_DENIED: Permission 'dataflow.jobs.create' denied on "
                   "project my-project\n")
    assert len(service.requests) == 1


def test_non_loopback_endpoint_needs_application_default_credentials(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    status = launch.main(["score_batch", "--project", "my-project", "--region", "us-central1",
                          "--template_spec", SPEC, *BATCH_PARAMS, "--api_endpoint", "dataflow.example.invalid"])
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1 and err.startswith("error: ")
    assert "Traceback" not in err


def test_build_dry_run_prints_gcloud_commands(capsys):
    assert build.main(["--project", "my-project", "--region", "us-central1", "--bucket", "rtml-bucket",
                       "--tag", "v1", "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("+ gcloud builds submit --project my-project --region us-central1 --config "
                        "templates/cloudbuild.yaml --ignore-file templates/.gcloudignore --substitutions "
                        "_REGION=us-central1,_REPOSITORY=rtml,_TAG=v1 .")
    assert lines[1:] == [
        f"+ gcloud dataflow flex-template build gs://rtml-bucket/templates/{p}.json --project my-project "
        f"--image us-central1-docker.pkg.dev/my-project/rtml/{p}:v1 --sdk-language PYTHON "
        f"--metadata-file templates/metadata/{p}.json" for p in ("score_batch", "score_stream", "train")]
