//! What every outgoing HTTP client shares: the TLS crypto, timeouts and TLS settings, and
//! credentials. Used by the Alertmanager/webhook sinks and the Prometheus client.

use std::time::Duration;

/// Credentials for HTTP targets; secrets never appear in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub enum HttpAuth {
    Basic { username: String, password: String },
    Bearer(String),
}

impl std::fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpAuth::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            HttpAuth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// TLS for HTTP targets: an extra CA, and a client certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpTls {
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate followed by its key, PEM.
    pub identity_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for HttpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_identity", &self.identity_pem.is_some())
            .finish()
    }
}

/// Makes ring the process's TLS crypto, which every TLS client and server (HTTP, gRPC, the
/// bucket's) needs before it is built.
///
/// rustls is built with two providers (ring, and aws-lc-rs, which the Delta table's kernel
/// asks for), so it cannot pick one by itself: the gRPC client, the bucket's client and
/// reqwest all use ring. Calling this again is harmless.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client with `timeout` for connecting and for each request, and `tls` when given.
/// `what` names the configuration section in errors.
pub fn client(
    what: &str,
    timeout: Duration,
    tls: Option<&HttpTls>,
) -> Result<reqwest::Client, String> {
    install_crypto();
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout);
    if let Some(tls) = tls {
        if let Some(ca) = &tls.ca_pem {
            let cert = reqwest::Certificate::from_pem(ca)
                .map_err(|e| format!("{what}.tls.ca_file: {e}"))?;
            builder = builder.add_root_certificate(cert);
        }
        if let Some(identity) = &tls.identity_pem {
            let id = reqwest::Identity::from_pem(identity)
                .map_err(|e| format!("{what}.tls.cert_file/key_file: {e}"))?;
            builder = builder.identity(id);
        }
    }
    builder.build().map_err(|e| {
        format!(
            "{what}: cannot build the HTTP client: {}",
            super::error_chain(&e)
        )
    })
}

/// Adds the credentials to a request.
pub fn authorize(
    request: reqwest::RequestBuilder,
    auth: Option<&HttpAuth>,
) -> reqwest::RequestBuilder {
    match auth {
        Some(HttpAuth::Basic { username, password }) => {
            request.basic_auth(username, Some(password))
        }
        Some(HttpAuth::Bearer(token)) => request.bearer_auth(token),
        None => request,
    }
}
