"""Runner presets: defaults for Dataflow, Flink and Prism that a pipeline applies before it builds.

A pipeline's ``run()`` calls ``runners.apply_runner_presets(options)`` right after parsing its flags
(``streaming=True`` for a pipeline that will stream: stream mode sets ``--streaming`` itself). Flags
the user gave always win; a preset only fills a flag that was left at Beam's default.

* DataflowRunner, streaming: ``--enable_streaming_engine``, ``--autoscaling_algorithm
  THROUGHPUT_BASED`` and ``--max_num_workers 20``.
* FlinkRunner: an embedded Flink (``--flink_master [local]``) run by the job server that
  ``python -m pipelines.artifacts`` fetched (``--flink_job_server_jar``), ``--parallelism`` this
  machine's cores (4 for a cluster), ``--environment_type LOOPBACK`` for a master on this machine (``DOCKER``
  otherwise, with ``--sdk_container_image`` as its image when given), and for streaming
  ``--checkpointing_interval 60000`` and ``--max_bundle_time_mills 50`` (ms; both flags are defined
  here, Flink's job server reads them); for a stream on the embedded Flink, ``--state_backend filesystem`` with
  checkpoints in a temporary folder removed when the command exits (Flink's default keeps them in the
  JobManager's memory, at most 5 MB of state per operator: past it every checkpoint failed and the job
  restarted, again and again).
  Give ``--flink_master HOST:8081`` for a cluster (Flink 1.19, which the fetched job server speaks).
  For the embedded Flink, unless ``JDK_JAVA_OPTIONS`` is set, the job server's JVM gets
  ``-XX:TieredStopAtLevel=1 -XX:+UseSerialGC`` (through that variable, which ``java`` reads).
* PrismRunner: ``--prism_location`` (Beam's flag) defaults to the Prism that
  ``python -m pipelines.artifacts`` built into this venv, else ``$BEAM_PRISM_LOCATION`` or a
  ``prism`` on PATH, so nothing is downloaded; ``--environment_type LOOPBACK``; and for streaming
  ``--experiments prism_disable_sdf_split`` (added to any others given; see ``PRISM_NO_SPLITS``).
* DirectRunner: its engine's per-bundle metrics are folded as they come (``fold_direct_runner_metrics``), so a
  stream's memory stays flat and its counters can be read at its stop. It runs on Beam's local engines only, never
  first on a downloaded Prism (``LocalDirectRunner``). A bounded pipeline over an archive of at least
  ``SPREAD_MIN_BYTES`` runs on one worker process per core (``spread_over_cores``).
"""
from __future__ import annotations

import argparse
import atexit
import datetime
import os
import pathlib
import re
import shutil
import tempfile
import urllib.parse
import uuid

from apache_beam.metrics import monitoring_infos
from apache_beam.options.pipeline_options import (
    DebugOptions, DirectOptions, FlinkRunnerOptions, GoogleCloudOptions, PipelineOptions, PortableOptions,
    PrismRunnerOptions, StandardOptions, WorkerOptions)
from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner
from apache_beam.runners.portability.fn_api_runner import fn_runner

from pipelines import artifacts
from transforms.errors import UserError
from transforms.ordering import DEFAULT_SHARDS, LiveState

DATAFLOW_STREAMING_MAX_WORKERS = 20
FLINK_MASTER = "[local]"
FLINK_CLUSTER_PARALLELISM = 4
FLINK_CHECKPOINTING_INTERVAL_MS = 60_000
# Flink closes a streaming bundle after 1,000 ms by default, and an event waits for its bundle in each stage.
# Shorter bundles cost a keyed step more state round trips; 50 ms measured best for both kinds of graph here
# (docs/design.md, "Flink's bundles").
FLINK_STREAMING_MAX_BUNDLE_TIME_MS = 50
# The embedded Flink's JVM: without the optimizing compiler and with one GC thread, a local job started
# 2.6 s sooner and streamed no slower on two cores (docs/design.md, "Flink's bundles").
EMBEDDED_FLINK_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
# Prism splits a bundle that shows no progress for a while, and a split bundle of timers has its split-off timers
# fired again without their watermark holds (apache/beam#35771): a keyed step then output events twice, and
# windows and the final commit ran ahead of records still in flight (measured on a loaded machine). Streams
# checkpoint their reads by themselves, so they need no runner-made splits.
PRISM_NO_SPLITS = "prism_disable_sdf_split"
# Live keyed state's shards (transforms/ordering.py). Measured at 2,000 events/s (docs/design.md): Prism p99 2.6 s
# with 1 shard, 7.2 s with 4; Flink at --parallelism 2, 9.7 s with 1, 3.2 s with 4 (a key runs in one slot).
PRISM_SHARDS = 1
FLINK_SHARDS_PER_SLOT = 2
# A bounded DirectRunner pipeline over at least this much input runs on a worker process per core. Worker processes
# take about 3 s more to start, and then score an event for about half the time on 2 cores (fraud, 2026-12-08: 12.7 ->
# 6.8 us), so below roughly 200 MB of JSON Lines one process is sooner (docs/performance.md).
SPREAD_MIN_BYTES = 256 << 20
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[local]", "[auto]"}
_CHECKPOINTS_PREFIX = "rtml-flink-checkpoints-"  # (then the pid of the process whose Flink writes there)


class RunnerPresetOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--checkpointing_interval", type=int, default=None, metavar="MS",
                            help="FlinkRunner: milliseconds between Flink checkpoints (default for streaming: "
                                 f"{FLINK_CHECKPOINTING_INTERVAL_MS}; none for batch).")
        parser.add_argument("--state_shards", type=_positive, default=None, metavar="N",
                            help="Live keyed state (entity features): entities are spread over N keys, each with its "
                                 "state and timers (default: 1 on Prism, twice --parallelism on Flink, "
                                 f"{DEFAULT_SHARDS} elsewhere; see docs/performance.md, Live latency).")
        parser.add_argument("--state_cache_mb", type=_positive, default=None, metavar="MB",
                            help="Live keyed state: the most a worker process keeps of its shards' state between "
                                 "bundles, counted as their state's size in the runner (pickled; in the worker's "
                                 "memory a history takes about four times that); past it, the "
                                 "shards used least recently are dropped and rebuilt from the runner's state when "
                                 f"next needed (default: {LiveState().cache_mb}).")
        parser.add_argument("--state_backend", choices=("filesystem", "rocksdb"), default=None,
                            help="FlinkRunner: where Flink keeps state and checkpoints (default for a stream on the "
                                 "embedded Flink: filesystem; otherwise the cluster's own; rocksdb needs its jar on "
                                 "the cluster).")
        parser.add_argument("--state_backend_storage_path", default=None, metavar="URI",
                            help="FlinkRunner: where --state_backend writes checkpoints (default for a stream on the "
                                 "embedded Flink: a temporary folder, removed when the command exits).")
        parser.add_argument("--savepoint_path", default=None, metavar="URI",
                            help="FlinkRunner on a cluster: start the stream from this savepoint (rtml jobs stop prints "
                                 "it); its keyed state and read positions carry over.")
        # Beam's Java option maxBundleTimeMills, spelt as Flink's job server knows it.
        parser.add_argument("--max_bundle_time_mills", type=int, default=None, metavar="MS",
                            help="FlinkRunner: longest a bundle stays open, in milliseconds (default for streaming: "
                                 f"{FLINK_STREAMING_MAX_BUNDLE_TIME_MS}; Flink's own default: 1000).")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"not a whole number > 0: {text!r}")
    return int(text)


