"""One writer per output directory: a lock file on a local filesystem, a lock object on Cloud Storage.

Both hold their holder's pid and host. A lock left on this host by a process that is gone is
stale and taken over, with a message; a lock held by a live process is refused in one line.
"""
from __future__ import annotations

import _thread
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time

from apache_beam.io.filesystems import FileSystems

from transforms import storage
from transforms.errors import UserError

_LOG = logging.getLogger(__name__)


def hold(directory: str, name: str):
    """A context manager holding DIRECTORY/NAME for this process; UserError if another holds it."""
    return FileLock(directory, name) if storage.is_local(directory) else ObjectLock(directory, name)


class FileLock:
    """A local lock file, created with O_EXCL, holding pid and host, flock'ed while held.

    A lock whose flock is free, left on this host by a process that is gone, is stale: it is taken
    over, with a message. A lock held by a live process, or left by another host, is refused.
    """

    def __init__(self, directory: str, name: str):
        self.path = os.path.join(directory, name)
        self._fd = None

    def __enter__(self):
        host = socket.gethostname()
        for _attempt in range(50):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            except FileExistsError:
                if self._take_over(host):
                    return self
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another backfill saw the new, still empty file and took it
                os.close(fd)
                raise UserError(f"another backfill is starting on this output (lock {self.path}); wait for it to "
                                f"finish") from None
            self._hold(fd, host)
            return self
        raise UserError(f"cannot take the lock {self.path}; try again")

    def _hold(self, fd: int, host: str) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": host, "started": time.time()}).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def _take_over(self, host: str) -> bool:
        """True if a stale lock was taken over; False to try again; UserError if it is held."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            holder = _read_holder(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"another backfill is writing to this output (pid {holder.get('pid', '?')} on "
                                f"{holder.get('host', '?')}, lock {self.path}); wait for it to finish") from None
            try:  # the file may have been removed (or replaced) since it was opened
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    os.close(fd)
                    return False
            except FileNotFoundError:
                os.close(fd)
                return False
            if not holder:  # being written by its creator right now, or its creator died right after creating it
                time.sleep(0.1)
                holder = _read_holder(fd)
            if holder.get("host") not in (None, host):
                raise UserError(f"{self.path} is held by pid {holder.get('pid')} on host {holder.get('host')}; if "
                                f"that backfill is no longer running, delete the lock file")
            pid = holder.get("pid")  # a free flock means its holder is gone, whether or not its pid was reused
            print(f"taking over a stale lock {self.path} of pid {pid if pid is not None else '?'} on "
                  f"{holder.get('host', host)}, which is no longer running", file=sys.stderr, flush=True)
            self._hold(fd, host)
            fd = None
            return True
        finally:
            if fd is not None and self._fd != fd:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def __exit__(self, *exc):
        try:
            os.unlink(self.path)
        finally:
            os.close(self._fd)
            self._fd = None
        return False


def _read_holder(fd: int) -> dict:
    return _holder(os.pread(fd, 4096, 0))


class ObjectLock:
    """A Cloud Storage lock object, created only if absent, holding pid, host and when its holder last
    renewed it (every RENEW_S, by replacing its own generation).

    A lock left on this host by a process that is gone, or not renewed for LEASE_S (its holder's
    machine may be gone), is stale: it is taken over by replacing exactly the generation read, so
    of two takers one wins. A holder whose renewal finds another generation has lost the lock, and
    its main thread is interrupted.
    """

    RENEW_S, LEASE_S = 10.0, 60.0

    def __init__(self, directory: str, name: str):
        self.path = FileSystems.join(directory, name)
        self._generation = None
        self._stop = threading.Event()
        self._renewer = None

    def __enter__(self):
        host = socket.gethostname()
        for _attempt in range(20):
            data, generation = storage.read_generation(self.path)
            holder = _holder(data) if data is not None else {}
            stale = data is not None and _why_stale(holder, host, self.LEASE_S)
            if data is not None and not stale:
                raise UserError(f"another backfill is writing to this output (pid {holder.get('pid', '?')} on "
                                f"{holder.get('host', '?')}, lock {self.path}); wait for it to finish")
            self._generation = storage.write_if_generation(self.path, _record(host), generation)
            if self._generation is None:  # another backfill wrote it first: look again
                continue
            if stale:
                print(f"taking over a stale lock {self.path} of pid {holder.get('pid', '?')} on "
                      f"{holder.get('host', '?')}, {stale}", file=sys.stderr, flush=True)
            self._renewer = threading.Thread(target=self._renew, args=(host,), daemon=True, name="lock-renewal")
            self._renewer.start()
            return self
        raise UserError(f"cannot take the lock {self.path}; try again")

    def _renew(self, host: str) -> None:
        while not self._stop.wait(self.RENEW_S):
            try:
                generation = storage.write_if_generation(self.path, _record(host), self._generation)
            except Exception as error:  # unreachable for now: the lease outlasts a few failed renewals
                _LOG.warning("could not renew the lock %s (%s); trying again in %.0f s", self.path,
                             str(error).splitlines()[0] if str(error) else type(error).__name__, self.RENEW_S)
                continue
            if generation is None:
                print(f"lost the lock {self.path}: another backfill took it over; stopping", file=sys.stderr,
                      flush=True)
                _thread.interrupt_main()
                return
            self._generation = generation

    def __exit__(self, *exc):
        self._stop.set()
        self._renewer.join()
        storage.delete_if_generation(self.path, self._generation)
        return False


def _record(host: str) -> bytes:
    return json.dumps({"pid": os.getpid(), "host": host, "renewed": time.time()}).encode()


def _holder(data: bytes) -> dict:
    """A lock's holder record; empty if the lock holds none (or not one we wrote)."""
    try:
        holder = json.loads(data or b"{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _why_stale(holder: dict, host: str, lease_s: float) -> str:
    """Why a lock object's holder no longer holds it; empty if it may still."""
    if holder.get("host") == host and not _alive(holder.get("pid")):
        return "which is no longer running"
    age = time.time() - holder.get("renewed", 0) if isinstance(holder.get("renewed"), (int, float)) else None
    if age is None or age > lease_s:
        return "which has not renewed it for " + (f"{age:.0f} s" if age is not None else "an unknown time")
    return ""


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
