"""Running a stream: checks before it starts, then serving it in this process until a signal, or sending it to a
Flink cluster.

A streaming command calls ``check_streaming_runner``, builds its graph, calls ``check_fused_with_source`` (so that
what a runner cannot run is one line, not a hang), then ``serve``s it: in this process until a signal, or, on a Flink
cluster, by sending it there, where it runs on after the command ends.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from typing import Callable, Sequence

import apache_beam as beam
import grpc
from apache_beam.options.pipeline_options import DirectOptions, FlinkRunnerOptions, GoogleCloudOptions, PortableOptions
from apache_beam.portability.api import beam_job_api_pb2
from apache_beam.runners.portability import portable_runner
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms import userstate

from pipelines import cli, metrics_endpoint, runners
from pipelines.flink_rest import FlinkRest
from pipelines.options import EXACTLY_ONCE, KafkaOptions, StreamOptions
from transforms import kafka, kafka_access, kafka_formats, kafka_transactions, live_metrics
from transforms.errors import UnreadableState, UserError
from transforms.events import METRICS_NAMESPACE

_LOG = logging.getLogger(__name__)
STOP_TIMEOUT_S = 25.0  # a stop that takes longer ends the process (exit status 1)
DRAIN_TIMEOUT_S = 20.0  # after this long draining, a runner's job is cancelled
# Flink's streaming bundles close after 50 ms (the runner preset) and CommitWhenWritten commits at least every second,
# so this covers what is in flight and its last commit.
FLINK_DRAIN_S = 2.0
# From the job service's answer to the job running on the cluster: the job server uploads its jars and Flink deploys
# every task (the whole command took about 33 s here, its start and the model's load included).
CLUSTER_SUBMIT_TIMEOUT_S = 180.0


def check_streaming_runner(options) -> None:
    """On the DirectRunner a stream runs in this process, where SIGTERM can drain it. On a Flink cluster it runs on
    after this process ends, so its Python workers cannot be this process (LOOPBACK). Only there does a stream start
    from a savepoint."""
    if runners.is_direct(options) and options.view_as(DirectOptions).direct_running_mode == "multi_processing":
        raise UserError("--mode stream on the DirectRunner runs in this process; drop "
                        "--direct_running_mode multi_processing (or use a streaming runner)")
    if runners.is_direct(options) and options.view_as(StreamOptions).partition_discovery_s:
        # its engine runs a stage until the stage's input ends, and the listing of partitions never ends
        raise UserError("--partition_discovery_s needs a streaming runner (Prism, Flink, Dataflow): the DirectRunner "
                        "reads the partitions there at the start")
    if runners.is_flink_cluster(options):
        if (options.view_as(PortableOptions).environment_type or "").upper() == "LOOPBACK":
            raise UserError("a stream on a Flink cluster runs on after this command ends, so its Python workers cannot "
                            "run in this process (--environment_type LOOPBACK): give --environment_type EXTERNAL "
                            "--environment_config HOST:PORT of a worker pool (rtml flink-cluster prints them) or "
                            "DOCKER")
    elif cli.given(options, "savepoint_path"):
        raise UserError("--savepoint_path: only a stream on a Flink cluster (--runner FlinkRunner --flink_master "
                        "HOST:PORT) starts from a savepoint")


def check_delivery(options, stateful: str | None) -> None:
    """--delivery exactly_once commits a bundle's records together with its input's offsets, so the sinks must run
    in the read's bundle, in this process: on the DirectRunner or Prism with LOOPBACK workers (Flink and Dataflow
    run them in workers where a partition's bundles may move from process to process: not built), with no step that
    keeps an event past its read's bundle (``stateful`` names those the stream has)."""
    if options.view_as(StreamOptions).delivery != EXACTLY_ONCE:
        return
    why = None
    if stateful:
        why = (f"a stream with {stateful} keeps events in state past the bundle that read them, so one transaction "
               f"cannot hold an event's record and its offset")
    elif options.view_as(KafkaOptions).kafka_io == "beam":
        why = "Beam's Java KafkaIO writes outside the read's bundle"
    elif not (runners.is_direct(options) or runners.is_prism(options) and (  # Prism's preset is LOOPBACK
            options.view_as(PortableOptions).environment_type or "LOOPBACK").upper() == "LOOPBACK"):
        why = ("it runs on the DirectRunner and Prism with --environment_type LOOPBACK, whose bundles run in this "
               "process; Flink, Dataflow and other workers run them in processes of their own, which it does not "
               "track")
    if why:
        raise UserError(f"--delivery exactly_once: {why}; use --delivery at_least_once (a restart writes again the "
                        f"records written since the last commit)")


