//! What every outgoing HTTP client shares: the TLS crypto, timeouts and TLS settings, and
//! credentials. Used by the Alertmanager/webhook sinks and the Prometheus client.

use std::time::Duration;

use crate::config::{HttpAuth, HttpTls};

/// Makes ring the process's TLS crypto, which HTTP clients need before they are built.
///
/// reqwest shares rustls with the gRPC client and is built without a crypto provider of its
/// own, so one C-free provider serves both. Calling this again is harmless.
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
            crate::source::error_chain(&e)
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
