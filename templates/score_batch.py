"""Flex-template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE) of the score-batch template.

The Dataflow template launcher runs ``python score_batch.py --param=value ... --runner=DataflowRunner
--project=... --region=...``; this is ``python -m pipelines.score --mode batch`` with those flags.
"""
import sys

from pipelines import cli, score

if __name__ == "__main__":
    cli.main(lambda _argv: score.run(["--mode", "batch", *sys.argv[1:]]))
