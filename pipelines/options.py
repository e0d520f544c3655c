"""The project's pipeline flags, as Beam ``PipelineOptions`` views; Beam's own flags pass through.

Beam parses every imported options class together, so each flag is defined here once, in the
group it belongs to, and none is argparse-required: each pipeline says which it needs
(``pipelines.cli.require``).
"""
import argparse

from apache_beam.options.pipeline_options import PipelineOptions

from models.inference import ENGINES
from models.kmeans import DEFAULTS as KMEANS_DEFAULTS, LEARNING_RATES
from transforms.fileio import DEFAULT_BATCH_SIZE
from transforms.kafka_formats import FORMATS as VALUE_FORMATS


class SpecOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--spec", help="Use case: a built-in spec (fraud, fraud_entity, offers, sensor, sensor_entity, "
                                           "sensor_autoencoder, sensor_failure) or a path to a spec YAML file.")


class ArchiveOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--input", help="Glob of archived events: .jsonl, .jsonl.gz or .parquet files "
                                            "(local or any Beam filesystem, e.g. gs://bucket/events/*/*.jsonl.gz).")
        parser.add_argument("--output", help="Directory for scored records (pipelines.monitor: for monitoring "
                                             "and alert records; pipelines.cluster: for cluster assignments).")
        parser.add_argument("--dead_letter", help="Directory for dead letters: every input that breaks the "
                                                  "spec's contract, with the reason and where it came from.")
        parser.add_argument("--output_format", choices=("jsonl", "parquet"), default="jsonl",
                            help="Format of scored records (default: jsonl). Dead letters are always JSON Lines.")
        parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE,
                            help=f"Events per batch through parsing, features and the model "
                                 f"(default: {DEFAULT_BATCH_SIZE}).")


class ModelOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--model_dir", help="Directory of model versions (pipelines.train writes it; "
                                                "its CURRENT file names the version used by default).")
        parser.add_argument("--model_version", help="Score with this version instead of the current one.")
        parser.add_argument("--model_signing_key_env", metavar="NAME",
                            help="Sign (training) or require signed (scoring) model versions: HMAC-SHA256 of the "
                                 "manifest under the key in the environment variable NAME (never on the command "
                                 "line). Scoring refuses an unsigned version or one signed with another key.")


