"""Score events with a trained model version.

    python -m pipelines.score --spec fraud --mode batch --input 'data/fraud/*/*.jsonl' \
        --model_dir models/fraud --output out/scored --dead_letter out/dead_letter

Every input event comes out once: as a scored record under --output, or as a dead letter under
--dead_letter. Beam's flags (--runner, --direct_num_workers, --temp_location ...) pass through.
"""
from __future__ import annotations

import time

from models import registry
from models.inference import ScoreEvents
from pipelines import cli
from pipelines.options import ArchiveOptions, ModelOptions, ScoreOptions, SpecOptions
from transforms.events import ParseEvents
from transforms.fileio import ReadEventFiles, WriteJsonLines, WriteParquet, check_input
from transforms.spec import Spec, load_spec

VIEWS = (SpecOptions, ScoreOptions, ModelOptions, ArchiveOptions)


def score_events(raw_batches, spec: Spec, model: registry.ModelVersion, model_dir: str, engine: str):
    """The graph every mode shares: ``list[Raw]`` blocks in; scored record lists and dead letters out."""
    parsed = raw_batches | "ParseEvents" >> ParseEvents(spec)
    scored = parsed.events | "ScoreEvents" >> ScoreEvents(spec, model, model_dir, engine)
    return scored, parsed.dead_letters


def scored_schema(spec: Spec):
    """The Parquet schema of scored records (``--output_format parquet``)."""
    import pyarrow as pa

    fields = [("event_id", pa.string()), ("event_time", pa.string()), (spec.entity_key, pa.string()),
              ("score", pa.float64()), ("alert", pa.bool_()), ("model_version", pa.string())]
    if spec.label:
        fields.append((spec.label, pa.int8()))
    return pa.schema(fields)


def run(argv=None, test_pipeline=None) -> dict[str, int]:
    """Score archived events; returns the run's counters (received, valid, scored, dead letters by reason)."""
    options = cli.parse(argv, VIEWS, __doc__)
    flags = options.view_as(ArchiveOptions)
    model_flags = options.view_as(ModelOptions)
    cli.require(options, "spec", "input", "model_dir", "output", "dead_letter")
    spec = load_spec(options.view_as(SpecOptions).spec)
    model = registry.load(model_flags.model_dir, model_flags.model_version)
    if model.manifest["spec"]["fingerprint"] != spec.fingerprint:
        raise registry.ModelError(
            f"model {model.version} was trained on spec {model.manifest['spec']['name']} with other fields or "
            f"features than --spec {spec.source}; train a model for this spec")
    check_input(flags.input)

    started = time.monotonic()
    pipeline = cli.create_pipeline(options, test_pipeline)
    raw = pipeline | "ReadEvents" >> ReadEventFiles(flags.input, flags.batch_size)
    scored, dead_letters = score_events(raw, spec, model, model_flags.model_dir, model_flags.engine)
    if flags.output_format == "parquet":
        scored | "WriteScored" >> WriteParquet(flags.output, "scored", scored_schema(spec))
    else:
        scored | "WriteScored" >> WriteJsonLines(flags.output, "scored")
    dead_letters | "WriteDeadLetters" >> WriteJsonLines(flags.dead_letter, "dead_letter")
    result = pipeline.run()
    result.wait_until_finish()

    totals = cli.counters(result)
    print(cli.summary(f"{spec.name} batch scoring with model {model.version}", totals, time.monotonic() - started,
                      {"scored": f"{flags.output}/scored-*.{flags.output_format}",
                       "dead letters": f"{flags.dead_letter}/dead_letter-*.jsonl"}))
    return totals


if __name__ == "__main__":
    cli.main(run)
