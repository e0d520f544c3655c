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
import uuid

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
    """A Cloud Storage lock object, created only if absent, holding its holder's pid, host, pid namespace,
    a token of its own and when it was last renewed (every RENEW_S, by replacing its own generation).

    Stale, and taken over by replacing exactly the generation read (so of two takers one wins): a
    lock left by a process that is gone from this host's pid namespace, at once; any other lock
    once its generation has stayed the same for a whole LEASE_S on this machine's clock (the
    holder's clock only says when to start watching). A holder that cannot renew for most of a
    lease, or finds another generation, has lost the lock: it says so and interrupts its main
    thread; and each partition's commit first checks the token (``check_held``), so workers never
    commit under a lock that another backfill holds.
    """

    RENEW_S, LEASE_S = 10.0, 60.0

    def __init__(self, directory: str, name: str):
        self.path = FileSystems.join(directory, name)
        self.token = uuid.uuid4().hex
        self._generation = None
        self._stop = threading.Event()
        self._renewer = None

    def __enter__(self):
        for _attempt in range(20):
            data, generation = storage.read_generation(self.path)
            stale = ""
            if data is not None:
                holder = _holder(data)
                stale = self._why_stale(holder, generation)
                if not stale:
                    raise UserError(f"another backfill is writing to this output (pid {holder.get('pid', '?')} on "
                                    f"{holder.get('host', '?')}, lock {self.path}); wait for it to finish")
            self._generation = storage.write_if_generation(self.path, self._record(), generation)
            if self._generation is None:  # another backfill wrote it first: look again
                continue
            if stale:
                print(f"taking over a stale lock {self.path} of pid {holder.get('pid', '?')} on "
                      f"{holder.get('host', '?')}, {stale}", file=sys.stderr, flush=True)
            self._renewer = threading.Thread(target=self._renew, daemon=True, name="lock-renewal")
            self._renewer.start()
            return self
        raise UserError(f"cannot take the lock {self.path}; try again")

    def _why_stale(self, holder: dict, generation: int) -> str:
        """Why a lock's holder no longer holds it; empty if it may still."""
        if (holder.get("host"), holder.get("pid_namespace")) == (socket.gethostname(), _pid_namespace()) \
                and not _alive(holder.get("pid")):
            return "which is no longer running"
        renewed = holder.get("renewed")
        if isinstance(renewed, (int, float)) and time.time() - renewed < self.LEASE_S:
            return ""
        print(f"the lock {self.path} has not been renewed for a while (pid {holder.get('pid', '?')} on "
              f"{holder.get('host', '?')}); watching it for {self.LEASE_S:.0f} s before taking it over",
              file=sys.stderr, flush=True)
        watched = time.monotonic()
        while time.monotonic() - watched < self.LEASE_S:
            time.sleep(self.RENEW_S / 2)
            if storage.read_generation(self.path)[1] != generation:
                return ""
        return f"which has not renewed it for {self.LEASE_S:.0f} s"

    def _record(self) -> bytes:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "pid_namespace": _pid_namespace(),
                           "token": self.token, "renewed": time.time()}).encode()

    def _renew(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(self.RENEW_S):
            try:
                generation = storage.write_if_generation(self.path, self._record(), self._generation)
            except Exception as error:  # unreachable: the lease allows a few renewals to fail
                generation = self._generation
                _LOG.warning("could not renew the lock %s (%s); trying again in %.0f s", self.path,
                             str(error).splitlines()[0] if str(error) else type(error).__name__, self.RENEW_S)
                if time.monotonic() - renewed < self.LEASE_S - 2 * self.RENEW_S:
                    continue
                generation = None
            if generation is None:
                print(f"lost the lock {self.path}: another backfill may take it over; stopping", file=sys.stderr,
                      flush=True)
                self._generation = None  # nothing of ours to release
                _thread.interrupt_main()
                return
            self._generation, renewed = generation, time.monotonic()

    def __exit__(self, *exc):
        self._stop.set()
        self._renewer.join()
        if self._generation is not None:
            storage.delete_if_generation(self.path, self._generation)
        return False


def check_held(path: str, token: str) -> None:
    """RuntimeError unless the lock object ``path`` still holds ``token`` (run by workers before a commit)."""
    data, _ = storage.read_generation(path)
    if data is None or _holder(data).get("token") != token:
        raise RuntimeError(f"the lock {path} is no longer this backfill's (another backfill took it over); "
                           f"nothing more is committed")


def _holder(data: bytes) -> dict:
    """A lock's holder record; empty if the lock holds none (or not one we wrote)."""
    try:
        holder = json.loads(data or b"{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _pid_namespace() -> str:
    """Which pids this process sees: containers that share a host name may not share them."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
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
