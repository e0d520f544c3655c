"""Flex-template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE) of the train template.

The Dataflow template launcher runs ``python train.py --param=value ... --runner=DataflowRunner
--project=... --region=...``; this is ``python -m pipelines.train`` with those flags.
"""
import sys

from pipelines import cli, train

if __name__ == "__main__":
    cli.main(lambda _argv: train.run(sys.argv[1:]))
