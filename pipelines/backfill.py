r"""Backfill: score an archive over an event-time range, partition by partition, rerunnable after any failure.

    python -m pipelines.backfill --spec fraud --input 'data/fraud/*/*.jsonl' --model_dir models/fraud \
        --output out/backfill/scored --dead_letter out/backfill/dead_letter \
        --start 2026-03-01 --end 2026-03-08 [--partition day|hour] [--max_parallel 8] [--force]

Events are selected by EVENT TIME in [--start, --end), whatever the files' layout, and written
per partition (a UTC day or hour): OUTPUT/dt=2026-03-01/scored.jsonl with _manifest.json, and
DEAD_LETTER/dt=2026-03-01/dead_letter.jsonl. Records are sorted by (event time, event_id), dead
letters by (file, line): the same input and model give byte-identical data files. Each partition
is committed all or nothing, so the same command after a crash (exception, SIGKILL, full disk)
redoes only the partitions that are not complete. A dead letter without a usable event time (not
JSON, no valid event time, cut for size) goes to the `_untimed` unit, written once per output
directory by the first backfill that finds it missing. Complete partitions made with another model
version or from other input files are reported and kept unless --redo_stale or --force.
--output and --dead_letter may be local directories or on Cloud Storage (gs://). One backfill at a
time per --output (a lock file, or a lock object on Cloud Storage).

A spec with entity features (``transforms/entity.py``) computes them over all of --input before
selecting the range, so the values equal a continuous run's when --input holds the spec's longest
entity window of history before --start (a Kafka replay reads that much further back itself).

    python -m pipelines.backfill --source kafka --bootstrap_servers host:9092 --input_topic events ...

replays a topic instead: messages stamped in [start - margin, end + margin) (--replay_margin_s),
events selected by event time as above; a message without a usable event time is dead-lettered
in the partition of its message timestamp.
"""
from __future__ import annotations

import dataclasses
import datetime
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time

import apache_beam as beam
import orjson
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils.timestamp import Timestamp

from models.inference import ScoreEvents
from pipelines import cli, graph, locks, runners, serving
from pipelines.options import ArchiveOptions, BackfillOptions, EngineOptions, KafkaOptions, ModelOptions, SpecOptions
from transforms import kafka, kafka_access, storage
from transforms.errors import UserError
from transforms.events import EventBatch, ScoredBatch, dead_letter_time_us, event_time_us_of, utc_datetime
from transforms.field_checks import is_event_time
from transforms.fileio import UNREADABLE_REASON, ReadEventFiles, check_input

VIEWS = (SpecOptions, ModelOptions, EngineOptions, ArchiveOptions, BackfillOptions, KafkaOptions)
_EVERY_BACKFILL = ("spec", "model_dir", "output", "dead_letter", "start", "end")
REQUIRED = {"--source files": ("input", *_EVERY_BACKFILL),
            "--source kafka": ("bootstrap_servers", "input_topic", *_EVERY_BACKFILL)}
MANIFEST = "_manifest.json"
SCORED_FILE = "scored.jsonl"
DEAD_LETTER_FILE = "dead_letter.jsonl"
UNTIMED = "_untimed"
LOCK = "_backfill.lock"
TABLE_ROWS = 60  # longer ranges list skipped partitions in one line
UNIT_US = {"day": 86_400_000_000, "hour": 3_600_000_000}
_NAME = {"day": re.compile(r"dt=\d{4}-\d{2}-\d{2}\Z"), "hour": re.compile(r"dt=\d{4}-\d{2}-\d{2}T\d{2}\Z")}
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_YEAR_10000_US = 253_402_300_800_000_000
MAX_DAYS_UNASKED = 366  # a longer range is more likely a typo (2000..2030) than a plan: it needs --yes


# ---------------------------------------------------------------------------------------------
# Partitions


def partition_name(start_us: int, partition: str) -> str:
    moment = utc_datetime(start_us)
    return "dt=" + moment.strftime("%Y-%m-%d" if partition == "day" else "%Y-%m-%dT%H")


