"""The jobs on a Flink cluster: list them, stop a stream with a savepoint, cancel one: ``rtml jobs``.

    rtml jobs list   --flink_master HOST:8081
    rtml jobs stop   JOB_ID --flink_master HOST:8081 [--savepoint_dir URI] [--drain]
    rtml jobs cancel JOB_ID --flink_master HOST:8081

A stream sent to a cluster (``rtml score --mode stream --runner FlinkRunner --flink_master HOST:PORT``) runs on
without the command that sent it. ``stop`` takes a savepoint and then stops the job, leaving its keyed state (entity
histories, events waiting for the watermark, open monitoring windows) and its read positions in the savepoint, whose
path it prints; ``rtml score ... --savepoint_path PATH`` starts the stream again from there, with a new model version
if one was published meanwhile. ``--drain`` first moves the job's watermark to the end of time, so that every
event waiting in it is scored and every window closes (partial): for a stream retired for good. ``cancel`` ends a job
and keeps nothing.
"""
from __future__ import annotations

import argparse
import datetime
import sys

from pipelines import cli
from pipelines.flink_rest import FlinkRest

STOP_TIMEOUT_S = 300.0


def run(argv=None) -> object:
    parser = argparse.ArgumentParser(prog=cli.PROG or "python -m pipelines.jobs", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("action", choices=("list", "stop", "cancel"))
    parser.add_argument("job_id", nargs="?", help="the Flink job id (stop, cancel), as rtml jobs list shows it")
    parser.add_argument("--flink_master", required=True, metavar="HOST:PORT", help="the cluster's REST address")
    parser.add_argument("--savepoint_dir", metavar="URI",
                        help="stop: where the savepoint goes (default: the cluster's state.savepoints.dir)")
    parser.add_argument("--drain", action="store_true",
                        help="stop: score what waits and close every window before the savepoint (a stream retired)")
    parser.add_argument("--timeout_s", type=float, default=STOP_TIMEOUT_S,
                        help=f"stop: longest wait for the savepoint (default: {STOP_TIMEOUT_S:g})")
    args = parser.parse_args(argv)
    if args.action != "list" and not args.job_id:
        parser.error(f"{args.action} needs a JOB_ID")
    flink = FlinkRest(args.flink_master)
    if args.action == "list":
        jobs = flink.jobs()
        for job in jobs:
            started = datetime.datetime.fromtimestamp(job.start_ms / 1000, datetime.timezone.utc)
            print(f"{job.id}  {job.state:<12} {started:%Y-%m-%d %H:%M:%S}Z  {job.name}")
        if not jobs:
            print(f"no jobs on {flink.url}", file=sys.stderr)
        return jobs
    if args.action == "stop":
        path = flink.stop(args.job_id, args.savepoint_dir, args.timeout_s, args.drain)
        print(f"stopped job {args.job_id} with a savepoint; start it again with --savepoint_path {path}",
              file=sys.stderr)
        print(path)
        return path
    flink.cancel(args.job_id)
    print(f"cancelled job {args.job_id}", file=sys.stderr)
    return None


if __name__ == "__main__":
    cli.main(run)
