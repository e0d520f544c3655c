r"""Build the flex-template images and write the template specs to Cloud Storage.

    python -m templates.build --project P --region R --bucket B [--tag T] [--repository rtml] \
        [--pipeline score_batch ...] [--dry_run]

Prints, then runs (from the repository root, with gcloud's own credentials):

1. ``gcloud builds submit`` with templates/cloudbuild.yaml: one image per pipeline,
   ``R-docker.pkg.dev/P/REPOSITORY/PIPELINE:TAG`` (the Artifact Registry repository must exist);
2. per pipeline, ``gcloud dataflow flex-template build gs://B/templates/PIPELINE.json --image ...
   --sdk-language PYTHON --metadata-file templates/metadata/PIPELINE.json``.

Then launch with ``python -m templates.launch PIPELINE --template_spec gs://B/templates/PIPELINE.json
--sdk_container_image IMAGE ...``. ``--dry_run`` only prints the commands.
"""
from __future__ import annotations

import argparse
import pathlib
import re
import shlex
import subprocess
import sys

from templates.launch import checked

ROOT = pathlib.Path(__file__).resolve().parents[1]
PIPELINES = ("score_batch", "score_stream", "train")
_NAME = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")  # a GCP project id
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]$")
_BUCKET = re.compile(r"^[a-z0-9][-_.a-z0-9]{1,61}[a-z0-9]$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REPOSITORY = re.compile(r"^[a-z][-a-z0-9]{0,62}$")


def image(project: str, region: str, repository: str, pipeline: str, tag: str) -> str:
    return f"{region}-docker.pkg.dev/{project}/{repository}/{pipeline}:{tag}"


def spec_path(bucket: str, pipeline: str) -> str:
    return f"gs://{bucket}/templates/{pipeline}.json"


def commands(args: argparse.Namespace) -> list[list[str]]:
    """The gcloud commands, in order, as argument lists (never through a shell)."""
    found = [["gcloud", "builds", "submit", "--project", args.project, "--region", args.region,
              "--config", "templates/cloudbuild.yaml", "--ignore-file", "templates/.gcloudignore",
              "--substitutions", f"_REGION={args.region},_REPOSITORY={args.repository},_TAG={args.tag}", "."]]
    for pipeline in args.pipeline or PIPELINES:
        found.append(["gcloud", "dataflow", "flex-template", "build", spec_path(args.bucket, pipeline),
                      "--project", args.project,
                      "--image", image(args.project, args.region, args.repository, pipeline, args.tag),
                      "--sdk-language", "PYTHON",
                      "--metadata-file", f"templates/metadata/{pipeline}.json"])
    return found


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m templates.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", required=True, type=checked(_NAME, "project id"))
    parser.add_argument("--region", required=True, type=checked(_REGION, "region"))
    parser.add_argument("--bucket", required=True, type=checked(_BUCKET, "bucket name (no gs://)"),
                        help="bucket for the template specs (gs://BUCKET/templates/PIPELINE.json)")
    parser.add_argument("--repository", default="rtml", type=checked(_REPOSITORY, "repository"),
                        help="Artifact Registry Docker repository (default: rtml)")
    parser.add_argument("--tag", default="latest", type=checked(_TAG, "image tag"))
    parser.add_argument("--pipeline", action="append", choices=PIPELINES,
                        help="write only this template spec (repeatable; default: all); every image is built")
    parser.add_argument("--dry_run", action="store_true", help="only print the commands")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    for command in commands(args):
        print("+ " + shlex.join(command), flush=True)
        if args.dry_run:
            continue
        try:
            status = subprocess.run(command, cwd=ROOT).returncode
        except FileNotFoundError:
            print("error: gcloud is not installed (https://cloud.google.com/sdk/docs/install)", file=sys.stderr)
            return 1
        if status:
            print(f"error: {command[0]} {command[1]} {command[2]} failed (exit status {status})", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
