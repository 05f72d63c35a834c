//! `api:`: where the REST API listens, who may use it and how users reach it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Validator;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawApi {
    listen: Option<String>,
    tokens_file: Option<PathBuf>,
    external_url: Option<String>,
    allow_unauthenticated: Option<bool>,
    probe_listen: Option<String>,
    max_connections: Option<usize>,
    header_timeout: Option<String>,
    request_timeout: Option<String>,
    signin_failures: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub tokens_file: Option<PathBuf>,
    /// How users reach the API; alert links (`generatorURL`) start with it.
    pub external_url: String,
    /// Serve a non-loopback address without tokens (not recommended).
    pub allow_unauthenticated: bool,
    /// A second listener serving only `/healthz` and `/readyz`, so that the probes stay
    /// answerable while clients hold every connection the API allows.
    pub probe_listen: Option<SocketAddr>,
    /// Connections served at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Time a client has to send a request's headers: from connecting, and from the end of
    /// the previous response on a kept-alive connection (so also its idle time).
    pub header_timeout: Duration,
    /// Time a request has from its headers to its response (its body read included).
    pub request_timeout: Duration,
    /// Failed sign-ins a client (by address) may make in a minute before it must wait.
    pub signin_failures: u32,
}

/// Shortest token accepted in `api.tokens_file`: 32 characters, about 190 bits when drawn
/// from letters and digits.
pub const MIN_TOKEN_LEN: usize = 32;

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tokens_file: None,
            external_url: "http://127.0.0.1:8080".into(),
            allow_unauthenticated: false,
            probe_listen: None,
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            signin_failures: 10,
        }
    }
}

impl RawApi {
    pub(super) fn validate(self, v: &mut Validator<'_>) -> ApiConfig {
        let default = ApiConfig::default().listen;
        let listen = match self.listen.as_deref().map(str::parse::<SocketAddr>) {
            None => default,
            Some(Ok(addr)) => addr,
            Some(Err(_)) => {
                v.push(
                    "api.listen",
                    format!(
                        "{:?} is not an address:port such as 127.0.0.1:8080",
                        self.listen.unwrap_or_default()
                    ),
                );
                default
            }
        };
        if let Some(url) = &self.external_url {
            v.url("api.external_url", url);
        }
        let defaults = ApiConfig::default();
        let probe_listen = self.probe_listen.as_deref().and_then(|text| {
            text.parse::<SocketAddr>()
                .map_err(|_| {
                    v.push(
                        "api.probe_listen",
                        format!("{text:?} is not an address:port such as 0.0.0.0:8081"),
                    )
                })
                .ok()
        });
        if probe_listen.is_some_and(|p| p == listen) {
            v.push(
                "api.probe_listen",
                format!("{listen} is api.listen itself: give the probes a port of their own"),
            );
        }
        let max_connections = self.max_connections.unwrap_or(defaults.max_connections);
        if !(1..=65_536).contains(&max_connections) {
            v.push(
                "api.max_connections",
                format!("{max_connections} is not between 1 and 65536"),
            );
        }
        let mut positive = |key: &str, value: Option<&str>, default: Duration| {
            let d = v.duration(key, value, default);
            if d.is_zero() {
                v.push(key, "must be longer than 0s");
                return default;
            }
            d
        };
        let header_timeout = positive(
            "api.header_timeout",
            self.header_timeout.as_deref(),
            defaults.header_timeout,
        );
        let request_timeout = positive(
            "api.request_timeout",
            self.request_timeout.as_deref(),
            defaults.request_timeout,
        );
        let signin_failures = self.signin_failures.unwrap_or(defaults.signin_failures);
        if signin_failures == 0 {
            v.push("api.signin_failures", "must be at least 1");
        }
        ApiConfig {
            listen,
            tokens_file: self.tokens_file.map(|p| v.base.join(p)),
            external_url: self
                .external_url
                .unwrap_or_else(|| format!("http://{listen}")),
            allow_unauthenticated: self.allow_unauthenticated.unwrap_or(false),
            probe_listen,
            max_connections,
            header_timeout,
            request_timeout,
            signin_failures: signin_failures.max(1),
        }
    }
}
