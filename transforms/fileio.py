"""Archives in and out: JSON Lines (optionally gzip) and Parquet, in batches of records.

Reading emits ``list[Raw]`` blocks of up to ``batch_size`` records, each record with its source
(file and line, or file and row), so the rest of the pipeline works a block at a time. A file is
read by one worker, in order; archives partitioned by day or hour give the parallelism.
"""
from __future__ import annotations

from typing import Iterator

import apache_beam as beam
import orjson
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.errors import UserError
from transforms.events import Raw

DEFAULT_BATCH_SIZE = 4096
_READ_CHUNK = 8 << 20


def check_input(pattern: str) -> list[str]:
    """The files a glob matches; UserError if none (before any pipeline starts)."""
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception as error:  # each filesystem raises its own kind
        raise UserError(f"--input {pattern}: cannot list files ({str(error).splitlines()[0]})") from None
    if not matched:
        raise UserError(f"--input {pattern}: no files match")
    return sorted(m.path for m in matched)


class ReadEventFiles(beam.PTransform):
    """A glob in (``.jsonl``, ``.json``, ``.jsonl.gz``, ``.parquet``); ``list[Raw]`` blocks out."""

    def __init__(self, pattern: str, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__()
        self._pattern, self._batch_size = pattern, batch_size

    def expand(self, pipeline):
        return (pipeline
                | "Match" >> fileio.MatchFiles(self._pattern)
                | "Open" >> fileio.ReadMatches(compression=CompressionTypes.UNCOMPRESSED)
                | "Read" >> beam.FlatMap(read_blocks, self._batch_size))


def read_blocks(readable: fileio.ReadableFile, batch_size: int) -> Iterator[list[Raw]]:
    path = readable.metadata.path
    if path.endswith(".parquet"):
        yield from _parquet_blocks(readable, path, batch_size)
        return
    with readable.open(compression_type=CompressionTypes.AUTO) as handle:
        block = []
        for number, line in enumerate(_lines(handle), start=1):
            block.append(Raw(line, {"file": path, "line": number}))
            if len(block) == batch_size:
                yield block
                block = []
        if block:
            yield block


def _lines(handle) -> Iterator[bytes]:
    """The lines of a binary file without their line ends; a last line without one counts too."""
    rest = b""
    while chunk := handle.read(_READ_CHUNK):
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield line[:-1] if line.endswith(b"\r") else line
    if rest:
        yield rest


def _parquet_blocks(readable: fileio.ReadableFile, path: str, batch_size: int) -> Iterator[list[Raw]]:
    import pyarrow.parquet as pq

    with readable.open() as handle:
        row = 0
        for record_batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_size):
            rows = record_batch.to_pylist()
            yield [Raw(values, {"file": path, "row": row + i}) for i, values in enumerate(rows, start=1)]
            row += len(rows)


def json_lines(records: dict | list[dict]) -> bytes:
    """A record, or a list of records, as JSON Lines (no trailing newline: WriteToText adds it)."""
    if isinstance(records, dict):
        return orjson.dumps(records)
    return b"\n".join(orjson.dumps(record) for record in records)


class WriteJsonLines(beam.PTransform):
    """Records, or lists of records, in; JSON Lines files ``<directory>/<prefix>-SSSSS-of-NNNNN.jsonl`` out."""

    def __init__(self, directory: str, prefix: str):
        super().__init__()
        self._path = FileSystems.join(directory, prefix)

    def expand(self, record_lists):
        return (record_lists
                | "Encode" >> beam.Map(json_lines)
                | "Write" >> beam.io.WriteToText(self._path, file_name_suffix=".jsonl"))


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
