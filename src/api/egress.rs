//! Dashboard data: every namespace's egress against its baseline (`/api/v1/baselines`) and
//! one namespace's series over a range (`/api/v1/namespaces/{ns}/egress`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ApiState;
use super::error::refuse;
use crate::egress::baseline::{Baseline, MAX_RANGE, State as BaselineState};
use crate::egress::prometheus::{MAX_POINTS, Prometheus};
use crate::egress::sampler::{EGRESS_METRIC, namespace_selector};

/// What the egress endpoints need besides the latest report.
#[derive(Debug, Clone)]
pub struct EgressApi {
    pub prometheus: Prometheus,
    pub selector: String,
    /// Hours of baseline before spike alerts (the smallest `min_coverage` of the rules).
    pub min_coverage_hours: usize,
}

/// A JSON error: `{error, detail}` with `status`.
fn error(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Response {
    refuse(status, code, detail).into_response()
}

fn state_name(s: BaselineState) -> &'static str {
    match s {
        BaselineState::Learning => "learning",
        BaselineState::Partial => "partial",
        BaselineState::Ready => "ready",
    }
}

/// Without Prometheus there is no egress data to serve: the resource does not exist here.
fn unavailable() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no_prometheus",
        "egress data needs prometheus.url in the configuration",
    )
}

/// `GET /api/v1/baselines`.
#[utoipa::path(get, path = "/api/v1/baselines", tag = "egress",
    responses(
        (status = 200, description = "Each namespace's egress rate against its 7-day baseline", body = Object),
        (status = 401, description = "Missing or unknown bearer token", body = super::error::ApiError),
        (status = 404, description = "Prometheus is not configured", body = super::error::ApiError),
    ),
    security(("bearer" = [])))]
pub async fn baselines(State(state): State<Arc<ApiState>>) -> Response {
    let (Some(latest), Some(api)) = (&state.telemetry.egress, &state.egress) else {
        return unavailable();
    };
    let report = latest.borrow().clone();
    let rows: Vec<_> = report
        .namespaces
        .iter()
        .map(|(ns, e)| {
            let baseline_state = report
                .baselines
                .get(ns)
                .map_or(BaselineState::Learning, |b| {
                    b.state(report.at, api.min_coverage_hours)
                });
            json!({
                "namespace": ns,
                "rate": e.rate,
                "baseline": e.baseline,
                "ratio": e.ratio(),
                "coverage_hours": e.coverage_hours,
                "coverage_percent": (e.coverage_hours.min(168) as f64 / 1.68).round(),
                "state": state_name(baseline_state),
            })
        })
        .collect();
    Json(json!({"at": report.at, "prometheus_error": report.error, "namespaces": rows}))
        .into_response()
}

/// A duration parameter; the error names it.
fn duration_param(
    params: &HashMap<String, String>,
    name: &str,
    default: &str,
) -> Result<Duration, String> {
    let text = params.get(name).map_or(default, String::as_str);
    crate::common::units::parse_duration(text).map_err(|e| format!("{name}: {e}"))
}

/// A series of points, (seconds since the epoch, bytes per second).
pub type Points = Vec<(i64, f64)>;

/// `ns`'s 10-minute egress rate from Prometheus and its baseline, from `start` to `end`
/// (seconds) every `step`.
pub(super) async fn series(
    api: &EgressApi,
    baseline: &Baseline,
    ns: &str,
    start: i64,
    end: i64,
    step: i64,
) -> Result<(Points, Points), String> {
    let query = format!(
        "sum(rate({EGRESS_METRIC}{}[10m]))",
        namespace_selector(&api.selector, ns)
    );
    let (series, _) = api
        .prometheus
        .range(&query, start, end, step)
        .await
        .map_err(|e| e.to_string())?;
    let current = series
        .into_iter()
        .next()
        .map(|s| s.points)
        .unwrap_or_default();
    let baseline = (0..=(end - start) / step)
        .map(|k| start + k * step)
        .filter_map(|t| Some((t, baseline.mean_at(t)?)))
        .collect();
    Ok((current, baseline))
}

/// `GET /api/v1/namespaces/{ns}/egress?range=24h&step=5m`.
#[utoipa::path(get, path = "/api/v1/namespaces/{ns}/egress", tag = "egress",
    params(("ns" = String, Path, description = "Namespace"),
        ("range" = Option<String>, Query, description = "How far back (default 24h)"),
        ("step" = Option<String>, Query, description = "Resolution, at least 10s (default 5m)")),
    responses(
        (status = 200, description = "The namespace's egress rate, baseline and ratio over the range", body = Object),
        (status = 400, description = "A parameter is invalid; the detail names it", body = super::error::ApiError),
        (status = 401, description = "Missing or unknown bearer token", body = super::error::ApiError),
        (status = 404, description = "No baseline for the namespace, or Prometheus is not configured", body = super::error::ApiError),
        (status = 503, description = "Prometheus is not answering", body = super::error::ApiError),
    ),
    security(("bearer" = [])))]
pub async fn namespace(
    State(state): State<Arc<ApiState>>,
    Path(ns): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if let Some(unknown) = params
        .keys()
        .find(|k| !matches!(k.as_str(), "range" | "step"))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_parameter",
            format!("{unknown}: unknown parameter; known: range, step"),
        );
    }
    let (Some(latest), Some(api)) = (&state.telemetry.egress, &state.egress) else {
        return unavailable();
    };
    let range = match duration_param(&params, "range", "24h") {
        Ok(r) => r,
        Err(detail) => return error(StatusCode::BAD_REQUEST, "bad_parameter", detail),
    };
    let step = match duration_param(&params, "step", "5m") {
        Ok(s) => s,
        Err(detail) => return error(StatusCode::BAD_REQUEST, "bad_parameter", detail),
    };
    let most = Duration::from_secs(MAX_RANGE as u64);
    if range.is_zero() || range > most {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_parameter",
            format!("range: {range:?} must be above zero and at most {most:?}"),
        );
    }
    if step < Duration::from_secs(10) || step > range {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_parameter",
            format!("step: {step:?} must be at least 10s and at most the range"),
        );
    }
    let (range_s, step_s) = (range.as_secs() as i64, step.as_secs() as i64);
    if range_s / step_s + 1 > MAX_POINTS {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_parameter",
            format!("step: {step:?} gives more than {MAX_POINTS} points"),
        );
    }
    let report = latest.borrow().clone();
    let Some(baseline): Option<&Baseline> = report.baselines.get(&ns) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no egress baseline for namespace {ns:?}"),
        );
    };
    let end = crate::common::clock::now_ns() / 1_000_000_000 / step_s * step_s;
    let start = end - range_s;
    let (current, baseline_series) = match series(api, baseline, &ns, start, end, step_s).await {
        Ok(s) => s,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "prometheus", e),
    };
    let by_time: HashMap<i64, f64> = baseline_series.iter().copied().collect();
    let ratio: Vec<(i64, f64)> = current
        .iter()
        .filter_map(|(t, v)| by_time.get(t).filter(|b| **b > 0.0).map(|b| (*t, v / b)))
        .collect();
    Json(json!({
        "namespace": ns,
        "range": range.as_secs(),
        "step": step_s,
        "state": state_name(baseline.state(end, api.min_coverage_hours)),
        "coverage_hours": baseline.coverage_hours(end),
        "current": current,
        "baseline": baseline_series,
        "ratio": ratio,
    }))
    .into_response()
}
