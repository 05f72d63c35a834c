//! The HTTP API on `api.listen`: the REST flow API under `/api/v1` ([`flows`]), dashboard
//! data ([`egress`]), `/metrics` for Prometheus, `/healthz` and `/readyz` for Kubernetes
//! probes, `POST /-/reload` ([`reload`]), the alerts' runbooks ([`runbooks`]), and the
//! OpenAPI document at `/api/v1/openapi.json`.
//!
//! Secure by default: it listens on loopback unless configured otherwise, and refuses a
//! non-loopback address without bearer tokens unless `api.allow_unauthenticated` says so.
//! With tokens (`api.tokens_file`, one per line, re-read when the file changes), every route
//! except the probes and runbooks needs `Authorization: Bearer TOKEN`; tokens are compared in constant
//! time. Requests are bounded: no body (but the console's sign-in form and the policies to
//! check), a query string of at most 8 KiB.

pub mod alerts;
pub mod egress;
pub mod error;
pub mod flows;
mod guard;
pub mod metrics;
pub mod namespaces;
mod params;
pub mod policy;
pub mod reload;
#[cfg(test)]
mod routes;
pub mod runbooks;
pub mod server;
pub mod ui;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

use crate::config::ApiConfig;
use crate::source::StreamState;
use error::refuse;

/// What the API serves from.
#[derive(Debug)]
pub struct ApiState {
    pub telemetry: Arc<metrics::Telemetry>,
    pub stream: watch::Receiver<StreamState>,
    /// Set when Prometheus is configured.
    pub egress: Option<egress::EgressApi>,
    pub flows: Option<Arc<crate::flowstore::FlowStore>>,
    pub alerts: Option<crate::state::Store>,
    /// `hubble.namespaces`: the watched namespaces (all when empty).
    pub watched: Vec<String>,
    /// Where `POST /-/reload` asks for a reload, when the service can reload.
    pub reloads: Option<reload::Reloads>,
    tokens: RwLock<Vec<Vec<u8>>>,
    tokens_file: Option<PathBuf>,
    /// The console's sessions: their signing key, the ones signed out.
    sessions: ui::Sessions,
    /// Failed console sign-ins by client.
    signins: ui::SignIns,
    /// Whether users reach the API over HTTPS (`api.external_url`): session cookies are
    /// then `Secure`.
    external_https: bool,
    /// Alertmanager's address, for the console's silence links.
    pub alertmanager: Option<String>,
    /// The rule pack in force, for the console's rule pages (replaced by a reload).
    pub rules: SharedRules,
    /// What a client may hold and for how long.
    limits: server::Limits,
    /// The `Host` values the API answers to without tokens (set when it binds).
    hosts: Vec<String>,
}

/// A rule pack several tasks read and a reload replaces.
pub type SharedRules = Arc<RwLock<Vec<Arc<crate::rules::Rule>>>>;

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
    // The token is never printed: its line and length say which one.
    if let (Some(path), Some(short)) = (
        &config.tokens_file,
        tokens
            .iter()
            .position(|t| t.len() < crate::config::MIN_TOKEN_LEN),
    ) {
        return Err(format!(
            "api.tokens_file {}: token {} of {} is {} characters, shorter than {}: make one with `head -c 32 /dev/urandom | base64`",
            path.display(),
            short + 1,
            tokens.len(),
            tokens[short].len(),
            crate::config::MIN_TOKEN_LEN
        ));
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
        flows: None,
        alerts: None,
        watched: Vec::new(),
        reloads: None,
        tokens: RwLock::new(tokens(config)?),
        tokens_file: config.tokens_file.clone(),
        sessions: ui::Sessions::new()?,
        signins: ui::SignIns::new(config.signin_failures),
        external_https: config.external_url.starts_with("https://"),
        alertmanager: None,
        rules: SharedRules::default(),
        limits: server::Limits::of(config),
        // Known once the listener is bound (`api.listen` may name port 0): see `serve`.
        hosts: Vec::new(),
    })
}

/// How often the tokens file is checked for changes.
const TOKENS_CHECK: Duration = Duration::from_secs(2);

