"""The Dataflow API's methods that this project calls, served in-process on loopback with the client library's own
message classes (generic gRPC handlers), so that a request is checked as it arrived on the wire: LaunchFlexTemplate
(``templates.launch``) and ListJobs, GetJob and UpdateJob (``rtml jobs``), over a table of jobs.

Like Dataflow, a requested state is taken at once by the job's current state's successor (DRAINING, CANCELLING), an
unknown job id is NOT_FOUND, and a change of a job that has ended is FAILED_PRECONDITION.
"""
from __future__ import annotations

from concurrent import futures

import grpc
from google.cloud import dataflow_v1beta3 as dataflow

_ENDED = {dataflow.JobState.JOB_STATE_DONE, dataflow.JobState.JOB_STATE_FAILED, dataflow.JobState.JOB_STATE_CANCELLED,
          dataflow.JobState.JOB_STATE_DRAINED, dataflow.JobState.JOB_STATE_UPDATED}
_ON_THE_WAY = {dataflow.JobState.JOB_STATE_DRAINED: dataflow.JobState.JOB_STATE_DRAINING,
               dataflow.JobState.JOB_STATE_CANCELLED: dataflow.JobState.JOB_STATE_CANCELLING}


class FakeDataflow:
    """``port`` serves the methods; ``requests`` lists what arrived; ``jobs`` maps an id to its ``dataflow.Job``;
    ``refuse`` = (StatusCode, message) answers the next calls with that error."""

    def __init__(self):
        self.reset()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self._serve("FlexTemplatesService", LaunchFlexTemplate=(self._launch, dataflow.LaunchFlexTemplateRequest,
                                                                dataflow.LaunchFlexTemplateResponse))
        self._serve("JobsV1Beta3", ListJobs=(self._list, dataflow.ListJobsRequest, dataflow.ListJobsResponse),
                    GetJob=(self._get, dataflow.GetJobRequest, dataflow.Job),
                    UpdateJob=(self._update, dataflow.UpdateJobRequest, dataflow.Job))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def reset(self) -> None:
        self.requests, self.refuse, self.jobs = [], None, {}

    def _serve(self, service: str, **methods) -> None:
        handlers = {name: grpc.unary_unary_rpc_method_handler(
            self._checked(method), request_deserializer=request.deserialize, response_serializer=response.serialize)
            for name, (method, request, response) in methods.items()}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            f"google.dataflow.v1beta3.{service}", handlers),))

    def _checked(self, method):
        def answer(request, context):
            self.requests.append(request)
            if self.refuse:
                context.abort(*self.refuse)
            return method(request, context)
        return answer

    def _launch(self, request, context):
        if request.validate_only:
            return dataflow.LaunchFlexTemplateResponse()
        return dataflow.LaunchFlexTemplateResponse(job=dataflow.Job(
            id="2026-11-21_07_00_00-1234567890", name=request.launch_parameter.job_name,
            project_id=request.project_id, location=request.location))

    def _list(self, request, context):
        return dataflow.ListJobsResponse(jobs=[job for job in self.jobs.values() if job.location == request.location
                                               and job.project_id == request.project_id])

    def _get(self, request, context):
        job = self.jobs.get(request.job_id)
        if job is None or job.location != request.location or job.project_id != request.project_id:
            context.abort(grpc.StatusCode.NOT_FOUND, f"(b8c9): Requested job with id {request.job_id} not found.")
        return job

    def _update(self, request, context):
        job = self._get(request, context)
        if job.current_state in _ENDED:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"(7c1a): Workflow modification failed. Causes: (b1a2): Job {job.id} has terminated in "
                          f"state {job.current_state.name}")
        job.requested_state = request.job.requested_state
        job.current_state = _ON_THE_WAY[request.job.requested_state]
        return job
