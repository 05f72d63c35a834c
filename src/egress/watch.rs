//! The egress task: every `prometheus.interval` it samples rates and baselines and sends the
//! detection engine an [`EgressReport`], which also feeds `/metrics` and the dashboards.
//!
//! A round that cannot get trustworthy numbers (Prometheus unreachable, erroring, returning
//! garbage, or no egress series at all while baselines exist) reports an error instead of
//! numbers: the engine raises no spike on it, and the baselines stay as they were.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::sampler::Sampler;
use crate::egress::baseline::Baseline;

/// Pods listed in a spike alert.
pub const TOP_PODS: usize = 5;

/// One namespace's egress now.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NamespaceEgress {
    /// The 10-minute rate, bytes per second; `None` when Prometheus has no value now.
    pub rate: Option<f64>,
    /// The 7-day hourly mean, bytes per second.
    pub baseline: Option<f64>,
    /// Whole hours of the last 7 days with a sample.
    pub coverage_hours: usize,
    /// The biggest senders, when the namespace is over the smallest spike factor.
    pub top_pods: Vec<(String, f64)>,
}

impl NamespaceEgress {
    /// Rate over baseline.
    pub fn ratio(&self) -> Option<f64> {
        match (self.rate, self.baseline) {
            (Some(r), Some(b)) if b > 0.0 => Some(r / b),
            _ => None,
        }
    }
}

/// One evaluation round.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EgressReport {
    /// Unix seconds the numbers are for.
    pub at: i64,
    pub namespaces: BTreeMap<String, NamespaceEgress>,
    /// Why this round has no numbers.
    pub error: Option<String>,
    /// The hourly samples behind the baselines, for dashboards.
    #[serde(skip)]
    pub baselines: Arc<BTreeMap<String, Baseline>>,
}

/// Samples and evaluates at `t`; namespaces above `top_factor` times their baseline get
/// their top pods.
pub async fn evaluate(sampler: &mut Sampler, t: i64, top_factor: f64) -> EgressReport {
    let mut report = EgressReport {
        at: t,
        ..EgressReport::default()
    };
    if let Err(e) = sampler.fill(t).await {
        report.error = Some(e.to_string());
        return report;
    }
    let current = match sampler.current(t as f64).await {
        Ok(c) => c,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    if current.is_empty() && !sampler.baselines().is_empty() {
        report.error = Some(format!(
            "prometheus returned no egress series for `{}`: stale or missing data",
            sampler.rate_query()
        ));
        return report;
    }
    report.baselines = sampler.baselines().clone();
    for (namespace, baseline) in sampler.baselines().iter() {
        let entry = report.namespaces.entry(namespace.clone()).or_default();
        entry.baseline = baseline.mean_at(t);
        entry.coverage_hours = baseline.coverage_hours(t);
    }
    for (namespace, rate) in current {
        report.namespaces.entry(namespace).or_default().rate = Some(rate);
    }
    let spiking: Vec<String> = report
        .namespaces
        .iter()
        .filter(|(_, e)| e.ratio().is_some_and(|r| r > top_factor))
        .map(|(ns, _)| ns.clone())
        .collect();
    match sampler.top_pods(&spiking, t as f64, TOP_PODS).await {
        Ok(top) => {
            for (namespace, pods) in top {
                report.namespaces.entry(namespace).or_default().top_pods = pods;
            }
        }
        Err(e) => tracing::warn!(namespaces = ?spiking, "egress: top pods unavailable: {e}"),
    }
    report
}

/// Evaluates every `interval` until `cancel` fires; each report goes to `tx` (the engine)
/// and `latest` (metrics, dashboards). `top_factor` follows the rule pack in force.
pub async fn run(
    mut sampler: Sampler,
    interval: Duration,
    top_factor: watch::Receiver<f64>,
    tx: mpsc::Sender<EgressReport>,
    latest: watch::Sender<Arc<EgressReport>>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let t = crate::common::clock::now_ns() / 1_000_000_000;
        let factor = *top_factor.borrow();
        let report = tokio::select! {
            () = cancel.cancelled() => return,
            report = evaluate(&mut sampler, t, factor) => report,
        };
        if let Some(e) = &report.error {
            tracing::warn!("egress: {e}");
        }
        latest.send_replace(Arc::new(report.clone()));
        if tx.send(report).await.is_err() {
            return;
        }
    }
}