fn file_stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Re-reads `api.tokens_file` when it changes; a file that becomes unreadable or empty
/// keeps the tokens in force (and says so), it never opens the API.
async fn reload_tokens(state: Arc<ApiState>, config: ApiConfig, cancel: CancellationToken) {
    let Some(path) = state.tokens_file.clone() else {
        return;
    };
    let mut stamp = file_stamp(&path);
    let mut tick = tokio::time::interval(TOKENS_CHECK);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = file_stamp(&path);
        if now == stamp {
            continue;
        }
        stamp = now;
        match tokens(&config) {
            Ok(new) => {
                let n = new.len();
                *state.tokens.write().unwrap_or_else(|p| p.into_inner()) = new;
                tracing::warn!("api: reloaded {n} token(s) from {}", path.display());
            }
            Err(e) => tracing::error!("api: keeping the current tokens: {e}"),
        }
    }
}

/// Whether `presented` is one of `tokens`, compared in constant time with every one.
fn token_known(tokens: &[Vec<u8>], presented: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    tokens
        .iter()
        .fold(subtle::Choice::from(0), |found, t| {
            found | presented.ct_eq(t)
        })
        .into()
}

/// The token of an `Authorization: Bearer TOKEN` value; the scheme is matched without case
/// (RFC 7235).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

async fn authenticate(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .map(str::as_bytes);
    let ok = {
        let tokens = state.tokens.read().unwrap_or_else(|p| p.into_inner());
        tokens.is_empty() || presented.is_some_and(|p| token_known(&tokens, p))
    };
    if ok {
        next.run(request).await
    } else {
        (
            [(header::WWW_AUTHENTICATE, "Bearer")],
            refuse(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer TOKEN with a token from api.tokens_file",
            ),
        )
            .into_response()
    }
}

/// The OpenAPI document, generated from the handlers.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "exfilwatch", description = "Flows, alerts and egress of watched Kubernetes namespaces, from Cilium Hubble and Prometheus."),
    paths(flows::flows, flows::top, alerts::alerts, alerts::alert, namespaces::namespaces, egress::baselines, egress::namespace, policy::suggest, policy::check, healthz, readyz, metrics_handler, reload::reload, runbooks::index, runbooks::runbook),
    components(schemas(error::ApiError, flows::FlowPage, flows::TopPage, alerts::AlertJson, alerts::AlertDetail, namespaces::NamespaceJson, crate::policy::Suggestion, crate::policy::LeftOut, crate::policy::CheckReport, crate::policy::Finding)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

#[derive(Debug)]
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

async fn openapi() -> Response {
    axum::Json(ApiDoc::openapi()).into_response()
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition", body = String, content_type = "application/openmetrics-text"),
        (status = 401, description = "Missing or unknown bearer token", body = error::ApiError),
    ),
    security(("bearer" = [])))]
async fn metrics_handler(State(state): State<Arc<ApiState>>) -> Response {
    match state.telemetry.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "metrics", e).into_response(),
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

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive, with the state of each input", body = Object)))]
async fn healthz(State(state): State<Arc<ApiState>>) -> Response {
    let stream = stream_text(&state.stream.borrow());
    let details = state.telemetry.health();
    axum::Json(json!({
        "status": "ok",
        "version": crate::common::version::VERSION,
        "revision": crate::common::version::REVISION,
        "hubble": stream,
        "details": details,
    }))
    .into_response()
}

/// `GET /readyz`: the Hubble stream is up.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Streaming from Hubble", body = Object),
        (status = 503, description = "Not streaming from Hubble yet", body = Object),
    ))]
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
    refuse(StatusCode::NOT_FOUND, "not_found", "no such route").into_response()
}

