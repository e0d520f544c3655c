"""``rtml jobs`` on Dataflow, against the Dataflow API served in-process on loopback (``tests/dataflow_service.py``),
through google-cloud-dataflow-client: list a region's jobs, drain a stream, cancel one, and one line for each
refusal."""
from __future__ import annotations

import datetime

import grpc
import pytest
from google.cloud import dataflow_v1beta3 as dataflow

from pipelines import jobs
from transforms.errors import UserError

RUNNING, DONE = dataflow.JobState.JOB_STATE_RUNNING, dataflow.JobState.JOB_STATE_DONE


@pytest.fixture
def service(dataflow_service):
    dataflow_service.reset()
    dataflow_service.jobs = {job.id: job for job in (
        _job("2026-12-06_01_00_00-1", "score-stream-a", RUNNING, 1),
        _job("2026-12-06_02_00_00-2", "score-stream-b", RUNNING, 2),
        _job("2026-12-05_23_00_00-3", "score-batch", DONE, 0),
        _job("2026-12-06_03_00_00-4", "elsewhere", RUNNING, 3, location="us-central1"))}
    return dataflow_service


def _job(job_id: str, name: str, state, hour: int, location: str = "europe-west4") -> dataflow.Job:
    return dataflow.Job(id=job_id, name=name, project_id="my-project", location=location, current_state=state,
                        create_time=datetime.datetime(2026, 12, 6, hour, tzinfo=datetime.timezone.utc))


def _jobs(service, *args: str):
    return jobs.run([*args, "--project", "my-project", "--region", "europe-west4",
                     "--api_endpoint", f"127.0.0.1:{service.port}"])


def test_list_shows_the_regions_jobs_newest_first(service, capsys):
    _jobs(service, "list")
    assert capsys.readouterr().out.splitlines() == [
        "2026-12-06_02_00_00-2  JOB_STATE_RUNNING 2026-12-06 02:00:00Z  score-stream-b",
        "2026-12-06_01_00_00-1  JOB_STATE_RUNNING 2026-12-06 01:00:00Z  score-stream-a",
        "2026-12-05_23_00_00-3  JOB_STATE_DONE 2026-12-06 00:00:00Z  score-batch"]


def test_stop_drains_the_stream_and_cancel_cancels(service, capsys):
    assert _jobs(service, "stop", "2026-12-06_01_00_00-1") == "JOB_STATE_DRAINING"
    assert service.jobs["2026-12-06_01_00_00-1"].requested_state == dataflow.JobState.JOB_STATE_DRAINED
    assert capsys.readouterr().err == "draining Dataflow job 2026-12-06_01_00_00-1 (JOB_STATE_DRAINING)\n"
    assert _jobs(service, "cancel", "2026-12-06_02_00_00-2") == "JOB_STATE_CANCELLING"
    assert service.jobs["2026-12-06_02_00_00-2"].requested_state == dataflow.JobState.JOB_STATE_CANCELLED
    [update] = [r for r in service.requests if isinstance(r, dataflow.UpdateJobRequest) and r.job_id.endswith("-2")]
    assert (update.project_id, update.location) == ("my-project", "europe-west4")


def test_what_dataflow_refuses_is_one_line(service):
    with pytest.raises(UserError, match=r"^Dataflow knows no job 2026-12-06_03_00_00-4 in project my-project, region "
                                        r"europe-west4 \(rtml jobs list shows its jobs\)$"):
        _jobs(service, "stop", "2026-12-06_03_00_00-4")  # (a job of another region)
    with pytest.raises(UserError, match=r"^drain job 2026-12-05_23_00_00-3 \(project my-project, region europe-west4\) "
                                        r"refused: FAILED_PRECONDITION: .*has terminated in state JOB_STATE_DONE$"):
        _jobs(service, "stop", "2026-12-05_23_00_00-3")
    service.refuse = (grpc.StatusCode.PERMISSION_DENIED, "Permission 'dataflow.jobs.list' denied on project")
    with pytest.raises(UserError, match=r"^list its jobs \(project my-project, region europe-west4\) refused: "
                                        r"PERMISSION_DENIED: Permission 'dataflow.jobs.list' denied on project$"):
        _jobs(service, "list")


@pytest.mark.parametrize("flags", [
    ["list"],  # nowhere
    ["list", "--flink_master", "localhost:8081", "--project", "p", "--region", "r"],  # two places
    ["list", "--project", "p"],  # no region
    ["stop", "x", "--project", "p", "--region", "r", "--savepoint_dir", "/tmp/s"],
])
def test_flags_that_do_not_say_one_place_are_refused(flags, capsys):
    with pytest.raises(SystemExit) as exit:
        jobs.run(flags)
    assert exit.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].startswith("python -m pipelines.jobs: error: ")
