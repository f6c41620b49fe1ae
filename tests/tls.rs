//! TLS and mutual TLS on the real binary (`runstream serve --tls-cert --tls-key [--tls-client-ca]`), with
//! certificates generated here (rcgen): the generated Rust client and the real grpcurl get in with the right
//! certificates; plaintext clients, clients that do not trust the server, and (with mTLS) clients without a
//! certificate from the configured CA do not; certificates that cannot be used stop the server at start.

use std::{ffi::OsStr, path::Path, process::Command, time::Duration};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use runstream::pb::{self, run_service_client::RunServiceClient};
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

mod common;

use common::{
    finish_status,
    process::{ServerProcess, fresh_tmp, run_with_timeout, runstream_command},
    stream_request,
    tools::tools,
};

const STARTUP: Duration = Duration::from_secs(30);
const CALL: Duration = Duration::from_secs(10);

/// A CA that signs leaf certificates.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        Self { pem, issuer: Issuer::new(params, key) }
    }

    /// A certificate for `names` (DNS names or IP addresses) and its key, in PEM.
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("params");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// The PEM files of one test: the server's CA, certificate and key, and a CA for client certificates.
struct Files {
    dir: std::path::PathBuf,
    server_ca: Ca,
    client_ca: Ca,
}

impl Files {
    fn new(name: &str) -> Self {
        let dir = fresh_tmp("tls", name);
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let files = Self { dir, server_ca: Ca::new("runstream test server CA"), client_ca: Ca::new("test client CA") };
        let (cert, key) = files.server_ca.leaf(&["localhost", "127.0.0.1"]);
        files.write("server.pem", &cert);
        files.write("server.key", &key);
        files.write("server-ca.pem", &files.server_ca.pem);
        files.write("client-ca.pem", &files.client_ca.pem);
        files
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).expect("write a PEM file");
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(name)
    }

    fn start(&self, mutual: bool) -> ServerProcess {
        let (cert, key, ca) = (self.path("server.pem"), self.path("server.key"), self.path("client-ca.pem"));
        let mut args: Vec<&OsStr> =
            vec!["--store".as_ref(), "memory".as_ref(), "--tls-cert".as_ref(), cert.as_os_str()];
        args.extend(["--tls-key".as_ref(), key.as_os_str()]);
        if mutual {
            args.extend(["--tls-client-ca".as_ref(), ca.as_os_str()]);
        }
        ServerProcess::start(&args, None, self.dir.join(if mutual { "mtls.log" } else { "tls.log" }), STARTUP)
    }
}

/// A client of `addr` over TLS trusting `ca`, presenting `identity` if given.
async fn tls_client(
    addr: &str,
    ca: &str,
    identity: Option<(String, String)>,
) -> Result<RunServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel =
        Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls)?.connect_timeout(CALL).connect().await?;
    Ok(RunServiceClient::new(channel))
}

/// Streams a `chain` run to its end: the proof that a client got in.
async fn chain(client: &mut RunServiceClient<Channel>) -> Result<(), tonic::Status> {
    let request = stream_request("chain", "", json!({ "value": 1 }));
    let mut stream =
        tokio::time::timeout(CALL, client.stream_run(request)).await.expect("StreamRun answers")?.into_inner();
    let mut last = None;
    while let Some(event) = stream.message().await? {
        last = Some(event);
    }
    assert_eq!(last.as_ref().and_then(finish_status), Some(pb::RunStatus::Success), "the run finished");
    Ok(())
}

/// A call that must not get through: the connection or the call fails, within the deadline.
async fn refused(client: Result<RunServiceClient<Channel>, tonic::transport::Error>, what: &str) {
    let Ok(mut client) = client else { return };
    match tokio::time::timeout(CALL, chain(&mut client)).await {
        Ok(Err(status)) => assert_ne!(status.code(), tonic::Code::Ok, "{what}"),
        Ok(Ok(())) => panic!("{what}: the call got through"),
        Err(_) => panic!("{what}: neither refused nor answered within {CALL:?}"),
    }
}