def parse_moment(flag: str, text: str, partition: str) -> int:
    """--start / --end as microseconds since the epoch: a UTC date or an RFC 3339 timestamp on a boundary."""
    try:
        if _DATE.match(text):
            moment_us = event_time_us_of(datetime.datetime.combine(datetime.date.fromisoformat(text), datetime.time(),
                                                           datetime.timezone.utc))
        elif is_event_time(text):
            moment_us = event_time_us_of(text)
        else:
            raise ValueError
    except (ValueError, OverflowError):
        raise UserError(f"--{flag} {text}: not a UTC date (2026-03-01) or an RFC 3339 timestamp with a zone "
                        f"(2026-03-01T06:00:00Z)") from None
    if not 0 <= moment_us < _YEAR_10000_US:
        raise UserError(f"--{flag} {text}: must be from 1970 on (and before the year 10000)")
    if moment_us % UNIT_US[partition]:
        raise UserError(f"--{flag} {text}: not on a {partition} boundary (UTC); partitions are whole UTC "
                        f"{partition}s")
    return moment_us


def input_fingerprint(pattern: str) -> tuple[str, int]:
    """sha256 over the sorted matched files' paths, sizes and modification times; and the number of files."""
    check_input(pattern)
    matched = sorted(FileSystems.match([pattern])[0].metadata_list, key=lambda m: m.path)
    digest = hashlib.sha256()
    for meta in matched:
        digest.update(f"{meta.path}\0{meta.size_in_bytes}\0{meta.last_updated_in_seconds!r}\n".encode())
    return digest.hexdigest(), len(matched)


# ---------------------------------------------------------------------------------------------
# Writing and committing one partition (runs in the pipeline's workers)


@dataclasses.dataclass(frozen=True)
class Target:
    """Everything a worker needs to write a unit: where, and what its manifest says."""

    output: str
    dead_letter: str
    spec: str
    partition: str
    model_version: str
    input_fingerprint: str
    input_files: int | None  # None for --source kafka
    source: str = "files"
    kafka: tuple = ()  # (bootstrap_servers, topic, config items, margin in µs) for --source kafka
    lock_token: str | None = None  # a lock object's on Cloud Storage: checked before each commit