class EngineOptions(PipelineOptions):
    """The commands that score: how the model version runs."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--engine", choices=ENGINES, default="onnx",
                            help="onnx (default): the version's model.onnx, features included, in onnxruntime. "
                                 "sklearn: tensorflow-transform's artifact, then the scikit-learn estimator.")


class ReloadOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--model_poll_seconds", type=float, default=60.0,
                            help="--mode stream: read --model_dir's CURRENT this often and switch to a new version "
                                 "without a restart, between batches (default: 60; at least 2). A tampered, "
                                 "incomplete or other-spec version is refused with an alert and the serving one "
                                 "stays. 0, or --model_version: the version is fixed at start. Batch mode always "
                                 "keeps its start version.")


class TrainOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--holdout_fraction", type=float, default=0.2,
                            help="The latest share of events, by event time, held out for evaluation "
                                 "(default: 0.2). Features are analyzed on the rest only.")


class ScoreOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--mode", choices=("batch", "stream"), default="batch",
                            help="batch: archived events (bounded). stream: events live from Kafka until "
                                 "stopped (SIGTERM or Ctrl-C), with the same graph; implies --streaming.")


class KafkaOptions(PipelineOptions):
    """The Kafka cluster, the topic of events, and the client settings: every command that reads or writes Kafka.

    ``--bootstrap_servers`` is also Beam's own flag (``KafkaStreamsRunnerOptions``, default
    localhost:9092): when Beam parses, that definition stands (so ``cli.given`` tells whether it
    was on the command line); in ``--help`` this one shows, with its help text.
    """

    @classmethod
    def _add_argparse_args(cls, parser):
        try:  # in --help, with this text; when parsing, Beam's KafkaStreamsRunnerOptions has defined it already
            parser.add_argument(
                "--bootstrap_servers",
                help="Kafka brokers, host:port[,host:port]. (A self-contained demo with its own local broker: "
                     "rtml demo stream.)")
        except argparse.ArgumentError:
            pass
        parser.add_argument("--input_topic", help="Topic of events (JSON values keyed by entity id): the one a stream "
                                                  "reads, rtml produce writes, a Kafka backfill replays.")
        parser.add_argument("--kafka_config", action="append", metavar="KEY=VALUE",
                            help="A librdkafka setting for every client (consumer and producers), e.g. "
                                 "security.protocol=SASL_SSL, sasl.mechanism=PLAIN, sasl.username=..., "
                                 "sasl.password=...; repeat the flag for more (with --kafka_io beam: Java client "
                                 "properties). Values are masked in output.")
        parser.add_argument("--kafka_config_file", metavar="PATH",
                            help="A properties file of such settings (KEY=VALUE lines; # comments); --kafka_config "
                                 "items override it.")
        parser.add_argument("--kafka_secret", action="append", metavar="KEY=env:NAME|KEY=secretmanager:NAME",
                            help="A setting whose value is the environment variable NAME's, or the Google Secret "
                                 "Manager secret version NAME's (projects/P/secrets/S/versions/V), read where each "
                                 "client is made (the workers too), so the value is never on a command line or in "
                                 "the pipeline; repeat for more.")
        parser.add_argument("--value_format", choices=VALUE_FORMATS, default="json",
                            help="The events' message values: json (default), avro (the spec's Avro record, "
                                 "rtml schema --format avro, nothing around it), confluent-avro or confluent-json "
                                 "(Schema Registry framing; the writer's schema by its id from "
                                 "--schema_registry_url). Scored records, dead letters and monitoring records are "
                                 "written as JSON.")
        parser.add_argument("--schema_registry_url", metavar="URL",
                            help="A Confluent Schema Registry (or a compatible one) for the confluent-* formats. "
                                 "While it cannot be reached, or refuses the credentials, a stream waits (a warning "
                                 "every 30 s): only a schema id the registry does not know is a dead letter.")
        parser.add_argument("--schema_registry_config", action="append", metavar="KEY=VALUE",
                            help="A setting of confluent-kafka's registry client, e.g. ssl.ca.location=PATH; "
                                 "repeat the flag for more.")
        parser.add_argument("--schema_registry_secret", action="append",
                            metavar="KEY=env:NAME|KEY=secretmanager:NAME",
                            help="A registry client setting read as --kafka_secret's are, e.g. "
                                 "basic.auth.user.info=env:SR_USER_INFO (its value ID:PASSWORD).")
        parser.add_argument("--kafka_io", choices=("python", "beam"), default="python",
                            help="python (default): the project's Kafka IO (confluent-kafka). beam: Beam's own "
                                 "cross-language KafkaIO (Java), as Flink and Dataflow users run it; rtml score "
                                 "--mode stream on the FlinkRunner only, with no allowed delay "
                                 "(see docs/live-scoring.md).")


class StreamOptions(PipelineOptions):
    """A live stream's outputs, consumer group and allowed lateness (rtml score and cluster, --mode stream)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--output_topic", help="Topic for scored records: JSON values keyed by the entity id.")
        parser.add_argument("--dead_letter_topic",
                            help="Topic for dead letters: JSON values keyed by the original message's key.")
        parser.add_argument("--group_id",
                            help="Consumer group whose committed offsets say where to resume; offsets are committed "
                                 "once records are scored and written (default: rtml-score-<spec name>).")
        parser.add_argument("--offset_reset", choices=("earliest", "latest"), default="earliest",
                            help="Where to start in a partition the group has no committed offset for "
                                 "(default: earliest).")
        parser.add_argument("--max_delay_s", type=_delay, default=DEFAULT_MAX_DELAY_S, metavar="SECONDS",
                            help="How far out of order events may arrive and still count as on time: the stream's "
                                 "watermark is each partition's newest message timestamp less this (default: "
                                 f"{DEFAULT_MAX_DELAY_S:g}). An entity feature or monitoring window waits this long "
                                 "for its events; an event later than this is late (scored from a copy of its "
                                 "entity's history; counted, not added, in closed windows).")
        parser.add_argument("--partition_discovery_s", type=_delay, default=0.0, metavar="SECONDS",
                            help="List --input_topic's partitions this often, and read one added since from its "
                                 "beginning (default: 0, only those there at the start; others after a restart). On "
                                 "a streaming runner (Prism, Flink, Dataflow), with --kafka_io python.")
        parser.add_argument("--delivery", choices=(AT_LEAST_ONCE, EXACTLY_ONCE), default=AT_LEAST_ONCE,
                            help="at_least_once: records are written, then their input's offsets committed (a crash "
                                 "between the two writes some records again after the restart). exactly_once: each "
                                 "bundle's scored records and dead letters and its input's offsets are committed in "
                                 "one Kafka transaction, so a read_committed consumer of the outputs sees every input "
                                 "event's record once, across crashes and restarts; on the DirectRunner and Prism, "
                                 "for a stream without entity features or monitoring (default: at_least_once).")
        parser.add_argument("--progress_s", type=_delay, default=60.0, metavar="SECONDS",
                            help="Every this many seconds, one line on stderr: events/s written, the lag (messages "
                                 "of --input_topic the group has not committed: not yet written, or not yet read) "
                                 "and, where the steps run in this process, the p99 from event time to scored "
                                 "(default: 60; 0: none).")
        parser.add_argument("--metrics_port", type=_port, default=0, metavar="PORT",
                            help="Serve the stream's metrics for Prometheus at http://HOST:PORT/metrics: events "
                                 "received, valid and scored, dead letters by reason, records written by topic, "
                                 "seconds from event time to scored, the group's lag by partition and the model "
                                 "version (default: 0, none). Where the Python steps run in this process: the "
                                 "DirectRunner, Prism, the embedded Flink.")


class LiveMonitorOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--monitoring_topic",
                            help="Also monitor the stream per event-time window (rates, scores, alerts, drift from "
                                 "training; see pipelines.monitor) and write window and alert records to this topic, "
                                 "keyed by window. Runs on a streaming runner (Prism, Flink, Dataflow).")


class LogOptions(PipelineOptions):
    """Every command that parses its flags with cli.parse takes these."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--log_format", choices=("text", "json"), default="text",
                            help="json: each log line is one JSON object (time, level, logger, message), for log "
                                 "collectors; the summaries on stdout stay text (default: text).")


class ProduceOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--rate", type=float, metavar="EVENTS_PER_S",
                            help="Send at most this many messages a second (default: as fast as the broker takes them).")
        parser.add_argument("--speedup", type=float, metavar="N",
                            help="Send each event when its event time comes, at N times real pace, counted from the "
                                 "first event's time (e.g. 3600: an hour of events a second).")


class ReportOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--report", metavar="PATH", help="The HTML file to write (any Beam filesystem).")
        parser.add_argument("--monitoring", metavar="DIR",
                            help="pipelines.monitor's --output: its windows-*.jsonl and alerts-*.jsonl.")
        parser.add_argument("--scored", metavar="GLOB", help="Scored records (pipelines.score's or backfill's output).")
        parser.add_argument("--snapshots", metavar="DIR", help="pipelines.cluster's --snapshot_dir: the current "
                                                               "snapshot's centers are drawn.")
        parser.add_argument("--assignments", metavar="GLOB", help="pipelines.cluster's assignment records.")


class SchemaOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--format", choices=("avro", "json-schema"), default="avro",
                            help="avro (default): an Avro record schema. json-schema: JSON Schema draft 2020-12.")


class DemoOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--demo_seconds", type=float, default=30.0,
                            help="How long the stream demo scores, from its first scored record, before it stops "
                                 "by itself (default: 30).")


DEFAULT_MAX_DELAY_S = 1.0
AT_LEAST_ONCE, EXACTLY_ONCE = "at_least_once", "exactly_once"  # --delivery


def _delay(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"not a number of seconds from 0 to 86400: {text!r}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port number from 1 to 65535 (0: none): {text!r}")
    return int(text)


def _seconds(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds > 0: {text!r}")
    return int(text)


class MonitorOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--window_s", type=_seconds, action="append", metavar="SECONDS",
                            help="Monitoring window size in seconds, by event time; repeat for more (default: the "
                                 "spec's monitoring.windows). In stream mode, with --monitoring_topic.")


class ClusterOptions(PipelineOptions):
    """pipelines.cluster: mini-batch k-means (models/kmeans.py) and its snapshots.

    The k-means settings default to the --init_snapshot's when it is given (--k must then equal its k).
    """

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--k", type=int, help="Number of clusters (required unless --init_snapshot gives it).")
        parser.add_argument("--minibatch_size", type=int,
                            help="Events per mini-batch, taken in event-time order; the first one also chooses the "
                                 f"initial centers by k-means++ (default: {KMEANS_DEFAULTS['minibatch_size']}).")
        parser.add_argument("--learning_rate", choices=LEARNING_RATES,
                            help="How far a point moves its center, for a center that has now learned from v points: "
                                 "inverse_count 1/v (Sculley's; the default), constant --eta, or decayed "
                                 "v ** -decay (--decay).")
        parser.add_argument("--eta", type=float,
                            help=f"The constant learning rate, in (0, 1] (default: {KMEANS_DEFAULTS['eta']}).")
        parser.add_argument("--decay", type=float,
                            help="The decayed learning rate's exponent, in (0, 1]: 1 is inverse_count, lower keeps "
                                 f"centers adapting longer (default: {KMEANS_DEFAULTS['decay']}).")
        parser.add_argument("--seed", type=int,
                            help=f"Random seed of the k-means++ initialisation (default: {KMEANS_DEFAULTS['seed']}).")
        parser.add_argument("--snapshot_dir",
                            help="Directory of versioned k-means snapshots (centers, counts, settings, the feature "
                                 "model version), laid out like --model_dir; a local or mounted directory.")
        parser.add_argument("--snapshot_every", type=int, default=10,
                            help="Write a snapshot every this many mini-batches, and one at the end (default: 10).")
        parser.add_argument("--init_snapshot", metavar="VERSION",
                            help="Start from this snapshot in --snapshot_dir (or 'current') instead of from scratch; "
                                 "it must have been made with the same --spec and feature model version.")


class BackfillOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--start", help="First moment to backfill, by event time: a UTC date (2026-03-01) or an "
                                            "RFC 3339 timestamp on a partition boundary; inclusive.")
        parser.add_argument("--end", help="End of the backfill, by event time (a UTC date or RFC 3339 timestamp on a "
                                          "partition boundary); exclusive.")
        parser.add_argument("--partition", choices=("day", "hour"), default="day",
                            help="Unit of output written and committed atomically, with its own manifest "
                                 "(default: day).")
        parser.add_argument("--force", action="store_true", default=False,
                            help="Recompute every partition in [start, end), complete ones included.")
        parser.add_argument("--yes", action="store_true", default=False,
                            help="Backfill a range longer than 366 days (refused without it, as likely a typo).")
        parser.add_argument("--redo_stale", action="store_true", default=False,
                            help="Also recompute complete partitions made with another model version or from "
                                 "other input files (without it they are reported and kept).")
        parser.add_argument("--source", choices=("files", "kafka"), default="files",
                            help="files (default): the archive --input. kafka: replay --input_topic from "
                                 "--bootstrap_servers (with --kafka_config; see pipelines.score --help), bounded by "
                                 "message timestamps around [start, end) (see --replay_margin_s); events are still "
                                 "selected by event time.")
        parser.add_argument("--replay_margin_s", type=float, default=3600.0,
                            help="--source kafka: also read messages stamped up to this many seconds before --start "
                                 "and after --end, for events whose message time differs from their event time "
                                 "(default: 3600).")
        parser.add_argument("--max_parallel", type=int, default=8,
                            help="Partitions per wave: each wave is one pipeline that reads --input once and "
                                 "holds its partitions' records until they are written (default: 8).")
