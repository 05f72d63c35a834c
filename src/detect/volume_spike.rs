//! The `volume_spike` detector: a namespace's 10-minute egress rate above `factor` times its
//! 7-day baseline (the guide's second rule), for `for`, above an absolute floor, once the
//! baseline covers `min_coverage`. It resolves as soon as the ratio falls back.
//!
//! The alert joins both sources: the numbers and the top pods from Prometheus, and the top
//! destinations from the Hubble flows of the same 10 minutes ([`RecentDestinations`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use tokio::time::Instant;

use crate::common::hash::KeyMap;
use crate::egress::baseline::Baseline;
use crate::egress::watch::NamespaceEgress;
use crate::flow::intern::{Slots, Sym};
use crate::rules::{BaselineModel, Kind, Rule, VolumeSpikeParams};

/// Distinct destinations counted per namespace per minute; more are counted as "(other)".
const MAX_DESTINATIONS: usize = 1000;
/// Destinations listed in a spike alert.
pub const TOP_DESTINATIONS: usize = 5;

/// What to do with a namespace's spike alert.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Fire, or keep firing, with these annotations.
    Raise(BTreeMap<String, String>),
    /// The condition does not hold: resolve if firing.
    Clear,
    /// No data, or the condition has not held for `for` yet: leave things as they are.
    Keep,
}

/// Bytes per second, readable.
pub fn human_rate(bytes_per_second: f64) -> String {
    let units = ["B/s", "kB/s", "MB/s", "GB/s", "TB/s"];
    let mut v = bytes_per_second;
    let mut unit = 0;
    while v >= 1000.0 && unit < units.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", units[unit])
}

/// One `volume_spike` rule's detector.
#[derive(Debug)]
pub struct VolumeSpike {
    pub rule: Arc<Rule>,
    params: VolumeSpikeParams,
    over_since: HashMap<String, Instant>,
}

impl VolumeSpike {
    pub fn new(rule: Arc<Rule>) -> Option<VolumeSpike> {
        let Kind::VolumeSpike(params) = &rule.kind else {
            return None;
        };
        let params = params.clone();
        Some(VolumeSpike {
            rule,
            params,
            over_since: HashMap::new(),
        })
    }

    /// The spike factor.
    pub fn factor(&self) -> f64 {
        self.params.factor
    }

