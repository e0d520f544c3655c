"""Running a stream in this process: checks before it starts, then serving it until a signal.

A streaming command builds its graph, calls ``check_local_streaming`` and ``check_fused_with_source``
(so that what a local runner cannot run is one line, not a hang), then ``serve``s it.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from typing import Callable, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions
from apache_beam.transforms import userstate

from pipelines import cli, runners
from pipelines.options import KafkaOptions, StreamOptions
from transforms import kafka
from transforms.errors import UserError
from transforms.events import METRICS_NAMESPACE

STOP_TIMEOUT_S = 25.0  # a stop that takes longer ends the process (exit status 1)
DRAIN_TIMEOUT_S = 20.0  # after this long draining, a runner's job is cancelled
# Flink's streaming bundles close after 50 ms (the runner preset) and CommitWhenWritten commits at least every second,
# so this covers what is in flight and its last commit.
FLINK_DRAIN_S = 2.0


def check_local_streaming(options) -> None:
    """On the DirectRunner a stream runs in this process, where SIGTERM can drain it."""
    if runners.is_direct(options) and options.view_as(DirectOptions).direct_running_mode == "multi_processing":
        raise UserError("--mode stream on the DirectRunner runs in this process; drop "
                        "--direct_running_mode multi_processing (or use a streaming runner)")


def check_fused_with_source(pipeline, options) -> None:
    """Refuse, rather than hang, a streaming graph the DirectRunner cannot run live.

    The DirectRunner runs an unbounded Kafka read on the FnApiRunner stage by stage: whatever sits
    behind a GroupByKey or a stateful DoFn would never run. Such steps need a streaming runner.
    """
    if not runners.is_direct(options):
        return
    found = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            transform = node.transform
            if isinstance(transform, beam.GroupByKey) or (
                    isinstance(transform, beam.ParDo) and userstate.is_stateful_dofn(transform.dofn)):
                found.append(node.full_label)

    pipeline.visit(Visitor())
    if found:
        stages = ", ".join(dict.fromkeys(label.split("/")[0] for label in found))
        raise UserError(f"--mode stream: these stages group or keep state: {stages} (first: {found[0]}), which the "
                        f"DirectRunner cannot run behind an unbounded source (it would wait forever); use a streaming "
                        f"runner: --runner PrismRunner (python -m pipelines.artifacts builds it), FlinkRunner or "
                        f"DataflowRunner")


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


def check_topics(flags: KafkaOptions, stream: StreamOptions, config: dict) -> None:
    """A missing input topic is a one-line error before anything starts; missing output topics a warning
    (a cluster may create them on first write). An unreachable cluster is waited for by the pipeline."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    if flags.kafka_io == "beam":  # the config holds Java client properties, which librdkafka may refuse
        config = {}
    secrets = kafka.Secrets(config)
    try:
        admin = AdminClient({**kafka.resolved(config), "bootstrap.servers": flags.bootstrap_servers}, logger=secrets)
        found = admin.list_topics(timeout=10).topics
    except (KafkaException, ValueError, TypeError) as error:
        print(f"warning: cannot list the topics on {flags.bootstrap_servers} yet ({secrets.scrub(error)}); "
              f"starting anyway", file=sys.stderr, flush=True)
        return
    if flags.input_topic not in found:
        raise UserError(f"Kafka topic {flags.input_topic!r} (--input_topic) does not exist on "
                        f"{flags.bootstrap_servers}")
    for flag, topic in (("--output_topic", stream.output_topic), ("--dead_letter_topic", stream.dead_letter_topic)):
        if topic not in found:
            print(f"warning: Kafka topic {topic!r} ({flag}) does not exist yet; writes fail unless the cluster "
                  f"creates topics on first use", file=sys.stderr, flush=True)


_SIGNALS = ("SIGTERM", "SIGINT")


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


def _kafka_failure(error: BaseException) -> str | None:
    """The one-line reason if ``error`` (as the runner wrapped it) says a Kafka topic does not exist, or that
    the broker refused records (a record over the topic's max.message.bytes, say)."""
    text = str(error)
    if "KafkaTopicNotFoundError" in text or isinstance(error, kafka.KafkaTopicNotFoundError):
        start = text.find("Kafka topic ")
        end = text.find("does not exist", start)
        if start >= 0 and end > start:
            return text[start:end + len("does not exist")] + "; create it, or check --input_topic"
        return "a Kafka topic does not exist; create it, or check --input_topic"
    if "KafkaDeliveryError" in text or isinstance(error, kafka.KafkaDeliveryError):
        match = re.search(r"(\d+ record\(s\) not delivered to '[^']*': [^\n\[]*)", text)
        what = match.group(1).strip() if match else "the broker refused records"
        return (f"{what}; the stream stopped, and the offsets of what was not written are not committed: they are "
                f"read again when it restarts")
    return None


