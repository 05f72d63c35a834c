//! `GET /api/v1/flows` (a page of stored flows, newest first, or NDJSON) and
//! `GET /api/v1/flows/top` (the biggest groups). Parameters are parsed by hand so that every
//! refusal names the parameter.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::error::{Answer, ApiError};
use super::params::{blocking, filter, limit, pairs};
use crate::common::clock::format_time;
use crate::flowstore::json::FlowJson;
use crate::flowstore::query::DEFAULT_LIMIT;
use crate::flowstore::{BadParameter, GroupBy};

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

fn parse_cursor(
    rest: &HashMap<String, String>,
) -> Result<Option<crate::flowstore::Cursor>, BadParameter> {
    rest.get("cursor").map(|c| c.parse()).transpose()
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
                return Err(BadParameter::new("format", other, "must be json or ndjson"));
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
        let by = GroupBy::parse(by_name).ok_or_else(|| {
            BadParameter::new(
                "by",
                by_name,
                format!("must be one of {}", GroupBy::NAMES.join(", ")),
            )
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
