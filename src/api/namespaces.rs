//! `GET /api/v1/namespaces`: the watched namespaces with their flows, denied flows and
//! firing alerts.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;
use super::alerts::firing_by_namespace;
use super::error::{Answer, ApiError};
use super::params::{blocking, filter, pairs};
use crate::flowstore::GroupBy;
use crate::pipeline::POLICY_DROP_REASONS;

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
    let since = pairs.first().map_or("24h", |(_, v)| v.as_str()).to_owned();
    Ok(Json(rows(&state, since).await?).into_response())
}

/// The watched namespaces with their counts since `since`, alerts and egress.
pub(super) async fn rows(
    state: &Arc<ApiState>,
    since: String,
) -> Result<Vec<NamespaceJson>, super::error::Refusal> {
    let now = crate::common::clock::now_ns();
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
    let counts = blocking(state, move |s| {
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
    if let Ok(firing) = firing_by_namespace(state).await {
        for (ns, n) in firing {
            if let Some(r) = rows.get_mut(&ns) {
                r.firing_alerts += n;
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
    Ok(rows.into_values().collect())
}
