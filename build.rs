//! Compiles proto/ without a system protoc: protox parses the files into a descriptor set, tonic-prost-build
//! generates Rust from it.
//!
//! Two passes, because the server sends events it has already encoded (each event is encoded once, however many
//! readers it has):
//! - `pb/`: every message, and the client. The server uses these messages everywhere except in the streams.
//! - `server/`: the server trait alone, with `RunEvent` mapped to `crate::grpc::wire::EncodedRunEvent`, a message
//!   that writes pre-encoded bytes. Every other type points back at the `pb` module.
//!
//! The client of `WorkerService` is generated apart (`worker_client/`, included in `pb`), without tonic's transport
//! constructor: that constructor is called `connect`, like the `Connect` RPC, and the two would clash. Build one with
//! `WorkerServiceClient::new(channel)`.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTO_FILES: &[&str] = &[
    "proto/runstream/v1/common.proto",
    "proto/runstream/v1/workflow.proto",
    "proto/runstream/v1/agent.proto",
    "proto/runstream/v1/network.proto",
    "proto/runstream/v1/events.proto",
    "proto/runstream/v1/definition.proto",
    "proto/runstream/v1/service.proto",
    "proto/runstream/v1/worker.proto",
];

const WORKER_SERVICE: &str = "WorkerService";

/// `fds` with only the services `keep` accepts (every message stays).
fn only_services(fds: &prost_types::FileDescriptorSet, keep: impl Fn(&str) -> bool) -> prost_types::FileDescriptorSet {
    let mut fds = fds.clone();
    for file in &mut fds.file {
        file.service.retain(|service| keep(service.name()));
    }
    fds
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protox does not print rerun-if-changed lines itself.
    println!("cargo:rerun-if-changed=proto");
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={file}");
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let fds = protox::compile(PROTO_FILES, ["proto"])?;
    // compile_fds does not write the descriptor set; server reflection needs it.
    fs::write(out_dir.join("runstream_descriptor.bin"), fds.encode_to_vec())?;

    let pb_dir = out_dir.join("pb");
    let server_dir = out_dir.join("server");
    let worker_client_dir = out_dir.join("worker_client");
    fs::create_dir_all(&pb_dir)?;
    fs::create_dir_all(&server_dir)?;
    fs::create_dir_all(&worker_client_dir)?;

    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .type_attribute(".", "#[allow(clippy::all)]")
        .out_dir(&pb_dir)
        .compile_fds(only_services(&fds, |name| name != WORKER_SERVICE))?;

    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .build_transport(false)
        .extern_path(".runstream.v1", "crate::pb")
        .out_dir(&worker_client_dir)
        .compile_fds(only_services(&fds, |name| name == WORKER_SERVICE))?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .extern_path(".runstream.v1.RunEvent", "crate::grpc::wire::EncodedRunEvent")
        .extern_path(".runstream.v1", "crate::pb")
        .out_dir(&server_dir)
        .compile_fds(fds)?;
    Ok(())
}
