//! The REST flow API: `/api/v1/flows`, `/flows/top`, `/alerts`, `/alerts/{fingerprint}` and
//! `/namespaces`. Parameters are parsed by hand so that every refusal names the parameter;
//! queries run on the blocking pool and their time goes to `/metrics`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use crate::alert::{Alert, FlowContext, Status};
use crate::common::clock::format_time;
use crate::flowstore::json::FlowJson;
use crate::flowstore::query::{DEFAULT_LIMIT, FILTER_PARAMETERS, MAX_LIMIT};
use crate::flowstore::{BadParameter, Filter, FlowStore, GroupBy};
use crate::pipeline::POLICY_DROP_REASONS;

/// The body of every error: a short code and what to do about it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    pub error: String,
    pub detail: String,
}

/// A refused or failed request: its status and [`ApiError`] body.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

/// A refusal with `status`.
pub fn refuse(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        detail: detail.into(),
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = ApiError {
            error: self.code.into(),
            detail: self.detail,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<BadParameter> for Refusal {
    fn from(e: BadParameter) -> Refusal {
        refuse(StatusCode::BAD_REQUEST, "bad_parameter", e.to_string())
    }
}

type Answer = Result<Response, Refusal>;

fn no_store() -> Refusal {
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_flow_store",
        "this process keeps no flows",
    )
}

/// The query string's pairs, each key at most once; `extra` are the endpoint's own keys.
fn pairs(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    extra: &[&str],
    filters: bool,
) -> Result<Vec<(String, String)>, Refusal> {
    let Query(pairs) =
        query.map_err(|e| refuse(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in &pairs {
        let known =
            extra.contains(&key.as_str()) || (filters && FILTER_PARAMETERS.contains(&key.as_str()));
        if !known {
            return Err(BadParameter {
                parameter: key.chars().take(100).collect(),
                value: value.chars().take(100).collect(),
                reason: "unknown parameter".into(),
            }
            .into());
        }
        if seen.contains(&key.as_str()) {
            return Err(BadParameter {
                parameter: key.clone(),
                value: value.chars().take(100).collect(),
                reason: "given more than once (list values with commas)".into(),
            }
            .into());
        }
        seen.push(key);
    }
    Ok(pairs)
}

/// The filter in `pairs`, and the other pairs.
fn filter(
    pairs: Vec<(String, String)>,
    now_ns: i64,
) -> Result<(Filter, HashMap<String, String>), BadParameter> {
    let mut filter = Filter::default();
    let mut rest = HashMap::new();
    for (key, value) in pairs {
        if !filter.set(&key, &value, now_ns)? {
            rest.insert(key, value);
        }
    }
    filter.check_range()?;
    Ok((filter, rest))
}

fn limit(rest: &HashMap<String, String>, default: usize) -> Result<usize, BadParameter> {
    match rest.get("limit") {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| BadParameter {
                parameter: "limit".into(),
                value: v.chars().take(100).collect(),
                reason: format!("must be a whole number from 1 to {MAX_LIMIT}"),
            }),
    }
}

/// Runs `query` on the blocking pool, timing it.
async fn blocking<T: Send + 'static>(
    state: &Arc<ApiState>,
    query: impl FnOnce(&FlowStore) -> Result<T, crate::flowstore::StoreError> + Send + 'static,
) -> Result<T, Refusal> {
    let Some(store) = state.flows.clone() else {
        return Err(no_store());
    };
    let started = tokio::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || query(&store)).await;
    state
        .telemetry
        .query_latency
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e @ crate::flowstore::StoreError::TooBroad { .. })) => Err(BadParameter {
            parameter: "since".into(),
            value: String::new(),
            reason: e.to_string(),
        }
        .into()),
        Ok(Err(e)) => {
            tracing::error!("api: {e}");
            Err(refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store",
                e.to_string(),
            ))
        }
        Err(e) => {
            tracing::error!("api: query task failed: {e}");
            Err(refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store",
                "the query failed; see the service log",
            ))
        }
    }
}

