//! The gRPC layer: a thin translation between `runstream.v1.RunService` and the run registry.
//!
//! Each handler checks and converts its request, calls the registry, and converts the answer back. No run logic
//! lives here; errors become status codes in one place (`status.rs`).

pub mod auth;
pub mod conn;
pub mod convert;
pub mod convert_agent;
pub mod convert_definition;
pub mod serve;
pub mod status;
pub mod tls;
pub mod wire;
pub mod worker;

/// The generated server (streams typed as [`wire::EncodedRunEvent`]); see build.rs.
pub mod server {
    include!(concat!(env!("OUT_DIR"), "/server/runstream.v1.rs"));
}

use std::{pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::{Stream, stream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, metadata::MetadataMap};

use self::{status::invalid_field, wire::EncodedRunEvent};
use crate::{
    auth::Caller,
    engine::{ResumeRequest, RunKind, RunStatus},
    pb,
    registry::{
        Definition, LogReader, ReadUntil, RegistryError, RunFilter, RunRegistry, StartRequest, Started, TraceContext,
        validate_run_id,
    },
};

/// Limits of the service, with the defaults `runstream serve` uses.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The longest a `GetResult(wait = true)` waits, whatever the caller's deadline.
    pub max_result_wait: Duration,
    /// How long CancelRun waits for a running run to stop before answering with its status then.
    pub cancel_settle: Duration,
    /// After shutdown begins, how long connections get to drain before the server closes them anyway. A client
    /// that stopped reading holds its stream open (HTTP/2 flow control), and must not keep the server alive.
    pub shutdown_grace: Duration,
    /// The largest request accepted; larger ones get RESOURCE_EXHAUSTED (before they are read).
    pub max_request_bytes: usize,
    /// The largest response sent (what clients decode by default is 4 MiB); a GetResult answer that would be
    /// larger is RESOURCE_EXHAUSTED naming its size. Events are held to the registry's event limit.
    pub max_response_bytes: usize,
    /// The most streams (calls) one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS): a
    /// client over it waits for a stream to end (gRPC clients do) or has the extra ones refused.
    pub max_streams_per_connection: u32,
    /// How long a new connection may stay silent before its first bytes (the HTTP/2 preface, or a TLS hello);
    /// then it is closed, so that silent sockets cannot pile up.
    pub first_bytes_timeout: Duration,
}

impl ServiceConfig {
    /// gRPC's customary message limit, the default of most clients (grpcurl, grpcio, tonic, grpc-go).
    pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
    /// Streams a connection may have open at once, by default: more than a client multiplexes in practice (the
    /// benchmark's 10,000 concurrent runs use 150 a connection), far fewer than a connection could make the server
    /// hold.
    pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 1000;
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            max_result_wait: Duration::from_secs(60),
            cancel_settle: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
            max_request_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
            max_response_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
            max_streams_per_connection: Self::DEFAULT_MAX_STREAMS_PER_CONNECTION,
            first_bytes_timeout: Duration::from_secs(10),
        }
    }
}

/// The RunService implementation.
#[derive(Debug, Clone)]
pub struct RunService {
    registry: Arc<RunRegistry>,
    config: ServiceConfig,
    /// Cancelled when the server shuts down: open streams end with UNAVAILABLE and a cursor to re-attach with.
    shutdown: CancellationToken,
}

impl RunService {
    pub fn new(registry: Arc<RunRegistry>, config: ServiceConfig, shutdown: CancellationToken) -> Self {
        Self { registry, config, shutdown }
    }