def _write_lines(path: str, lines: list[bytes]) -> dict:
    """Write JSON Lines whole (``storage.write_file``); the file's name, size, sha256 and line count."""
    data = b"".join(line + b"\n" for line in lines)
    storage.write_file(path, data)
    return {"file": path.rstrip("/").rsplit("/", 1)[-1], "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "lines": len(lines)}


def unit_bounds(name: str, partition: str) -> tuple[str, str] | tuple[None, None]:
    if name == UNTIMED:
        return None, None
    text = name[3:]
    moment = datetime.datetime.strptime(text, "%Y-%m-%d" if partition == "day" else "%Y-%m-%dT%H").replace(
        tzinfo=datetime.timezone.utc)
    start = event_time_us_of(moment)
    return Timestamp(micros=start).to_rfc3339(), Timestamp(micros=start + UNIT_US[partition]).to_rfc3339()


def write_unit(target: Target, name: str, scored_lines: list[bytes], dead_lines: list[bytes]) -> dict:
    """Write a unit, all or nothing: its manifest, written last, is the commit.

    A unit is complete when OUTPUT/<unit>/_manifest.json exists and every file it lists is there
    with its size. A unit being redone is uncommitted first (its manifest removed), then each file
    is written whole, the manifest last: a crash anywhere (SIGKILL, full disk) leaves the unit
    incomplete, and a rerun redoes it. This holds on a local filesystem and on Cloud Storage alike.
    """
    manifest_path = FileSystems.join(target.output, name, MANIFEST)
    _check_lock(target)
    storage.delete_file(manifest_path)
    files = {"dead_letters": _write_lines(FileSystems.join(target.dead_letter, name, DEAD_LETTER_FILE), dead_lines)}
    if name != UNTIMED:
        files["scored"] = _write_lines(FileSystems.join(target.output, name, SCORED_FILE), scored_lines)
    start, end = unit_bounds(name, target.partition)
    manifest = {
        "partition": name, "kind": "untimed" if name == UNTIMED else target.partition, "start": start, "end": end,
        "spec": target.spec, "model_version": None if name == UNTIMED else target.model_version,
        "source": target.source, "input_fingerprint": target.input_fingerprint, "input_files": target.input_files,
        "counts": {"in": len(scored_lines) + len(dead_lines), "scored": len(scored_lines),
                   "dead_lettered": len(dead_lines)},
        "files": files,
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace(
            "+00:00", "Z"),
    }
    commit(target, manifest_path, manifest)
    return manifest


def commit(target: Target, manifest_path: str, manifest: dict) -> None:
    _check_lock(target)
    storage.write_file(manifest_path, json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")


def _check_lock(target: Target) -> None:
    if target.lock_token:  # a lock object on Cloud Storage: workers may run anywhere
        locks.check_held(FileSystems.join(target.output, LOCK), target.lock_token)


def read_complete(output: str, dead_letter: str, name: str) -> dict | None:
    """A unit's manifest if the unit is complete (manifest there, every file it lists with its size); else None."""
    try:
        manifest = json.loads(storage.read_file(FileSystems.join(output, name, MANIFEST)) or b"null")
        for key, entry in manifest["files"].items():
            directory = output if key == "scored" else dead_letter
            if storage.file_size(FileSystems.join(directory, name, entry["file"])) != entry["bytes"]:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest


# ---------------------------------------------------------------------------------------------
# The wave's pipeline


def _in_wave(batch: EventBatch, unit_us: int, starts: frozenset):
    keep = [i for i, t in enumerate(batch.event_time_us) if t - t % unit_us in starts]
    if len(keep) == len(batch.events):
        yield batch
    elif keep:
        yield EventBatch([batch.events[i] for i in keep], [batch.event_time_us[i] for i in keep])


def _key_records(scored: ScoredBatch, time_field: str, partition: str):
    """A batch's scored records keyed by partition: (name, ("s", [(time_us, event_id, line), ...]))."""
    unit_us, by_unit = UNIT_US[partition], {}
    for record in scored.records:
        time_us = event_time_us_of(record[time_field])
        by_unit.setdefault(time_us - time_us % unit_us, []).append(
            (time_us, str(record["event_id"]), orjson.dumps(record)))
    for start, items in by_unit.items():
        yield partition_name(start, partition), ("s", items)


def _key_dead_letter(letter: dict, time_field: str, partition: str, names: frozenset):
    """A dead letter keyed by its partition; none if outside the wave; an unreadable file's to every unit.

    Without a usable event time: a Kafka message by its message timestamp, a file line in `_untimed`.
    """
    if letter["error"].startswith(UNREADABLE_REASON):  # the rest of the file may hold any unit's events
        for name in names:
            yield name, ("x", [])
        return
    source = letter.get("source") or {}
    time_us = dead_letter_time_us(letter, time_field)
    if time_us is None and "timestamp_ms" in source:
        time_us = source["timestamp_ms"] * 1000
    if time_us is None:
        name = UNTIMED
    else:
        name = partition_name(time_us - time_us % UNIT_US[partition], partition)
    if name in names:
        where = source.get("line", source.get("row", source.get("offset", 0)))
        yield name, ("d", [(str(source.get("file", source.get("topic", ""))), int(source.get("partition", 0)),
                            where if isinstance(where, int) else 0, orjson.dumps(graph.dead_letter_record(letter)[1]))])


class WriteUnits(beam.DoFn):
    """(unit, values) in; sorts the unit's records and dead letters, writes and commits it; its name out.

    A unit is not written when an input file could not be read to its end (an "x" value)."""

    def __init__(self, target: Target):
        self._target = target

    def process(self, element):
        name, values = element
        scored, dead = [], []
        for tag, items in values:
            if tag == "s":
                scored.extend(items)
            elif tag == "d":
                dead.extend(items)
            elif tag == "x":
                return
        scored.sort()
        dead.sort()
        write_unit(self._target, name, [item[-1] for item in scored], [item[-1] for item in dead])
        yield name


def build_wave(pipeline, spec, model, options, target: Target, names: list[str]) -> None:
    """One pipeline for a wave of units: read the input once, keep the wave's events, score, write per unit."""
    archive, model_flags = options.view_as(ArchiveOptions), options.view_as(ModelOptions)
    partition, names_set = target.partition, frozenset(names)
    unit_us = UNIT_US[partition]
    starts = frozenset(event_time_us_of(unit_bounds(n, partition)[0]) for n in names if n != UNTIMED)
    if target.source == "kafka":
        bootstrap, topic, config, margin_us = target.kafka  # read only around this wave's partitions
        bounds = [event_time_us_of(unit_bounds(n, partition)[i]) for n in names for i in (0, 1)]
        history_us = spec.entity_history_s * 1_000_000  # entity features look back this far
        first_ms = (min(bounds) - margin_us - history_us) // 1000
        stop_ms = -(-(max(bounds) + margin_us) // 1000)
        raw = pipeline | "ReadEvents" >> graph.ReadKafkaEvents(
            kafka.ReadFromKafka(bootstrap, topic, None, "earliest", dict(config),
                                start_timestamp_ms=first_ms, stop_timestamp_ms=stop_ms), archive.batch_size,
            with_timestamps=True,  # an untimed dead letter goes to the partition of its message's time
            value_format=graph.value_format(options, spec))
    else:
        raw = pipeline | "ReadEvents" >> ReadEventFiles(archive.input, archive.batch_size)
    parsed = raw | "ParseAndEnrich" >> graph.ParseAndEnrich(spec, streaming=False, batch_size=archive.batch_size)
    scored = (parsed.events
              | "InWave" >> beam.FlatMap(_in_wave, unit_us, starts)
              | "ScoreEvents" >> ScoreEvents(spec, model, model_flags.model_dir, options.view_as(EngineOptions).engine)
              | "KeyScored" >> beam.FlatMap(_key_records, spec.event_time, partition))
    dead = parsed.dead_letters | "KeyDeadLetters" >> beam.FlatMap(_key_dead_letter, spec.event_time, partition,
                                                                   names_set)
    every_unit = pipeline | "Units" >> beam.Create([(name, ("u", [])) for name in names])
    ((scored, dead, every_unit)
     | "Together" >> beam.Flatten()
     | "ByUnit" >> beam.GroupByKey()
     | "WriteUnits" >> beam.ParDo(WriteUnits(target)))


# ---------------------------------------------------------------------------------------------
# Progress


class Progress:
    """A bar by partition on a terminal (rich), plain lines otherwise; on stderr."""

    def __init__(self, total: int):
        self._done = 0
        self._total = total
        self._bar = None
        if sys.stderr.isatty():
            try:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, \
                    TimeElapsedColumn
            except ImportError:
                return
            from rich.console import Console

            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=False)
            self._task = self._bar.add_task("backfill", total=total)
            self._bar.start()

    def advance(self, name: str, status: str, manifest: dict | None) -> None:
        self._done += 1
        counts = (manifest or {}).get("counts", {})
        line = (f"[{self._done}/{self._total}] {name} {status}: {counts.get('in', 0):,} in, "
                f"{counts.get('scored', 0):,} scored, {counts.get('dead_lettered', 0):,} dead-lettered")
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=f"backfill: {name} {status}")
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _watch(output: str, dead_letter: str, names: list[str], statuses: dict, progress: Progress,
           stop: threading.Event) -> None:
    """Report each unit of a running wave as its manifest appears."""
    pending = list(names)
    while pending:
        for name in list(pending):
            manifest = read_complete(output, dead_letter, name)
            if manifest is not None and manifest != statuses[name]["manifest"]:  # a new one
                pending.remove(name)
                statuses[name]["reported"] = True
                progress.advance(name, statuses[name]["status"], manifest)
        if stop.wait(0.5):
            break


# ---------------------------------------------------------------------------------------------
# The driver


def _check_layout(output: str, partition: str) -> None:
    other = "hour" if partition == "day" else "day"
    found = sorted(n for n in _unit_names(output) if _NAME[other].match(n))
    if found:
        raise UserError(f"--output {output} holds {other} partitions ({found[0]} ...); use --partition {other} or "
                        f"another --output")


def _unit_names(directory: str) -> set[str]:
    prefix = directory.rstrip("/") + "/"
    return {m.path[len(prefix):].split("/")[0] for m in FileSystems.match([prefix + "dt=*/*"])[0].metadata_list}


def _clean_temporary(*directories: str) -> None:
    """Remove the half-written files crashed runs left on a local filesystem (we hold the lock: nobody writes
    there), and the `_tmp` directory of backfills before rtml committed by manifest alone; Cloud Storage
    leaves none, as an object exists only once its upload ends."""
    for directory in directories:
        if not storage.is_local(directory):
            continue
        left = glob.glob(os.path.join(glob.escape(directory), "*", ".*.tmp"))
        if left:
            print(f"removing {len(left)} unfinished file write(s) left in {directory} by an earlier run",
                  file=sys.stderr, flush=True)
        for path in left:
            os.unlink(path)
        shutil.rmtree(os.path.join(directory, "_tmp"), ignore_errors=True)


def plan(output: str, dead_letter: str, names: list[str], model_version: str, fingerprint: str, force: bool,
         redo_stale: bool) -> dict[str, dict]:
    """Each unit's fate: {"status": done|redone|skipped, "todo": bool, "note": str, "manifest": ...}."""
    statuses = {}
    for name in names:
        manifest = read_complete(output, dead_letter, name)
        if manifest is None:
            statuses[name] = {"status": "done", "todo": True, "note": "", "manifest": None}
            continue
        stale = []
        if name != UNTIMED and manifest.get("model_version") != model_version:
            stale.append(f"made with model {manifest.get('model_version')}")
        if manifest.get("input_fingerprint") != fingerprint:
            stale.append("from other input files")
        note = " and ".join(stale)
        if force or (stale and redo_stale):
            statuses[name] = {"status": "redone", "todo": True, "note": note, "manifest": manifest}
        else:
            statuses[name] = {"status": "skipped", "todo": False, "manifest": manifest,
                              "note": note + (", kept (--redo_stale recomputes)" if stale else "")}
    return statuses


def _report_kept(statuses: dict[str, dict]) -> None:
    """One line per reason that complete partitions were kept although stale."""
    kept: dict[str, list[str]] = {}
    for name, state in statuses.items():
        if state["note"] and not state["todo"]:
            kept.setdefault(state["note"], []).append(name)
    for note, names in kept.items():
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        print(f"{len(names)} complete partition(s) {note}: {shown}", file=sys.stderr, flush=True)


def table(statuses: dict[str, dict]) -> str:
    """The end-of-run table; in a long range, skipped partitions without a note are counted, not listed."""
    hidden = [name for name, state in statuses.items() if state["status"] == "skipped" and not state["note"]]
    if len(statuses) <= TABLE_ROWS:
        hidden = []
    rows = [("partition", "status", "in", "scored", "dead-lettered", "model version", "note")]
    for name, state in statuses.items():
        if hidden and name in hidden:
            continue
        manifest = state.get("manifest") or {}
        counts = manifest.get("counts", {})
        rows.append((name, state["status"], f"{counts.get('in', 0):,}", f"{counts.get('scored', 0):,}",
                     f"{counts.get('dead_lettered', 0):,}", manifest.get("model_version") or "-",
                     state.get("note", "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(width) if i in (2, 3, 4) else cell.ljust(width)
                       for i, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in rows]
    if hidden:
        lines.append(f"({len(hidden)} complete partitions skipped, not listed: {hidden[0]} .. {hidden[-1]})")
    return "\n".join(lines)


def run(argv=None) -> dict[str, dict]:
    """Backfill [start, end); returns each unit's status, note and manifest."""
    options = cli.parse(argv, VIEWS, __doc__, REQUIRED)
    flags, archive = options.view_as(BackfillOptions), options.view_as(ArchiveOptions)
    cli.require(options, *REQUIRED[f"--source {flags.source}"])
    serving.check_kafka_io(options, supported=False)
    start_us = parse_moment("start", flags.start, flags.partition)
    end_us = parse_moment("end", flags.end, flags.partition)
    if end_us <= start_us:
        raise UserError(f"--end {flags.end} must be after --start {flags.start}")
    if flags.max_parallel < 1:
        raise UserError("--max_parallel must be at least 1")
    if archive.output_format != "jsonl":
        raise UserError("backfill writes JSON Lines only; drop --output_format")
    for flag in ("output", "dead_letter"):
        storage.check_committable(f"--{flag}", getattr(archive, flag))
    output, dead_letter = (os.path.abspath(path) if storage.is_local(path) else path.rstrip("/")
                           for path in (archive.output, archive.dead_letter))
    if output == dead_letter:
        raise UserError("--output and --dead_letter must be different directories")
    if flags.source == "kafka" and cli.given(options, "input"):
        raise UserError("--input reads files; --source kafka reads --input_topic: give one")
    if flags.source == "files":
        cli.refuse(options, (KafkaOptions, cli.only(BackfillOptions, "replay_margin_s")), "is for --source kafka")
    kafka_read = _kafka_replay(options, end_us) if flags.source == "kafka" else ()
    if end_us - start_us > MAX_DAYS_UNASKED * UNIT_US["day"] and not flags.yes:
        raise UserError(f"--start {flags.start} .. --end {flags.end} spans {(end_us - start_us) // UNIT_US['day']:,} "
                        f"days, more than {MAX_DAYS_UNASKED}; add --yes if that is meant")
    spec, model = graph.spec_and_model(options)
    if kafka_read:
        # what is replayed, not the data (retention may remove messages); the config (secrets) stays out
        fingerprint, n_files = hashlib.sha256(json.dumps(["kafka", *kafka_read[:2], kafka_read[3]]).encode()).hexdigest(), None
    else:
        fingerprint, n_files = input_fingerprint(archive.input)
    runners.apply_runner_presets(options)

    started = time.monotonic()
    for directory in (output, dead_letter):
        if storage.is_local(directory):
            os.makedirs(directory, exist_ok=True)
    unit_us = UNIT_US[flags.partition]
    names = [partition_name(t, flags.partition) for t in range(start_us, end_us, unit_us)]
    if flags.source == "files":  # a Kafka message without an event time has its message time
        names.append(UNTIMED)
    with locks.hold(output, LOCK) as output_lock, locks.hold(dead_letter, LOCK):
        _check_layout(output, flags.partition)
        _clean_temporary(output, dead_letter)
        statuses = plan(output, dead_letter, names, model.version, fingerprint, flags.force, flags.redo_stale)
        _report_kept(statuses)
        target = Target(output, dead_letter, spec.name, flags.partition, model.version, fingerprint, n_files,
                        flags.source, kafka_read, output_lock.token)
        todo = [name for name in names if statuses[name]["todo"]]
        progress = Progress(len(names))
        try:
            for name in names:
                if not statuses[name]["todo"]:
                    progress.advance(name, "skipped", statuses[name]["manifest"])
            for first in range(0, len(todo), flags.max_parallel):
                wave = todo[first:first + flags.max_parallel]
                _run_wave(options, spec, model, target, wave, statuses, progress)
        except BaseException as error:
            progress.close()
            complete = sum(1 for name in names if read_complete(output, dead_letter, name) is not None)
            cause = "" if isinstance(error, UserError) else \
                f" ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
            print(f"backfill stopped{cause}; {complete} of {len(names)} partitions are complete; the same command "
                  f"redoes the rest",
                  file=sys.stderr, flush=True)
            raise
        progress.close()
    done = sum(1 for s in statuses.values() if s["todo"])
    print(table(statuses))
    print(f"{spec.name} backfill {Timestamp(micros=start_us).to_rfc3339()} .. {Timestamp(micros=end_us).to_rfc3339()} by {flags.partition} with model {model.version}: "
          f"{done} of {len(names)} partitions written, {len(names) - done} skipped, in "
          f"{time.monotonic() - started:.1f} s; scored: {output}, dead letters: {dead_letter}")
    return statuses


def _kafka_replay(options, end_us: int) -> tuple:
    """(bootstrap_servers, topic, config items, margin in µs) of a --source kafka replay."""
    flags, kafka_flags = options.view_as(BackfillOptions), options.view_as(KafkaOptions)
    if not cli.given(options, "bootstrap_servers"):
        raise UserError("--source kafka needs --bootstrap_servers")
    if not 0 <= flags.replay_margin_s < 366 * 86400:
        raise UserError("--replay_margin_s must be between 0 and a year")
    margin_us = int(flags.replay_margin_s * 1_000_000)
    stop_us = end_us + margin_us
    if stop_us > time.time() * 1_000_000:
        raise UserError(f"--source kafka: --end {flags.end} plus --replay_margin_s {flags.replay_margin_s:g} is in the "
                        f"future; the replay would wait for it")
    config = graph.kafka_config(kafka_flags)
    found = kafka_access.check_access(kafka_flags.bootstrap_servers, config, read=[kafka_flags.input_topic])
    if found is not None and kafka_flags.input_topic not in found:
        raise UserError(f"Kafka topic {kafka_flags.input_topic!r} (--input_topic) does not exist on "
                        f"{kafka_flags.bootstrap_servers}")
    return kafka_flags.bootstrap_servers, kafka_flags.input_topic, tuple(sorted(config.items())), margin_us


def _run_wave(options, spec, model, target: Target, wave: list[str], statuses: dict, progress: Progress) -> None:
    pipeline = cli.create_pipeline(options, None)
    build_wave(pipeline, spec, model, options, target, wave)
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(target.output, target.dead_letter, wave, statuses, progress,
                                                    stop), daemon=True, name="backfill-progress")
    watcher.start()
    try:
        result = pipeline.run()
        result.wait_until_finish()
    finally:
        stop.set()
        watcher.join()
    cli.check_whole_input(cli.counters(result), "no partition of this wave was committed, as the rest of a file "
                                                "may hold any of their events: fix or remove them and run the same "
                                                "command again")
    for name in wave:
        manifest = read_complete(target.output, target.dead_letter, name)
        if manifest is None:
            raise RuntimeError(f"partition {name} was not committed by its wave (do the runner's workers write "
                               f"{target.output} on this machine's filesystem?); the same command redoes it")
        statuses[name]["manifest"] = manifest
        if not statuses[name].get("reported"):
            statuses[name]["reported"] = True
            progress.advance(name, statuses[name]["status"], manifest)


if __name__ == "__main__":
    cli.main(run)