#[tokio::test]
async fn tls_serves_only_clients_that_speak_tls_and_trust_the_server() {
    let files = Files::new("tls");
    let server = files.start(false);

    let mut client = tls_client(&server.addr, &files.server_ca.pem, None).await.expect("a TLS client connects");
    chain(&mut client).await.expect("a chain run over TLS");

    let plaintext =
        async { Ok(RunServiceClient::new(Endpoint::from_shared(format!("http://{}", server.addr))?.connect().await?)) };
    refused(plaintext.await, "a plaintext client").await;
    let stranger = Ca::new("a CA the client trusts, not the server's");
    refused(tls_client(&server.addr, &stranger.pem, None).await, "a client that does not trust the server's CA").await;

    // The real grpcurl, through reflection, as a user runs it against a TLS server.
    let tools = tools();
    let grpcurl = |extra: &[&str]| {
        let mut command = Command::new(&tools.grpcurl);
        command.args(extra).args(["-d", r#"{"workflow_id": "chain", "input": {"value": 1}}"#, &server.addr]);
        command.arg("runstream.v1.RunService/StreamRun");
        run_with_timeout(command, CALL * 3, "grpcurl")
    };
    let ca = files.path("server-ca.pem");
    let ok = grpcurl(&["-cacert", ca.to_str().expect("a UTF-8 path"), "-servername", "localhost"]);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "grpcurl over TLS: {}\n{}", out, String::from_utf8_lossy(&ok.stderr));
    assert!(out.contains("\"workflowFinish\""), "grpcurl saw the run finish: {out}");
    let plain = grpcurl(&["-plaintext"]);
    assert!(!plain.status.success(), "grpcurl -plaintext against a TLS port fails");
}

#[tokio::test]
async fn mutual_tls_needs_a_client_certificate_from_the_configured_ca() {
    let files = Files::new("mtls");
    let server = files.start(true);

    let good = files.client_ca.leaf(&["worker-1"]);
    let mut client =
        tls_client(&server.addr, &files.server_ca.pem, Some(good)).await.expect("a client with a certificate");
    chain(&mut client).await.expect("a chain run over mTLS");

    refused(tls_client(&server.addr, &files.server_ca.pem, None).await, "a client without a certificate").await;
    let other = Ca::new("another client CA").leaf(&["intruder"]);
    refused(tls_client(&server.addr, &files.server_ca.pem, Some(other)).await, "a certificate from another CA").await;
}

#[test]
fn certificates_that_cannot_be_used_stop_the_server_at_start() {
    let files = Files::new("bad");
    files.write("garbage.pem", "not a certificate\n");
    let (cert, key) = (files.path("server.pem"), files.path("server.key"));
    let run = |args: &[&OsStr]| {
        let mut command = runstream_command(["serve", "--store", "memory", "--listen", "127.0.0.1:0"]);
        command.args(args);
        let out = run_with_timeout(command, STARTUP, "runstream serve with bad TLS settings");
        assert!(!out.status.success(), "the server must not start with {args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let garbage = files.path("garbage.pem");
    let message = run(&["--tls-cert".as_ref(), garbage.as_os_str(), "--tls-key".as_ref(), key.as_os_str()]);
    assert!(message.contains("the TLS certificate and key cannot be used"), "{message}");
    // A key that does not belong to the certificate.
    let (_, other_key) = files.server_ca.leaf(&["localhost"]);
    files.write("other.key", &other_key);
    let other = files.path("other.key");
    let message = run(&["--tls-cert".as_ref(), cert.as_os_str(), "--tls-key".as_ref(), other.as_os_str()]);
    assert!(message.contains("the TLS certificate and key cannot be used"), "{message}");
    let missing = Path::new("/nonexistent/server.pem");
    let message = run(&["--tls-cert".as_ref(), missing.as_os_str(), "--tls-key".as_ref(), key.as_os_str()]);
    assert!(message.contains("cannot read --tls-cert /nonexistent/server.pem"), "{message}");
    let message = run(&["--tls-cert".as_ref(), cert.as_os_str()]);
    assert!(message.contains("--tls-key"), "a certificate without its key names the missing flag: {message}");
}