def how_it_stops(options) -> str:
    """The end of a streaming command's first line: how its stream stops (one on a Flink cluster runs on after the
    command, until ``rtml jobs stop``, which ``serve`` says once it runs)."""
    return "" if runners.is_flink_cluster(options) else "; SIGTERM or Ctrl-C stops"


def check_fused_with_source(pipeline, options) -> None:
    """Refuse, rather than hang, a streaming graph the DirectRunner cannot run live.

    The DirectRunner runs an unbounded Kafka read on the FnApiRunner stage by stage: whatever sits
    behind a GroupByKey, a stateful DoFn or a Flatten (a stage of its own there) would never run. Such steps need a
    streaming runner.
    """
    if not runners.is_direct(options):
        return
    found = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            transform = node.transform
            if isinstance(transform, (beam.GroupByKey, beam.Flatten)) or (
                    isinstance(transform, beam.ParDo) and userstate.is_stateful_dofn(transform.dofn)):
                found.append(node.full_label)

    pipeline.visit(Visitor())
    if found:
        stages = ", ".join(dict.fromkeys(label.split("/")[0] for label in found))
        raise UserError(f"--mode stream: these stages group, merge branches or keep state: {stages} (first: "
                        f"{found[0]}), which the DirectRunner cannot run behind an unbounded source (it would wait "
                        f"forever); use a streaming runner: --runner PrismRunner (python -m pipelines.artifacts builds "
                        f"it), FlinkRunner or DataflowRunner")


def check_kafka_io(options, supported: bool = True) -> None:
    """--kafka_io beam where it cannot run is a one-line error: in a command that does not offer it
    (``supported``), on a runner other than Flink, with values other than JSON, or with an allowed delay (Beam's
    KafkaIO allows none)."""
    flags = options.view_as(KafkaOptions)
    if flags.kafka_io != "beam":
        return
    if not supported:
        raise UserError("--kafka_io beam: only rtml score --mode stream reads and writes with Beam's Java KafkaIO")
    if runners.runner_name(options) != "FlinkRunner":
        raise UserError("--kafka_io beam runs Beam's Java KafkaIO inside Flink's job server: give --runner FlinkRunner "
                        "(another runner would need a Java SDK container, which this set-up cannot run)")
    if flags.kafka_secret:
        raise UserError("--kafka_io beam: Java's Kafka clients cannot resolve --kafka_secret references; "
                        "give the settings with --kafka_config or --kafka_config_file")
    if flags.value_format != "json":
        raise UserError(f"--kafka_io beam reads JSON values; --value_format {flags.value_format} needs --kafka_io python")
    if cli.given(options, "max_delay_s"):
        raise UserError("--kafka_io beam: Beam's KafkaIO allows no delay (its watermark is the newest message "
                        "timestamp read); drop --max_delay_s, or read with --kafka_io python")
    if cli.given(options, "partition_discovery_s"):
        raise UserError("--kafka_io beam reads the partitions there at the start; drop --partition_discovery_s, "
                        "or read with --kafka_io python")


def _librdkafka_config(flags: KafkaOptions, config: dict) -> dict:
    """The config for this process's own Kafka clients: none of it with --kafka_io beam, whose config holds Java
    client properties, which librdkafka may refuse."""
    return {} if flags.kafka_io == "beam" else config