def _embedded_flink_checkpoints() -> str:
    """A folder for the checkpoints of this process's embedded Flink, removed when the process exits; those of
    processes that ended without their exit (SIGKILL: a soak left 66 MB) are removed now."""
    for left in pathlib.Path(tempfile.gettempdir()).glob(f"{_CHECKPOINTS_PREFIX}*"):
        pid = re.match(r"[0-9]{1,9}-", left.name[len(_CHECKPOINTS_PREFIX):])
        if pid and not _running(int(pid.group()[:-1])):
            shutil.rmtree(left, ignore_errors=True)
    folder = tempfile.mkdtemp(prefix=f"{_CHECKPOINTS_PREFIX}{os.getpid()}-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return pathlib.Path(folder).as_uri()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # (another user's)
        pass
    return True


def live_state(options: PipelineOptions) -> LiveState:
    flags, default = options.view_as(RunnerPresetOptions), LiveState()
    return LiveState(flags.state_shards or default.shards, flags.state_cache_mb or default.cache_mb)


def runner_name(options: PipelineOptions) -> str:
    runner = options.view_as(StandardOptions).runner
    if runner is None:
        return "DirectRunner"
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name.rsplit(".", 1)[-1]


def _given(options: PipelineOptions) -> set[str]:
    """What the user set: options on the command line (even at their default) or changed from it."""
    on_command_line = {arg.split("=", 1)[0][2:] for arg in getattr(options, "_flags", []) if arg.startswith("--")}
    return on_command_line | set(options.get_all_options(drop_default=True))


def apply_runner_presets(options: PipelineOptions, streaming: bool | None = None) -> dict[str, object]:
    """Fill the runner's preset flags the user left unset, in place; returns what was set.

    ``streaming``: whether the pipeline will stream (default: ``--streaming``); it is also set.
    """
    if (options.view_as(DirectOptions).direct_num_workers or 0) < 0:
        raise UserError("--direct_num_workers must be 0 (one per core) or more")
    runner, given, applied = runner_name(options), _given(options), {}

    def preset(view, name, value):
        if name not in given:
            setattr(options.view_as(view), name, value)
            applied[name] = value

    if streaming:
        options.view_as(StandardOptions).streaming = True
    streaming = options.view_as(StandardOptions).streaming
    if is_direct(options):
        fold_direct_runner_metrics()
    if runner in ("DataflowRunner", "TestDataflowRunner") and streaming:
        preset(GoogleCloudOptions, "enable_streaming_engine", True)
        preset(WorkerOptions, "autoscaling_algorithm", "THROUGHPUT_BASED")
        preset(WorkerOptions, "max_num_workers", DATAFLOW_STREAMING_MAX_WORKERS)
    elif runner == "FlinkRunner":
        preset(FlinkRunnerOptions, "flink_master", FLINK_MASTER)
        if artifacts.flink_job_server_jar().exists() and not given & {"flink_job_server_jar", "job_endpoint"}:
            preset(FlinkRunnerOptions, "flink_job_server_jar", str(artifacts.flink_job_server_jar()))
        master = options.view_as(FlinkRunnerOptions).flink_master
        host = master if master.startswith("[") else urllib.parse.urlsplit(
            master if "://" in master else f"http://{master}").hostname
        if host in _LOCAL_HOSTS:
            preset(FlinkRunnerOptions, "parallelism", os.cpu_count() or 1)
            preset(PortableOptions, "environment_type", "LOOPBACK")
            if master == FLINK_MASTER:
                os.environ.setdefault("JDK_JAVA_OPTIONS", EMBEDDED_FLINK_JVM_OPTIONS)
        else:
            preset(FlinkRunnerOptions, "parallelism", FLINK_CLUSTER_PARALLELISM)
            preset(PortableOptions, "environment_type", "DOCKER")
            image = options.view_as(WorkerOptions).sdk_container_image
            if image:
                preset(PortableOptions, "environment_config", image)
        # (a --parallelism of -1, Beam's "unset", counts as 1)
        preset(RunnerPresetOptions, "state_shards",
               FLINK_SHARDS_PER_SLOT * max(1, options.view_as(FlinkRunnerOptions).parallelism))
        if streaming and is_flink_cluster(options):
            # (the name by which the job is found on the cluster, whose job id the job server does not tell)
            preset(GoogleCloudOptions, "job_name", f"rtml-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}-"
                                                   f"{uuid.uuid4().hex[:6]}")
        if streaming:
            preset(RunnerPresetOptions, "checkpointing_interval", FLINK_CHECKPOINTING_INTERVAL_MS)
            preset(RunnerPresetOptions, "max_bundle_time_mills", FLINK_STREAMING_MAX_BUNDLE_TIME_MS)
            if master == FLINK_MASTER:
                # Flink's default checkpoint storage, the JobManager's memory, refuses more than 5 MB of state per
                # operator: a live keyed step passed that within two minutes at 200 events/s, and from then on each
                # checkpoint failed the job, which restarted (docs/design.md, "Flink's checkpoints").
                preset(RunnerPresetOptions, "state_backend", "filesystem")
                if "state_backend_storage_path" not in given:
                    preset(RunnerPresetOptions, "state_backend_storage_path", _embedded_flink_checkpoints())
    elif runner == "PrismRunner":
        location = prism_location()
        if location:
            preset(PrismRunnerOptions, "prism_location", location)
        preset(PortableOptions, "environment_type", "LOOPBACK")
        preset(RunnerPresetOptions, "state_shards", PRISM_SHARDS)
        if streaming and PRISM_NO_SPLITS not in (options.view_as(DebugOptions).experiments or []):
            options.view_as(DebugOptions).add_experiment(PRISM_NO_SPLITS)
            applied["experiments"] = PRISM_NO_SPLITS
    return applied


def fold_direct_runner_metrics() -> None:
    """Make the DirectRunner's engine (Beam 2.77's FnApiRunner) fold each bundle's metrics into its stage's totals at
    once. It folds them lazily, a generator over the stage's previous generator, so a stream kept every bundle's
    metrics (its RSS grew 43 MB a minute at 200 events/s) and reading its counters at the stop nested one
    generator per bundle, past Python's recursion limit: after a few minutes, a stream exited with status 1 on
    SIGTERM (docs/design.md, "A DirectRunner stream's metrics"). Folded at once, a stage's totals stay one list."""
    fn_runner.consolidate_monitoring_infos = _folded_now


def _folded_now(metrics, key=monitoring_infos.to_key) -> list:
    return list(monitoring_infos.consolidate(metrics, key))


class LocalDirectRunner(SwitchingDirectRunner):
    """Beam's DirectRunner on its own engines: the FnApiRunner for a bounded pipeline, the BundleBasedDirectRunner
    for a stream.

    Beam's (2.77) first hands a pipeline to Prism, downloading Prism from GitHub when none is cached, and falls back to
    those engines when that fails; so with network, a run would download while it runs, then run on another
    runner than the one asked for and tested here (a DirectRunner stream's offsets rely on its bundles being fused
    with the read). Prism is ``--runner PrismRunner``, with the Prism the set-up built."""

    def run_pipeline(self, pipeline, options):
        self._is_interactive = True  # the one switch Beam's DirectRunner reads to skip Prism; it changes nothing else
        return super().run_pipeline(pipeline, options)


def spread_over_cores(options: PipelineOptions, files: int, input_bytes: int) -> int:
    """A bounded DirectRunner pipeline's worker processes, set in ``options``: one per core (at most one per file)
    for an input of at least ``SPREAD_MIN_BYTES``, unless --direct_num_workers or --direct_running_mode was given;
    returns how many processes score (1: this one). Worker processes log errors only (their start's warnings are
    Beam's notes to itself), unless --default_sdk_harness_log_level is given."""
    direct, cores, given = options.view_as(DirectOptions), os.cpu_count() or 1, _given(options)
    if is_direct(options) and not given & {"direct_num_workers", "direct_running_mode"} \
            and input_bytes >= SPREAD_MIN_BYTES and min(cores, files) > 1:
        direct.direct_running_mode, direct.direct_num_workers = "multi_processing", min(cores, files)
    if not is_direct(options) or direct.direct_running_mode != "multi_processing":
        return 1
    if "default_sdk_harness_log_level" not in given:
        options.view_as(WorkerOptions).default_sdk_harness_log_level = "ERROR"
    return direct.direct_num_workers or cores


def model_threads(workers: int) -> int:
    """onnxruntime's threads for a model in each of ``workers`` processes on this machine: its default (0: one per
    core) for one process, else the cores shared out (two processes with a thread per core each scored 10% slower
    than with one each, on 2 cores: their threads spin waiting for work)."""
    return 0 if workers <= 1 else max(1, (os.cpu_count() or 1) // workers)


def is_direct(options: PipelineOptions) -> bool:
    return runner_name(options) in ("DirectRunner", "SwitchingDirectRunner")


def is_flink_cluster(options: PipelineOptions) -> bool:
    """A FlinkRunner sending its job to a cluster (--flink_master HOST:PORT), not to the job server's own Flink."""
    return runner_name(options) == "FlinkRunner" and options.view_as(FlinkRunnerOptions).flink_master not in (
        "[local]", "[auto]")


def is_prism(options: PipelineOptions) -> bool:
    return runner_name(options) == "PrismRunner"


def prism_location() -> str | None:
    """The Prism binary this venv's set-up built, else $BEAM_PRISM_LOCATION or a ``prism`` on PATH."""
    built = artifacts.prism_binary()
    return (str(built) if built.exists() else None) or os.environ.get("BEAM_PRISM_LOCATION") or shutil.which("prism")


def choose_stream_runner(options: PipelineOptions, needs_state: str | None) -> str | None:
    """The runner of a stream whose --runner was not given: Prism where the graph keeps state (``needs_state``
    names what does), since the DirectRunner cannot run that behind an unbounded source. Returns a note to
    print when it chose, None otherwise (a given --runner always stands)."""
    if "runner" in _given(options) or not needs_state or prism_location() is None:
        return None
    options.view_as(StandardOptions).runner = "PrismRunner"
    apply_runner_presets(options, streaming=True)
    return f"note: {needs_state} keeps state live, which the DirectRunner cannot; running on PrismRunner"
