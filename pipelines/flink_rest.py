"""Flink's REST API, as far as this project uses it: the jobs on a cluster, and stopping one with a savepoint.

Every failure is a ``UserError`` of one line: a cluster that does not answer, a job id it does not know, a savepoint
that failed (with Flink's reason).
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from transforms.errors import UserError

# What a job may still do (Flink's JobStatus values that are not terminal).
ACTIVE = {"INITIALIZING", "CREATED", "RUNNING", "FAILING", "CANCELLING", "RESTARTING", "SUSPENDED", "RECONCILING"}


@dataclass(frozen=True)
class Job:
    id: str
    name: str
    state: str
    start_ms: int


class FlinkRest:
    """The REST API of the Flink cluster whose JobManager answers at ``master`` (HOST:PORT, or an http:// URL)."""

    def __init__(self, master: str, timeout: float = 10.0):
        self.url = master.rstrip("/") if "://" in master else f"http://{master}"
        self.timeout = timeout

    def call(self, path: str, method: str = "GET", body: dict | None = None) -> dict:
        request = urllib.request.Request(f"{self.url}/{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as error:
            if error.code == 404 and path.startswith("jobs/"):
                job_id = path.split("/")[1].split("?")[0]
                raise UserError(f"Flink at {self.url} knows no job {job_id} (rtml jobs list shows its jobs)") from None
            raise UserError(f"Flink at {self.url} refused {method} /{path}: HTTP {error.code} "
                            f"{_first_error(error)}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise UserError(f"no Flink cluster answers at {self.url} ({reason}); check --flink_master") from None

    def jobs(self) -> list[Job]:
        """The cluster's jobs, newest first."""
        found = [Job(job["jid"], job["name"], job["state"], job["start-time"])
                 for job in self.call("jobs/overview")["jobs"]]
        return sorted(found, key=lambda job: -job.start_ms)

    def running_job_named(self, name: str, timeout: float, failed=lambda: None) -> Job:
        """The job called ``name``, once Flink says it runs; ``failed()`` (a reason, or None) is asked while
        waiting. The cluster is expected to have answered before: a poll it does not answer is tried again."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                job = next((job for job in self.jobs() if job.name == name), None)
            except UserError:  # a JobManager busy deploying (or restarting tasks) may miss one poll's timeout
                if time.monotonic() > deadline:
                    raise
                job = None
            if job is not None and job.state == "RUNNING":
                return job
            if job is not None and job.state not in ACTIVE:
                raise UserError(f"the job {name} ({job.id}) is {job.state} on Flink at {self.url}: "
                                f"{self.failure(job.id)}")
            why = failed()
            if why:
                raise UserError(why)
            if time.monotonic() > deadline:
                raise UserError(f"the job {name} was not running on Flink at {self.url} after {timeout:g} s")
            time.sleep(0.5)

    def stop(self, job_id: str, savepoint_dir: str | None, timeout: float, drain: bool = False) -> str:
        """Stop a streaming job with a savepoint (unless ``drain``, its windows and timers stay open in it); its
        path."""
        state = self.call(f"jobs/{job_id}")["state"]  # (Flink takes a stop of a job it does not know, then fails it)
        if state != "RUNNING":
            raise UserError(f"job {job_id} is {state} on Flink at {self.url}: only a running job can be stopped")
        body = {"drain": drain, **({"targetDirectory": savepoint_dir} if savepoint_dir else {})}
        trigger = self.call(f"jobs/{job_id}/stop", "POST", body)["request-id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.call(f"jobs/{job_id}/savepoints/{trigger}")
            if answer["status"]["id"] == "COMPLETED":
                operation = answer.get("operation", {})
                if "failure-cause" in operation:
                    cause = operation["failure-cause"]
                    raise UserError(f"Flink could not stop job {job_id} with a savepoint: "
                                    f"{_one_line(cause.get('stack-trace') or cause.get('class', '?'))}")
                return operation["location"]
            time.sleep(0.5)
        raise UserError(f"the savepoint of job {job_id} did not complete within {timeout:g} s; the job runs on")

    def failure(self, job_id: str) -> str:
        """Why a job failed, as Flink's deepest cause says it."""
        root = self.call(f"jobs/{job_id}/exceptions").get("root-exception")
        return _one_line(root) if root else f"no reason given; see {self.url}/#/job/{job_id}/exceptions"

    def cancel(self, job_id: str) -> None:
        self.call(f"jobs/{job_id}?mode=cancel", "PATCH")


def _first_error(error: urllib.error.HTTPError) -> str:
    try:
        return _one_line(json.loads(error.read())["errors"][0])
    except (ValueError, KeyError, IndexError, TypeError):
        return error.reason


def _one_line(text: str) -> str:
    """The deepest ``Caused by`` of a Java stack trace (or its first line)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    causes = [line[len("Caused by: "):] for line in lines if line.startswith("Caused by: ")]
    return (causes[-1] if causes else lines[0] if lines else "no reason given")[:400]
