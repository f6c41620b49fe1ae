//! What a careless or hostile client sends gets a precise status, and nothing it sends is echoed back whole or read
//! as something else (issue 13): requests that do not decode are INVALID_ARGUMENT (not INTERNAL), over-long ids are
//! refused by their length, and the built-in demos bound their inputs. Over a real server, with the generated
//! client and a raw one that sends what generated stubs cannot.

mod common;

use common::*;
use runstream::pb;
use serde_json::json;
use tonic::{Code, codegen::http::uri::PathAndQuery};

/// A StartRunRequest as bytes a generated stub would never send: field 1 (`workflow_id`, a string) holds `bytes`.
#[derive(Clone, PartialEq, prost::Message)]
struct RawStart {
    #[prost(bytes = "vec", tag = "1")]
    workflow_id: Vec<u8>,
}

/// Field 1 as a varint where a string belongs: not a StartRunRequest at all.
#[derive(Clone, PartialEq, prost::Message)]
struct WrongWireType {
    #[prost(uint64, tag = "1")]
    workflow_id: u64,
}

async fn raw_start<M: prost::Message + Default + Send + Sync + 'static>(
    server: &TestServer,
    message: M,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<M, pb::StartRunResponse>::default();
    let path = PathAndQuery::from_static("/runstream.v1.RunService/StartRun");
    match grpc.unary(tonic::Request::new(message), path, codec).await {
        Ok(answer) => panic!("a request that does not decode was answered: {:?}", answer.into_inner()),
        Err(status) => status,
    }
}

#[tokio::test]
async fn requests_that_do_not_decode_are_invalid_argument_naming_the_method() {
    let server = TestServer::start().await;
    for status in [
        raw_start(&server, RawStart { workflow_id: vec![0xff, 0xfe, b'x'] }).await,
        raw_start(&server, WrongWireType { workflow_id: 7 }).await,
    ] {
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(status.message().contains("/runstream.v1.RunService/StartRun"), "{}", status.message());
        assert!(status.message().contains("is not a valid message of its type"), "{}", status.message());
    }
    // The server is none the worse.
    let mut client = server.client().await;
    let events = stream_run(&mut client, stream_request("chain", "", json!({"value": 1}))).await;
    assert_eq!(events.last().and_then(finish_status), Some(pb::RunStatus::Success));
}

#[tokio::test]
async fn over_long_ids_are_refused_by_their_length_never_echoed() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let huge = "w".repeat(1 << 20);
    let check = |status: tonic::Status, field: &str| {
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(status.message().starts_with(&format!("{field}: ")), "names the field: {}", status.message());
        assert!(status.message().len() < 300, "{field}: a message of {} bytes", status.message().len());
    };
    let start = |workflow_id: &str, resource_id: &str| pb::StartRunRequest {
        workflow_id: workflow_id.into(),
        resource_id: resource_id.into(),
        input: Some(pb_value(json!({"value": 1}))),
        ..Default::default()
    };
    check(client.start_run(start(&huge, "")).await.expect_err("a 1 MB workflow_id"), "workflow_id");
    check(client.start_run(start("chain", &huge[..10_000])).await.expect_err("a 10 KB resource_id"), "resource_id");
    let agent = pb::StreamRunRequest { agent_id: huge.clone(), ..Default::default() };
    check(client.stream_run(agent).await.map(drop).expect_err("a 1 MB agent_id"), "agent_id");
    let list = pb::ListRunsRequest { resource_id: huge[..10_000].into(), ..Default::default() };
    check(client.list_runs(list).await.expect_err("a 10 KB resource_id filter"), "resource_id");
    let get = pb::GetDefinitionRequest { id: huge.clone(), version: 0 };
    check(client.get_workflow_definition(get).await.expect_err("a 1 MB definition id"), "id");
    // At the limits, accepted.
    let listed = client.start_run(start("chain", &"r".repeat(256))).await.expect("a 256-byte resource_id");
    assert!(!listed.into_inner().run_id.is_empty());
}

#[tokio::test]
async fn the_built_in_demos_bound_their_inputs() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for (workflow, input, field) in [
        ("writer-flood", json!({"count": 1e9}), "input.count"),
        ("batch-foreach", json!({"count": 1e9, "concurrency": 4}), "input.count"),
        ("timer", json!({"ms": 1e18}), "input.ms"),
        ("flaky", json!({"failTimes": 0, "attempts": 1e9}), "input.attempts"),
        ("flaky", json!({"failTimes": 1e9, "attempts": 2}), "input.failTimes"),
    ] {
        let status = client
            .start_run(pb::StartRunRequest {
                workflow_id: workflow.into(),
                input: Some(pb_value(input.clone())),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{workflow} {input}: {}", status.message());
        assert!(status.message().starts_with(field), "{workflow} {input}: names {field}: {}", status.message());
    }
}

#[tokio::test]
async fn a_connection_is_told_how_many_streams_it_may_open() {
    let config = runstream::grpc::ServiceConfig { max_streams_per_connection: 3, ..Default::default() };
    let server = TestServer::start_with(config).await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    let (_client, mut connection) = h2::client::handshake(tcp).await.expect("an HTTP/2 handshake");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    // Drive the connection until the server's SETTINGS have arrived.
    while connection.max_concurrent_send_streams() != 3 {
        assert!(tokio::time::Instant::now() < deadline, "the server's SETTINGS say at most 3 streams");
        tokio::select! {
            ended = &mut connection => panic!("the connection ended: {ended:?}"),
            () = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
        }
    }
    assert_eq!(runstream::ServiceConfig::default().max_streams_per_connection, 1000, "the default");
}

#[tokio::test]
async fn connections_that_never_speak_or_stop_mid_preface_are_closed() {
    use tokio::io::AsyncReadExt;
    let config = runstream::grpc::ServiceConfig {
        first_bytes_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    let server = TestServer::start_with(config).await;
    let mut silent = Vec::new();
    for i in 0..50 {
        let mut socket = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
        if i % 2 == 1 {
            // A byte of the preface, then nothing: as silent as nothing at all.
            tokio::io::AsyncWriteExt::write_all(&mut socket, b"P").await.expect("a byte");
        }
        silent.push(socket);
    }
    // Each is closed by the server: its SETTINGS may arrive first, then the end of the stream.
    for mut socket in silent {
        let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let mut buf = [0u8; 1024];
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a silent connection was closed within 10 s");
    }
    // A client that speaks is served as ever, also when it is slower than the deadline to make its first call.
    let mut client = server.client().await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let events = stream_run(&mut client, stream_request("chain", "", json!({"value": 1}))).await;
    assert_eq!(events.last().and_then(finish_status), Some(pb::RunStatus::Success));
}