/// Parameters of `GET /api/v1/flows` and `GET /api/v1/flows/top`. Unprefixed `namespace`,
/// `pod`, `workload`, `ip`, `cidr` and `port` match either side of a flow; `source_` and
/// `destination_` forms match one side.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code, reason = "documents the parameters in the OpenAPI document")]
pub struct FlowParams {
    /// Namespace, exact.
    namespace: Option<String>,
    source_namespace: Option<String>,
    destination_namespace: Option<String>,
    /// Pod name prefix.
    pod: Option<String>,
    source_pod: Option<String>,
    destination_pod: Option<String>,
    /// Owning workload (Deployment, Job, ...), exact.
    workload: Option<String>,
    source_workload: Option<String>,
    destination_workload: Option<String>,
    /// IP address, exact.
    ip: Option<String>,
    source_ip: Option<String>,
    destination_ip: Option<String>,
    /// Address block, e.g. 10.0.0.0/8.
    cidr: Option<String>,
    source_cidr: Option<String>,
    destination_cidr: Option<String>,
    /// L4 port.
    #[param(minimum = 0, maximum = 65535)]
    port: Option<u32>,
    #[param(minimum = 0, maximum = 65535)]
    source_port: Option<u32>,
    #[param(minimum = 0, maximum = 65535)]
    destination_port: Option<u32>,
    /// Verdicts, comma-separated: FORWARDED, DROPPED, AUDIT, ERROR, ...
    verdict: Option<String>,
    /// Drop reasons by name or number, comma-separated: POLICY_DENIED, 181, ...
    drop_reason: Option<String>,
    /// INGRESS or EGRESS.
    direction: Option<String>,
    /// TCP, UDP, ICMPv4, ICMPv6 or SCTP, comma-separated.
    protocol: Option<String>,
    /// DNS name of the destination or a parent domain of it.
    fqdn: Option<String>,
    /// Node that observed the flow.
    node: Option<String>,
    /// Name of the policy that denied the flow.
    policy: Option<String>,
    /// Start of the time range, inclusive: RFC 3339 or a duration ago (15m, 2h, 7d).
    #[param(
        pattern = r"^([0-9]+(ms|s|m|h|d)|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    since: Option<String>,
    /// End of the time range, exclusive: RFC 3339 or a duration ago.
    #[param(
        pattern = r"^([0-9]+(ms|s|m|h|d)|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    until: Option<String>,
}

/// Paging and format of `GET /api/v1/flows`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code, reason = "documents the parameters in the OpenAPI document")]
pub struct PageParams {
    /// Flows per page (default 100).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// `json` (default) or `ndjson`: one `hubble observe -o jsonpb` line per flow.
    format: Option<String>,
}

/// One page of flows, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct FlowPage {
    pub flows: Vec<FlowJson>,
    /// Pass as `cursor` for the next (older) page; null on the last page. A page that reached
    /// the per-request read budget holds fewer than `limit` flows but still has a cursor.
    pub next_cursor: Option<String>,
}

fn parse_cursor(rest: &HashMap<String, String>) -> Result<Option<u64>, BadParameter> {
    rest.get("cursor")
        .map(|c| {
            c.parse::<u64>().map_err(|_| BadParameter {
                parameter: "cursor".into(),
                value: c.chars().take(100).collect(),
                reason: "not a cursor this API returned".into(),
            })
        })
        .transpose()
}

/// `GET /api/v1/flows`.
#[utoipa::path(get, path = "/api/v1/flows", tag = "flows",
    params(FlowParams, PageParams),
    responses(
        (status = 200, description = "Matching flows, newest first", content(
            (FlowPage = "application/json"),
            (String = "application/x-ndjson"))),
        (status = 400, description = "A parameter is invalid; the detail names it", body = ApiError),
        (status = 401, description = "Missing or unknown bearer token", body = ApiError),
    ),
    security(("bearer" = [])))]
