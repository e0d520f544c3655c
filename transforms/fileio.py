"""Archives in and out: JSON Lines (optionally gzip) and Parquet, in batches of records.

Reading emits ``Block``s of up to ``batch_size`` records, each record with its source (file and line, or
file and row), so the rest of the pipeline works a block at a time. A file is
read by one worker, in order; archives partitioned by day or hour give the parallelism.
"""
from __future__ import annotations

import zlib
from typing import Iterator

import apache_beam as beam
import orjson
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms import storage
from transforms.errors import UserError, first_line
from transforms.events import METRICS_NAMESPACE, Block, FileSpan, Raw, Unreadable

DEFAULT_BATCH_SIZE = 4096
_READ_CHUNK = 8 << 20
_GZIP_READ_CHUNK = 1 << 20  # compressed bytes per read
_GZIP_WBITS = 31  # zlib: a gzip header and trailer
_GUNZIP_CHUNK = 16 << 20  # decompressed bytes per step
UNREADABLE_REASON = "file unreadable from here on"
UNREADABLE_NAMESPACE = f"{METRICS_NAMESPACE}.unreadable_file"  # a count per path
# What corrupt, truncated or mislabelled files raise: gzip (OSError, EOFError, zlib.error), Parquet
# (pyarrow's errors derive from OSError, ValueError or NotImplementedError).
UNREADABLE_ERRORS = (OSError, EOFError, zlib.error, ValueError, NotImplementedError)


def check_input(pattern: str, flag: str = "--input") -> list[str]:
    """The files a glob matches; UserError if none (before any pipeline starts)."""
    return sorted(m.path for m in matched_files(pattern, flag))


def matched_files(pattern: str, flag: str = "--input") -> list:
    """The metadata (``path``, ``size_in_bytes``) of the files a glob matches; UserError if none."""
    storage.check_readable(flag, pattern)
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception as error:  # each filesystem raises its own kind
        raise UserError(f"{flag} {pattern}: cannot list files ({first_line(error)})") from None
    if not matched:
        raise UserError(f"{flag} {pattern}: no files match")
    return matched


def json_records(pattern: str, flag: str, may_be_empty: bool = False) -> list[dict]:
    """The records of a project output (JSON Lines, also .gz, or Parquet) that ``pattern`` matches, for a
    command that reads it back; a one-line error for a file that cannot be read or a line that is not JSON."""
    if may_be_empty and not FileSystems.match([pattern])[0].metadata_list:
        return []
    records = []
    for path in check_input(pattern, flag):
        for raw in file_records(path):
            if isinstance(raw.payload, Unreadable):
                raise UserError(f"{flag}: {path} cannot be read: {raw.payload.reason}")
            try:
                records.append(raw.payload if isinstance(raw.payload, dict) else orjson.loads(raw.payload))
            except orjson.JSONDecodeError:
                raise UserError(f"{flag}: {path} line {raw.source['line']} is not JSON") from None
    return records


