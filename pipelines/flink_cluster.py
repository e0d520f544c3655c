"""A Flink session cluster on this machine: a JobManager, TaskManagers and a pool of Python SDK workers, each a
process of its own, as Flink on Kubernetes runs them.

    rtml flink-cluster [--taskmanagers 2] [--slots 1] [--rest_port 8081] [--worker_port 50000] [--dir DIR]

runs one until Ctrl-C and prints the flags that send a pipeline to it::

    --runner FlinkRunner --flink_master localhost:8081 --environment_type EXTERNAL --environment_config localhost:50000

Flink 1.19's distribution (``flink-dist``) is not served by the registries this project installs from; the jars
of Beam's Flink runner, which ``python -m pipelines.artifacts`` fetched, hold ``flink-runtime`` and all a
JobManager (``StandaloneSessionClusterEntrypoint``) and a TaskManager (``TaskManagerRunner``) need, with
the set-up's fixes of Beam's runner first; the set-up adds RocksDB's state backend and a logger (``flink_cluster``
in ``pipelines.artifacts``). State lives in RocksDB, checkpoints and savepoints in ``DIR``. Each process logs to
``DIR/log``. The Python workers are Beam's worker pool (``apache_beam.runners.worker.worker_pool_main``), started
in this project's folder so that its modules import; every TaskManager asks it for its workers (on Kubernetes each
TaskManager's pod has a pool of its own beside it).

A worker pool that ends is started again (as Kubernetes restarts a pod's container); the jobs whose workers it took
fail over to their last checkpoint.

``FlinkCluster`` is the same cluster for the tests: ``with FlinkCluster() as cluster:`` starts it on free loopback
ports and a temporary ``DIR``; ``cluster.flags`` are the flags above; ``kill_taskmanager(i)`` ends one with SIGKILL
and ``start_taskmanager(i)`` brings it back; ``kill_worker_pool()`` ends the pool and its workers with SIGKILL.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pipelines import artifacts, cli
from pipelines.flink_rest import FlinkRest
from pipelines.kafka_broker import free_port
from transforms.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
# Network buffers are taken from each TaskManager's memory: with Flink's default share of 1.5 GB, a stream of the
# project's graph at --parallelism 4 asked for 512 buffers and found 504 ("Insufficient number of network buffers").
# A batch job's blocking exchanges (sort-merge, Flink's default) each take at least 512 (16 MB) at their start:
# training's graph (tensorflow-transform's many stages) had more of them at once than 256 MB holds. 64 each
# suffice at these volumes (Flink advises 2,048 for production sizes).
_CONFIG = """\
jobmanager.rpc.address: localhost
jobmanager.rpc.port: {rpc_port}
jobmanager.bind-host: localhost
jobmanager.memory.process.size: 1024m
taskmanager.bind-host: localhost
taskmanager.host: localhost
taskmanager.numberOfTaskSlots: {slots}
taskmanager.memory.process.size: 1536m
taskmanager.memory.network.min: 128m
taskmanager.memory.network.max: 128m
taskmanager.network.sort-shuffle.min-buffers: 64
rest.port: {rest_port}
rest.address: localhost
rest.bind-address: localhost
state.backend.type: rocksdb
state.checkpoints.dir: {checkpoints}
state.savepoints.dir: {savepoints}
"""
JOBMANAGER = "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint"
TASKMANAGER = "org.apache.flink.runtime.taskexecutor.TaskManagerRunner"
_RESULT = "BASH_JAVA_UTILS_EXEC_RESULT:"


class ClusterFailed(RuntimeError):
    """A process of the cluster did not start or ended; the message names it and the end of its log."""


class FlinkCluster:
    """A JobManager, ``taskmanagers`` TaskManagers of ``slots`` slots each and a Python worker pool, on loopback."""

    def __init__(self, taskmanagers: int = 2, slots: int = 1, rest_port: int | None = None,
                 worker_port: int | None = None, root: Path | None = None):
        self.rest_port, self.worker_port = rest_port or free_port(), worker_port or free_port()
        self.master = f"localhost:{self.rest_port}"
        self.flags = ["--runner", "FlinkRunner", "--flink_master", self.master, "--environment_type", "EXTERNAL",
                      "--environment_config", f"localhost:{self.worker_port}"]
        self._temporary = root is None
        self.root = Path(tempfile.mkdtemp(prefix="rtml-flink-cluster-")) if root is None else Path(root)
        self._taskmanagers, self._slots = taskmanagers, slots
        self._processes: dict[str, subprocess.Popen] = {}
        self._taskmanager_command: list[str] | None = None
        self._lock = threading.Lock()  # (between the pool's restarts and the stop)
        self._stopping = threading.Event()
        self.worker_pool_starts = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 90.0) -> "FlinkCluster":
        self._write_config()
        deadline = time.monotonic() + timeout
        try:
            self._spawn("jobmanager", self._java(JOBMANAGER, "--configDir", str(self.root / "conf")))
            self._start_worker_pool()
            for index in range(self._taskmanagers):
                self.start_taskmanager(index)
            rest = FlinkRest(self.master, timeout=2.0)
            self._wait(lambda: rest.call("overview").get("taskmanagers") == self._taskmanagers, deadline,
                       f"{self._taskmanagers} TaskManagers registered")
        except BaseException:
            self.stop()
            raise
        threading.Thread(target=self._keep_worker_pool, name="worker-pool-keeper", daemon=True).start()
        return self

    def start_taskmanager(self, index: int) -> None:
        if self._taskmanager_command is None:
            self._taskmanager_command = self._taskmanager()
        self._spawn(f"taskmanager-{index}", self._taskmanager_command)

    @property
    def process_ids(self) -> list[int]:
        """Of the JobManager, the TaskManagers and the worker pool (the pool's workers are in its process group)."""
        return [process.pid for process in self._processes.values()]

    @property
    def running(self) -> bool:
        """Whether the JobManager and every TaskManager run (the worker pool is started again when it ends)."""
        return bool(self._processes) and all(process.poll() is None for name, process in self._processes.items()
                                             if name != "workers")

    def kill_taskmanager(self, index: int) -> None:
        """SIGKILL, as a machine that fails ends it."""
        process = self._processes.pop(f"taskmanager-{index}")
        _signal_group(process, signal.SIGKILL)
        process.wait()

    def kill_worker_pool(self) -> None:
        """SIGKILL of the pool and its workers, as a failing container ends them; it is started again within a
        second."""
        _signal_group(self._processes["workers"], signal.SIGKILL)

    def stop(self, timeout: float = 20.0) -> None:
        """End every process of the cluster, the pool's workers too (SIGTERM, then SIGKILL after ``timeout``); the
        jobs on it end with them."""
        self._stopping.set()
        with self._lock:
            processes, self._processes = self._processes, {}
        for process in processes.values():
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process, signal.SIGKILL)  # (what is left of its group: a worker of the pool)
            process.wait()

    def close(self) -> None:
        self.stop()
        if self._temporary:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "FlinkCluster":
        return self.start()  # (a start that fails stops what it started and keeps its folder: the logs say why)

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ parts

    def _write_config(self) -> None:
        conf = self.root / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        (self.root / "log").mkdir(exist_ok=True)
        (conf / "flink-conf.yaml").write_text(_CONFIG.format(
            rpc_port=free_port(), rest_port=self.rest_port, slots=self._slots,
            checkpoints=(self.root / "checkpoints").as_uri(), savepoints=(self.root / "savepoints").as_uri()))

    def _java(self, main_class: str, *args: str, jvm: tuple[str, ...] = ()) -> list[str]:
        jar = artifacts.require(artifacts.flink_cluster_jar(), "Flink's cluster libraries")
        return [artifacts.java(), *jvm, "-Dorg.slf4j.simpleLogger.showDateTime=true", "-cp", str(jar), main_class,
                *args]

    def _start_worker_pool(self) -> None:
        self._spawn("workers", [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                                f"--service_port={self.worker_port}"], cwd=ROOT, env=_worker_environment())
        self.worker_pool_starts += 1

    def _keep_worker_pool(self) -> None:
        while not self._stopping.wait(0.5):
            with self._lock:
                pool = self._processes.get("workers")
                if pool is None or pool.poll() is None:
                    continue
                _signal_group(pool, signal.SIGKILL)  # (what is left of its group: workers of the pool)
                with open(self.root / "log" / "workers.log", "a") as log:
                    print(f"rtml flink-cluster: the worker pool ended with status {pool.returncode}; starting it "
                          f"again", file=log)
                self._start_worker_pool()

    def _taskmanager(self) -> list[str]:
        """A TaskManager's command: Flink's scripts derive its JVM's memory flags and the matching dynamic
        properties from the configuration with ``BashJavaUtils``, and so does this."""
        conf = str(self.root / "conf")
        done = subprocess.run(self._java("org.apache.flink.runtime.util.bash.BashJavaUtils", "GET_TM_RESOURCE_PARAMS",
                                         "--configDir", conf), capture_output=True, text=True, stdin=subprocess.DEVNULL)
        results = [line[len(_RESULT):] for line in done.stdout.splitlines() if line.startswith(_RESULT)]
        if done.returncode != 0 or len(results) < 2:
            raise ClusterFailed(f"Flink could not size a TaskManager from {conf}: "
                                f"{(done.stderr or done.stdout).strip()[-500:]}")
        jvm, dynamic = results[-2].split(), results[-1].split()
        return self._java(TASKMANAGER, "--configDir", conf, *dynamic, jvm=tuple(jvm))

    def _spawn(self, name: str, command: list[str], **popen) -> None:
        with open(self.root / "log" / f"{name}.log", "ab") as log:
            self._processes[name] = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                                     stderr=subprocess.STDOUT, start_new_session=True, **popen)

    def _wait(self, ready, deadline: float, what: str) -> None:
        while True:
            for name, process in self._processes.items():
                if process.poll() is not None:
                    raise ClusterFailed(f"Flink cluster: {name} exited with status {process.returncode}; its log "
                                        f"ends: {self._log_end(name)}")
            try:
                if ready():
                    return
            except UserError:
                pass  # not answering yet
            if time.monotonic() > deadline:
                raise ClusterFailed(f"Flink cluster: not ready ({what}) after its timeout; see {self.root / 'log'}")
            time.sleep(0.25)

    def _log_end(self, name: str) -> str:
        lines = (self.root / "log" / f"{name}.log").read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:]) or "(empty)"


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    """``sig`` to the process group that ``process`` leads (each process of the cluster starts its own)."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:  # (the whole group has ended)
        pass


def _worker_environment() -> dict[str, str]:
    """The pool starts each worker as ``python``: this interpreter's, with this project's modules importable."""
    def first(name: str, path: str) -> str:
        return os.pathsep.join(filter(None, [path, os.environ.get(name)]))

    return {**os.environ, "PATH": first("PATH", str(Path(sys.executable).parent)),
            "PYTHONPATH": first("PYTHONPATH", str(ROOT))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=cli.PROG or "python -m pipelines.flink_cluster",
                                     description=__doc__.strip().splitlines()[0])
    parser.add_argument("--taskmanagers", type=int, default=2, help="TaskManager processes (default: 2)")
    parser.add_argument("--slots", type=int, default=1, help="task slots per TaskManager (default: 1)")
    parser.add_argument("--rest_port", type=int, default=8081, help="the JobManager's REST port (default: 8081)")
    parser.add_argument("--worker_port", type=int, default=50000, help="the Python worker pool's port (default: 50000)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="configuration, logs, checkpoints and savepoints (default: a temporary folder, removed "
                             "at the stop)")
    args = parser.parse_args(argv)
    cluster = FlinkCluster(args.taskmanagers, args.slots, args.rest_port, args.worker_port, args.dir)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops the cluster as Ctrl-C does
    print(f"starting a Flink session cluster in {cluster.root} ...", file=sys.stderr, flush=True)
    try:
        cluster.start()
        print(f"ready: Flink's web UI at http://{cluster.master}; run pipelines on it with\n  "
              f"{' '.join(cluster.flags)}\n(Ctrl-C stops the cluster and its jobs)", flush=True)
        while cluster.running:
            time.sleep(1)
        print(f"error: a process of the cluster ended; see {cluster.root / 'log'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except ClusterFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # (a second signal must not cut the stop short)
            signal.signal(sig, signal.SIG_IGN)
        cluster.close()


if __name__ == "__main__":
    raise SystemExit(main())