    /// Turns a log reader into a response stream. The log holds each event encoded (once, at append); the stream
    /// adds the run id and the seq.
    fn event_stream(&self, run_id: Arc<str>, reader: LogReader) -> EventStream {
        /// How many events a ready stream hands to tonic before it lets its task go, so that the connection task
        /// writes them (~20 KiB of flood events: under tonic's 32 KiB encode threshold, so frames stay large).
        const FLUSH_EVERY: u32 = 512;
        struct State {
            reader: LogReader,
            run_id: Arc<str>,
            head: Bytes,
            shutdown: CancellationToken,
            ended: bool,
            /// Events handed to tonic since this stream last let its task go.
            since_yield: u32,
            first_flushed: bool,
        }
        let head = wire::run_id_field(&run_id);
        let shutdown = self.shutdown.clone();
        let state = State { reader, run_id, head, shutdown, ended: false, since_yield: 0, first_flushed: false };
        Box::pin(stream::unfold(state, |mut state| async move {
            if state.ended {
                return None;
            }
            // While this stream is ready, tonic keeps encoding and hyper keeps handing frames to h2, and the
            // connection task that writes them to the socket (woken into this worker's LIFO slot) waits until the
            // stream task is pending: with a writer ahead of its reader, h2's send buffer (400 KiB) can fill before
            // the headers and the first event leave. Pending once after the first event, and every `FLUSH_EVERY`
            // events after, sends them on their way.
            if state.since_yield >= FLUSH_EVERY || (state.since_yield == 1 && !state.first_flushed) {
                state.since_yield = 0;
                state.first_flushed = true;
                tokio::task::yield_now().await;
            }
            state.since_yield += 1;
            // Fast path: events already buffered need no waiting, hence no select.
            let entry = match state.reader.next_buffered() {
                Some(entry) => Some(entry),
                None => tokio::select! {
                    entry = state.reader.next() => entry,
                    () = state.shutdown.cancelled() => {
                        state.ended = true;
                        let status = Status::unavailable(format!(
                            "the server is shutting down; re-attach with ObserveStream(run_id = \"{}\", after_seq = {})",
                            state.run_id,
                            state.reader.cursor()
                        ));
                        return Some((Err(status), state));
                    }
                },
            };
            let Some(entry) = entry else {
                // The store could not give events no longer in memory.
                if let Some(error) = state.reader.failed() {
                    state.ended = true;
                    return Some((Err(error.into()), state));
                }
                // Retention dropped events this reader had not read yet: say where the log starts now.
                let first_seq = state.reader.expired()?;
                state.ended = true;
                let run_id = state.run_id.to_string();
                let error = RegistryError::CursorExpired { run_id, after_seq: state.reader.cursor(), first_seq };
                return Some((Err(error.into()), state));
            };
            let event = EncodedRunEvent::logged(&state.head, &entry);
            Some((Ok(event), state))
        }))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<EncodedRunEvent, Status>> + Send>>;

/// The longest workflow (agent, network) id a request may name: registered ids are at most this long too.
const MAX_WORKFLOW_ID_LEN: usize = 128;

/// The longest `resource_id`: it is stored with the run and shown by every ListRuns page.
const MAX_RESOURCE_ID_LEN: usize = 256;

/// INVALID_ARGUMENT if `value` of `field` is longer than `max` bytes (the message gives its length, never the value).
fn check_len(field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.len() > max {
        return Err(invalid_field(field, format!("{} bytes long; at most {max} are allowed", value.len())));
    }
    Ok(())
}

/// What a start request runs: exactly one of its `workflow_id`, `agent_id` and `network_id`.
fn target(workflow_id: String, agent_id: String, network_id: String) -> Result<(String, RunKind), Status> {
    check_len("workflow_id", &workflow_id, MAX_WORKFLOW_ID_LEN)?;
    check_len("agent_id", &agent_id, MAX_WORKFLOW_ID_LEN)?;
    check_len("network_id", &network_id, MAX_WORKFLOW_ID_LEN)?;
    let mut set: Vec<(&str, String, RunKind)> = [
        ("workflow_id", workflow_id, RunKind::Workflow),
        ("agent_id", agent_id, RunKind::Agent),
        ("network_id", network_id, RunKind::Network),
    ]
    .into_iter()
    .filter(|(_, id, _)| !id.is_empty())
    .collect();
    match set.len() {
        1 => {
            let (_, id, kind) = set.remove(0);
            Ok((id, kind))
        }
        0 => Err(invalid_field(
            "workflow_id",
            "required: set workflow_id, agent_id or network_id (ListWorkflows lists what this server runs)",
        )),
        _ => {
            let names: Vec<&str> = set.iter().map(|(name, ..)| *name).collect();
            Err(invalid_field(&names.join(", "), "set only one of workflow_id, agent_id and network_id"))
        }
    }
}

fn start_request(
    caller: &Caller,
    (workflow_id, kind): (String, RunKind),
    run_id: String,
    input: Option<prost_types::Value>,
    request_context: Option<prost_types::Struct>,
    tracing: Option<pb::TracingOptions>,
    resource_id: String,
) -> Result<StartRequest, Status> {
    check_len("resource_id", &resource_id, MAX_RESOURCE_ID_LEN)?;
    Ok(StartRequest {
        workflow_id,
        kind,
        run_id,
        input: input.map(convert::pb_to_json).unwrap_or_default(),
        request_context: request_context.map(convert::struct_to_map).unwrap_or_default(),
        resource_id,
        tenant: caller.tenant().clone(),
        tracing: tracing.map(trace_context).transpose()?,
    })
}

/// Checks trace propagation ids as W3C trace context defines them (hex, at most 32 and 16 digits), so a bad id is
/// reported to the caller instead of silently breaking their trace.
fn trace_context(options: pb::TracingOptions) -> Result<TraceContext, Status> {
    let check = |field: &str, value: &str, max: usize| {
        if value.len() > max || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid_field(field, format!("must be 1-{max} hexadecimal digits, got {value:?}")));
        }
        Ok(())
    };
    check("tracing_options.trace_id", &options.trace_id, 32)?;
    check("tracing_options.parent_span_id", &options.parent_span_id, 16)?;
    Ok(TraceContext {
        trace_id: options.trace_id,
        parent_span_id: options.parent_span_id,
        tags: options.tags,
        metadata: options.metadata.map(convert::struct_to_map).unwrap_or_default(),
    })
}

