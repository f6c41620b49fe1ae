//! The server around RunService: health, reflection (v1 and v1alpha), and the real binary's graceful shutdown.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use runstream::pb::{self, run_service_client::RunServiceClient};
use serde_json::json;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tonic_reflection::pb::{v1, v1alpha};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "runstream.v1.RunService"] {
        let answer = health.check(HealthCheckRequest { service: service.into() }).await.expect("check").into_inner();
        assert_eq!(answer.status, ServingStatus::Serving as i32, "service {service:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_list_run_service() {
    let server = TestServer::start().await;

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut answers = client.server_reflection_info(tokio_stream::iter([request])).await.expect("v1 info").into_inner();
    let answer = answers.message().await.expect("v1 answer").expect("one answer");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = answer.message_response
    else {
        panic!("unexpected v1 answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"runstream.v1.RunService".to_string()), "{names:?}");
    assert!(names.contains(&"runstream.v1.WorkerService".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");

    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
            "runstream.v1.RunEvent".into(),
        )),
    };
    let mut answers = client.server_reflection_info(tokio_stream::iter([request])).await.expect("info").into_inner();
    let answer = answers.message().await.expect("v1alpha answer").expect("one answer");
    assert!(matches!(
        answer.message_response,
        Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
    ));
    server.stop().await;
}

/// SIGTERM: the binary stops taking calls, ends open streams with UNAVAILABLE and a cursor, and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_drains_on_sigterm() {
    let mut child = common::process::runstream_command(["serve", "--listen", "127.0.0.1:0", "--store", "memory"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the runstream binary");
    let stdout = child.stdout.take().expect("stdout");
    let addr = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
        line.trim().strip_prefix("runstream listening on ").expect("listening line").to_string()
    })
    .await
    .expect("reader task");

    let mut client = RunServiceClient::connect(format!("http://{addr}")).await.expect("connect");
    let mut stream = client
        .stream_run(stream_request("timer", "sigterm-1", json!({"ms": 60_000})))
        .await
        .expect("stream")
        .into_inner();
    while let Some(event) = stream.message().await.expect("event") {
        if kind(&event) == "step_waiting" {
            break;
        }
    }
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(killed.success());

    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a stream cut by shutdown must end with a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(status.message().contains("ObserveStream"), "{}", status.message());

    let pid = child.id();
    let exit = tokio::time::timeout(Duration::from_secs(10), tokio::task::spawn_blocking(move || child.wait()))
        .await
        .unwrap_or_else(|_| {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("the server must exit within 10 s of SIGTERM")
        })
        .expect("wait task")
        .expect("wait for the child");
    assert!(exit.success(), "exit status {exit:?}");

    // Nothing listens any more.
    let refused = RunServiceClient::connect(format!("http://{addr}")).await;
    if let Ok(mut client) = refused {
        let call = client.list_workflows(pb::ListWorkflowsRequest {}).await;
        assert!(call.is_err(), "the server must not answer after shutdown");
    }
}

/// `--log-format json`: every line on stderr is a JSON object, and a run's lines carry its run id and the trace id
/// its caller sent (`tracing_options`), for a log pipeline to join them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_run_and_trace_ids() {
    let dir = process::fresh_tmp("server", "json-logs");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let server = process::ServerProcess::start_with_env(
        &["--store".as_ref(), "memory".as_ref(), "--log-format".as_ref(), "json".as_ref()],
        &[("RUST_LOG", "info,runstream::engine=debug")],
        None,
        dir.join("server.log"),
        Duration::from_secs(30),
    );
    let mut client = RunServiceClient::connect(format!("http://{}", server.addr)).await.expect("connect");
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut traced = stream_request("chain", "json-logged", json!({"value": 1}));
    traced.tracing_options = Some(pb::TracingOptions { trace_id: trace_id.into(), ..Default::default() });
    assert_eq!(stream_run(&mut client, traced).await.len(), 8);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&server.log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
            .collect();
        let about_the_run =
            lines.iter().find(|line| line["span"]["run_id"] == "json-logged" && line["span"]["trace_id"] == trace_id);
        if about_the_run.is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no line with the run and trace ids:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
