//! Current rates and hourly baseline samples per namespace, from Prometheus.
//!
//! [`Sampler::fill`] makes sure every whole hour of the last 7 days has been sampled: the
//! hours not yet recorded (all of them on a fresh install, the gap after a restart, the new
//! hour in steady state) are fetched with one `query_range` at a 1-hour step aligned to whole
//! hours, saved to the store and marked done. An hour is only marked once Prometheus answered
//! for it, so a blind Prometheus leaves a gap to fill later, never a wrong sample.
//! [`Sampler::current`] evaluates the rate at a given time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::prometheus::{PromError, Prometheus};
use crate::egress::baseline::{Baseline, HOUR, RETAIN, hour_ceil, hour_floor};
use crate::state::{StateError, Store};

/// The egress counter cAdvisor exports.
pub const EGRESS_METRIC: &str = "container_network_transmit_bytes_total";

/// Recent hours whose answer held no usable number are asked again for this many hours.
const RETRY_EMPTY_HOURS: i64 = 3;

/// `selector` (label matchers in braces, or empty) narrowed to one namespace.
pub fn namespace_selector(selector: &str, namespace: &str) -> String {
    let value = crate::common::text::quoted(namespace);
    match selector.strip_suffix('}') {
        Some(open) if open.len() > 1 => format!("{open},namespace={value}}}"),
        _ => format!("{{namespace={value}}}"),
    }
}

/// `text` as a literal inside a PromQL regular expression (in a double-quoted string).
fn regex_escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push_str("\\\\");
        } else if c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Why sampling failed.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error(transparent)]
    Prometheus(#[from] PromError),
    #[error(transparent)]
    Store(#[from] StateError),
}

/// What one [`Sampler::fill`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filled {
    /// Whole hours newly sampled.
    pub hours: usize,
    /// Range queries sent.
    pub queries: usize,
}

/// Samples the egress rate of every namespace.
#[derive(Debug)]
pub struct Sampler {
    prometheus: Prometheus,
    rate_query: String,
    selector: String,
    store: Store,
    /// Shared with the reports; replaced copy-on-write when an hour is added.
    baselines: Arc<BTreeMap<String, Baseline>>,
    done_hours: BTreeSet<i64>,
    /// Samples Prometheus returned as NaN or ±Inf (never used).
    pub non_finite: AtomicU64,
}

impl Sampler {
    /// `selector` narrows the counter's series, e.g. `{interface!="lo"}` (empty: all).
    /// Baselines saved by an earlier run are loaded from `store`.
    pub fn new(
        prometheus: Prometheus,
        selector: &str,
        store: Store,
    ) -> Result<Sampler, StateError> {
        let rate_query = format!("sum by (namespace) (rate({EGRESS_METRIC}{selector}[10m]))");
        let selector = selector.to_owned();
        let mut baselines: BTreeMap<String, Baseline> = BTreeMap::new();
        for (namespace, hour, rate) in store.baseline_samples()? {
            baselines.entry(namespace).or_default().insert(hour, rate);
        }
        let done_hours = store.baseline_hours()?.into_iter().collect();
        Ok(Sampler {
            prometheus,
            rate_query,
            selector,
            store,
            baselines: Arc::new(baselines),
            done_hours,
            non_finite: AtomicU64::new(0),
        })
    }

    /// The PromQL of the per-namespace rate.
    pub fn rate_query(&self) -> &str {
        &self.rate_query
    }

    pub fn baselines(&self) -> &Arc<BTreeMap<String, Baseline>> {
        &self.baselines
    }