def group_positions(flags: KafkaOptions, config: dict, group: str) -> Callable[[], dict | None]:
    """What ``serve`` asks as the stream runs and at its stop: ``group``'s committed offsets and the ends of the input
    topic's partitions (``kafka.group_positions``)."""
    return functools.partial(kafka.group_positions, flags.bootstrap_servers, _librdkafka_config(flags, config),
                             flags.input_topic, group)


def check_topics(flags: KafkaOptions, stream: StreamOptions, config: dict, group: str) -> None:
    """What the cluster refuses (the login, TLS, an ACL for the topics or ``group``: ``kafka_access``) and a missing
    input topic are one-line errors before anything starts; missing output topics a warning (a cluster may create
    them on first write). An unreachable cluster is waited for by the pipeline."""
    from confluent_kafka import KafkaException

    config = _librdkafka_config(flags, config)
    outputs = {"--output_topic": stream.output_topic, "--dead_letter_topic": stream.dead_letter_topic}
    try:
        found = kafka_access.check_access(flags.bootstrap_servers, config, read=[flags.input_topic],
                                          write=outputs.values(), group=group)
    except (KafkaException, ValueError, TypeError) as error:
        found, why = None, kafka.Secrets(config).scrub(error)
    else:
        why = ("--kafka_io beam's settings are Java's, so they were checked without them" if flags.kafka_io == "beam"
               else "no answer within 10 s")
    if found is None:
        print(f"warning: cannot list the topics on {flags.bootstrap_servers} yet ({why}); starting anyway",
              file=sys.stderr, flush=True)
        return
    if flags.input_topic not in found:
        raise UserError(f"Kafka topic {flags.input_topic!r} (--input_topic) does not exist on "
                        f"{flags.bootstrap_servers}")
    for flag, topic in outputs.items():
        if topic not in found:
            print(f"warning: Kafka topic {topic!r} ({flag}) does not exist yet; writes fail unless the cluster "
                  f"creates topics on first use", file=sys.stderr, flush=True)


