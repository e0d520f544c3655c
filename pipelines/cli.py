"""What every command-line entry point shares: flags, one-line errors, the end-of-run summary."""
from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib.util
import json
import logging
import os
import re
import sys
import threading
from typing import Callable, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from pipelines.options import LogOptions
from pipelines import runners
from pipelines.runners import RunnerPresetOptions
from transforms.errors import IncompleteInput, UserError, first_line
from transforms.events import METRICS_NAMESPACE, rfc3339
from transforms.fileio import UNREADABLE_NAMESPACE

_REASONS_SHOWN = 12
PROG: str | None = None  # how --help names the command (rtml sets it; else "python -m <module>")
BEAMS_FLAGS = ("Beam's pipeline options pass through: --runner (DirectRunner, PrismRunner, FlinkRunner,\n"
               "DataflowRunner) and each runner's own (--direct_num_workers, --flink_master, --project ...):\n"
               "https://beam.apache.org/releases/pydoc/current/apache_beam.options.pipeline_options.html")


def parse(argv: Sequence[str] | None, views: Sequence[type[PipelineOptions]], description: str,
          required: dict[str, Sequence[str]] | None = None) -> PipelineOptions:
    """Beam pipeline options from argv: the command's own flags (``views``) and Beam's; ``--help``
    prints them and exits, marking those ``required`` ({case, e.g. a --mode: flag names}; "" for every run).

    Unlike Beam's default (a warning), an unknown flag is an error: a mistyped optional flag
    would otherwise be ignored silently, and so would another command's flag.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(_help(views, description, required or {}))
        raise SystemExit(0)
    parser = _OneLineParser(allow_abbrev=False)
    for cls in (*_beam_views(), RunnerPresetOptions, LogOptions, *views):
        cls._add_argparse_args(parser)
    known = [option for action in parser._actions for option in action.option_strings]
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name.startswith("--") and name not in known:
            raise UserError(_unknown_flag(name, known))
    parsed, left_over = parser.parse_known_args(argv)
    if left_over:  # a value without a flag; not quoted, as it may be a secret (--kafka_config KEY VALUE)
        raise UserError(f"argument #{argv.index(left_over[0]) + 1} is a value without a flag (not shown: it may be "
                        f"a secret); a flag takes one value, and --kafka_config one KEY=VALUE")
    if parsed.log_format == "json":
        logging.basicConfig(force=True, level=logging.getLogger().level or logging.WARNING)
        logging.getLogger().handlers[0].setFormatter(_JsonLines())
    return PipelineOptions(argv)


class _JsonLines(logging.Formatter):
    """A log record as one JSON object: time (RFC 3339, UTC), level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": rfc3339(int(record.created * 1_000_000)), "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def only(view: type[PipelineOptions], *flags: str) -> type[PipelineOptions]:
    """``view`` with only some of its flags (names without dashes), for a command that uses only those; the
    others are refused as another command's. ``options.view_as(view)`` reads them as before."""

    class Only(view):
        @classmethod
        def _add_argparse_args(cls, parser):
            view._add_argparse_args(_Some(parser, flags))

    Only.__name__ = view.__name__
    return Only


class _Some:
    """A parser that takes only some flags."""

    def __init__(self, parser, flags: Sequence[str]):
        self._parser, self._flags = parser, flags

    def add_argument(self, *names, **kwargs):
        if any(name.lstrip("-") in self._flags for name in names):
            return self._parser.add_argument(*names, **kwargs)
        return None

    def __getattr__(self, name):
        return getattr(self._parser, name)


class _OneLineParser(_BeamArgumentParser):
    def error(self, message):
        raise UserError(f"{message}; see --help")


def _beam_views() -> list[type[PipelineOptions]]:
    return list({str(c): c for c in PipelineOptions.__subclasses__() if c.__module__.startswith("apache_beam.")}.values())


def _unknown_flag(name: str, known: list[str]) -> str:
    for cls in PipelineOptions.__subclasses__():
        if cls.__module__.startswith("apache_beam."):
            continue
        if name in _flags(cls):
            return f"{name} is not a flag of this command (it is one of the {_group(cls)} flags); see --help"
    close = difflib.get_close_matches(name, known, n=1)
    return f"unknown flag {name}" + (f" (did you mean {close[0]}?)" if close else "") + "; see --help"


