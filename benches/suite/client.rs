//! The load generator's side of the wire: connections, requests, and reading streams to their end.

use std::{net::SocketAddr, time::Duration};

use runstream::{
    grpc::convert::json_to_pb,
    pb::{self, run_service_client::RunServiceClient},
};
use serde_json::Value;
use tonic::{
    Status, Streaming,
    transport::{Channel, Endpoint},
};

pub type Client = RunServiceClient<Channel>;

/// One HTTP/2 connection.
pub async fn channel(addr: SocketAddr) -> Channel {
    connect(endpoint(addr), addr).await
}

/// One HTTP/2 connection, or `None` if the server does not accept it (yet).
pub async fn try_channel(addr: SocketAddr) -> Option<Channel> {
    endpoint(addr).connect().await.ok()
}

/// A connection for a client that cancels streams mid-flight over and over (the reconnect storm). h2 resets every
/// stream the client drops and counts each reset, plus one per DATA frame still arriving for a stream it has
/// forgotten, as a "local error reset"; at 1,024 (hyper's default) the *client* library ends the connection with
/// GOAWAY ENHANCE_YOUR_CALM "too_many_internal_resets". How many late frames arrive depends on how fast the server
/// streams, so the guard, meant for misbehaving peers, is off on this connection to the trusted server.
pub async fn storm_channel(addr: SocketAddr) -> Channel {
    connect(endpoint(addr).http2_max_local_error_reset_streams(None), addr).await
}

fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
}

async fn connect(endpoint: Endpoint, addr: SocketAddr) -> Channel {
    endpoint.connect().await.unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"))
}

/// `n` separate connections (a server allows a bounded number of concurrent streams per connection, 200 by
/// default, so thousands of concurrent streams need several).
pub async fn channels(addr: SocketAddr, n: usize) -> Vec<Channel> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(channel(addr).await);
    }
    out
}

pub fn client(channel: &Channel) -> Client {
    RunServiceClient::new(channel.clone())
}

pub fn stream_request(workflow_id: &str, input: Value) -> pb::StreamRunRequest {
    pb::StreamRunRequest { workflow_id: workflow_id.to_string(), input: Some(json_to_pb(&input)), ..Default::default() }
}

/// What a client saw of one stream.
#[derive(Debug, Default)]
pub struct Drained {
    pub events: u64,
    pub run_id: String,
    pub last: Option<pb::RunEvent>,
}

/// Reads a stream to its end.
pub async fn drain(mut stream: Streaming<pb::RunEvent>) -> Result<Drained, Status> {
    let mut out = Drained::default();
    while let Some(event) = stream.message().await? {
        if out.events == 0 {
            out.run_id.clone_from(&event.run_id);
        }
        out.events += 1;
        out.last = Some(event);
    }
    Ok(out)
}

/// The status of a `workflow_finish` event.
pub fn finish_status(event: &Option<pb::RunEvent>) -> Option<pb::RunStatus> {
    match event.as_ref()?.event.as_ref()? {
        pb::run_event::Event::WorkflowFinish(finish) => pb::RunStatus::try_from(finish.status).ok(),
        _ => None,
    }
}

/// Panics unless the stream ended with a `workflow_finish` of `status`: a benchmark of failing runs is worthless.
pub fn expect_finish(drained: &Drained, status: pb::RunStatus, what: &str) {
    let got = finish_status(&drained.last);
    assert_eq!(
        got,
        Some(status),
        "{what}: the stream did not end with a {status:?} workflow_finish: {:?}",
        drained.last
    );
}

/// Only the `seq` of a `RunEvent`: the fan-out observers check order and completeness without paying for a full
/// decode of every event on the two cores they share with the server.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SeqOnly {
    #[prost(uint64, tag = "2")]
    pub seq: u64,
}

/// ObserveStream, decoding only each event's seq.
pub async fn observe_seqs(channel: Channel, request: pb::ObserveStreamRequest) -> Result<Streaming<SeqOnly>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
    let codec = tonic_prost::ProstCodec::<pb::ObserveStreamRequest, SeqOnly>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/runstream.v1.RunService/ObserveStream");
    Ok(grpc.server_streaming(tonic::Request::new(request), path, codec).await?.into_inner())
}
