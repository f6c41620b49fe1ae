"""`Client`: RunService calls with dictionaries in and out (proto JSON, as grpcurl prints it)."""

import grpc
from google.protobuf import duration_pb2, json_format

from .errors import RunstreamError
from .v1 import definition_pb2, service_pb2, service_pb2_grpc, worker_pb2, worker_pb2_grpc
# Kept importable from here, where they were defined before values.py.
from .values import from_value, to_struct, to_value, whole_numbers  # noqa: F401

# Large results and events are the server's to limit (--max-response-bytes); the client takes what it sends.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def event_dict(message):
    """A message in proto JSON form as grpcurl prints it (camelCase names, 64-bit integers as strings, enum names,
    fields at their default left out)."""
    return whole_numbers(json_format.MessageToDict(message))


def answer_dict(message):
    """A unary answer in proto JSON form, fields at their default included (so `created` is there when False)."""
    return whole_numbers(json_format.MessageToDict(message, always_print_fields_with_no_presence=True))


class Client:
    """A connection to a runstream server's RunService (and WorkerService's ListWorkers).

    Every call raises `RunstreamError` (with the gRPC `code` and the server's `message`) when the server refuses it.
    `timeout` (seconds) bounds each unary call; streams are not bounded. Use as a context manager, or `close()`.
    """

    def __init__(self, address, timeout=None, channel=None):
        self._channel = channel or grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._runs = service_pb2_grpc.RunServiceStub(self._channel)
        self._workers = worker_pb2_grpc.WorkerServiceStub(self._channel)
        self._timeout = timeout

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request, timeout=None):
        try:
            return method(request, timeout=timeout if timeout is not None else self._timeout)
        except grpc.RpcError as e:
            raise RunstreamError.from_rpc(e) from None

    @staticmethod
    def _events(call):
        try:
            for event in call:
                yield event_dict(event)
        except grpc.RpcError as e:
            raise RunstreamError.from_rpc(e) from None
        finally:
            call.cancel()

    @staticmethod
    def _run_fields(request, workflow_id, input, run_id, agent_id, network_id, request_context, resource_id):
        if workflow_id:
            request.workflow_id = workflow_id
        if agent_id:
            request.agent_id = agent_id
        if network_id:
            request.network_id = network_id
        if input is not None:
            request.input.CopyFrom(to_value(input))
        if run_id:
            request.run_id = run_id
        if request_context:
            request.request_context.CopyFrom(to_struct(request_context))
        if resource_id:
            request.resource_id = resource_id
        return request

    def stream(self, workflow_id=None, input=None, run_id=None, *, agent_id=None, network_id=None,
               request_context=None, resource_id=None, close_on_suspend=None):
        """Starts a run (or attaches to run `run_id` if it exists) and yields its events as dictionaries until the
        phase ends (at the run's suspension, unless `close_on_suspend=False`). Closing the generator early does
        not cancel the run."""
        request = self._run_fields(service_pb2.StreamRunRequest(), workflow_id, input, run_id, agent_id,
                                   network_id, request_context, resource_id)
        if close_on_suspend is not None:
            request.close_on_suspend = close_on_suspend
        return self._events(self._runs.StreamRun(request))

    def start(self, workflow_id=None, input=None, run_id=None, *, agent_id=None, network_id=None,
              request_context=None, resource_id=None):
        """Starts a run without streaming: `{"runId", "created", "status"}`."""
        request = self._run_fields(service_pb2.StartRunRequest(), workflow_id, input, run_id, agent_id,
                                   network_id, request_context, resource_id)
        return answer_dict(self._call(self._runs.StartRun, request))

    def resume_stream(self, run_id, resume_data=None, step=None, *, for_each_index=None, label=None,
                      request_context=None, close_on_suspend=None):
        """Resumes a suspended run and yields the events of the resumed phase. `step`: the suspended step's path
        ("child.step" or a list of segments); may be left out when exactly one step is suspended."""
        request = service_pb2.ResumeStreamRequest(run_id=run_id)
        if resume_data is not None:
            request.resume_data.CopyFrom(to_value(resume_data))
        if step:
            request.step.extend([step] if isinstance(step, str) else list(step))
        if for_each_index is not None:
            request.for_each_index = for_each_index
        if label:
            request.label = label
        if request_context:
            request.request_context.CopyFrom(to_struct(request_context))
        if close_on_suspend is not None:
            request.close_on_suspend = close_on_suspend
        return self._events(self._runs.ResumeStream(request))

    def observe(self, run_id, after_seq=0, *, close_on_suspend=None):
        """Yields the run's events after `after_seq`, then follows it live until it ends (or is suspended, unless
        `close_on_suspend=False`)."""
        request = service_pb2.ObserveStreamRequest(run_id=run_id, after_seq=after_seq)
        if close_on_suspend is not None:
            request.close_on_suspend = close_on_suspend
        return self._events(self._runs.ObserveStream(request))

    def result(self, run_id, wait=False, *, max_wait=None, fields=None, timeout=None):
        """The run's outcome (RunResult). With `wait`, waits until it ends or suspends (at most `max_wait`
        seconds, or the server's limit; `waitExpired` says when the wait ended first)."""
        request = service_pb2.GetResultRequest(run_id=run_id, wait=wait)
        if max_wait is not None:
            request.max_wait.CopyFrom(duration_pb2.Duration(seconds=int(max_wait),
                                                             nanos=int((max_wait % 1) * 1e9)))
        if fields:
            request.fields.extend(fields)
        return answer_dict(self._call(self._runs.GetResult, request, timeout))

    def run(self, run_id):
        """The run's metadata and status (RunInfo)."""
        return answer_dict(self._call(self._runs.GetRun, service_pb2.GetRunRequest(run_id=run_id)))

    def cancel(self, run_id):
        """Cancels the run: `{"run": RunInfo, "canceled": bool}` (False when it had already ended)."""
        return answer_dict(self._call(self._runs.CancelRun, service_pb2.CancelRunRequest(run_id=run_id)))

    def list_workflows(self):
        """The workflows, agents and networks the server runs."""
        return answer_dict(self._call(self._runs.ListWorkflows, service_pb2.ListWorkflowsRequest()))["workflows"]

    def list_workers(self, task_type=""):
        """The connected workers (WorkerInfo), optionally only those serving `task_type`."""
        request = worker_pb2.ListWorkersRequest(task_type=task_type)
        return answer_dict(self._call(self._workers.ListWorkers, request))["workers"]

    @staticmethod
    def _definition(definition, message):
        try:
            return json_format.ParseDict(definition, message)
        except json_format.ParseError as e:
            raise ValueError(f"not a {type(message).__name__}: {e}") from None

    def register_workflow(self, definition):
        """Registers a workflow given as its WorkflowDefinition in proto JSON form (a dict, as kept in a file);
        returns the stored definition with its version. Raises ValueError for a dict that is no
        WorkflowDefinition."""
        request = service_pb2.RegisterWorkflowRequest(
            definition=self._definition(definition, definition_pb2.WorkflowDefinition()))
        return answer_dict(self._call(self._runs.RegisterWorkflow, request))

    def register_agent(self, definition):
        """Registers an agent given as its AgentDefinition in proto JSON form (a dict: `id`, `description`,
        `instructions`, `model`, `maxSteps`, `tools` of `{name, description, parameters, task, requiresApproval}`);
        returns the stored definition with its `version` and `registeredAt`. The model runs on the server; each
        tool call is a task of the tool's `task` type for a worker (docs/workers.md, "Registered agents").
        Registering an id again makes a new version. Raises ValueError for a dict that is no AgentDefinition, and
        `RunstreamError` INVALID_ARGUMENT naming the field for one the server refuses."""
        request = service_pb2.RegisterAgentRequest(
            definition=self._definition(definition, definition_pb2.AgentDefinition()))
        return answer_dict(self._call(self._runs.RegisterAgent, request))

    def get_agent_definition(self, id, version=0):
        """A registered agent's definition in proto JSON form, as `register_agent` returned it: the latest
        version, or `version`. Raises `RunstreamError` NOT_FOUND for an unknown id or version."""
        request = service_pb2.GetDefinitionRequest(id=id, version=version)
        return answer_dict(self._call(self._runs.GetAgentDefinition, request))