/// Reads the caller's deadline from the `grpc-timeout` header (e.g. "100m" = 100 ms).
fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// How long a result wait may last: answer before the caller's deadline, leaving it time to receive the answer
/// (a tenth of the deadline, at least 20 ms), and never longer than the caller's `max_wait` or the server's limit.
fn result_wait(deadline: Option<Duration>, max_wait: Option<Duration>, limit: Duration) -> Duration {
    let mut wait = limit;
    if let Some(max_wait) = max_wait {
        wait = wait.min(max_wait);
    }
    if let Some(deadline) = deadline {
        let margin = (deadline / 10).max(Duration::from_millis(20));
        wait = wait.min(deadline.saturating_sub(margin));
    }
    wait
}

#[tonic::async_trait]
impl server::run_service_server::RunService for RunService {
    async fn list_workflows(
        &self,
        request: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
        let caller = auth::caller(&request)?;
        let workflows = self
            .registry
            .workflows(caller.tenant())
            .iter()
            .map(|(wf, version)| pb::WorkflowInfo {
                id: wf.id().to_string(),
                kind: convert::run_kind(wf.kind()) as i32,
                model: wf.meta().map(|m| m.model.clone()).unwrap_or_default(),
                tools: wf.meta().map(|m| m.tools.iter().map(convert::tool_info).collect()).unwrap_or_default(),
                members: wf.meta().map(|m| m.members.clone()).unwrap_or_default(),
                description: wf.description().to_string(),
                input_schema: wf.input_schema().map(convert::json_to_pb),
                output_schema: wf.output_schema().map(convert::json_to_pb),
                steps: wf
                    .steps()
                    .into_iter()
                    .map(|step| pb::StepInfo {
                        id: step.id,
                        description: step.description,
                        resume_schema: step.resume_schema.as_ref().map(convert::json_to_pb),
                        suspend_schema: step.suspend_schema.as_ref().map(convert::json_to_pb),
                    })
                    .collect(),
                version: *version,
            })
            .collect();
        Ok(Response::new(pb::ListWorkflowsResponse { workflows }))
    }

    async fn start_run(&self, request: Request<pb::StartRunRequest>) -> Result<Response<pb::StartRunResponse>, Status> {
        let caller = auth::caller(&request)?;
        auth::require_write(&caller, "start runs")?;
        let r = request.into_inner();
        let start = start_request(
            &caller,
            target(r.workflow_id, r.agent_id, r.network_id)?,
            r.run_id,
            r.input,
            r.request_context,
            r.tracing_options,
            r.resource_id,
        )?;
        let (run, started) = self.registry.start(start).await?;
        // Answer once the run is stored, so that an id StartRun returned survives a crash.
        run.stored().await?;
        Ok(Response::new(pb::StartRunResponse {
            run_id: run.id().to_string(),
            created: started == Started::Created,
            status: convert::run_status(run.status()) as i32,
        }))
    }

