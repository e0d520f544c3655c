r"""Launch a flex template on Dataflow (google-cloud-dataflow-client, Application Default Credentials).

    python -m templates.launch score_batch --project P --region R \
        --template_spec gs://B/templates/score_batch.json \
        --sdk_container_image R-docker.pkg.dev/P/rtml/score_batch:TAG \
        --param spec=fraud --param input='gs://B/events/*/*.jsonl.gz' \
        --param model_dir=gs://B/models/fraud \
        --param output=gs://B/scored --param dead_letter=gs://B/dead_letter

Every --param is checked against the pipeline's templates/metadata/PIPELINE.json before anything is
sent (unknown name, missing required parameter, value not matching the parameter's regexes: a
one-line error, exit status 2). Then one LaunchFlexTemplate call; it prints the job id and its
console link. A launch the service refuses is a one-line error, exit status 1.

Credentials are Application Default Credentials only (``gcloud auth application-default login``,
a workload's service account, or GOOGLE_APPLICATION_CREDENTIALS); none is accepted on the command
line and none is printed.

``--api_endpoint HOST:PORT`` points the client at another Dataflow endpoint (TLS, with ADC). A
loopback endpoint (localhost, 127.0.0.1, [::1]) is reached over a plaintext channel with no
credentials at all: that is for a local emulator or a test server only.
"""
from __future__ import annotations

import argparse
import datetime
import difflib
import json
import pathlib
import re
import sys

from pipelines import dataflow_api

PIPELINES = ("score_batch", "score_stream", "train")
METADATA_DIR = pathlib.Path(__file__).resolve().parent / "metadata"
CONSOLE_LINK = "https://console.cloud.google.com/dataflow/jobs/{region}/{job_id}?project={project}"

_PROJECT = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]$")
_SPEC = re.compile(r"^gs://[a-z0-9][-_.a-z0-9]{1,61}[a-z0-9]/[^\s'\"`$;|&<>\\*?]+\.json$")
_JOB_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_GCS_DIR = re.compile(r"^gs://[a-z0-9][-_.a-z0-9]{1,61}[a-z0-9](/[^\s'\"`$;|&<>\\*?]*)?$")
_IMAGE = re.compile(r"^[a-z0-9][-a-z0-9.]*(:[0-9]+)?(/[a-z0-9._-]+)+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
                    r"(@sha256:[0-9a-f]{64})?$")
_EMAIL = re.compile(r"^[a-z0-9][-a-z0-9.]*@[a-z0-9][-a-z0-9.]*\.iam\.gserviceaccount\.com$|"
                    r"^[0-9]+-compute@developer\.gserviceaccount\.com$")
_MACHINE = re.compile(r"^[a-z0-9][-a-z0-9]{1,62}$")
_ENDPOINT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9][-A-Za-z0-9.]*)(:[0-9]{1,5})?$")
_STEP = re.compile(r"^[^\s=]+$")


