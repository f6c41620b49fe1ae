//! The raw ceiling: a bare tonic server whose StreamRun streams `count` pre-built `RunEvent`s, produced directly
//! (no engine, no log, no encoding per event), with
//! the same socket options as runstream's server (TCP_NODELAY). Each message has the encoded size of a writer-flood `step_output`
//! event, so dividing a runstream figure by this one says how much of the transport's capacity runstream reaches.

use std::{pin::Pin, time::SystemTime};

use bytes::Bytes;
use futures_util::{Stream, stream};
use prost::Message;
use runstream::{
    grpc::{
        convert::json_to_pb,
        server::run_service_server::{RunService, RunServiceServer},
        wire::EncodedRunEvent,
    },
    pb,
};
use serde_json::json;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

/// A writer-flood `step_output` event as runstream encodes it, from the middle of a 1,000,000-event run (so its
/// seq and `i` take as many bytes as a typical event of the flood).
pub fn flood_like_event() -> pb::RunEvent {
    let k = 500_000u64;
    pb::RunEvent {
        run_id: "0196a3c4-7e5f-7a1b-9c2d-3e4f5a6b7c8d".to_string(),
        seq: k + 3,
        time: Some(SystemTime::now().into()),
        source: pb::EventSource::User as i32,
        step_id: "flood".to_string(),
        event: Some(pb::run_event::Event::StepOutput(pb::StepOutput {
            step_id: "flood".to_string(),
            output: Some(json_to_pb(&json!({ "i": k }))),
        })),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<EncodedRunEvent, Status>> + Send>>;

struct Raw {
    event: Bytes,
}

#[tonic::async_trait]
impl RunService for Raw {
    async fn list_workflows(
        &self,
        _: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
        Err(Status::unimplemented("raw ceiling server"))
    }

    async fn start_run(&self, _: Request<pb::StartRunRequest>) -> Result<Response<pb::StartRunResponse>, Status> {
        Err(Status::unimplemented("raw ceiling server"))
    }

    async fn register_workflow(
        &self,
        _: Request<pb::RegisterWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowDefinition>, Status> {
        Err(Status::unimplemented("raw ceiling server"))
    }

    async fn get_workflow_definition(
        &self,
        _: Request<pb::GetDefinitionRequest>,
    ) -> Result<Response<pb::WorkflowDefinition>, Status> {
        Err(Status::unimplemented("raw ceiling server"))
    }

    async fn register_agent(
        &self,
        _: Request<pb::RegisterAgentRequest>,
    ) -> Result<Response<pb::AgentDefinition>, Status> {
        Err(Status::unimplemented("raw ceiling server"))
    }

    async fn get_agent_definition(
        &self,
        _: Request<pb::GetDefinitionRequest>,
    ) -> Result<Response<pb::AgentDefinition>, Status> {
        Err(Status::unimplemented("raw ceiling server"))
    }

    type StreamRunStream = EventStream;

    /// Streams `input.count` copies of the pre-built event.
    async fn stream_run(&self, request: Request<pb::StreamRunRequest>) -> Result<Response<EventStream>, Status> {
        let input = request.into_inner().input.map(runstream::grpc::convert::pb_to_json).unwrap_or_default();
        let count = input["count"].as_u64().ok_or_else(|| Status::invalid_argument("input.count: required"))?;
        let event = self.event.clone();
        let events = stream::unfold(0u64, move |sent| {
            let event = event.clone();
            async move { (sent < count).then(|| (Ok(EncodedRunEvent::whole(event)), sent + 1)) }
        });
        Ok(Response::new(Box::pin(events)))
    }

    type ResumeStreamStream = EventStream;

    async fn resume_stream(&self, _: Request<pb::ResumeStreamRequest>) -> Result<Response<EventStream>, Status> {
        Err(Status::unimplemented("raw ceiling server"))
    }

    type ObserveStreamStream = EventStream;

    async fn observe_stream(&self, _: Request<pb::ObserveStreamRequest>) -> Result<Response<EventStream>, Status> {
        Err(Status::unimplemented("raw ceiling server"))
    }

    async fn get_result(&self, _: Request<pb::GetResultRequest>) -> Result<Response<pb::RunResult>, Status> {
        Err(Status::unimplemented("raw ceiling server"))
    }

    async fn get_run(&self, _: Request<pb::GetRunRequest>) -> Result<Response<pb::RunInfo>, Status> {
        Err(Status::unimplemented("raw ceiling server"))
    }

    async fn list_runs(&self, _: Request<pb::ListRunsRequest>) -> Result<Response<pb::ListRunsResponse>, Status> {
        Err(Status::unimplemented("raw ceiling server"))
    }

    async fn cancel_run(&self, _: Request<pb::CancelRunRequest>) -> Result<Response<pb::CancelRunResponse>, Status> {
        Err(Status::unimplemented("raw ceiling server"))
    }
}

/// `suite --raw-server`: serves on an ephemeral port, prints `raw listening on ADDR`, runs until killed.
pub fn serve() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind an ephemeral port");
        println!("raw listening on {}", listener.local_addr().expect("local address"));
        let service = Raw { event: flood_like_event().encode_to_vec().into() };
        tonic::transport::Server::builder()
            .add_service(RunServiceServer::new(service))
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
            .await
            .expect("the raw server runs");
    });
}