    type StreamRunStream = EventStream;

    async fn stream_run(&self, request: Request<pb::StreamRunRequest>) -> Result<Response<EventStream>, Status> {
        let caller = auth::caller(&request)?;
        auth::require_write(&caller, "start runs")?;
        let r = request.into_inner();
        let close_on_suspend = r.close_on_suspend.unwrap_or(true);
        let start = start_request(
            &caller,
            target(r.workflow_id, r.agent_id, r.network_id)?,
            r.run_id,
            r.input,
            r.request_context,
            r.tracing_options,
            r.resource_id,
        )?;
        let (run, started) = self.registry.start(start).await?;
        let until = match started {
            Started::Created => ReadUntil::Phase { close_on_suspend },
            // Attaching to an existing run is ObserveStream from the start.
            Started::Existing => ReadUntil::Run { close_on_suspend },
        };
        let reader = run.reader(0, until)?;
        Ok(Response::new(self.event_stream(run.id().clone(), reader)))
    }

    type ResumeStreamStream = EventStream;

    async fn resume_stream(&self, request: Request<pb::ResumeStreamRequest>) -> Result<Response<EventStream>, Status> {
        let caller = auth::caller(&request)?;
        auth::require_write(&caller, "resume runs")?;
        let r = request.into_inner();
        validate_run_id("run_id", &r.run_id)?;
        if r.step.iter().any(String::is_empty) {
            return Err(invalid_field("step", "path segments must not be empty"));
        }
        let resume = ResumeRequest {
            step: r.step,
            label: (!r.label.is_empty()).then_some(r.label),
            for_each_index: r.for_each_index,
            resume_data: r.resume_data.map(convert::pb_to_json).unwrap_or_default(),
        };
        let (run, start_seq) = self.registry.resume(caller.tenant(), &r.run_id, resume).await?;
        let reader =
            run.reader(start_seq, ReadUntil::Phase { close_on_suspend: r.close_on_suspend.unwrap_or(true) })?;
        Ok(Response::new(self.event_stream(run.id().clone(), reader)))
    }

    type ObserveStreamStream = EventStream;

    async fn observe_stream(
        &self,
        request: Request<pb::ObserveStreamRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let run = self.registry.get(caller.tenant(), &r.run_id).await?;
        let reader =
            run.reader(r.after_seq, ReadUntil::Run { close_on_suspend: r.close_on_suspend.unwrap_or(true) })?;
        Ok(Response::new(self.event_stream(run.id().clone(), reader)))
    }

    async fn get_result(&self, request: Request<pb::GetResultRequest>) -> Result<Response<pb::RunResult>, Status> {
        let caller = auth::caller(&request)?;
        let deadline = grpc_timeout(request.metadata());
        let r = request.into_inner();
        let fields = convert::ResultFields::parse(&r.fields).map_err(|problem| invalid_field("fields", problem))?;
        let run = self.registry.get(caller.tenant(), &r.run_id).await?;
        let mut wait_expired = false;
        if r.wait {
            let max_wait = match r.max_wait {
                Some(d) => Some(
                    Duration::try_from(d)
                        .map_err(|e| invalid_field("max_wait", format!("{e}; pass a positive duration")))?,
                ),
                None => None,
            };
            let wait = result_wait(deadline, max_wait, self.config.max_result_wait);
            let settled =
                |status: RunStatus| status.is_terminal() || matches!(status, RunStatus::Suspended | RunStatus::Paused);
            tokio::select! {
                reached = run.wait_for(wait, settled) => wait_expired = !reached,
                () = self.shutdown.cancelled() => wait_expired = true,
            }
        }
        // Report only what a restart would find: the status and result are stored with the finish that announced them.
        stored_or_durable(&run).await?;
        let result = convert::run_result(&run.view(), wait_expired, &fields);
        let size = prost::Message::encoded_len(&result);
        if size > self.config.max_response_bytes {
            return Err(status::response_too_large(
                &format!("the result of run '{}'", r.run_id),
                size,
                self.config.max_response_bytes,
                "ask for fewer parts with GetResultRequest.fields (e.g. [\"result\"], or without \"input\")",
            ));
        }
        Ok(Response::new(result))
    }