class LaunchError(Exception):
    """A one-line reason; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


def load_metadata(pipeline: str) -> dict:
    return json.loads((METADATA_DIR / f"{pipeline}.json").read_text())


def check_parameters(metadata: dict, items: list[str]) -> dict[str, str]:
    """``--param NAME=VALUE`` items checked against the template's metadata; the parameters dict.

    Values are never quoted in errors (a parameter may hold something private).
    """
    known = {p["name"]: p for p in metadata["parameters"]}
    parameters: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise LaunchError(f"--param {name or item[:40]!r} is not NAME=VALUE")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            raise LaunchError(f"--param {name}: not a parameter of template {metadata['name']}"
                              + (f" (did you mean {close[0]}?)" if close else
                                 f"; its parameters: {', '.join(known)}"))
        if name in parameters:
            raise LaunchError(f"--param {name} given twice")
        for regex in known[name].get("regexes", []):
            if not re.fullmatch(regex, value):
                raise LaunchError(f"--param {name}: value does not match {regex} ({known[name]['helpText']})")
        parameters[name] = value
    missing = [name for name, p in known.items() if not p.get("isOptional") and name not in parameters]
    if missing:
        raise LaunchError(f"missing --param {', '.join(f'{m}=...' for m in missing)} "
                          f"(required by template {metadata['name']})")
    return parameters


def checked(pattern: re.Pattern, what: str):
    """An argparse type accepting text that fully matches ``pattern``; the error never echoes the value."""
    def check(text: str) -> str:
        if not pattern.fullmatch(text):
            raise argparse.ArgumentTypeError(f"not a valid {what}")
        return text
    return check


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("not a positive whole number")
    return int(text)


def _mapping(text: str) -> tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not _STEP.fullmatch(old) or not _STEP.fullmatch(new):
        raise argparse.ArgumentTypeError("not OLD_STEP=NEW_STEP")
    return old, new


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise LaunchError(message)


def parse_args(argv) -> argparse.Namespace:
    parser = _Parser(prog="python -m templates.launch", description=__doc__, allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", choices=PIPELINES)
    parser.add_argument("--project", required=True, type=checked(_PROJECT, "project id"))
    parser.add_argument("--region", required=True, type=checked(_REGION, "region"))
    parser.add_argument("--template_spec", required=True, type=checked(_SPEC, "gs://.../NAME.json path"),
                        help="the template spec that `python -m templates.build` wrote")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a template parameter (repeat for more); see templates/metadata/PIPELINE.json")
    parser.add_argument("--job_name", type=checked(_JOB_NAME, "job name (lowercase letters, digits, -)"),
                        help="default: PIPELINE-YYYYMMDD-HHMMSS (UTC)")
    parser.add_argument("--num_workers", type=_positive)
    parser.add_argument("--max_workers", type=_positive,
                        help="default: the pipeline's preset (20 for streaming) or Dataflow's")
    parser.add_argument("--machine_type", type=checked(_MACHINE, "machine type"))
    parser.add_argument("--enable_streaming_engine", action="store_true")
    parser.add_argument("--sdk_container_image", type=checked(_IMAGE, "image"),
                        help="the workers' image: the template's own image, which holds the project")
    parser.add_argument("--service_account", type=checked(_EMAIL, "service account email"),
                        help="the workers' service account email")
    parser.add_argument("--temp_location", type=checked(_GCS_DIR, "gs:// path"))
    parser.add_argument("--staging_location", type=checked(_GCS_DIR, "gs:// path"))
    parser.add_argument("--update", action="store_true", help="replace the running streaming job of --job_name")
    parser.add_argument("--transform_name_mapping", action="append", default=[], type=_mapping,
                        metavar="OLD=NEW", help="with --update: a renamed step (repeat for more)")
    parser.add_argument("--validate_only", action="store_true",
                        help="have the service check the request without starting a job")
    parser.add_argument("--api_endpoint", type=checked(_ENDPOINT, "HOST[:PORT]"),
                        help="another Dataflow API endpoint; a loopback one is plaintext without credentials "
                             "(tests, emulators)")
    args = parser.parse_args(argv)
    if args.transform_name_mapping and not args.update:
        raise LaunchError("--transform_name_mapping only applies with --update")
    return args


def build_request(args: argparse.Namespace, parameters: dict[str, str]):
    from google.cloud import dataflow_v1beta3 as dataflow

    environment = dataflow.FlexTemplateRuntimeEnvironment(
        num_workers=args.num_workers or 0,
        max_workers=args.max_workers or 0,
        machine_type=args.machine_type or "",
        enable_streaming_engine=args.enable_streaming_engine,
        sdk_container_image=args.sdk_container_image or "",
        service_account_email=args.service_account or "",
        temp_location=args.temp_location or "",
        staging_location=args.staging_location or "",
    )
    job_name = args.job_name or (f"{args.pipeline.replace('_', '-')}-"
                                 f"{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}")
    return dataflow.LaunchFlexTemplateRequest(
        project_id=args.project,
        location=args.region,
        validate_only=args.validate_only,
        launch_parameter=dataflow.LaunchFlexTemplateParameter(
            job_name=job_name,
            container_spec_gcs_path=args.template_spec,
            parameters=parameters,
            environment=environment,
            update=args.update,
            transform_name_mappings=dict(args.transform_name_mapping),
        ),
    )


def launch(args: argparse.Namespace, parameters: dict[str, str]) -> str:
    """One LaunchFlexTemplate call; what to print."""
    request = build_request(args, parameters)
    try:
        response = dataflow_api.client("FlexTemplatesService", args.api_endpoint).launch_flex_template(
            request=request, timeout=dataflow_api.TIMEOUT_S)
    except Exception as error:
        reason = dataflow_api.refusal(error, "launch")
        if reason is None:
            raise
        raise LaunchError(reason, 1) from None
    name = request.launch_parameter.job_name
    if args.validate_only:
        return f"validated: the service accepted launching {name} from {args.template_spec} (no job started)"
    job_id = response.job.id
    link = CONSOLE_LINK.format(region=args.region, job_id=job_id, project=args.project)
    return f"launched job {job_id} ({name}) in {args.region}\n{link}"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
        parameters = check_parameters(load_metadata(args.pipeline), args.param)
        print(launch(args, parameters))
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.status
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
