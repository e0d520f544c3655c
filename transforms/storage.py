"""Files that appear whole, on a local disk or on Cloud Storage, and the conditional writes that let
writers share a directory there.

A local file is written beside its place, fsync'ed and renamed into it, so a reader sees the old
file or the new one. A Cloud Storage object appears whole when its upload ends, but there is no
atomic rename: what a crash must not leave half done is committed by writing its manifest last,
and what two writers may race for (a model directory's CURRENT, a backfill's lock) is written with
generation preconditions: create only if absent (generation 0), replace only the generation read.
Other Beam filesystems (s3://, hdfs:// ...) promise neither, so commands that commit refuse them
(``check_committable``); every filesystem can still be read.
"""
from __future__ import annotations

import contextlib
import functools
import os
import uuid

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.errors import UserError, first_line

GCS = "gs://"
CALL_TIMEOUT_S = 10.0  # a conditional call, retries included: a lock's renewal must end well within its lease


def is_local(path: str) -> bool:
    return "://" not in path


def check_committable(flag: str, path: str) -> None:
    """UserError, in one line, unless ``path`` is a local path or a ``gs://`` one whose bucket can be listed."""
    if is_local(path):
        return
    if not path.startswith(GCS):
        raise UserError(f"{flag} {path}: results are committed on a local or mounted filesystem or on Cloud Storage "
                        f"(gs://), where a commit cannot be seen half done; {path.split('://')[0]}:// is not supported")
    check_readable(flag, path)


def check_readable(flag: str, path: str) -> None:
    """For a ``gs://`` path, UserError in one line unless its bucket can be listed within ``CALL_TIMEOUT_S`` (Beam's
    own reads would retry for minutes, then print their traceback); other paths are left to their filesystem."""
    if not (path or "").startswith(GCS):
        return
    bucket, name = _split(path)
    try:
        from google.api_core.exceptions import NotFound

        client = _client()
    except ImportError:
        raise UserError(f"{flag} {path}: gs:// needs the gcp extra (pip install 'beam-rtml[gcp]')") from None
    try:  # objects.list: what objectViewer and up may do (buckets.get would need more)
        next(iter(client.bucket(bucket).list_blobs(prefix=name, max_results=1, timeout=CALL_TIMEOUT_S,
                                                    retry=_retry())), None)
    except NotFound:
        raise UserError(f"{flag} {path}: bucket {bucket} does not exist") from None
    except Exception as error:  # google.api_core's errors: no credentials, forbidden, unreachable ...
        raise UserError(f"{flag} {path}: cannot list it on Cloud Storage ({first_line(error)})") from None


def write_file(path: str, data: bytes) -> None:
    """Write ``path`` whole: readers see its old bytes or all of the new ones, even after a crash."""
    if not is_local(path):
        with _refused_as_user_error(path):
            with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                handle.write(data)
        return
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_directory(directory)


def read_file(path: str) -> bytes | None:
    """The bytes of ``path``; None if there is no such file (or it was removed while it was read)."""
    try:
        with _refused_as_user_error(path):
            if not FileSystems.exists(path):
                return None
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                return handle.read()
    except Exception as error:  # FileNotFoundError locally, google.api_core's NotFound on Cloud Storage
        if isinstance(error, FileNotFoundError) or type(error).__name__ == "NotFound":
            return None
        raise


def file_size(path: str) -> int | None:
    """The size of ``path`` in bytes; None if there is no such file."""
    if is_local(path):
        try:
            return os.path.getsize(path)
        except FileNotFoundError:
            return None
    found = [m for m in FileSystems.match([path])[0].metadata_list if m.path == path]
    return found[0].size_in_bytes if found else None


def delete_file(path: str) -> None:
    """Remove ``path`` if it is there (one object: Beam's own delete goes through batch calls)."""
    if is_local(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        _fsync_directory(os.path.dirname(path) or ".")
        return
    from google.api_core.exceptions import NotFound

    bucket, name = _split(path)
    try:
        _client().bucket(bucket).delete_blob(name, timeout=CALL_TIMEOUT_S, retry=_retry())
    except NotFound:
        pass


def _fsync_directory(path: str) -> None:
    """Make a rename or removal in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Conditional writes on Cloud Storage


def read_generation(path: str) -> tuple[bytes | None, int]:
    """A ``gs://`` object's bytes and generation; (None, 0) if it does not exist."""
    from google.api_core.exceptions import NotFound, PreconditionFailed

    bucket, name = _split(path)
    for _attempt in range(10):  # replaced between the two calls: read the newer one
        with _refused_as_user_error(path):
            blob = _client().bucket(bucket).get_blob(name, timeout=CALL_TIMEOUT_S, retry=_retry())
            if blob is None:
                return None, 0
            try:
                return (blob.download_as_bytes(if_generation_match=blob.generation, timeout=CALL_TIMEOUT_S,
                                               retry=_retry()), blob.generation)
            except (NotFound, PreconditionFailed):
                continue
    raise OSError(f"{path} keeps changing while it is read")


def write_if_generation(path: str, data: bytes, generation: int) -> int | None:
    """Write a ``gs://`` object only if its generation is ``generation`` (0: only if it does not exist).
    Its new generation, or None when another writer came first.

    A write whose reply was lost is retried, finds its own generation and fails its precondition: it is
    recognised by its bytes, so ``data`` should differ from what another writer writes (or mean the same,
    as two publishers' CURRENT for one version does)."""
    from google.api_core.exceptions import PreconditionFailed

    bucket, name = _split(path)
    blob = _client().bucket(bucket).blob(name)
    try:
        with _refused_as_user_error(path):
            blob.upload_from_string(data, if_generation_match=generation, timeout=CALL_TIMEOUT_S, retry=_retry())
    except PreconditionFailed:
        found, found_generation = read_generation(path)
        return found_generation if found == data else None
    return blob.generation


def delete_if_generation(path: str, generation: int) -> None:
    """Remove a ``gs://`` object if it is still that generation (not another writer's since)."""
    from google.api_core.exceptions import NotFound, PreconditionFailed

    bucket, name = _split(path)
    try:
        _client().bucket(bucket).delete_blob(name, if_generation_match=generation, timeout=CALL_TIMEOUT_S,
                                             retry=_retry())
    except (NotFound, PreconditionFailed):
        pass


def _retry():
    """Retries of one call that end within CALL_TIMEOUT_S (the library's default goes on for 120 s)."""
    from google.api_core.retry import Retry

    return Retry(timeout=CALL_TIMEOUT_S)


@contextlib.contextmanager
def _refused_as_user_error(path: str):
    """Cloud Storage's refusal of these credentials as one line (google.api_core's Forbidden, Unauthorized)."""
    try:
        yield
    except Exception as error:
        if type(error).__name__ not in ("Forbidden", "Unauthorized"):
            raise
        raise UserError(f"{path}: Cloud Storage refuses these credentials ({first_line(error)})") from None


@functools.lru_cache(maxsize=1)
def _client():
    """Beam's own Cloud Storage client: the credentials (and emulator) its gs:// filesystem uses."""
    from apache_beam.io.gcp.gcsio import GcsIO

    return GcsIO().client


def _split(path: str) -> tuple[str, str]:
    bucket, _, name = path[len(GCS):].partition("/")
    return bucket, name
