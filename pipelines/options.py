"""The project's pipeline flags, as Beam ``PipelineOptions`` views; Beam's own flags pass through.

Beam parses every imported options class together, so each flag is defined here once, in the
group it belongs to, and none is argparse-required: each pipeline says which it needs
(``pipelines.cli.require``).
"""
from apache_beam.options.pipeline_options import PipelineOptions

from models.inference import ENGINES
from transforms.fileio import DEFAULT_BATCH_SIZE


class SpecOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--spec", help="Use case: a built-in spec (fraud, sensor) or a path to a spec YAML file.")


class ArchiveOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--input", help="Glob of archived events: .jsonl, .jsonl.gz or .parquet files "
                                            "(local or any Beam filesystem, e.g. gs://bucket/events/*/*.jsonl.gz).")
        parser.add_argument("--output", help="Directory for scored records.")
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
        parser.add_argument("--engine", choices=ENGINES, default="onnx",
                            help="onnx (default): the version's model.onnx, features included, in onnxruntime. "
                                 "sklearn: tensorflow-transform's artifact, then the scikit-learn estimator.")


class TrainOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--holdout_fraction", type=float, default=0.2,
                            help="The latest share of events, by event time, held out for evaluation "
                                 "(default: 0.2). Features are analyzed on the rest only.")


class ScoreOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--mode", choices=("batch",), default="batch",
                            help="batch: score archived events (bounded).")
