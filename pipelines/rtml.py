"""``rtml``: the project's commands under one name.

    rtml COMMAND [FLAGS]          e.g. rtml score --help

Each command is the module ``python -m`` runs (``rtml score`` is ``python -m pipelines.score``).
"""
from __future__ import annotations

import runpy
import sys
from typing import Sequence

from pipelines import cli

COMMANDS = {
    "generate": ("pipelines.generate", "write generated event archives (fraud, sensor) with labels"),
    "train": ("pipelines.train", "analyze features, fit the model, export ONNX, publish a model version"),
    "score": ("pipelines.score", "score an archive (--mode batch) or a Kafka topic (--mode stream)"),
    "schema": ("pipelines.schema", "a spec's event contract as an Avro or JSON Schema, to register for a topic"),
    "produce": ("pipelines.produce", "load an archive into a Kafka topic, keyed and stamped with event time"),
    "backfill": ("pipelines.backfill", "rescore days of history into partitions, resumable after failures"),
    "monitor": ("pipelines.monitor", "per-window rates, scores and drift of an archive, with alerts"),
    "cluster": ("pipelines.cluster", "online mini-batch k-means over an archive or a Kafka topic"),
    "report": ("pipelines.report", "one HTML page of charts: drift, rates, scores, ROC and PR curves, clusters"),
    "launch": ("templates.launch", "launch a flex template on Dataflow"),
    "jobs": ("pipelines.jobs", "the jobs on a Flink cluster: list, stop with a savepoint, cancel"),
    "flink-cluster": ("pipelines.flink_cluster", "a Flink session cluster on this machine, with Python workers"),
    "demo": ("pipelines.demo", "generate, train and score on this machine (demo stream: live, with a local broker)"),
    "demo stream": ("pipelines.stream_demo", "live scoring against a local Apache Kafka broker of its own"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [__doc__.strip().splitlines()[0], "", "usage: rtml COMMAND [FLAGS]   (rtml COMMAND --help: its flags)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name == "demo" and rest[:1] == ["stream"]:
        name, rest = "demo stream", rest[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    cli.PROG = f"rtml {name}"
    sys.argv = [cli.PROG, *rest]
    # As python -m runs it (its exit status included), so that what it defines lives in __main__ either way.
    runpy.run_module(COMMANDS[name][0], run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
