"""The jobs on a Flink cluster or on Dataflow: list them, stop a stream, cancel one: ``rtml jobs``.

    rtml jobs list   --flink_master HOST:8081          (or --project P --region R for Dataflow)
    rtml jobs stop   JOB_ID --flink_master HOST:8081 [--savepoint_dir URI] [--drain]
    rtml jobs cancel JOB_ID --flink_master HOST:8081

A stream sent to a cluster (``rtml score --mode stream --runner FlinkRunner --flink_master HOST:PORT``) runs on
without the command that sent it. ``stop`` takes a savepoint and then stops the job, leaving its keyed state (entity
histories, events waiting for the watermark, open monitoring windows) and its read positions in the savepoint, whose
path it prints; ``rtml score ... --savepoint_path PATH`` starts the stream again from there, with a new model version
if one was published meanwhile. ``--drain`` first moves the job's watermark to the end of time, so that every
event waiting in it is scored and every window closes (partial): for a stream retired for good. ``cancel`` ends a job
and keeps nothing.

On Dataflow (google-cloud-dataflow-client, Application Default Credentials), ``stop`` drains the job: it reads
nothing more, writes what it has read, and ends; Dataflow keeps no savepoint of it (a stream keeps its state across
a new version with the template launcher's ``--update``).
"""
from __future__ import annotations

import argparse
import datetime
import sys

from pipelines import cli
from pipelines.dataflow_api import DataflowJobs
from pipelines.flink_rest import FlinkRest
from transforms.errors import UserError

STOP_TIMEOUT_S = 300.0


def run(argv=None) -> object:
    parser = argparse.ArgumentParser(prog=cli.PROG or "python -m pipelines.jobs", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("action", choices=("list", "stop", "cancel"))
    parser.add_argument("job_id", nargs="?", help="the job id (stop, cancel), as rtml jobs list shows it")
    parser.add_argument("--flink_master", metavar="HOST:PORT", help="a Flink cluster's REST address")
    parser.add_argument("--project", help="Dataflow: the Google Cloud project")
    parser.add_argument("--region", help="Dataflow: the region of its jobs")
    parser.add_argument("--api_endpoint", metavar="HOST:PORT", help="Dataflow: another endpoint of its API")
    parser.add_argument("--savepoint_dir", metavar="URI",
                        help="Flink, stop: where the savepoint goes (default: the cluster's state.savepoints.dir)")
    parser.add_argument("--drain", action="store_true",
                        help="Flink, stop: score what waits and close every window before the savepoint (a stream "
                             "retired); on Dataflow, stop always drains")
    parser.add_argument("--timeout_s", type=float, default=STOP_TIMEOUT_S,
                        help=f"Flink, stop: longest wait for the savepoint (default: {STOP_TIMEOUT_S:g})")
    args = parser.parse_args(argv)
    if args.action != "list" and not args.job_id:
        parser.error(f"{args.action} needs a JOB_ID")
    on_dataflow = bool(args.project or args.region)
    if on_dataflow == bool(args.flink_master) or on_dataflow and not (args.project and args.region):
        parser.error("say where the jobs are: --flink_master HOST:PORT, or --project and --region (Dataflow)")
    if on_dataflow and args.savepoint_dir:
        parser.error("--savepoint_dir: Dataflow keeps no savepoints")
    return _on_dataflow(args) if on_dataflow else _on_flink(args)


def _list(jobs: list, where: str) -> list:
    for job in jobs:
        started = datetime.datetime.fromtimestamp(job.start_ms / 1000, datetime.timezone.utc)
        print(f"{job.id}  {job.state:<12} {started:%Y-%m-%d %H:%M:%S}Z  {job.name}")
    if not jobs:
        print(f"no jobs on {where}", file=sys.stderr)
    return jobs


def _on_flink(args: argparse.Namespace) -> object:
    flink = FlinkRest(args.flink_master)
    if args.action == "list":
        return _list(flink.jobs(), flink.url)
    if args.action == "stop":
        path = flink.stop(args.job_id, args.savepoint_dir, args.timeout_s, args.drain)
        print(f"stopped job {args.job_id} with a savepoint; start it again with --savepoint_path {path}",
              file=sys.stderr)
        print(path)
        return path
    flink.cancel(args.job_id)
    print(f"cancelled job {args.job_id}", file=sys.stderr)
    return None


def _on_dataflow(args: argparse.Namespace) -> object:
    missing = cli.missing_extra("gcp", "google.cloud.dataflow_v1beta3")
    if missing:
        raise UserError(f"Dataflow's jobs: {missing}")
    dataflow = DataflowJobs(args.project, args.region, args.api_endpoint)
    if args.action == "list":
        return _list(dataflow.jobs(), f"Dataflow in project {args.project}, region {args.region}")
    state = dataflow.drain(args.job_id) if args.action == "stop" else dataflow.cancel(args.job_id)
    print(f"{'draining' if args.action == 'stop' else 'cancelling'} Dataflow job {args.job_id} ({state})",
          file=sys.stderr)
    return state


if __name__ == "__main__":
    cli.main(run)
