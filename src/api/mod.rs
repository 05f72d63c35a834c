//! The HTTP API on `api.listen`: `/metrics` for Prometheus, `/healthz` and `/readyz` for
//! Kubernetes probes. (The REST flow API joins them here.)
//!
//! Secure by default: it listens on loopback unless configured otherwise, and refuses a
//! non-loopback address without bearer tokens unless `api.allow_unauthenticated` says so.
//! With tokens (`api.tokens_file`, one per line), every route except the probes needs
//! `Authorization: Bearer TOKEN`; tokens are compared in constant time.

pub mod egress;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::ApiConfig;
use crate::source::hubble::StreamState;

/// What the API serves from.
#[derive(Debug)]
pub struct ApiState {
    pub telemetry: Arc<metrics::Telemetry>,
    pub stream: watch::Receiver<StreamState>,
    /// Set when Prometheus is configured.
    pub egress: Option<egress::EgressApi>,
    tokens: Vec<Vec<u8>>,
}

/// Reads the tokens and checks the listen address against them.
pub fn tokens(config: &ApiConfig) -> Result<Vec<Vec<u8>>, String> {
    let tokens: Vec<Vec<u8>> = match &config.tokens_file {
        None => Vec::new(),
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("api.tokens_file {}: {e}", path.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.as_bytes().to_vec())
            .collect(),
    };
    if config.tokens_file.is_some() && tokens.is_empty() {
        return Err("api.tokens_file holds no token".into());
    }
    if !config.listen.ip().is_loopback() && tokens.is_empty() && !config.allow_unauthenticated {
        return Err(format!(
            "api.listen {} is not a loopback address: set api.tokens_file, or api.allow_unauthenticated: true to serve without authentication",
            config.listen
        ));
    }
    Ok(tokens)
}

/// The API's state, once [`tokens`] accepted the configuration.
pub fn prepare(
    config: &ApiConfig,
    telemetry: Arc<metrics::Telemetry>,
    stream: watch::Receiver<StreamState>,
    egress: Option<egress::EgressApi>,
) -> Result<ApiState, String> {
    Ok(ApiState {
        telemetry,
        stream,
        egress,
        tokens: tokens(config)?,
    })
}

/// Equal in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authenticate(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    if state.tokens.is_empty() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::as_bytes);
    let ok = presented.is_some_and(|p| {
        state
            .tokens
            .iter()
            .fold(false, |found, t| found | constant_time_eq(p, t))
    });
    if ok {
        next.run(request).await
    } else {
        let body = json!({"error": "unauthorized", "detail": "send Authorization: Bearer TOKEN with a token from api.tokens_file"});
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(body),
        )
            .into_response()
    }
}

async fn metrics_handler(State(state): State<Arc<ApiState>>) -> Response {
    match state.telemetry.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": "metrics", "detail": e})),
        )
            .into_response(),
    }
}

fn stream_text(state: &StreamState) -> String {
    match state {
        StreamState::Connecting => "connecting".into(),
        StreamState::Streaming => "streaming".into(),
        StreamState::Retrying { error } => format!("retrying: {error}"),
        StreamState::Stopped { error: None } => "stopped".into(),
        StreamState::Stopped { error: Some(e) } => format!("stopped: {e}"),
    }
}

async fn healthz(State(state): State<Arc<ApiState>>) -> Response {
    let stream = stream_text(&state.stream.borrow());
    let details = state.telemetry.health();
    axum::Json(json!({"status": "ok", "hubble": stream, "details": details})).into_response()
}

async fn readyz(State(state): State<Arc<ApiState>>) -> Response {
    let current = state.stream.borrow().clone();
    let status = if current == StreamState::Streaming {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({"ready": status == StatusCode::OK, "hubble": stream_text(&current)})),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": "not_found", "detail": "no such route"})),
    )
        .into_response()
}

/// The routes: probes open, everything else behind the token check.
pub fn router(state: Arc<ApiState>) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/api/v1/baselines", get(egress::baselines))
        .route("/api/v1/namespaces/{ns}/egress", get(egress::namespace))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(protected)
        .with_state(state)
}

/// Binds `addr`; the error names the setting.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("api.listen {addr}: cannot listen: {e}"))
}

/// Serves until `cancel` fires.
pub async fn serve(listener: TcpListener, state: Arc<ApiState>, cancel: CancellationToken) {
    let app = router(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    {
        tracing::error!("api: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokeN"));
        assert!(!constant_time_eq(b"secret", b"secret-token"));
    }
}