pub async fn flows(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer {
    let pairs = pairs(query, &["limit", "cursor", "format"], true)?;
    let parsed = filter(pairs, crate::common::clock::now_ns()).and_then(|(f, rest)| {
        let ndjson = match rest.get("format").map(String::as_str) {
            None | Some("json") => false,
            Some("ndjson") => true,
            Some(other) => {
                return Err(BadParameter {
                    parameter: "format".into(),
                    value: other.chars().take(100).collect(),
                    reason: "must be json or ndjson".into(),
                });
            }
        };
        Ok((
            f,
            limit(&rest, DEFAULT_LIMIT)?,
            parse_cursor(&rest)?,
            ndjson,
        ))
    });
    let (f, limit, cursor, ndjson) = parsed?;
    let page = blocking(&state, move |s| s.list(&f, cursor, limit)).await?;
    if ndjson {
        let mut body = String::with_capacity(page.flows.len() * 600);
        for flow in &page.flows {
            body.push_str(&flow.to_jsonpb_line());
            body.push('\n');
        }
        let mut response = ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response();
        if let Some(c) = page.next_cursor
            && let Ok(v) = c.to_string().parse()
        {
            response.headers_mut().insert("x-next-cursor", v);
        }
        return Ok(response);
    }
    Ok(Json(FlowPage {
        flows: page.flows.iter().map(|f| f.to_json()).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    })
    .into_response())
}

/// Grouping of `GET /api/v1/flows/top`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code, reason = "documents the parameters in the OpenAPI document")]
pub struct TopParams {
    /// destination (default), source, fqdn, port, namespace or verdict.
    by: Option<String>,
    /// Groups to return (default 20).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<u32>,
}

/// One group of flows.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopGroup {
    pub key: String,
    pub count: u64,
    pub first_seen: String,
    pub last_seen: String,
}

/// The biggest groups of matching flows.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopPage {
    pub by: String,
    /// Matching flows in all groups, shown or not.
    pub total: u64,
    pub groups: Vec<TopGroup>,
}

/// `GET /api/v1/flows/top`.
#[utoipa::path(get, path = "/api/v1/flows/top", tag = "flows",
    params(FlowParams, TopParams),
    responses(
        (status = 200, description = "Groups by count, biggest first", body = TopPage),
        (status = 400, description = "A parameter is invalid; the detail names it", body = ApiError),
        (status = 401, description = "Missing or unknown bearer token", body = ApiError),
    ),
    security(("bearer" = [])))]
pub async fn top(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer {
    let pairs = pairs(query, &["by", "limit"], true)?;
    let parsed = filter(pairs, crate::common::clock::now_ns()).and_then(|(f, rest)| {
        let by_name = rest.get("by").map_or("destination", String::as_str);
        let by = GroupBy::parse(by_name).ok_or_else(|| BadParameter {
            parameter: "by".into(),
            value: by_name.chars().take(100).collect(),
            reason: format!("must be one of {}", GroupBy::NAMES.join(", ")),
        })?;
        Ok((f, by, by_name.to_owned(), limit(&rest, 20)?))
    });
    let (f, by, by_name, limit) = parsed?;
    let (groups, total) = blocking(&state, move |s| s.top(&f, by, limit)).await?;
    Ok(Json(TopPage {
        by: by_name,
        total,
        groups: groups
            .into_iter()
            .map(|g| TopGroup {
                key: g.key,
                count: g.count,
                first_seen: format_time(g.first_ns),
                last_seen: format_time(g.last_ns),
            })
            .collect(),
    })
    .into_response())
}

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
    /// The flow query behind the alert.
    pub generator_url: String,
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

fn read_alerts(state: &ApiState) -> Result<Vec<Alert>, Refusal> {
    let Some(store) = &state.alerts else {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_alert_store",
            "this process keeps no alerts",
        ));
    };
    crate::alert::saved(store).map_err(|e| {
        tracing::error!("api: {e}");
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "alert_store",
            "the alert store cannot be read; see the service log",
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
            return Err(BadParameter {
                parameter: "status".into(),
                value: other.chars().take(100).collect(),
                reason: "must be firing, resolved or all".into(),
            }
            .into());
        }
    };
    let limit = limit(&rest, DEFAULT_LIMIT)?;
    let mut alerts = read_alerts(&state)?;
    alerts.retain(|a| {
        status.is_none_or(|s| a.status == s)
            && rest
                .get("namespace")
                .is_none_or(|ns| a.labels.get("namespace") == Some(ns))
    });
    alerts.sort_by_key(|a| std::cmp::Reverse(a.starts_at_ns));
    alerts.truncate(limit);
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
fn alert_filter(alert: &Alert) -> Result<Filter, BadParameter> {
    let pairs: Vec<(String, String)> = reqwest::Url::parse(&alert.generator_url)
        .map(|url| {
            url.query_pairs()
                .filter(|(k, _)| FILTER_PARAMETERS.contains(&k.as_ref()))
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
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
    let alerts = read_alerts(&state)?;
    let Some(alert) = alerts.into_iter().find(|a| a.fingerprint == fingerprint) else {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no alert with fingerprint {:?}",
                fingerprint.chars().take(100).collect::<String>()
            ),
        ));
    };
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
    let page = blocking(&state, move |s| s.list(&f, None, limit)).await?;
    Ok(Json(AlertDetail {
        alert: alert.into(),
        flows: page.flows.iter().map(|f| f.to_json()).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    })
    .into_response())
}

