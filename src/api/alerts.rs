//! `GET /api/v1/alerts` and `GET /api/v1/alerts/{fingerprint}` (an alert with the flows of
//! its generator URL).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::error::{Answer, ApiError, Refusal, refuse};
use super::params::{blocking, filter, limit, pairs};
use crate::alert::{Alert, FlowContext, Status};
use crate::common::clock::format_time;
use crate::flowstore::json::FlowJson;
use crate::flowstore::query::{DEFAULT_LIMIT, FILTER_PARAMETERS};
use crate::flowstore::{BadParameter, Filter};

/// An alert as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertJson {
    pub fingerprint: String,
    pub rule: String,
    /// firing or resolved.
    pub status: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: String,
    /// When a firing alert expires unless re-sent, or when a resolved one resolved.
    pub ends_at: String,
    /// The alert's page in the console.
    pub generator_url: String,
    /// The flow query behind the alert: `/api/v1/flows?` with it returns its flows.
    pub query: String,
    pub context: FlowContext,
}

impl From<Alert> for AlertJson {
    fn from(a: Alert) -> Self {
        AlertJson {
            status: a.status.as_str().into(),
            starts_at: format_time(a.starts_at_ns),
            ends_at: format_time(a.ends_at_ns),
            fingerprint: a.fingerprint,
            rule: a.rule,
            labels: a.labels,
            annotations: a.annotations,
            generator_url: a.generator_url,
            query: a.query,
            context: a.context,
        }
    }
}

/// Filters of `GET /api/v1/alerts`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code, reason = "documents the parameters in the OpenAPI document")]
pub struct AlertParams {
    /// firing, resolved or all (default).
    status: Option<String>,
    /// Only alerts of this namespace.
    namespace: Option<String>,
    /// Alerts to return, newest first (default 100).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<u32>,
}

/// Runs `read` on the alert store off the async workers.
async fn on_store<T: Send + 'static>(
    state: &ApiState,
    read: impl FnOnce(&crate::state::Store) -> Result<T, crate::state::StateError> + Send + 'static,
) -> Result<T, Refusal> {
    let Some(store) = state.alerts.clone() else {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_alert_store",
            "this process keeps no alerts",
        ));
    };
    let unreadable = || {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "alert_store",
            "the alert store cannot be read; see the service log",
        )
    };
    match tokio::task::spawn_blocking(move || read(&store)).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(e)) => {
            tracing::error!("api: {e}");
            Err(unreadable())
        }
        Err(_) => Err(unreadable()),
    }
}

/// The newest `limit` alerts `filter` selects, newest first.
pub(super) async fn read_page(
    state: &ApiState,
    firing: Option<bool>,
    namespace: Option<String>,
    limit: usize,
) -> Result<Vec<Alert>, Refusal> {
    on_store(state, move |store| {
        let filter = crate::state::AlertFilter {
            firing,
            namespace: namespace.as_deref(),
        };
        crate::alert::page(store, filter, limit)
    })
    .await
}

/// Firing alerts by namespace.
pub(super) async fn firing_by_namespace(state: &ApiState) -> Result<Vec<(String, u64)>, Refusal> {
    let counts = on_store(state, |store| store.firing_counts()).await?;
    Ok(counts
        .into_iter()
        .map(|(_, ns, n)| (ns, n.max(0) as u64))
        .collect())
}

/// The alert with `fingerprint`, or a 404 naming it.
pub(super) async fn find(state: &ApiState, fingerprint: &str) -> Result<Alert, Refusal> {
    let wanted = fingerprint.to_owned();
    on_store(state, move |store| {
        crate::alert::by_fingerprint(store, &wanted)
    })
    .await?
    .ok_or_else(|| {
        refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no alert with fingerprint {:?}",
                fingerprint.chars().take(100).collect::<String>()
            ),
        )
    })
}