    async fn get_run(&self, request: Request<pb::GetRunRequest>) -> Result<Response<pb::RunInfo>, Status> {
        let caller = auth::caller(&request)?;
        let run = self.registry.get(caller.tenant(), &request.get_ref().run_id).await?;
        stored_or_durable(&run).await?;
        Ok(Response::new(convert::run_info(&run.view())))
    }

    async fn list_runs(&self, request: Request<pb::ListRunsRequest>) -> Result<Response<pb::ListRunsResponse>, Status> {
        const DEFAULT_PAGE: usize = 50;
        const MAX_PAGE: u32 = 1000;
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        if r.page_size > MAX_PAGE {
            return Err(invalid_field(
                "page_size",
                format!("{} is over the limit; ask for at most {MAX_PAGE}", r.page_size),
            ));
        }
        let limit = if r.page_size == 0 { DEFAULT_PAGE } else { r.page_size as usize };
        let after = if r.page_token.is_empty() {
            0
        } else {
            r.page_token.parse::<u64>().ok().filter(|order| *order > 0).ok_or_else(|| {
                invalid_field("page_token", "not a token this server issued; pass next_page_token unchanged")
            })?
        };
        check_len("workflow_id", &r.workflow_id, MAX_WORKFLOW_ID_LEN)?;
        check_len("resource_id", &r.resource_id, MAX_RESOURCE_ID_LEN)?;
        let status = pb::RunStatus::try_from(r.status)
            .map_err(|_| invalid_field("status", format!("{} is not a RunStatus value", r.status)))?;
        let filter = RunFilter {
            tenant: caller.tenant().to_string(),
            workflow_id: (!r.workflow_id.is_empty()).then_some(r.workflow_id),
            status: convert::run_status_from_pb(status),
            resource_id: (!r.resource_id.is_empty()).then_some(r.resource_id),
        };
        let (runs, next) = self.registry.list(&filter, after, limit).await?;
        Ok(Response::new(pb::ListRunsResponse {
            runs: runs.iter().map(convert::run_info).collect(),
            next_page_token: next.map(|order| order.to_string()).unwrap_or_default(),
        }))
    }

    async fn cancel_run(
        &self,
        request: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        let caller = auth::caller(&request)?;
        auth::require_write(&caller, "cancel runs")?;
        let (run, canceled) =
            self.registry.cancel(caller.tenant(), &request.get_ref().run_id, self.config.cancel_settle).await?;
        run.stored().await?;
        Ok(Response::new(pb::CancelRunResponse { run: Some(convert::run_info(&run.view())), canceled }))
    }

