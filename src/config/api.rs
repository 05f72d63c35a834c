//! `api:`: where the REST API listens, who may use it and how users reach it.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::Validator;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawApi {
    listen: Option<String>,
    tokens_file: Option<PathBuf>,
    external_url: Option<String>,
    allow_unauthenticated: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub tokens_file: Option<PathBuf>,
    /// How users reach the API; alert links (`generatorURL`) start with it.
    pub external_url: String,
    /// Serve a non-loopback address without tokens (not recommended).
    pub allow_unauthenticated: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tokens_file: None,
            external_url: "http://127.0.0.1:8080".into(),
            allow_unauthenticated: false,
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
        ApiConfig {
            listen,
            tokens_file: self.tokens_file.map(|p| v.base.join(p)),
            external_url: self
                .external_url
                .unwrap_or_else(|| format!("http://{listen}")),
            allow_unauthenticated: self.allow_unauthenticated.unwrap_or(false),
        }
    }
}