/// `GET /api/v1/alerts`.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts",
    params(AlertParams),
    responses(
        (status = 200, description = "Alerts, newest first", body = Vec<AlertJson>),
        (status = 400, description = "A parameter is invalid; the detail names it", body = ApiError),
        (status = 401, description = "Missing or unknown bearer token", body = ApiError),
    ),
    security(("bearer" = [])))]
pub async fn alerts(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer {
    let pairs = pairs(query, &["status", "namespace", "limit"], false)?;
    let rest: HashMap<String, String> = pairs.into_iter().collect();
    let status = match rest.get("status").map_or("all", String::as_str) {
        "all" => None,
        other if Status::parse(other).is_some() => Status::parse(other),
        other => {
            return Err(
                BadParameter::new("status", other, "must be firing, resolved or all").into(),
            );
        }
    };
    let limit = limit(&rest, DEFAULT_LIMIT)?;
    let firing = status.map(|s| s == Status::Firing);
    let alerts = read_page(&state, firing, rest.get("namespace").cloned(), limit).await?;
    Ok(Json(alerts.into_iter().map(AlertJson::from).collect::<Vec<_>>()).into_response())
}

/// An alert with the flows behind it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertDetail {
    pub alert: AlertJson,
    /// The newest flows the alert's query selects (at most `limit`).
    pub flows: Vec<FlowJson>,
    /// Cursor for more of them from `/api/v1/flows`, with the alert's query.
    pub next_cursor: Option<String>,
}

/// The flow filter an alert's generator URL carries, bounded by when it resolved.
pub(super) fn alert_filter(alert: &Alert) -> Result<Filter, BadParameter> {
    // Alerts saved before the query was kept carry it in their generator URL.
    let query = if alert.query.is_empty() {
        reqwest::Url::parse(&alert.generator_url)
            .ok()
            .and_then(|u| u.query().map(str::to_owned))
            .unwrap_or_default()
    } else {
        alert.query.clone()
    };
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| FILTER_PARAMETERS.contains(&k.as_ref()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let (mut f, _) = filter(pairs, crate::common::clock::now_ns())?;
    if f.since_ns.is_none() {
        f.since_ns = Some(alert.context.first_seen_ns);
    }
    if alert.status == Status::Resolved {
        f.until_ns = Some(alert.ends_at_ns.max(alert.context.last_seen_ns) + 1);
    }
    Ok(f)
}

/// `GET /api/v1/alerts/{fingerprint}`.
#[utoipa::path(get, path = "/api/v1/alerts/{fingerprint}", tag = "alerts",
    params(("fingerprint" = String, Path, description = "The alert's fingerprint"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "Flows to include (default 100)")),
    responses(
        (status = 200, description = "The alert and its flows", body = AlertDetail),
        (status = 400, description = "A parameter is invalid; the detail names it", body = ApiError),
        (status = 401, description = "Missing or unknown bearer token", body = ApiError),
        (status = 404, description = "No alert with this fingerprint", body = ApiError),
    ),
    security(("bearer" = [])))]
pub async fn alert(
    State(state): State<Arc<ApiState>>,
    Path(fingerprint): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer {
    let pairs = pairs(query, &["limit"], false)?;
    let rest: HashMap<String, String> = pairs.into_iter().collect();
    let limit = limit(&rest, DEFAULT_LIMIT)?;
    detail(&state, &fingerprint, limit).await
}

/// The alert with `fingerprint` and the newest `limit` flows behind it, as JSON.
pub(super) async fn detail(state: &Arc<ApiState>, fingerprint: &str, limit: usize) -> Answer {
    let alert = find(state, fingerprint).await?;
    let f = match alert_filter(&alert) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("api: alert {fingerprint}: its flow query is invalid: {e}");
            return Err(refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "alert_query",
                "the alert's flow query is invalid; see the service log",
            ));
        }
    };
    let page = blocking(state, move |s| s.list(&f, None, limit)).await?;
    Ok(Json(AlertDetail {
        alert: alert.into(),
        flows: page.flows.iter().map(|f| f.to_json()).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    })
    .into_response())
}