    async fn register_workflow(
        &self,
        request: Request<pb::RegisterWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowDefinition>, Status> {
        let caller = auth::caller(&request)?;
        auth::require_write(&caller, "register workflows")?;
        let Some(definition) = request.into_inner().definition else {
            return Err(invalid_field("definition", "required: the workflow definition to register"));
        };
        let definition = convert_definition::workflow_from_pb(definition)?;
        let registered = self.register(&caller, RunKind::Workflow, &definition).await?;
        Ok(Response::new(workflow_definition(registered)?))
    }

    async fn get_workflow_definition(
        &self,
        request: Request<pb::GetDefinitionRequest>,
    ) -> Result<Response<pb::WorkflowDefinition>, Status> {
        let found = self.definition(RunKind::Workflow, request)?;
        Ok(Response::new(workflow_definition(found)?))
    }

    async fn register_agent(
        &self,
        request: Request<pb::RegisterAgentRequest>,
    ) -> Result<Response<pb::AgentDefinition>, Status> {
        let caller = auth::caller(&request)?;
        auth::require_write(&caller, "register agents")?;
        let Some(definition) = request.into_inner().definition else {
            return Err(invalid_field("definition", "required: the agent definition to register"));
        };
        let definition = convert_definition::agent_from_pb(definition);
        let registered = self.register(&caller, RunKind::Agent, &definition).await?;
        Ok(Response::new(agent_definition(registered)?))
    }

    async fn get_agent_definition(
        &self,
        request: Request<pb::GetDefinitionRequest>,
    ) -> Result<Response<pb::AgentDefinition>, Status> {
        let found = self.definition(RunKind::Agent, request)?;
        Ok(Response::new(agent_definition(found)?))
    }
}

impl RunService {
    /// Registers `definition` as the caller's tenant's next version of its id; waits for the store.
    async fn register(
        &self,
        caller: &Caller,
        kind: RunKind,
        definition: &impl serde::Serialize,
    ) -> Result<Definition, Status> {
        let body = serde_json::to_value(definition).map_err(|e| Status::internal(e.to_string()))?;
        let (registry, tenant) = (self.registry.clone(), caller.tenant().clone());
        let registered = tokio::task::spawn_blocking(move || registry.register_definition(&tenant, kind, body))
            .await
            .map_err(|e| Status::internal(format!("registration failed: {e}")))??;
        Ok(registered)
    }

    /// The registered definition of the caller's tenant a GetWorkflowDefinition / GetAgentDefinition asks for.
    fn definition(&self, kind: RunKind, request: Request<pb::GetDefinitionRequest>) -> Result<Definition, Status> {
        let caller = auth::caller(&request)?;
        let request = request.into_inner();
        if request.id.is_empty() {
            return Err(invalid_field("id", format!("required: the id of a registered {}", kind.as_str())));
        }
        check_len("id", &request.id, MAX_WORKFLOW_ID_LEN)?;
        Ok(self.registry.definition(caller.tenant(), kind, &request.id, request.version)?)
    }
}

/// Waits until `run` is stored; while the store refuses writes, a run all of whose events are stored is shown as it
/// is (reads of what is stored keep working), any other fails with UNAVAILABLE.
async fn stored_or_durable(run: &crate::registry::Run) -> Result<(), RegistryError> {
    match run.stored().await {
        Err(_) if run.is_stored() => Ok(()),
        other => other,
    }
}

/// A registered workflow as GetWorkflowDefinition returns it.
fn workflow_definition(found: Definition) -> Result<pb::WorkflowDefinition, Status> {
    Ok(convert_definition::workflow_to_pb(stored_body(&found)?, found.version, found.registered_at))
}

/// A registered agent as GetAgentDefinition returns it.
fn agent_definition(found: Definition) -> Result<pb::AgentDefinition, Status> {
    Ok(convert_definition::agent_to_pb(stored_body(&found)?, found.version, found.registered_at))
}

/// The body of a registered definition, in the `definition` module's types.
fn stored_body<T: serde::de::DeserializeOwned>(found: &Definition) -> Result<T, Status> {
    T::deserialize(&found.body)
        .map_err(|e| Status::internal(format!("the stored definition of '{}' is unreadable: {e}", found.id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_wait_ends_before_the_deadline() {
        let limit = Duration::from_secs(60);
        assert_eq!(result_wait(None, None, limit), limit);
        assert_eq!(result_wait(Some(Duration::from_secs(10)), None, limit), Duration::from_secs(9));
        assert_eq!(result_wait(Some(Duration::from_millis(100)), None, limit), Duration::from_millis(80));
        assert_eq!(result_wait(Some(Duration::from_millis(10)), None, limit), Duration::ZERO);
        assert_eq!(result_wait(None, Some(Duration::from_secs(1)), limit), Duration::from_secs(1));
    }

    #[test]
    fn grpc_timeout_header_parses() {
        let mut metadata = MetadataMap::new();
        assert_eq!(grpc_timeout(&metadata), None);
        metadata.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(grpc_timeout(&metadata), Some(Duration::from_millis(250)));
        metadata.insert("grpc-timeout", "3S".parse().unwrap());
        assert_eq!(grpc_timeout(&metadata), Some(Duration::from_secs(3)));
        metadata.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(grpc_timeout(&metadata), None);
    }
}
