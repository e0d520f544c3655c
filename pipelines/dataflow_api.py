"""The Dataflow API (google-cloud-dataflow-client) as far as this project uses it: a client of one of its services,
a refused call as one line, and the jobs of a project's region (``rtml jobs``).

Credentials are Application Default Credentials only. A loopback ``api_endpoint`` (localhost, 127.0.0.1, [::1]) is
reached over a plaintext channel with no credentials at all: that is for a local emulator or a test server only.
"""
from __future__ import annotations

import datetime

from pipelines.flink_rest import Job  # (the same four facts of a job, on either runner)
from transforms.errors import UserError

TIMEOUT_S = 120.0
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def client(service: str, api_endpoint: str | None = None):
    """The client of ``service`` ("FlexTemplatesService", "JobsV1Beta3"): ADC over TLS, or plaintext without
    credentials on loopback."""
    import importlib

    from google.api_core.client_options import ClientOptions
    from google.cloud import dataflow_v1beta3 as dataflow

    client_class = getattr(dataflow, f"{service}Client")
    if api_endpoint and _host(api_endpoint) in _LOOPBACK:
        import grpc

        package = "flex_templates_service" if service == "FlexTemplatesService" else "jobs_v1_beta3"
        transports = importlib.import_module(f"google.cloud.dataflow_v1beta3.services.{package}.transports")
        transport_class = getattr(transports, f"{service}GrpcTransport")
        return client_class(transport=transport_class(host=api_endpoint, channel=grpc.insecure_channel(api_endpoint)))
    return client_class(client_options=ClientOptions(api_endpoint=api_endpoint) if api_endpoint else None)


def _host(endpoint: str) -> str:
    host = endpoint.rsplit(":", 1)[0] if not endpoint.endswith("]") and endpoint.count(":") == 1 else endpoint
    if host.startswith("["):
        host = host[1:host.index("]")]
    return host


def refusal(error: Exception, action: str) -> str | None:
    """A failed call to ``action`` as one line, for the errors of credentials and of the service; None for others."""
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions

    if isinstance(error, auth_exceptions.DefaultCredentialsError):
        return ("no Application Default Credentials: run `gcloud auth application-default login` or run where a "
                "service account is attached")
    if isinstance(error, auth_exceptions.GoogleAuthError):
        return f"credentials refused: {type(error).__name__}"
    if isinstance(error, api_exceptions.GoogleAPICallError):
        code = getattr(error.grpc_status_code, "name", None) or getattr(error.code, "name", error.code)
        message = (error.message or "").strip().splitlines()
        return f"{action} refused: {code}: {message[0] if message else type(error).__name__}"
    if isinstance(error, api_exceptions.RetryError):
        return f"{action} failed: no answer from the Dataflow API within {TIMEOUT_S:g} s"
    return None


class DataflowJobs:
    """The Dataflow jobs of ``project`` in ``region``: list them, drain one, cancel one. Every failure is a
    ``UserError`` of one line."""

    def __init__(self, project: str, region: str, api_endpoint: str | None = None):
        self.project, self.region, self._api_endpoint = project, region, api_endpoint
        self._client = None

    def _call(self, method: str, what: str, **request):
        try:
            if self._client is None:
                self._client = client("JobsV1Beta3", self._api_endpoint)
            return getattr(self._client, method)(request=dict(request, project_id=self.project, location=self.region),
                                                 timeout=TIMEOUT_S)
        except Exception as error:
            from google.api_core.exceptions import NotFound

            if isinstance(error, NotFound):
                raise UserError(f"Dataflow knows no job {request.get('job_id')} in project {self.project}, region "
                                f"{self.region} (rtml jobs list shows its jobs)") from None
            reason = refusal(error, f"{what} (project {self.project}, region {self.region})")
            if reason is None:
                raise
            raise UserError(reason) from None

    def jobs(self) -> list[Job]:
        """The region's jobs, newest first."""
        found = [Job(job.id, job.name, job.current_state.name, _ms(job.create_time))
                 for job in self._call("list_jobs", "list its jobs")]
        return sorted(found, key=lambda job: -job.start_ms)

    def drain(self, job_id: str) -> str:
        """Ask a stream to drain: it reads nothing more, writes what it read and stops. The state Dataflow answers
        with."""
        return self._request_state(job_id, "JOB_STATE_DRAINED", "drain")

    def cancel(self, job_id: str) -> str:
        return self._request_state(job_id, "JOB_STATE_CANCELLED", "cancel")

    def _request_state(self, job_id: str, state: str, what: str) -> str:
        """(A job that has ended is Dataflow's FAILED_PRECONDITION, in its words.)"""
        from google.cloud import dataflow_v1beta3 as dataflow

        updated = self._call("update_job", f"{what} job {job_id}", job_id=job_id,
                             job=dataflow.Job(requested_state=getattr(dataflow.JobState, state)))
        return updated.current_state.name


def _ms(timestamp: datetime.datetime | None) -> int:
    return int(timestamp.timestamp() * 1000) if timestamp else 0