def _group(view: type[PipelineOptions]) -> str:
    """An options class's flags as --help groups them: LiveMonitorOptions is "live monitor"."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", view.__name__.removesuffix("Options")).lower()


def missing_extra(extra: str, *modules: str) -> str | None:
    """Why this cannot run, in one line, if any of ``modules`` is not installed (they come with ``extra``)."""
    absent = [module for module in modules if not _installed(module)]
    if not absent:
        return None
    return f"{', '.join(absent)} not installed: this needs the {extra} extra (pip install -c constraints.txt '.[{extra}]')"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def given(options: PipelineOptions, name: str) -> bool:
    """Whether --name was on the command line (not just defaulted)."""
    return any(arg.split("=", 1)[0] == f"--{name}" for arg in options._flags)


FILE_FLAGS = ("input", "output", "dead_letter", "output_format")  # ArchiveOptions' flags that only files use


def refuse(options: PipelineOptions, views: Sequence[type[PipelineOptions]], why: str) -> None:
    """A one-line error for a flag of ``views`` given where it would have no effect (``why`` says where it has)."""
    for view in views:
        for flag in _flags(view):
            if given(options, flag.lstrip("-")):
                raise UserError(f"{flag} {why}; see --help")


def _flags(view: type[PipelineOptions]) -> list[str]:
    """The flags an options class adds (``--name``)."""
    parser = argparse.ArgumentParser()
    view._add_argparse_args(parser)
    return [action.option_strings[0] for action in parser._actions if action.option_strings and
            action.option_strings[0] != "-h"]


def require(options: PipelineOptions, *names: str) -> None:
    values = options.get_all_options()
    missing = [f"--{n}" for n in names if values.get(n) in (None, "")]
    if missing:
        raise UserError(f"missing {', '.join(missing)}; see --help")


def _help(views: Sequence[type[PipelineOptions]], description: str, required: dict[str, Sequence[str]]) -> str:
    main_spec = getattr(sys.modules["__main__"], "__spec__", None)
    parser = argparse.ArgumentParser(prog=PROG or (f"python -m {main_spec.name}" if main_spec else None),
                                     description=description, add_help=True,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=BEAMS_FLAGS)
    for view in (*views, RunnerPresetOptions, LogOptions):
        view._add_argparse_args(parser.add_argument_group(f"{_group(view)} options"))
    for action in parser._actions:
        cases = [case for case, names in required.items() if action.dest in names]
        if cases:
            when = "" if len(cases) == len(required) else " with " + " or ".join(cases)
            action.help = f"[required{when}] " + (action.help or "")
    return parser.format_help()


def create_pipeline(options: PipelineOptions, test_pipeline: beam.Pipeline | None) -> beam.Pipeline:
    if test_pipeline is not None:
        return test_pipeline
    try:
        return beam.Pipeline(runner=runners.LocalDirectRunner() if runners.is_direct(options) else None,
                             options=options)
    except ValueError as error:  # e.g. an unknown --runner
        raise UserError(first_line(error)) from None


def counters(result) -> dict[str, int]:
    """Committed counters of the project's namespaces, by ``namespace/name``.

    Empty where the runner has none to give: a template written or a job translated (dry run).
    """
    try:
        queried = result.metrics().query(MetricsFilter())["counters"]
    except (ValueError, NotImplementedError, AttributeError):
        return {}
    found = {}
    for counter in queried:
        name = counter.key.metric
        if name.namespace.startswith(METRICS_NAMESPACE):
            key = f"{name.namespace}/{name.name}"
            found[key] = found.get(key, 0) + (counter.committed or counter.attempted or 0)
    return found


def summary(title: str, totals: dict[str, int], seconds: float, outputs: dict[str, str]) -> str:
    """The end-of-run summary: counts in and out, dead letters by reason, time, where results are."""
    received, valid = totals.get(f"{METRICS_NAMESPACE}/received", 0), totals.get(f"{METRICS_NAMESPACE}/valid", 0)
    lines = [f"{title}: {received:,} events in {seconds:.1f} s "
             f"({received / max(seconds, 1e-9):,.0f} events/s)"]
    for key in ("valid", "scored", "assigned"):
        if f"{METRICS_NAMESPACE}/{key}" in totals:
            lines.append(f"  {key:<13}{totals[f'{METRICS_NAMESPACE}/{key}']:>12,}")
    reasons = {}
    for key, count in totals.items():
        if key.startswith(f"{METRICS_NAMESPACE}.dead_letter/"):
            reason = key.split("/", 1)[1].split(" (", 1)[0]
            reasons[reason] = reasons.get(reason, 0) + count
    lines.append(f"  {'dead-lettered':<13}{sum(reasons.values()):>12,}")
    ranked = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    for reason, count in ranked[:_REASONS_SHOWN]:
        lines.append(f"    {count:>10,}  {reason}")
    if len(ranked) > _REASONS_SHOWN:
        rest = ranked[_REASONS_SHOWN:]
        lines.append(f"    {sum(c for _, c in rest):>10,}  ({len(rest)} other reasons; see the dead letters)")
    if received != valid + sum(reasons.values()):
        lines.append("  WARNING: received != valid + dead-lettered")
    lines += [f"  {'unreadable':<13}{path}" for path in unreadable_files(totals)]
    lines += [f"  {name:<13}{where}" for name, where in outputs.items()]
    return "\n".join(lines)


def unreadable_files(totals: dict[str, int]) -> list[str]:
    """The input files a run could not read to their end (``transforms.fileio.file_blocks``)."""
    return sorted(key.split("/", 1)[1] for key in totals if key.startswith(f"{UNREADABLE_NAMESPACE}/"))


def check_whole_input(totals: dict[str, int], consequence: str) -> None:
    """IncompleteInput if some input files could not be read to their end."""
    paths = unreadable_files(totals)
    if paths:
        raise incomplete_input(paths, consequence)


def incomplete_input(paths: list[str], consequence: str) -> IncompleteInput:
    """The one-line error of input files (``paths``, sorted) that could not be read to their end."""
    shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return IncompleteInput(f"{len(paths)} input file{'s' if len(paths) > 1 else ''} could not be read to the end "
                           f"({shown}; their dead letters say from where and why); {consequence}")


@contextlib.contextmanager
def stderr_to(file):
    """The process's stderr (file descriptor 2, which native libraries write to) goes to ``file`` for a while."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def main(run: Callable[[Sequence[str] | None], object]) -> None:
    """Run an entry point; a user's mistake is one line on stderr and exit status 2 (input files that could
    not be read to their end: 3), never a traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().addFilter(_not_beams_missing_torch_warning)
    logging.getLogger().handlers[0].addFilter(_not_retry_noise)  # (--log_format json replaces this handler)
    failure = None
    try:
        run(None)
    except UserError as error:
        failure = error
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    finally:
        _other_threads_unheard()
    if failure is not None:
        print(f"error: {failure}", file=sys.stderr)
        raise SystemExit(failure.exit_status)


def _other_threads_unheard() -> None:
    """From here the command's result is the last word. Prism's and Flink's LOOPBACK workers are threads of this
    process that outlive their job: as it ends, and as this process's exit stops Prism, their bundles fail to reach
    the job's state and their gRPC streams break, and each logged or raised a traceback after the stream's one-line
    reason or summary (seen in about one stop in three on a busy machine)."""
    this_thread = threading.get_ident()
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: record.thread == this_thread)
    threading.excepthook = lambda _: None


# Beam retries a call to Google for up to about 30 s, logging each try with the exception's traceback: without
# credentials, `rtml train --model_dir gs://...` printed 45 lines before its one-line error, which says what failed.
_RETRY_LOGGERS = frozenset({"apache_beam.utils.retry", "apache_beam.internal.gcp.auth"})
# Beam warns of every start and stop of a Java service (Flink's job server), with its whole command line, a line
# before and after what a Flink command says.
_SERVICE_LOGGER = "apache_beam.utils.subprocess_server"


def _not_retry_noise(record: logging.LogRecord) -> bool:
    """Kept out of the terminal: each try of Beam's retries, its note on credentials, and its notes of a Java
    service's start and stop; --log_format json keeps them."""
    return record.name not in _RETRY_LOGGERS and not (
        record.name == _SERVICE_LOGGER and record.getMessage().startswith(("Really starting", "Really destroying")))


def _not_beams_missing_torch_warning(record: logging.LogRecord) -> bool:
    """Beam 2.77 imports ``resource`` together with its torch-only model manager, so without torch each model
    load warns that memory cannot be measured: Beam's own load metric, which nothing here reads."""
    return not record.getMessage().startswith("Resource module is not available")
