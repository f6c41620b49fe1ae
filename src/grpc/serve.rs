//! The tonic server: RunService, server reflection (v1 and v1alpha, since grpcurl 1.8.6 speaks only v1alpha) and
//! grpc.health.v1, on a listener the caller bound. [`crate::Server`] is how users start it.
//!
//! Shutdown is graceful: when `shutdown` is cancelled the server stops accepting calls, open streams end with
//! UNAVAILABLE carrying the cursor to re-attach with (an endless stream would otherwise keep the server from
//! ever draining), and in-flight unary calls finish. Connections still open after a grace period (a client that
//! stopped reading) are closed.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    server::NamedService,
    transport::{Server, ServerTlsConfig, server::TcpIncoming},
};
use tonic_health::ServingStatus;

use super::{
    RunService, ServiceConfig,
    auth::AuthLayer,
    conn::FirstBytes,
    server::{run_service_server::RunServiceServer, worker_service_server::WorkerServiceServer},
    status::RequestStatusLayer,
    worker::WorkerService,
};
use crate::{
    auth::Auth,
    registry::RunRegistry,
    worker::{WorkerHub, WorkerSettings},
};

/// The encoded descriptor set of proto/, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/runstream_descriptor.bin"));

/// How often the server pings idle connections. Proxies and meshes cut connections that look dead; a stream
/// waiting for a long step is quiet, not dead.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// The descriptor set could not be registered for reflection (a build problem).
    #[error("building the reflection service failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed while serving.
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves until `shutdown` is cancelled and every connection has drained, with a worker hub of its own (no remote
/// steps use it).
pub async fn serve(
    listener: TcpListener,
    registry: Arc<RunRegistry>,
    config: ServiceConfig,
    shutdown: CancellationToken,
) -> Result<(), GrpcError> {
    let workers = WorkerHub::new(WorkerSettings::default());
    serve_with_workers(listener, registry, workers, config, Access::default(), shutdown).await
}

/// Who may connect and call: TLS and authentication (both off by default: plaintext, every caller the default
/// tenant).
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// TLS on the port (checked: see [`crate::Tls`]).
    pub tls: Option<ServerTlsConfig>,
    /// How callers prove who they are.
    pub auth: Auth,
}

/// Serves RunService and WorkerService (workers connect to `workers`) as `access` says, until `shutdown` is
/// cancelled and every connection has drained.
pub async fn serve_with_workers(
    listener: TcpListener,
    registry: Arc<RunRegistry>,
    workers: Arc<WorkerHub>,
    config: ServiceConfig,
    access: Access,
    shutdown: CancellationToken,
) -> Result<(), GrpcError> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<RunServiceServer<RunService>>().await;
    if let Some(mut store) = registry.watch_store() {
        // NOT_SERVING while the store refuses writes, so load balancers send new work elsewhere; SERVING again once
        // it takes them.
        let reporter = health_reporter.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let failing = store.borrow_and_update().is_some();
                let status = if failing { ServingStatus::NotServing } else { ServingStatus::Serving };
                reporter.set_service_status("", status).await;
                reporter.set_service_status(<RunServiceServer<RunService> as NamedService>::NAME, status).await;
                tokio::select! {
                    changed = store.changed() => if changed.is_err() { return },
                    () = stop.cancelled() => return,
                }
            }
        });
    }

    let grace = config.shutdown_grace;
    let run_service = RunServiceServer::new(RunService::new(registry, config.clone(), shutdown.clone()))
        .max_decoding_message_size(config.max_request_bytes)
        .max_encoding_message_size(config.max_response_bytes);
    let max_worker_message = workers.settings().max_message_bytes;
    let worker_service = WorkerServiceServer::new(WorkerService::new(workers, shutdown.clone()))
        .max_decoding_message_size(max_worker_message)
        .max_encoding_message_size(config.max_response_bytes);
    let first_bytes = config.first_bytes_timeout;
    // A connection that sends nothing is closed after `first_bytes` (conn.rs). TCP_NODELAY: tonic applies its
    // `tcp_nodelay` setting only to listeners it binds itself, so without this every accepted socket keeps Nagle's
    // algorithm, and a small response waits for the client's delayed ACK (~40 ms per run of a short workflow;
    // docs/performance.md).
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(move |accepted| accepted.map(|io| FirstBytes::new(io, first_bytes)));
    let mut builder = Server::builder();
    if let Some(tls) = access.tls {
        builder = builder.tls_config(tls)?;
    }
    let server = builder
        .max_concurrent_streams(Some(config.max_streams_per_connection))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .trace_fn(|request| tracing::info_span!("grpc", method = %request.uri().path()))
        // A request over the limit is RESOURCE_EXHAUSTED naming the limit, not tonic's OUT_OF_RANGE; one that does
        // not decode is INVALID_ARGUMENT, not INTERNAL.
        .layer(RequestStatusLayer)
        // Every call but health and reflection: who calls, or UNAUTHENTICATED before any handler runs.
        .layer(AuthLayer::new(access.auth))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(run_service)
        .add_service(worker_service)
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    let forced = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = server => served?,
        () = forced => tracing::warn!(?grace, "connections still open after the shutdown grace period; closing them"),
    }
    Ok(())
}