class ReadEventFiles(beam.PTransform):
    """A glob in (``.jsonl``, ``.json``, ``.jsonl.gz``, ``.parquet``); ``Block``s out.

    The matched files are spread over the workers (a reshuffle after the match): without it, the one element
    that the match starts from would take every file's reading, and everything fused after it, to one worker.
    """

    def __init__(self, pattern: str, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__()
        self._pattern, self._batch_size = pattern, batch_size

    def expand(self, pipeline):
        return (pipeline
                | "Match" >> fileio.MatchFiles(self._pattern)
                | "Spread" >> beam.Reshuffle()
                | "Open" >> fileio.ReadMatches(compression=CompressionTypes.UNCOMPRESSED)
                | "Read" >> beam.FlatMap(read_blocks, self._batch_size).with_output_types(Block))


def read_blocks(readable: fileio.ReadableFile, batch_size: int) -> Iterator[Block]:
    """A matched file's blocks (``file_blocks``)."""
    return file_blocks(readable.metadata.path, batch_size)


def file_records(path: str) -> Iterator[Raw]:
    """A file's records one by one (``file_blocks``)."""
    for block in file_blocks(path):
        yield from map(Raw, block.payloads, block.sources)


def file_blocks(path: str, size: int = DEFAULT_BATCH_SIZE) -> Iterator[Block]:
    """A file's records in blocks of up to ``size``, each with its file and line (or row). A file that cannot be
    read to its end (corrupt, truncated, not what its name says) ends with one record standing for the rest of
    it: a dead letter at the first line or row not read, and a count under ``rtml.unreadable_file`` (its path)."""
    parquet = path.endswith(".parquet")
    unit, first, pending = "row" if parquet else "line", 1, []
    try:
        for records in _parquet_rows(path) if parquet else _lines(path):
            pending.extend(records)
            while len(pending) >= size:
                yield Block(pending[:size], FileSpan(path, unit, first, size))
                first, pending = first + size, pending[size:]
    except UNREADABLE_ERRORS as error:
        beam.metrics.Metrics.counter(UNREADABLE_NAMESPACE, path).inc()
        pending.append(Unreadable(f"{UNREADABLE_REASON} ({first_line(error)})"))
    if pending:
        yield Block(pending, FileSpan(path, unit, first, len(pending)))


def _lines(path: str) -> Iterator[list[bytes]]:
    """The lines of a file without their line ends, a list at a time; a last line without one counts too."""
    if path.endswith(".gz"):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            yield from _split_lines(_gunzip(handle))
    else:
        with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as handle:
            yield from _split_lines(iter(lambda: handle.read(_READ_CHUNK), b""))


def _gunzip(handle) -> Iterator[bytes]:
    """The decompressed chunks of a gzip file of any number of members (then zero padding, as gzip allows).

    Unlike Beam's reader, which ends early at a cut, this raises EOFError there, after yielding
    every byte before the cut, so a cut file is never taken for a short one and no line that can
    be read is lost. Each chunk is at most ``_GUNZIP_CHUNK``: a small file of zeros that inflates
    to gigabytes does not fill memory."""
    decompressor, started = zlib.decompressobj(wbits=_GZIP_WBITS), False
    while chunk := handle.read(_GZIP_READ_CHUNK):
        while chunk:
            if not started and not chunk.strip(b"\0"):  # zero padding after the last member
                break
            started = True
            yield decompressor.decompress(chunk, _GUNZIP_CHUNK)
            chunk = decompressor.unconsumed_tail
            if decompressor.eof:  # the next member, if any, starts in what is left
                chunk = decompressor.unused_data
                decompressor, started = zlib.decompressobj(wbits=_GZIP_WBITS), False
    while started and (rest := decompressor.decompress(b"", _GUNZIP_CHUNK)):
        yield rest
    if started and not decompressor.eof:
        raise EOFError("the gzip data ends before its end-of-stream marker (a cut file?)")


def _split_lines(chunks: Iterator[bytes]) -> Iterator[list[bytes]]:
    rest = b""
    for chunk in chunks:
        chunk = rest + chunk
        lines = chunk.split(b"\n")
        rest = lines.pop()
        yield [line[:-1] if line.endswith(b"\r") else line for line in lines] if b"\r" in chunk else lines
    if rest:
        yield [rest]


def _parquet_rows(path: str) -> Iterator[list[dict]]:
    import pyarrow.parquet as pq

    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        for record_batch in pq.ParquetFile(handle).iter_batches(batch_size=DEFAULT_BATCH_SIZE):
            yield record_batch.to_pylist()


def json_lines(records: dict | list[dict]) -> bytes:
    """A record, or a list of records, as JSON Lines (no trailing newline: WriteToText adds it).

    A list is encoded at once, then cut between records: where ``},{"<the first record's first key>":`` stands,
    which cannot be inside a JSON string (its quote would be escaped); only if a record nests one too are the
    records encoded one by one. (Once for 4,096 records cost a tenth of once each, measured.)"""
    if isinstance(records, dict):
        return orjson.dumps(records)
    if records and type(records[0]) is dict and records[0]:
        between = b"},{" + orjson.dumps(next(iter(records[0]))) + b":"
        text = orjson.dumps(records)[1:-1]
        if text.count(between) == len(records) - 1:
            return text.replace(between, b"}\n{" + between[3:])
    return b"\n".join(map(orjson.dumps, records))


class WriteJsonLines(beam.PTransform):
    """Records, or lists of records, in; JSON Lines files ``<directory>/<prefix>-SSSSS-of-NNNNN.jsonl`` out."""

    def __init__(self, directory: str, prefix: str):
        super().__init__()
        self._path = FileSystems.join(directory, prefix)

    def expand(self, record_lists):
        return (record_lists
                | "Encode" >> beam.Map(json_lines)
                | "Write" >> beam.io.WriteToText(self._path, file_name_suffix=".jsonl"))


def label_type(spec):
    """The Arrow type of a spec's label in the Parquet files the project writes: a class name, or 0 and 1."""
    import pyarrow as pa

    return pa.string() if spec.classes else pa.int8()


class WriteParquet(beam.PTransform):
    """Lists of records in; Parquet files ``<directory>/<prefix>-SSSSS-of-NNNNN.parquet`` out."""

    def __init__(self, directory: str, prefix: str, schema):
        super().__init__()
        self._path, self._schema = FileSystems.join(directory, prefix), schema

    def expand(self, record_lists):
        import pyarrow as pa

        schema = self._schema
        return (record_lists
                | "ToTable" >> beam.Map(lambda records: pa.Table.from_pylist(records, schema=schema))
                | "Write" >> beam.io.WriteToParquetBatched(self._path, schema, file_name_suffix=".parquet"))