/// Every route with whether it is open (the probes) or needs a token. The router is built
/// from this table, and a test walks it against a running server.
pub fn routes() -> Vec<(&'static str, bool, MethodRouter<Arc<ApiState>>)> {
    // (path, open, the largest body it takes, handler): the policies to check are the one
    // body the API takes; every other route refuses any.
    let table: Vec<(&'static str, bool, u64, MethodRouter<Arc<ApiState>>)> = vec![
        ("/healthz", true, 0, get(healthz)),
        ("/readyz", true, 0, get(readyz)),
        ("/runbooks/", true, 0, get(runbooks::index)),
        ("/runbooks/{name}", true, 0, get(runbooks::runbook)),
        ("/metrics", false, 0, get(metrics_handler)),
        ("/-/reload", false, 0, post(reload::reload)),
        ("/api/v1/openapi.json", false, 0, get(openapi)),
        ("/api/v1/flows", false, 0, get(flows::flows)),
        ("/api/v1/flows/top", false, 0, get(flows::top)),
        ("/api/v1/alerts", false, 0, get(alerts::alerts)),
        ("/api/v1/alerts/{fingerprint}", false, 0, get(alerts::alert)),
        ("/api/v1/namespaces", false, 0, get(namespaces::namespaces)),
        ("/api/v1/baselines", false, 0, get(egress::baselines)),
        ("/api/v1/policy/suggest", false, 0, get(policy::suggest)),
        (
            "/api/v1/policy/check",
            false,
            policy::MAX_POLICY_BODY,
            post(policy::check),
        ),
        (
            "/api/v1/namespaces/{ns}/egress",
            false,
            0,
            get(egress::namespace),
        ),
    ];
    table
        .into_iter()
        .map(|(path, open, body, route)| (path, open, guard::body(body, route)))
        .collect()
}

/// The routes: probes open, everything else (unknown paths too) behind the token check.
pub fn router(state: Arc<ApiState>) -> Router {
    let mut open = Router::new();
    let mut protected = Router::new();
    for (path, is_open, route) in routes() {
        if is_open {
            open = open.route(path, route);
        } else {
            protected = protected.route(path, route);
        }
    }
    let protected = protected
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    open.merge(ui::router(state.clone()))
        .merge(protected)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::bounded,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::same_site,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::deadline,
        ))
        .with_state(state)
}

/// The probes' own router: `/healthz` and `/readyz`, nothing else.
fn probe_router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::deadline,
        ))
        .with_state(state)
}

/// The API's listeners: its own, and the probes' when `api.probe_listen` is set.
#[derive(Debug)]
pub struct Listeners {
    api: TcpListener,
    probes: Option<TcpListener>,
}

impl Listeners {
    /// The API's address as bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.api.local_addr()
    }
}

/// Connections the probes' listener serves at once: kubelet's probes, one at a time each.
const PROBE_CONNECTIONS: usize = 16;

/// Binds `api.listen` (and `api.probe_listen`); the error names the setting.
pub async fn bind(config: &ApiConfig) -> Result<Listeners, String> {
    let at = |key: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| format!("{key} {addr}: cannot listen: {e}"))
    };
    let api = at("api.listen", config.listen).await?;
    let probes = match config.probe_listen {
        Some(addr) => Some(at("api.probe_listen", addr).await?),
        None => None,
    };
    Ok(Listeners { api, probes })
}

/// Serves until `cancel` fires, re-reading the tokens file when it changes.
pub async fn serve(
    listeners: Listeners,
    mut state: ApiState,
    config: ApiConfig,
    cancel: CancellationToken,
) {
    let bound = listeners.api.local_addr().unwrap_or(config.listen);
    state.hosts = guard::hosts(bound, &config.external_url);
    let state = Arc::new(state);
    let reload = tokio::spawn(reload_tokens(state.clone(), config, cancel.clone()));
    let stats = state.telemetry.http.clone();
    let probes = listeners.probes.map(|listener| {
        let limits = server::Limits {
            max_connections: PROBE_CONNECTIONS,
            ..state.limits
        };
        tokio::spawn(server::serve(
            listener,
            probe_router(state.clone()),
            limits,
            stats.clone(),
            cancel.clone(),
        ))
    });
    let limits = state.limits;
    server::serve(listeners.api, router(state), limits, stats, cancel).await;
    if let Some(probes) = probes {
        let _ = probes.await;
    }
    reload.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_matched_without_case() {
        assert_eq!(bearer_token("Bearer t0ken"), Some("t0ken"));
        assert_eq!(bearer_token("bearer t0ken"), Some("t0ken"));
        assert_eq!(bearer_token("BEARER  t0ken"), Some("t0ken"));
        assert_eq!(bearer_token("Basic dDBrZW4="), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn tokens_compare_whole() {
        let tokens = [b"secret-token".to_vec(), b"other-token".to_vec()];
        assert!(token_known(&tokens, b"secret-token"));
        assert!(token_known(&tokens, b"other-token"));
        assert!(!token_known(&tokens, b"secret-tokeN"));
        assert!(!token_known(&tokens, b"secret"));
        assert!(!token_known(&[], b"secret-token"));
    }
}