    /// Decides for one namespace at `at`; `history` holds its hourly samples (the mean model
    /// only needs `egress.baseline`).
    pub fn evaluate(
        &mut self,
        namespace: &str,
        egress: &NamespaceEgress,
        history: Option<&Baseline>,
        at: i64,
        destinations: &[(String, u64)],
        now: Instant,
    ) -> Decision {
        let Some(rate) = egress.rate else {
            return Decision::Keep;
        };
        let (baseline, spread_ok) = match self.params.model {
            BaselineModel::Mean => (egress.baseline, true),
            BaselineModel::HourOfWeek => (history.and_then(|h| h.hour_of_week_at(at)), true),
            BaselineModel::MedianMad { threshold } => {
                match history.and_then(|h| h.median_mad_at(at)) {
                    Some((median, mad)) => (
                        Some(median),
                        mad == 0.0 || (rate - median) / (1.4826 * mad) > threshold,
                    ),
                    None => (None, false),
                }
            }
        };
        let Some(baseline) = baseline else {
            return Decision::Keep;
        };
        let min_hours = (self.params.min_coverage.as_secs() / 3600) as usize;
        let exceeded = egress.coverage_hours >= min_hours
            && spread_ok
            && rate > self.params.factor * baseline
            && rate >= self.params.floor_bytes_per_second;
        if !exceeded {
            self.over_since.remove(namespace);
            return Decision::Clear;
        }
        let since = *self.over_since.entry(namespace.to_owned()).or_insert(now);
        if now.duration_since(since) < self.params.hold_for {
            return Decision::Keep;
        }
        let ratio = if baseline > 0.0 {
            rate / baseline
        } else {
            f64::INFINITY
        };
        let pods = egress
            .top_pods
            .iter()
            .map(|(p, r)| format!("{namespace}/{p} ({})", human_rate(*r)))
            .collect::<Vec<_>>()
            .join(", ");
        let dests = destinations
            .iter()
            .map(|(d, n)| format!("{d} ({n} flows)"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut extra = BTreeMap::new();
        extra.insert("current_rate".into(), format!("{rate:.0}"));
        extra.insert("baseline".into(), format!("{baseline:.0}"));
        extra.insert("ratio".into(), format!("{ratio:.2}"));
        extra.insert("factor".into(), self.params.factor.to_string());
        extra.insert("model".into(), self.params.model.name().into());
        extra.insert(
            "coverage".into(),
            format!("{} hourly samples in 7 days", egress.coverage_hours),
        );
        if !pods.is_empty() {
            extra.insert("top_pods".into(), pods.clone());
        }
        if !dests.is_empty() {
            extra.insert("top_destinations".into(), dests.clone());
        }
        extra.insert(
            "summary".into(),
            format!(
                "{namespace}: egress {ratio:.1}x its 7-day average ({} against {})",
                human_rate(rate),
                human_rate(baseline)
            ),
        );
        extra.insert(
            "description".into(),
            format!(
                "Namespace {namespace} sent {} over the last 10 minutes, {ratio:.2} times its 7-day hourly average of {} (threshold {}x, baseline of {} hourly samples). Top senders: {}. Destinations seen by Hubble in the same window: {}.",
                human_rate(rate),
                human_rate(baseline),
                self.params.factor,
                egress.coverage_hours,
                if pods.is_empty() { "unknown".into() } else { pods },
                if dests.is_empty() { "none observed".into() } else { dests },
            ),
        );
        Decision::Raise(extra)
    }
}

/// Flows per destination in one minute (minutes since the epoch): key to (count, label).
type MinuteCounts = (i64, KeyMap<(u64, String)>);

/// Per namespace, the destinations of its egress flows over the last minutes, in per-minute
/// buckets; bounded in minutes and in distinct destinations per minute.
#[derive(Debug, Default)]
pub struct RecentDestinations {
    by_namespace: Slots<VecDeque<MinuteCounts>>,
}

impl RecentDestinations {
    /// Counts a flow from `namespace` to the destination `label` names at `time_ns`, keeping
    /// `minutes`. `label` runs only for a destination new in its minute.
    pub fn record(
        &mut self,
        namespace: &Sym,
        label: impl FnOnce() -> String,
        key: u64,
        time_ns: i64,
        minutes: i64,
    ) {
        let minute = time_ns.div_euclid(60_000_000_000);
        let buckets = self.by_namespace.get_or_default(namespace);
        if buckets.back().is_none_or(|(m, _)| *m < minute) {
            buckets.push_back((minute, KeyMap::default()));
        }
        while buckets.front().is_some_and(|(m, _)| *m <= minute - minutes) {
            buckets.pop_front();
        }
        let Some((_, counts)) = buckets.iter_mut().rev().find(|(m, _)| *m <= minute) else {
            return;
        };
        let full = counts.len() >= MAX_DESTINATIONS;
        match counts.get_mut(&key) {
            Some((n, _)) => *n += 1,
            None if full => counts.entry(0).or_insert_with(|| (0, "(other)".into())).0 += 1,
            None => {
                counts.insert(key, (1, label()));
            }
        }
    }

    /// The `n` most frequent destinations of `namespace` in the minutes kept.
    pub fn top(&self, namespace: &str, n: usize) -> Vec<(String, u64)> {
        let mut total: HashMap<&str, u64> = HashMap::new();
        for (_, counts) in self.by_namespace.get(namespace).into_iter().flatten() {
            for (c, d) in counts.values() {
                *total.entry(d).or_default() += c;
            }
        }
        let mut top: Vec<(String, u64)> =
            total.into_iter().map(|(d, c)| (d.to_owned(), c)).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(n);
        top
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testing::rule_in;
    use std::time::Duration;

    fn detector(hold: &str) -> VolumeSpike {
        let pack = crate::rules::DEFAULT_PACK.replace("for: 0s", &format!("for: {hold}"));
        VolumeSpike::new(rule_in(&pack, "TrainingDataEgressVolumeSpike")).unwrap()
    }

    fn egress(rate: f64, baseline: f64, hours: usize) -> NamespaceEgress {
        NamespaceEgress {
            rate: Some(rate),
            baseline: Some(baseline),
            coverage_hours: hours,
            top_pods: vec![("w-0".into(), rate)],
        }
    }

    #[test]
    fn fires_above_one_and_a_half_times_the_baseline_with_enough_coverage() {
        let mut d = detector("0s");
        let now = Instant::now();
        let Decision::Raise(extra) = d.evaluate(
            "ai-training",
            &egress(151.0, 100.0, 168),
            None,
            0,
            &[("s3".into(), 9)],
            now,
        ) else {
            panic!()
        };
        assert_eq!(extra["ratio"], "1.51");
        assert_eq!(extra["top_pods"], "ai-training/w-0 (151.0 B/s)");
        assert_eq!(extra["top_destinations"], "s3 (9 flows)");
        assert_eq!(
            d.evaluate("ai-training", &egress(150.0, 100.0, 168), None, 0, &[], now),
            Decision::Clear
        );
        assert_eq!(
            d.evaluate("ai-training", &egress(900.0, 100.0, 71), None, 0, &[], now),
            Decision::Clear,
            "under 3 days of hours"
        );
        let no_rate = NamespaceEgress {
            rate: None,
            ..egress(0.0, 100.0, 168)
        };
        assert_eq!(
            d.evaluate("ai-training", &no_rate, None, 0, &[], now),
            Decision::Keep,
            "no data, no decision"
        );
    }

    #[test]
    fn for_holds_the_alert_until_the_condition_lasted() {
        let mut d = detector("5m");
        let now = Instant::now();
        assert_eq!(
            d.evaluate("ns", &egress(500.0, 100.0, 168), None, 0, &[], now),
            Decision::Keep
        );
        assert!(matches!(
            d.evaluate(
                "ns",
                &egress(500.0, 100.0, 168),
                None,
                0,
                &[],
                now + Duration::from_secs(300)
            ),
            Decision::Raise(_)
        ));
    }

    fn with_model(model: &str) -> VolumeSpike {
        let pack = crate::rules::DEFAULT_PACK
            .replace("factor: 1.5", &format!("factor: 1.5\n    model: {model}"));
        VolumeSpike::new(rule_in(&pack, "TrainingDataEgressVolumeSpike")).unwrap()
    }

    #[test]
    fn the_seasonal_model_expects_this_hours_usual_busyness() {
        let mut d = with_model("hour_of_week");
        let mut h = Baseline::default();
        let t = 10_000 * 3600 + 1800;
        for k in 0..(5 * 168) {
            let hour = crate::egress::baseline::hour_floor(t) - k * 3600;
            h.insert(hour, if k % 168 == 0 { 1000.0 } else { 100.0 });
        }
        let now = Instant::now();
        // 900 B/s is 9x the weekly mean but normal for this hour of the week.
        assert_eq!(
            d.evaluate("ns", &egress(900.0, 100.0, 168), Some(&h), t, &[], now),
            Decision::Clear
        );
        assert!(matches!(
            d.evaluate("ns", &egress(1600.0, 100.0, 168), Some(&h), t, &[], now),
            Decision::Raise(_)
        ));
    }

    #[test]
    fn the_median_model_needs_a_robust_outlier() {
        let mut d = with_model("median_mad");
        let mut h = Baseline::default();
        for k in 0..168 {
            h.insert(k * 3600, 100.0 + (k % 40) as f64);
        }
        let now = Instant::now();
        let t = 167 * 3600;
        // 1.6x the median but within the usual spread? The spread here is ~10 B/s: 200 is far out.
        assert!(matches!(
            d.evaluate("ns", &egress(250.0, 120.0, 168), Some(&h), t, &[], now),
            Decision::Raise(_)
        ));
        let mut noisy = Baseline::default();
        for k in 0..168 {
            noisy.insert(k * 3600, if k % 2 == 0 { 20.0 } else { 200.0 });
        }
        assert_eq!(
            d.evaluate("ns", &egress(250.0, 110.0, 168), Some(&noisy), t, &[], now),
            Decision::Clear,
            "within 3 robust deviations"
        );
    }

    #[test]
    fn recent_destinations_keep_the_window_and_rank() {
        let mut r = RecentDestinations::default();
        let minute = 60_000_000_000i64;
        let ns: Sym = "ns".into();
        r.record(&ns, || "old.example".into(), 1, 0, 10);
        for _ in 0..3 {
            r.record(&ns, || "s3".into(), 2, 20 * minute, 10);
        }
        r.record(&ns, || "minio".into(), 3, 20 * minute + 1, 10);
        assert_eq!(
            r.top("ns", 5),
            [("s3".to_owned(), 3), ("minio".to_owned(), 1)]
        );
        assert_eq!(human_rate(1_234_567.0), "1.2 MB/s");
    }
}