def serve(pipeline, title: str, stop_when=None, on_stop=None,
          before_forced_exit: Sequence[Callable[[], object]] = ()) -> dict[str, int]:
    """Run a streaming pipeline until SIGTERM / SIGINT (or ``stop_when()`` returns a reason), then stop it cleanly.

    The pipeline runs in a thread, because on the DirectRunner ``pipeline.run()`` only returns when
    the pipeline has finished. To stop, live Kafka reads in this process (the DirectRunner's, and
    Prism's and Flink's LOOPBACK workers) are drained: they stop claiming records; what they read is
    scored, written and committed, keyed state is flushed by its end-of-window timers, and the
    pipeline ends. A job that has not ended after ``DRAIN_TIMEOUT_S`` is cancelled: Flink's streaming
    jobs never end by themselves (their sources stay open for checkpoints), so on Flink the drain gets
    ``FLINK_DRAIN_S`` to write what is in flight. A cancel loses nothing: on a streaming runner offsets
    are committed only once records are written, so a restart reads the rest again. Prints a one-line
    summary to stderr and returns the counters. A stop that cannot finish leaves the process at once,
    after ``before_forced_exit``.
    """
    kafka.reset_drain()
    state: dict = {}
    drain_s = FLINK_DRAIN_S if runners.runner_name(pipeline.options) == "FlinkRunner" else DRAIN_TIMEOUT_S

    # The DirectRunner's run() returns only when the pipeline has finished, so it runs in the thread; a
    # portable runner's (Prism, Flink) returns at once and must be called here: it installs signal handlers.
    if not runners.is_direct(pipeline.options):
        state["result"] = pipeline.run()

    def target():
        try:
            if "result" not in state:
                state["result"] = pipeline.run()
            state["result"].wait_until_finish()
        except BaseException as error:  # reported by the main thread
            state["error"] = error

    stop = threading.Event()
    reason = {"why": None}

    def on_signal(signum, _frame):
        if stop.is_set() and reason["why"] in _SIGNALS:  # a second Ctrl-C: leave now
            print(f"{signal.Signals(signum).name} again: exiting without waiting (records since the last commit "
                  f"will be read again)", file=sys.stderr, flush=True)
            force_exit(1, before_forced_exit)
        if reason["why"] is None:
            reason["why"] = signal.Signals(signum).name
        stop.set()

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    started = time.monotonic()
    runner = threading.Thread(target=target, name="pipeline", daemon=True)
    runner.start()
    try:
        while runner.is_alive() and not stop.wait(0.2):
            why = stop_when() if stop_when is not None else None
            if why:
                reason["why"] = why
                break
        stopping = time.monotonic()
        if runner.is_alive():
            print(f"stopping on {reason['why']}: finishing records in flight ...", file=sys.stderr, flush=True)
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
                print(f"error: the pipeline did not stop within {STOP_TIMEOUT_S:g} s of {reason['why']}; exiting "
                      f"without it (records since the last commit will be read again)", file=sys.stderr, flush=True)
                force_exit(1, before_forced_exit)
        if on_stop is not None:
            on_stop()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if "error" in state and not (state.get("cancelled") and "CANCELLED" in str(state["error"])):
        error = state["error"]
        failure = _kafka_failure(error)
        if failure:
            raise UserError(failure) from None
        raise error
    totals = cli.counters(state["result"])
    received = totals.get(f"{METRICS_NAMESPACE}/received", 0)
    out = (f"{totals[f'{METRICS_NAMESPACE}/assigned']:,} assigned" if f"{METRICS_NAMESPACE}/assigned" in totals
           else f"{totals.get(f'{METRICS_NAMESPACE}/scored', 0):,} scored")
    dead = sum(count for key, count in totals.items() if key.startswith(f"{METRICS_NAMESPACE}.dead_letter/"))
    how = f"stopped on {reason['why']} in {time.monotonic() - stopping:.1f} s" if reason["why"] else "finished"
    done = ("cancelled after draining; what was not yet written is read again on restart" if state.get("cancelled")
            else "all written, offsets committed")
    print(f"{title}: {how} after {time.monotonic() - started:.0f} s; {received:,} received, {out}, "
          f"{dead:,} dead-lettered; {done}", file=sys.stderr, flush=True)
    return totals
