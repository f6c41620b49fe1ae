//! TLS on the gRPC port (rustls with the ring provider, through tonic): a server certificate, and optionally the
//! CA that client certificates must be signed by (mutual TLS).

use std::time::Duration;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// How long a client gets to complete the TLS handshake; a connection that stays silent is closed then, so that
/// sockets that never speak cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS for the gRPC port: with it the port speaks only TLS (a plaintext client's connection fails).
///
/// ```no_run
/// use runstream::{Server, Tls};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let tls = Tls::new(std::fs::read("server.pem")?, std::fs::read("server.key")?)
///     // Mutual TLS: only clients with a certificate signed by this CA get in.
///     .client_ca(std::fs::read("clients-ca.pem")?);
/// Server::builder().tls(tls).serve(std::future::pending()).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Tls {
    cert_chain_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Tls {
    // Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("mutual", &self.client_ca_pem.is_some()).finish_non_exhaustive()
    }
}

impl Tls {
    /// The server's certificate chain (PEM, the server's certificate first) and its private key (PEM: PKCS#8,
    /// PKCS#1 or SEC1).
    pub fn new(cert_chain_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        Self { cert_chain_pem: cert_chain_pem.into(), key_pem: key_pem.into(), client_ca_pem: None }
    }

    /// Mutual TLS: clients must present a certificate signed by one of these CA certificates (PEM), or the
    /// handshake fails.
    pub fn client_ca(mut self, ca_pem: impl Into<Vec<u8>>) -> Self {
        self.client_ca_pem = Some(ca_pem.into());
        self
    }

    /// Whether clients must present a certificate.
    pub fn is_mutual(&self) -> bool {
        self.client_ca_pem.is_some()
    }

    /// tonic's form, checked: a certificate or key that cannot be used is an error here, at start, not at the
    /// first handshake.
    pub(crate) fn server_config(&self) -> Result<ServerTlsConfig, String> {
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_chain_pem, &self.key_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.client_ca_pem {
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        // Building the acceptor parses and matches the PEMs.
        tonic::transport::Server::builder().tls_config(config.clone()).map_err(|e| {
            let cause = std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string);
            format!(
                "the TLS certificate and key cannot be used: {cause}; give a PEM certificate chain (the server's \
                 certificate first) and its PEM private key{}",
                if self.client_ca_pem.is_some() { ", and PEM CA certificates for client certificates" } else { "" }
            )
        })?;
        Ok(config)
    }
}