/// A namespace as dashboards see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct NamespaceJson {
    pub namespace: String,
    /// Whether exfilwatch watches it (`hubble.namespaces`; all when that is empty). Only
    /// watched namespaces are listed.
    pub watched: bool,
    /// Flows from it in the range.
    pub flows: u64,
    /// Of those, the ones a network policy refused.
    pub denied: u64,
    pub firing_alerts: u64,
    /// 10-minute egress rate, bytes per second, when Prometheus is configured.
    pub egress_rate: Option<f64>,
    /// 7-day average egress rate, bytes per second.
    pub egress_baseline: Option<f64>,
}

/// `GET /api/v1/namespaces`: the watched namespaces (every namespace flows came from when
/// all are watched).
#[utoipa::path(get, path = "/api/v1/namespaces", tag = "namespaces",
    params(("since" = Option<String>, Query, pattern = r"^([0-9]+(ms|s|m|h|d)|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2}))$", description = "Start of the counted range: RFC 3339 or a duration ago (default 24h)")),
    responses(
        (status = 200, description = "Namespaces with flow counts, alerts and egress", body = Vec<NamespaceJson>),
        (status = 400, description = "A parameter is invalid; the detail names it", body = ApiError),
        (status = 401, description = "Missing or unknown bearer token", body = ApiError),
    ),
    security(("bearer" = [])))]
pub async fn namespaces(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer {
    let pairs = pairs(query, &["since"], false)?;
    let now = crate::common::clock::now_ns();
    let since = pairs.first().map_or("24h", |(_, v)| v.as_str()).to_owned();
    let (all, denied) = match (filter(vec![("since".into(), since.clone())], now), {
        let reasons: Vec<String> = POLICY_DROP_REASONS.iter().map(u32::to_string).collect();
        filter(
            vec![
                ("since".into(), since),
                ("verdict".into(), "DROPPED,AUDIT".into()),
                ("drop_reason".into(), reasons.join(",")),
            ],
            now,
        )
    }) {
        (Ok((a, _)), Ok((d, _))) => (a, d),
        (Err(e), _) | (_, Err(e)) => return Err(e.into()),
    };
    let counts = blocking(&state, move |s| {
        let (all, _) = s.top(&all, GroupBy::Namespace, usize::MAX)?;
        let (denied, _) = s.top(&denied, GroupBy::Namespace, usize::MAX)?;
        Ok((all, denied))
    })
    .await;
    let (all, denied) = counts?;
    let mut rows: BTreeMap<String, NamespaceJson> = BTreeMap::new();
    let named = all
        .iter()
        .map(|g| (g.key.as_str(), g.count, 0))
        .chain(denied.iter().map(|g| (g.key.as_str(), 0, g.count)))
        .chain(state.watched.iter().map(|w| (w.as_str(), 0, 0)));
    for (ns, flows, denied) in named {
        // "(world)" and other stand-ins are not namespaces.
        let watched = state.watched.is_empty() || state.watched.iter().any(|w| w == ns);
        if ns.starts_with('(') || !watched {
            continue;
        }
        let r = rows.entry(ns.to_owned()).or_insert_with(|| NamespaceJson {
            namespace: ns.to_owned(),
            watched,
            flows: 0,
            denied: 0,
            firing_alerts: 0,
            egress_rate: None,
            egress_baseline: None,
        });
        r.flows += flows;
        r.denied += denied;
    }
    if let Ok(alerts) = read_alerts(&state) {
        for a in alerts.iter().filter(|a| a.status == Status::Firing) {
            if let Some(ns) = a.labels.get("namespace")
                && let Some(r) = rows.get_mut(ns)
            {
                r.firing_alerts += 1;
            }
        }
    }
    if let Some(latest) = &state.telemetry.egress {
        let report = latest.borrow().clone();
        for (ns, e) in &report.namespaces {
            if let Some(r) = rows.get_mut(ns) {
                r.egress_rate = e.rate;
                r.egress_baseline = e.baseline;
            }
        }
    }
    Ok(Json(rows.into_values().collect::<Vec<_>>()).into_response())
}
