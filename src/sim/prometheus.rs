//! A Prometheus-API-compatible endpoint serving simulated egress series, for the demo.
//!
//! It answers `GET /api/v1/query` and `/api/v1/query_range` for the queries exfilwatch
//! sends (the per-namespace rate, one namespace's rate, the top pods per namespace), with
//! rates from a model: each namespace sends a steady volume with a daily rhythm, and from
//! `spike_at` on the training namespace uploads six times its usual volume. It is a stand-in
//! for a cluster's Prometheus, not a PromQL engine: any other query gets Prometheus's
//! `bad_data` error.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::traffic::TRAINING_NAMESPACE;

/// (namespace, pods, bytes per second per pod).
const NAMESPACES: [(&str, &[&str], f64); 3] = [
    (
        TRAINING_NAMESPACE,
        &[
            "llm-pretrain-worker-0",
            "llm-pretrain-worker-1",
            "llm-pretrain-worker-2",
            "llm-pretrain-worker-3",
        ],
        1_250_000.0,
    ),
    ("storage", &["minio-0", "minio-1"], 10_000_000.0),
    ("kube-system", &["coredns-5d78c9869d-x7k2p"], 200_000.0),
];

/// The simulated egress model; `spike_at` (unix seconds, 0 = never) can be set later.
#[derive(Debug, Default)]
pub struct EgressModel {
    spike_at: AtomicI64,
}

impl EgressModel {
    /// Starts the training namespace's bulk upload at `t`.
    pub fn spike_from(&self, t: i64) {
        self.spike_at.store(t, Ordering::Relaxed);
    }

    /// Bytes per second `pod` of `namespace` sends at `t`.
    pub fn rate(&self, namespace: &str, pod_index: usize, t: i64) -> f64 {
        let Some((_, _, base)) = NAMESPACES.iter().find(|(ns, _, _)| *ns == namespace) else {
            return 0.0;
        };
        let daily =
            1.0 + 0.3 * (2.0 * std::f64::consts::PI * t.rem_euclid(86_400) as f64 / 86_400.0).sin();
        let spike_at = self.spike_at.load(Ordering::Relaxed);
        // The compromised trainer is worker 2.
        let spike =
            if namespace == TRAINING_NAMESPACE && pod_index == 2 && spike_at > 0 && t >= spike_at {
                20.0
            } else {
                1.0
            };
        base * daily * spike
    }

    fn namespace_rate(&self, namespace: &str, t: i64) -> f64 {
        let pods = NAMESPACES
            .iter()
            .find(|(ns, _, _)| *ns == namespace)
            .map_or(0, |(_, p, _)| p.len());
        (0..pods).map(|i| self.rate(namespace, i, t)).sum()
    }
}

fn bad(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"status": "error", "errorType": "bad_data", "error": message})),
    )
        .into_response()
}

/// The series a query selects at `t`: (labels, value).
fn evaluate(model: &EgressModel, query: &str, t: i64) -> Option<Vec<(Value, f64)>> {
    let quoted = |after: &str| {
        query
            .split(after)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .map(str::to_owned)
    };
    if query.starts_with("topk by (namespace)") {
        let wanted = quoted("namespace=~\"").unwrap_or_default();
        let wanted: Vec<&str> = wanted.split('|').collect();
        let mut out = Vec::new();
        for (ns, pods, _) in NAMESPACES.iter().filter(|(ns, _, _)| wanted.contains(ns)) {
            for (i, pod) in pods.iter().enumerate() {
                out.push((json!({"namespace": ns, "pod": pod}), model.rate(ns, i, t)));
            }
        }
        return Some(out);
    }
    if query.starts_with("sum by (namespace) (rate(") {
        return Some(
            NAMESPACES
                .iter()
                .map(|(ns, _, _)| (json!({"namespace": ns}), model.namespace_rate(ns, t)))
                .collect(),
        );
    }
    if query.starts_with("sum(rate(") {
        let ns = quoted("namespace=\"")?;
        return Some(vec![(json!({}), model.namespace_rate(&ns, t))]);
    }
    None
}

fn number(params: &HashMap<String, String>, name: &str) -> Option<i64> {
    params.get(name)?.parse::<f64>().ok().map(|v| v as i64)
}

async fn instant(
    State(model): State<Arc<EgressModel>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let query = params.get("query").cloned().unwrap_or_default();
    let t =
        number(&params, "time").unwrap_or_else(|| crate::common::clock::now_ns() / 1_000_000_000);
    let Some(series) = evaluate(&model, &query, t) else {
        return bad(&format!("the demo endpoint does not evaluate {query:?}"));
    };
    let result: Vec<Value> = series
        .into_iter()
        .map(|(metric, v)| json!({"metric": metric, "value": [t, v.to_string()]}))
        .collect();
    Json(json!({"status": "success", "data": {"resultType": "vector", "result": result}}))
        .into_response()
}

async fn range(
    State(model): State<Arc<EgressModel>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let query = params.get("query").cloned().unwrap_or_default();
    let (Some(start), Some(end), Some(step)) = (
        number(&params, "start"),
        number(&params, "end"),
        number(&params, "step"),
    ) else {
        return bad("start, end and step are required");
    };
    if step <= 0 || (end - start) / step > 11_000 {
        return bad("exceeded maximum resolution of 11,000 points per timeseries");
    }
    let mut by_series: Vec<(Value, Vec<Value>)> = Vec::new();
    let mut t = start;
    while t <= end {
        let Some(series) = evaluate(&model, &query, t) else {
            return bad(&format!("the demo endpoint does not evaluate {query:?}"));
        };
        for (i, (metric, v)) in series.into_iter().enumerate() {
            if by_series.len() <= i {
                by_series.push((metric, Vec::new()));
            }
            by_series[i].1.push(json!([t, v.to_string()]));
        }
        t += step;
    }
    let result: Vec<Value> = by_series
        .into_iter()
        .map(|(metric, values)| json!({"metric": metric, "values": values}))
        .collect();
    Json(json!({"status": "success", "data": {"resultType": "matrix", "result": result}}))
        .into_response()
}

/// Serves the model on 127.0.0.1 (ephemeral port) until `stop` fires; returns the address.
pub async fn spawn_local(
    model: Arc<EgressModel>,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/api/v1/query", get(instant))
        .route("/api/v1/query_range", get(range))
        .route(
            "/-/ready",
            get(|| async { "Prometheus Server is Ready.\n" }),
        )
        .with_state(model);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok(addr)
}