class StopSignals:
    """SIGTERM and SIGINT as a request to stop the stream: the first asks ``serve`` to drain it, a second leaves at
    once (exit status 1). A streaming command enters it before its slow start-up (the model's load, the graph's
    build), so that a signal at any moment stops it cleanly rather than killing it with the default action; on exit
    the previous handlers are back. ``why``: the first signal's name, or the reason ``ask`` was given."""

    def __init__(self, before_forced_exit: Sequence[Callable[[], object]] = ()):
        self.requested = threading.Event()
        self.why: str | None = None
        self.before_forced_exit = before_forced_exit
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        self.install()
        return self

    def install(self) -> None:
        """Handle the signals from now on (again, after a runner's start-up installed its own: Beam's job server
        does)."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous = signal.signal(sig, self._on_signal)
                self._previous.setdefault(sig, previous)

    def __exit__(self, *_exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def ask(self, why: str) -> None:
        if self.why is None:
            self.why = why
        self.requested.set()

    def _on_signal(self, signum, _frame):
        name = signal.Signals(signum).name
        if self.requested.is_set() and self.why in ("SIGTERM", "SIGINT"):  # a second Ctrl-C: leave now
            print(f"{name} again: exiting without waiting (records since the last commit will be read again)",
                  file=sys.stderr, flush=True)
            force_exit(1, self.before_forced_exit)
        self.ask(name)


def force_exit(code: int, before: Sequence[Callable[[], object]] = ()) -> None:
    """Leave the process now, without waiting for the pipeline's threads (a stuck one would block a normal
    exit); ``before`` (e.g. stopping a local broker) run first, best effort."""
    for hook in reversed(before):
        try:
            hook()
        except Exception:  # noqa: BLE001 - leaving anyway
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _summary(totals: dict[str, int], positions: dict | None, cancelled: bool) -> str:
    """What a stopped stream did (its counters) and left (``group_positions``: what the group has not committed)."""
    received = totals.get(f"{METRICS_NAMESPACE}/received", 0)
    verb = "assigned" if f"{METRICS_NAMESPACE}/assigned" in totals else "scored"
    dead = sum(count for key, count in totals.items() if key.startswith(f"{METRICS_NAMESPACE}.dead_letter/"))
    if cancelled and not totals:  # Flink's job server reports no metrics for a cancelled job
        counts = "no counts (the runner reports none for a cancelled job)"
    else:
        out = totals.get(f"{METRICS_NAMESPACE}/{verb}", 0)
        counts = f"{received:,} received, {out:,} {verb}, {dead:,} dead-lettered"
    how = "cancelled after draining; " if cancelled else ""
    if positions is None:
        return f"{counts}; {how}the committed offsets could not be read (is the cluster reachable?)"
    lag = _lag(positions)
    if not lag:
        return f"{counts}; {how}all written, offsets committed"
    ranges = ", ".join(f"partition {p} offset {start:,}" if end == start + 1 else
                       f"partition {p} offsets {start:,}-{end - 1:,}"
                       for p, (start, end) in sorted(positions.items()) if start < end)
    return (f"{counts}; {how}{lag:,} message{'s' * (lag != 1)} not committed ({ranges}): not yet written or not yet "
            f"read, read again on restart")


def _lag(positions: dict[int, tuple[int, int]]) -> int:
    return sum(end - committed for committed, end in positions.values())


class _Progress:
    """The progress line of a running stream: every ``every_s`` seconds, the rate at which the group commits and its
    lag, from Kafka (so the same on every runner; a portable runner's counters are read once, at the stop), and where
    the steps run in this process the p99 from event time to scored (``live_metrics``)."""

    def __init__(self, title: str, positions: Callable[[], dict | None], every_s: float):
        self._title, self._positions, self._every_s = title, positions, every_s
        self._due, self._last = time.monotonic() + every_s, None  # (time, committed offsets in all)
        self._latencies = live_metrics.EVENT_TO_SCORED.cumulative()

    def maybe_print(self) -> None:
        if not self._every_s or time.monotonic() < self._due:
            return
        self._due += self._every_s
        now, found = time.monotonic(), self._positions()
        if found is None:
            line = "the committed offsets could not be read (is the cluster reachable?)"
        else:
            committed = sum(offset for offset, _ in found.values())
            rate = (f"{(committed - self._last[1]) / (now - self._last[0]):,.0f} events/s written, "
                    if self._last else "")
            line = f"{rate}lag {_lag(found):,} messages not yet committed"
            self._last = (now, committed)
        latencies, before = live_metrics.EVENT_TO_SCORED.cumulative(), self._latencies
        p99, self._latencies = live_metrics.quantile(0.99, latencies, before), latencies
        if p99 is not None:  # (counted where the steps run in this process)
            line += f", p99 from event time to scored {'over an hour' if math.isinf(p99) else f'{p99:.2f} s'}"
        print(f"{self._title}: {line}", file=sys.stderr, flush=True)


def one_line_failure(error: BaseException) -> str | None:
    """The one-line reason if ``error`` (as the runner wrapped it) says a Kafka topic does not exist, that the
    broker refused records (a record over the topic's max.message.bytes, say), that keyed state cannot be read
    back, or that the stream stopped while events waited for the Schema Registry."""
    text = str(error)
    if isinstance(error, UnreadableState):
        return str(error)
    unreadable = re.search(r"UnreadableState: ([^\n]+)", text)
    if unreadable:
        return unreadable.group(1).strip()
    if "KafkaTopicNotFoundError" in text or isinstance(error, kafka.KafkaTopicNotFoundError):
        start = text.find("Kafka topic ")
        end = text.find("does not exist", start)
        if start >= 0 and end > start:
            return text[start:end + len("does not exist")] + "; create it, or check --input_topic"
        return "a Kafka topic does not exist; create it, or check --input_topic"
    registry_away = re.search(r"RegistryUnavailable: ([^\n]+)", text)  # (its reason may hold "[Errno ...]")
    if registry_away or isinstance(error, kafka_formats.RegistryUnavailable):
        return (registry_away.group(1) if registry_away else text).split(" [while running")[0].strip()
    transaction = re.search(r"KafkaTransactionError: ([^\n\[]+)", text)
    if transaction or isinstance(error, kafka_transactions.KafkaTransactionError):
        what = transaction.group(1).strip() if transaction else text.split(" [while running")[0]
        return (f"{what}; the stream stopped, and what the transaction held is neither visible to read_committed "
                f"consumers nor committed: the next run of the group writes it")
    if "KafkaDeliveryError" in text or isinstance(error, kafka.KafkaDeliveryError):
        match = re.search(r"(\d+ record\(s\) not delivered to '[^']*': [^\n\[]*)", text)
        what = match.group(1).strip() if match else "the broker refused records"
        return (f"{what}; the stream stopped, and the offsets of what was not written are not committed: they are "
                f"read again when it restarts")
    return None


def _outlive_job_service_deadline(result) -> None:
    """Keep waiting on a portable runner's job past ``--job_server_timeout``.

    Beam's portable runner opens the job's state and message streams with that timeout (300 s by default) as their
    deadline, wherever the job service takes the preparation id as the job id, as Prism does
    (``JobServiceHandle.run`` in apache_beam/runners/portability/portable_runner.py), and ``wait_until_finish``
    then reports the deadline as the job's failure and stops the job service (apache/beam#35867): every stream on
    Prism ended after five minutes. A stream runs for days, so a stream whose deadline passes is opened again,
    without one."""
    if not isinstance(result, portable_runner.PipelineResult):
        return
    service, job_id = result._job_service, result._job_id
    result._state_stream = _reopened(result._state_stream, lambda: service.GetStateStream(
        beam_job_api_pb2.GetJobStateRequest(job_id=job_id)))
    result._message_stream = _reopened(result._message_stream, lambda: service.GetMessageStream(
        beam_job_api_pb2.JobMessagesRequest(job_id=job_id)))


def _reopened(stream, reopen):
    """``stream``'s items, then, if its deadline passes, those of ``reopen()`` (a new stream from the job's
    present state on)."""
    try:
        yield from stream
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
        _LOG.info("a job-service stream reached its deadline (--job_server_timeout); opened again")
        yield from reopen()


def submit_to_cluster(pipeline, title: str) -> dict[str, int]:
    """Send a stream to a Flink cluster and leave it running there; returns once Flink says it runs (no counters:
    the job's own are in Flink's web UI). Stopping this command, now or later, does not stop the job: ``rtml jobs
    stop`` does, with a savepoint."""
    options = pipeline.options
    master, name = options.view_as(FlinkRunnerOptions).flink_master, options.view_as(GoogleCloudOptions).job_name
    flink = FlinkRest(master)
    flink.jobs()  # (an unreachable cluster is one line before anything is sent)
    result = pipeline.run()
    job = flink.running_job_named(name, CLUSTER_SUBMIT_TIMEOUT_S, failed=lambda: (
        "Flink's job server could not send the job to the cluster; see the lines above"
        if result.state in (PipelineState.FAILED, PipelineState.CANCELLED) else None))
    print(f"{title}: running on the Flink cluster at {master} as job {job.id}; it runs on after this command ends. "
          f"Stop it with a savepoint: rtml jobs stop {job.id} --flink_master {master}", file=sys.stderr, flush=True)
    return {}


def serve(pipeline, title: str, signals: StopSignals, positions: Callable[[], dict | None], progress_s: float = 0.0,
          stop_when=None, on_stop=None) -> dict[str, int]:
    """Run a streaming pipeline until SIGTERM / SIGINT (or ``stop_when()`` returns a reason), then stop it cleanly.

    The pipeline runs in a thread, because on the DirectRunner ``pipeline.run()`` only returns when
    the pipeline has finished. To stop, live Kafka reads in this process (the DirectRunner's, and
    Prism's and Flink's LOOPBACK workers) are drained: they stop claiming records; what they read is
    scored, written and committed, keyed state is flushed by its end-of-window timers, and the
    pipeline ends. A job that has not ended after ``DRAIN_TIMEOUT_S`` is cancelled: Flink's streaming
    jobs never end by themselves (their sources stay open for checkpoints), so on Flink the drain gets
    ``FLINK_DRAIN_S`` to write what is in flight. A cancel loses nothing: on a streaming runner offsets
    are committed only once records are written, so a restart reads the rest again. Prints a one-line
    summary to stderr, with what ``positions()`` (``group_positions``) says is left to read again, and returns the
    counters. Every ``progress_s`` seconds (0: never) while it runs, one line: what the group has committed since the
    last line, per second, and its lag; with --metrics_port, metrics for Prometheus. A stop that cannot finish leaves
    the process at once, after ``signals.before_forced_exit``. A stop asked for before the pipeline started starts nothing.
    """
    if signals.requested.is_set():
        print(f"{title}: stopped on {signals.why} before it started; nothing was read", file=sys.stderr, flush=True)
        return {}
    if runners.is_flink_cluster(pipeline.options):
        return submit_to_cluster(pipeline, title)
    with metrics_endpoint.served(pipeline.options.view_as(StreamOptions).metrics_port, positions):
        return _serve_here(pipeline, title, signals, positions, progress_s, stop_when, on_stop)


def _serve_here(pipeline, title: str, signals: StopSignals, positions: Callable[[], dict | None], progress_s: float,
                stop_when, on_stop) -> dict[str, int]:
    kafka.reset_drain()
    state: dict = {}
    drain_s = FLINK_DRAIN_S if runners.runner_name(pipeline.options) == "FlinkRunner" else DRAIN_TIMEOUT_S

    # The DirectRunner's run() returns only when the pipeline has finished, so it runs in the thread; a
    # portable runner's (Prism, Flink) returns at once and must be called here: it installs signal handlers.
    if not runners.is_direct(pipeline.options):
        state["result"] = pipeline.run()
        _outlive_job_service_deadline(state["result"])
    signals.install()

    def target():
        try:
            if "result" not in state:
                state["result"] = pipeline.run()
            state["result"].wait_until_finish()
        except BaseException as error:  # reported by the main thread
            state["error"] = error

    started = time.monotonic()
    runner = threading.Thread(target=target, name="pipeline", daemon=True)
    runner.start()
    progress = _Progress(title, positions, progress_s)
    while runner.is_alive() and not signals.requested.wait(0.2):
        why = stop_when() if stop_when is not None else None
        if why:
            signals.ask(why)
        progress.maybe_print()
    stopping = time.monotonic()
    if runner.is_alive():
        print(f"stopping on {signals.why}: finishing records in flight ...", file=sys.stderr, flush=True)
        kafka.drain_live_reads()
        runner.join(drain_s)
        if runner.is_alive() and state.get("result") is not None:
            state["cancelled"] = True
            try:
                state["result"].cancel()
            except Exception:  # noqa: BLE001 - not every runner can cancel
                pass
            runner.join(STOP_TIMEOUT_S - drain_s)
        if runner.is_alive():
            print(f"error: the pipeline did not stop within {STOP_TIMEOUT_S:g} s of {signals.why}; exiting "
                  f"without it (records since the last commit will be read again)", file=sys.stderr, flush=True)
            force_exit(1, signals.before_forced_exit)
    if on_stop is not None:
        on_stop()
    if "error" in state and not (state.get("cancelled") and "CANCELLED" in str(state["error"])):
        error = state["error"]
        failure = one_line_failure(error)
        if failure:
            raise UserError(failure) from None
        raise error
    totals = cli.counters(state["result"])
    how = f"stopped on {signals.why} in {time.monotonic() - stopping:.1f} s" if signals.why else "finished"
    print(f"{title}: {how} after {time.monotonic() - started:.0f} s; "
          f"{_summary(totals, positions(), bool(state.get('cancelled')))}", file=sys.stderr, flush=True)
    return totals
