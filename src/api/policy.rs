//! The policy advisor over HTTP: `GET /api/v1/policy/suggest` and `POST /api/v1/policy/check`
//! (the candidate policies as the request body, YAML), the same answers as
//! `exfilwatch policy suggest|check --output json`, from the running service's flow store
//! and rule pack.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use utoipa::IntoParams;

use super::ApiState;
use super::error::{Answer, ApiError, refuse};
use super::params::{blocking, pairs};
use crate::flowstore::BadParameter;
use crate::flowstore::query::parse_time;
use crate::policy::{self, CheckReport, Flavor, Suggestion};

/// Largest body `POST /api/v1/policy/check` takes.
pub const MAX_POLICY_BODY: u64 = 1 << 20;

/// Parameters of both policy endpoints.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code, reason = "documents the parameters in the OpenAPI document")]
pub struct PolicyParams {
    /// The namespace whose flows are read and whose policies are written or checked.
    #[param(pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
    namespace: String,
    /// Start of the history: RFC 3339 or a duration ago (default 7d).
    since: Option<String>,
    /// `suggest` only: cilium (default) or kubernetes.
    flavor: Option<String>,
    /// `suggest` only: json (default) or yaml (the policies alone, for kubectl).
    format: Option<String>,
}

/// Namespace and time window of a request.
fn window(pairs: &[(String, String)], now_ns: i64) -> Result<(String, i64), BadParameter> {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let namespace =
        get("namespace").ok_or_else(|| BadParameter::new("namespace", "", "is required"))?;
    let valid = !namespace.is_empty()
        && namespace.len() <= 63
        && namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !namespace.starts_with('-')
        && !namespace.ends_with('-');
    if !valid {
        return Err(BadParameter::new(
            "namespace",
            namespace,
            "not a namespace name",
        ));
    }
    let since = parse_time("since", get("since").unwrap_or("7d"), now_ns)?;
    if since > now_ns {
        return Err(BadParameter::new(
            "since",
            get("since").unwrap_or(""),
            "is in the future",
        ));
    }
    Ok((namespace.to_owned(), since))
}

fn segmentation(state: &ApiState, namespace: &str) -> Vec<(String, Vec<crate::rules::Allowed>)> {
    let rules = state.rules.read().unwrap_or_else(|p| p.into_inner());
    crate::policy::segmentation(rules.iter().map(|r| &**r), namespace)
}

/// A suggestion for the console: `since` as the API takes it.
pub async fn suggestion(
    state: &Arc<ApiState>,
    namespace: &str,
    since: &str,
    flavor: &str,
) -> Result<Suggestion, super::error::Refusal> {
    let now = crate::common::clock::now_ns();
    let pairs = vec![
        ("namespace".to_owned(), namespace.to_owned()),
        ("since".to_owned(), since.to_owned()),
    ];
    let (namespace, since) = window(&pairs, now)?;
    let flavor = Flavor::parse(flavor)
        .ok_or_else(|| BadParameter::new("flavor", flavor, "must be cilium or kubernetes"))?;
    let segmentation = segmentation(state, &namespace);
    let ns = namespace.clone();
    let found = blocking(state, move |s| {
        s.connections(&ns, since, now.saturating_add(1))
    })
    .await?;
    Ok(policy::suggest(
        &found,
        &namespace,
        flavor,
        &segmentation,
        (since, now),
    ))
}

/// Policy texts parsed at once; the others wait their turn.
const PARSES: usize = 2;
static PARSING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(PARSES);

/// Parses policies a user sent, off the async workers and [`PARSES`] at a time: a megabyte of
/// YAML takes a worker's whole time slice, and the API, the probes and alert delivery share
/// those workers.
async fn parse(
    text: &str,
    origin: &str,
    namespace: &str,
) -> Result<Vec<policy::Policy>, super::error::Refusal> {
    let busy = || {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the policy parser is unavailable",
        )
    };
    let _turn = PARSING.acquire().await.map_err(|_| busy())?;
    let (text, origin, namespace) = (text.to_owned(), origin.to_owned(), namespace.to_owned());
    tokio::task::spawn_blocking(move || policy::parse(&text, &origin, &namespace))
        .await
        .map_err(|_| busy())?
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, "bad_policy", e.to_string()))
}

/// A check for the console.
pub async fn checked(
    state: &Arc<ApiState>,
    namespace: &str,
    since: &str,
    text: &str,
    origin: &str,
) -> Result<CheckReport, super::error::Refusal> {
    let now = crate::common::clock::now_ns();
    let pairs = vec![
        ("namespace".to_owned(), namespace.to_owned()),
        ("since".to_owned(), since.to_owned()),
    ];
    let (namespace, since) = window(&pairs, now)?;
    let policies = parse(text, origin, &namespace).await?;
    let ns = namespace.clone();
    let found = blocking(state, move |s| {
        s.connections(&ns, since, now.saturating_add(1))
    })
    .await?;
    Ok(policy::check(&policies, &found, &namespace, since, now))
}

/// `GET /api/v1/policy/suggest`.
#[utoipa::path(get, path = "/api/v1/policy/suggest", tag = "policy",
    params(PolicyParams),
    responses(
        (status = 200, description = "Least-privilege policies for the namespace", content(
            (Suggestion = "application/json"),
            (String = "application/yaml"))),
        (status = 400, description = "A parameter is invalid; the detail names it", body = ApiError),
        (status = 401, description = "Missing or unknown bearer token", body = ApiError),
        (status = 503, description = "This process keeps no flows", body = ApiError),
    ),
    security(("bearer" = [])))]
pub async fn suggest(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer {
    let pairs = pairs(query, &["namespace", "since", "flavor", "format"], false)?;
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let yaml = match get("format") {
        None | Some("json") => false,
        Some("yaml") => true,
        Some(other) => {
            return Err(BadParameter::new("format", other, "must be json or yaml").into());
        }
    };
    let suggestion = suggestion(
        &state,
        get("namespace").unwrap_or(""),
        get("since").unwrap_or("7d"),
        get("flavor").unwrap_or("cilium"),
    )
    .await?;
    if yaml {
        return Ok((
            [(header::CONTENT_TYPE, "application/yaml")],
            suggestion.yaml,
        )
            .into_response());
    }
    Ok(Json(suggestion).into_response())
}

/// `POST /api/v1/policy/check`.
#[utoipa::path(post, path = "/api/v1/policy/check", tag = "policy",
    params(PolicyParams),
    request_body(content = String, content_type = "application/yaml",
        description = "CiliumNetworkPolicy and NetworkPolicy documents (at most 1 MiB)"),
    responses(
        (status = 200, description = "What the policies would have done to the namespace's flows", body = CheckReport),
        (status = 400, description = "A parameter or a policy is invalid; the detail names it (body:line)", body = ApiError),
        (status = 401, description = "Missing or unknown bearer token", body = ApiError),
        (status = 413, description = "The body is over 1 MiB", body = ApiError),
        (status = 503, description = "This process keeps no flows", body = ApiError),
    ),
    security(("bearer" = [])))]
pub async fn check(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    body: Bytes,
) -> Answer {
    let pairs = pairs(query, &["namespace", "since"], false)?;
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let text = std::str::from_utf8(&body).map_err(|_| {
        refuse(
            StatusCode::BAD_REQUEST,
            "bad_policy",
            "the body is not UTF-8 text",
        )
    })?;
    let report = checked(
        &state,
        get("namespace").unwrap_or(""),
        get("since").unwrap_or("7d"),
        text,
        "body",
    )
    .await?;
    Ok(Json(report).into_response())
}
