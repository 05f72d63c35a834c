//! Query-string handling every resource shares: known keys only, each once; the flow filter;
//! `limit`; and running a flow-store query on the blocking pool, timed for `/metrics`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::StatusCode;

use super::ApiState;
use super::error::{Refusal, refuse};
use crate::flowstore::query::{FILTER_PARAMETERS, MAX_LIMIT};
use crate::flowstore::{BadParameter, Filter, FlowStore};

/// The query string's pairs, each key at most once; `extra` are the endpoint's own keys.
pub(super) fn pairs(
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
            return Err(BadParameter::new(key, value, "unknown parameter").into());
        }
        if seen.contains(&key.as_str()) {
            return Err(BadParameter::new(
                key,
                value,
                "given more than once (list values with commas)",
            )
            .into());
        }
        seen.push(key);
    }
    Ok(pairs)
}

/// The filter in `pairs`, and the other pairs.
pub(super) fn filter(
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

pub(super) fn limit(rest: &HashMap<String, String>, default: usize) -> Result<usize, BadParameter> {
    match rest.get("limit") {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                BadParameter::new(
                    "limit",
                    v,
                    format!("must be a whole number from 1 to {MAX_LIMIT}"),
                )
            }),
    }
}

/// Runs `query` on the blocking pool, timing it.
pub(super) async fn blocking<T: Send + 'static>(
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
        Ok(Err(crate::flowstore::StoreError::Cursor(c))) => {
            Err(BadParameter::new("cursor", &c, "not a cursor this API returned").into())
        }
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

pub(super) fn no_store() -> Refusal {
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_flow_store",
        "this process keeps no flows",
    )
}
