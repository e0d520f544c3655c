"""One writer per output directory: a lock file on a local filesystem, a lock object on Cloud Storage.

Both hold their holder's pid and host. A lock left on this machine by a process that is gone is
stale and taken over, with a message; a lock held by a live process is refused in one line. A lock
object of another machine is taken over once it has not been renewed for a lease (``ObjectLock``).
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
from transforms.errors import UserError, first_line

_LOG = logging.getLogger(__name__)


def hold(directory: str, name: str):
    """A context manager holding DIRECTORY/NAME for this process; UserError if another holds it."""
    return FileLock(directory, name) if storage.is_local(directory) else ObjectLock(directory, name)


class FileLock:
    """A local lock file, created with O_EXCL, holding pid and host, flock'ed while held.

    A lock whose flock is free, left on this host by a process that is gone, is stale: it is taken
    over, with a message. A lock held by a live process, or left by another host, is refused.
    """

    token = None  # a local lock needs no check by workers: they run on this machine, under its flock

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
    """A Cloud Storage lock object, created only if absent, holding its holder's pid, host, machine (boot
    and pid namespace), a token of its own and when it was last renewed (every RENEW_S, by replacing
    its own generation).

    Stale, and taken over by replacing exactly the generation read (so of two takers one wins): a
    lock left by a process that is gone from this machine, at once; any other lock once its
    generation has stayed the same for a whole LEASE_S on this machine's clock (the holder's clock
    only says when to start watching). A holder that cannot renew for most of a
    lease, or finds another generation, has lost the lock: it says so and interrupts its main
    thread; and each partition's write checks the token first and again before its commit
    (``check_held``), so workers never write under a lock that another backfill holds.
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
        if holder.get("machine") and holder.get("machine") == _machine() and not _alive(holder.get("pid")):
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
            now = storage.read_generation(self.path)[1]
            if now != generation:  # renewed: held; or released: the write of the old generation fails, look again
                return "" if now else "which released it"
        return f"which has not renewed it for {self.LEASE_S:.0f} s"

    def _record(self) -> bytes:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "machine": _machine(),
                           "token": self.token, "renewed": time.time()}).encode()

    def _renew(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(self.RENEW_S):
            try:
                generation = storage.write_if_generation(self.path, self._record(), self._generation)
                if generation is None:  # another generation: ours, if an earlier renewal's reply was lost
                    data, found = storage.read_generation(self.path)
                    generation = found if data is not None and _holder(data).get("token") == self.token else None
            except Exception as error:  # Cloud Storage unreachable: the lease allows a few renewals to fail
                _LOG.warning("could not renew the lock %s (%s); trying again in %.0f s", self.path, first_line(error),
                             self.RENEW_S)
                if time.monotonic() - renewed < self.LEASE_S - 2 * self.RENEW_S:
                    continue
                generation = None
            if generation is None:
                self._generation = None  # nothing of ours to release
                if not self._stop.is_set():
                    print(f"lost the lock {self.path}: another backfill may take it over; stopping",
                          file=sys.stderr, flush=True)
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
    """UserError unless the lock object ``path`` still holds ``token`` (run by workers around a partition's write)."""
    data, _ = storage.read_generation(path)
    if data is None or _holder(data).get("token") != token:
        raise UserError(f"the lock {path} is no longer this backfill's (another backfill took it over); "
                        f"nothing more is written")


def _holder(data: bytes) -> dict:
    """A lock's holder record; empty if the lock holds none (or not one we wrote)."""
    try:
        holder = json.loads(data or b"{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _machine() -> str:
    """Which machine and pids this process sees: this boot of this kernel (machines may share a host name) and
    its pid namespace (containers on one machine may not share pids); empty where /proc has neither."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return f"{boot.read().strip()}/{os.readlink('/proc/self/ns/pid')}"
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