    /// Samples every whole hour kept (the 8 days before `t`) that is not sampled yet.
    pub async fn fill(&mut self, t: i64) -> Result<Filled, SampleError> {
        let first = hour_ceil(t - RETAIN);
        // The hour's rate is final once its 10-minute window has passed.
        let last = hour_floor(t);
        let missing: Vec<i64> = (0..)
            .map(|k| first + k * HOUR)
            .take_while(|h| *h <= last)
            .filter(|h| !self.done_hours.contains(h))
            .collect();
        let (Some(&from), Some(&to)) = (missing.first(), missing.last()) else {
            return Ok(Filled::default());
        };
        let (series, dropped) = self
            .prometheus
            .range(&self.rate_query, from, to, HOUR)
            .await?;
        self.non_finite.fetch_add(dropped as u64, Ordering::Relaxed);
        let wanted: BTreeSet<i64> = missing.iter().copied().collect();
        let mut answered: BTreeSet<i64> = BTreeSet::new();
        let mut rows = Vec::new();
        let baselines = Arc::make_mut(&mut self.baselines);
        for s in series {
            let namespace = s.labels.get("namespace").cloned().unwrap_or_default();
            if namespace.is_empty() {
                continue;
            }
            let baseline = baselines.entry(namespace.clone()).or_default();
            for (hour, rate) in s.points {
                if wanted.contains(&hour) {
                    baseline.insert(hour, rate);
                    rows.push((namespace.clone(), hour, rate));
                    answered.insert(hour);
                }
            }
        }
        // An answer without a single usable number for a recent hour (an empty result, only
        // NaN) is not taken as the hour's truth: it is asked again next round. Older hours
        // without data are gaps in Prometheus's history and are settled as such.
        let settled: Vec<i64> = missing
            .iter()
            .copied()
            .filter(|h| answered.contains(h) || *h < last - RETRY_EMPTY_HOURS * HOUR)
            .collect();
        self.store
            .save_baseline_samples(&rows, &settled, t - RETAIN - HOUR)?;
        self.done_hours.extend(settled.iter().copied());
        self.done_hours = self.done_hours.split_off(&(t - RETAIN - HOUR));
        for baseline in baselines.values_mut() {
            baseline.prune(t);
        }
        baselines.retain(|_, b| !b.is_empty());
        Ok(Filled {
            hours: settled.len(),
            queries: 1,
        })
    }

    /// For each of `namespaces`, its `n` pods sending the most at `t` (bytes per second,
    /// biggest first), in one query.
    pub async fn top_pods(
        &self,
        namespaces: &[String],
        t: f64,
        n: usize,
    ) -> Result<BTreeMap<String, Vec<(String, f64)>>, PromError> {
        if namespaces.is_empty() {
            return Ok(BTreeMap::new());
        }
        let alternatives: Vec<String> = namespaces.iter().map(|ns| regex_escape(ns)).collect();
        let matchers = namespace_selector(&self.selector, "").replace(
            "namespace=\"\"",
            &format!("namespace=~\"{}\"", alternatives.join("|")),
        );
        let query = format!(
            "topk by (namespace) ({n}, sum by (namespace, pod) (rate({EGRESS_METRIC}{matchers}[10m])))"
        );
        let (samples, _) = self.prometheus.instant(&query, t).await?;
        let mut out: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
        for s in samples {
            if let (Some(ns), Some(pod)) = (s.labels.get("namespace"), s.labels.get("pod")) {
                out.entry(ns.clone())
                    .or_default()
                    .push((pod.clone(), s.value));
            }
        }
        for pods in out.values_mut() {
            pods.sort_by(|a, b| b.1.total_cmp(&a.1));
        }
        Ok(out)
    }

    /// Every namespace's 10-minute egress rate at `t`, bytes per second.
    pub async fn current(&self, t: f64) -> Result<BTreeMap<String, f64>, PromError> {
        let (samples, dropped) = self.prometheus.instant(&self.rate_query, t).await?;
        self.non_finite.fetch_add(dropped as u64, Ordering::Relaxed);
        Ok(samples
            .into_iter()
            .filter_map(|s| Some((s.labels.get("namespace")?.clone(), s.value)))
            .collect())
    }
}
