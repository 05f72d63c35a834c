//! The detection engine: every enabled rule's detector over the flow stream and the egress
//! reports, hits handed to the alert manager, and the manager's clock.
//!
//! Flows go to every [`FlowDetector`] (policy_denied, scan, new_destination, segmentation,
//! dns_exfiltration) and fill each volume-watched namespace's window of recent destinations;
//! lost events, node status and the stream's state go to the coverage detectors; egress
//! reports drive `volume_spike`. A Prometheus that stays unusable for
//! `blind_after` raises the `ExfilwatchBlind` alert (and no spike alert): an attacker must
//! not be able to hide a bulk upload by blinding the detector.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::FlowDetector;
use super::coverage::{Coverage, Gap};
use super::dns_exfil::DnsExfil;
use super::new_destination::NewDestination;
use super::policy_denied::PolicyDenied;
use super::scan::Scan;
use super::segmentation::Segmentation;
use super::volume_spike::{Decision, RecentDestinations, TOP_DESTINATIONS, VolumeSpike};
use crate::alert::Alert;
use crate::alert::manager::Manager;
use crate::alert::sink::DeliveryStats;
use crate::common::hash::FastMap;
use crate::egress::watch::EgressReport;
use crate::flow::destination::{DEFAULT_GROUPING, Destination, DestinationRef, Granularity};
use crate::flow::intern::SymList;
use crate::flow::{Event, TrafficDirection, Verdict};
use crate::rules::{Kind, Rule, Selector, SelectorMemo, Severity, VolumeSpikeParams};
use crate::source::StreamState;
use crate::state::Store;

/// The alert raised while Prometheus is unusable.
pub const BLIND_ALERT: &str = "ExfilwatchBlind";
/// Namespaces whose labels are remembered for label selectors.
const MAX_NAMESPACES: usize = 10_000;

/// Runs the detectors and owns the alert manager.
#[derive(Debug)]
pub struct Engine {
    /// A detector for every enabled rule that looks at flows, in the pack's order.
    flow: Vec<Box<dyn FlowDetector>>,
    volume: Vec<VolumeSpike>,
    manager: Manager,
    /// Counts store failures; each is logged, and the change is retried on the next tick.
    stats: Arc<DeliveryStats>,
    recent: RecentDestinations,
    namespace_labels: FastMap<String, SymList>,
    /// Whether the last flow's source endpoint is watched by a volume rule.
    volume_watched: SelectorMemo,
    blind_rule: Arc<Rule>,
    blind_after: Duration,
    blind_since: Option<Instant>,
    coverage: Vec<Coverage>,
    /// The Hubble stream's state, for the coverage detectors.
    stream: Option<watch::Receiver<StreamState>>,
    /// The pack in force, every rule, enabled or not.
    rules: Vec<Arc<Rule>>,
    /// Where `new_destination` detectors keep what they learn.
    store: Store,
    /// What other replicas' detectors learned (replicas sharing a bucket).
    learned: Option<crate::detect::SharedLearned>,
}

/// What a reload changed, by rule name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RuleChanges {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
}

impl std::fmt::Display for RuleChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} added {:?}, {} changed {:?}, {} removed {:?}, {} unchanged",
            self.added.len(),
            self.added,
            self.changed.len(),
            self.changed,
            self.removed.len(),
            self.removed,
            self.unchanged
        )
    }
}

impl RuleChanges {
    /// The difference from the pack `old` to the pack `new`.
    pub fn between(old: &[Arc<Rule>], new: &[Arc<Rule>]) -> RuleChanges {
        let mut changes = RuleChanges::default();
        for rule in new {
            match old.iter().find(|o| o.name == rule.name) {
                None => changes.added.push(rule.name.clone()),
                Some(o) if o.same_as(rule) => changes.unchanged += 1,
                Some(_) => changes.changed.push(rule.name.clone()),
            }
        }
        changes.removed = old
            .iter()
            .filter(|o| !new.iter().any(|r| r.name == o.name))
            .map(|o| o.name.clone())
            .collect();
        changes
    }
}

/// The detectors for the enabled `rules`, in the pack's order: a rule unchanged since `old`
/// keeps its detector and what that learned, any other gets a new one from `make`.
fn renew<D>(
    old: Vec<D>,
    rules: &[Arc<Rule>],
    rule_of: impl Fn(&D) -> &Rule,
    mut make: impl FnMut(Arc<Rule>) -> Option<D>,
) -> Vec<D> {
    let mut old: Vec<Option<D>> = old.into_iter().map(Some).collect();
    let mut detectors = Vec::new();
    for rule in rules.iter().filter(|r| r.enabled) {
        let kept = old
            .iter_mut()
            .find(|d| d.as_ref().is_some_and(|d| rule_of(d).same_as(rule)))
            .and_then(Option::take);
        if let Some(detector) = kept.or_else(|| make(rule.clone())) {
            detectors.push(detector);
        }
    }
    detectors
}

/// The built-in rule behind [`BLIND_ALERT`].
fn blind_rule() -> Rule {
    Rule {
        name: BLIND_ALERT.into(),
        kind: Kind::VolumeSpike(VolumeSpikeParams {
            model: crate::rules::BaselineModel::Mean,
            factor: 1.5,
            window: Duration::from_secs(600),
            baseline: Duration::from_secs(7 * 86_400),
            min_coverage: Duration::ZERO,
            floor_bytes_per_second: 0.0,
            hold_for: Duration::ZERO,
        }),
        enabled: true,
        namespaces: Selector::default(),
        severity: Severity::Warning,
        // Cleared explicitly when Prometheus answers again.
        resolve_after: Duration::from_secs(365 * 86_400),
        labels: fixed(&[("mitre_tactic", "TA0005"), ("mitre_technique", "T1562")]),
        annotations: fixed(&[(
            "mitre_attack",
            "Defense Evasion (TA0005): Impair Defenses (T1562)",
        )]),
        origin: "built-in".into(),
    }
}

/// Templates without placeholders, by name.
fn fixed(pairs: &[(&str, &str)]) -> BTreeMap<String, crate::rules::template::Template> {
    pairs
        .iter()
        .filter_map(|(k, v)| {
            Some((
                (*k).to_owned(),
                crate::rules::template::Template::parse(v).ok()?,
            ))
        })
        .collect()
}

/// The detector of `rule` when its kind looks at flows; a `new_destination` rule whose
/// learned history cannot be read stays off, with the reason logged.
fn flow_detector(rule: Arc<Rule>, store: &Store) -> Option<Box<dyn FlowDetector>> {
    Some(match rule.kind {
        Kind::PolicyDenied(_) => Box::new(PolicyDenied::new(rule)?),
        Kind::Scan(_) => Box::new(Scan::new(rule)?),
        Kind::Segmentation(_) => Box::new(Segmentation::new(rule)?),
        Kind::DnsExfiltration(_) => Box::new(DnsExfil::new(rule)?),
        Kind::NewDestination(_) => match NewDestination::new(rule.clone(), store.clone())? {
            Ok(d) => Box::new(d),
            Err(e) => {
                tracing::error!(rule = %rule.name, "cannot load what the rule learned, it stays off: {e}");
                return None;
            }
        },
        Kind::VolumeSpike(_) | Kind::Coverage(_) => return None,
    })
}

impl Engine {
    /// An engine for the enabled `rules`; `blind_after` is how long Prometheus may be
    /// unusable before the blind alert.
    pub fn new(
        rules: &[Arc<Rule>],
        manager: Manager,
        stats: Arc<DeliveryStats>,
        blind_after: Duration,
        store: &Store,
    ) -> Engine {
        let mut engine = Engine {
            flow: Vec::new(),
            volume: Vec::new(),
            manager,
            stats,
            recent: RecentDestinations::default(),
            namespace_labels: FastMap::default(),
            volume_watched: SelectorMemo::default(),
            blind_rule: Arc::new(blind_rule()),
            blind_after,
            blind_since: None,
            coverage: Vec::new(),
            stream: None,
            rules: Vec::new(),
            store: store.clone(),
            learned: None,
        };
        engine.build(rules);
        engine
    }

    /// Builds the detectors for `rules`, keeping those of unchanged rules.
    fn build(&mut self, rules: &[Arc<Rule>]) {
        let store = &self.store;
        self.flow = renew(
            std::mem::take(&mut self.flow),
            rules,
            |d| d.rule().as_ref(),
            |r| flow_detector(r, store),
        );
        self.volume = renew(
            std::mem::take(&mut self.volume),
            rules,
            |d| &d.rule,
            VolumeSpike::new,
        );
        // The volume rules may have changed: ask them again.
        self.volume_watched = SelectorMemo::default();
        self.coverage = renew(
            std::mem::take(&mut self.coverage),
            rules,
            |d| &d.rule,
            Coverage::new,
        );
        self.rules = rules.to_vec();
        if let Some(learned) = &self.learned {
            for d in &mut self.flow {
                d.share_learned(learned);
            }
        }
    }

    /// Has the detectors take in what other replicas learned, now and whenever it changes.
    pub fn share_learned(&mut self, learned: crate::detect::SharedLearned) {
        for d in &mut self.flow {
            d.share_learned(&learned);
        }
        self.learned = Some(learned);
    }

    /// Puts a new pack in force without losing alert state: unchanged rules keep their
    /// detectors and firing alerts, changed rules apply to the next flows (their alerts keep
    /// firing with their counts), removed or disabled rules' alerts resolve now.
    pub fn reload(&mut self, rules: &[Arc<Rule>]) -> RuleChanges {
        let changes = RuleChanges::between(&self.rules, rules);
        self.build(rules);
        if let Err(e) = self.manager.set_rules(rules) {
            self.failed(&e);
        }
        changes
    }

    /// The pack in force.
    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    /// Lets the coverage detectors watch the Hubble stream's state.
    pub fn watch_stream(&mut self, stream: watch::Receiver<StreamState>) {
        self.stream = Some(stream);
    }

    /// Acts on what a coverage detector found.
    fn coverage_gap(&mut self, rule: &Arc<Rule>, gap: Option<Gap>, now: Instant) {
        let result = match gap {
            None => return,
            Some(Gap::Raise { destination, extra }) => self.manager.raise(
                rule,
                "*",
                &Destination::Dependency(destination.into()),
                extra,
                now,
            ),
            Some(Gap::StreamBack) => self.manager.clear(
                &rule.name,
                "*",
                &Destination::Dependency("hubble-stream".into()),
            ),
        };
        if let Err(e) = result {
            self.failed(&e);
        }
    }

    /// How often [`Engine::tick`] should run: often enough for the shortest quiet period.
    pub fn tick_interval(rules: &[Arc<Rule>]) -> Duration {
        let shortest = rules
            .iter()
            .map(|r| r.resolve_after)
            .min()
            .unwrap_or(Duration::from_secs(4));
        (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// The smallest spike factor of the enabled volume rules (infinite when there are none).
    pub fn smallest_spike_factor(rules: &[Arc<Rule>]) -> f64 {
        rules
            .iter()
            .filter(|r| r.enabled)
            .filter_map(|r| match &r.kind {
                Kind::VolumeSpike(p) => Some(p.factor),
                _ => None,
            })
            .fold(f64::INFINITY, f64::min)
    }

    fn failed(&self, e: &crate::state::StateError) {
        store_failed(&self.stats, e);
    }

    /// Runs the flow detectors on one event.
    pub fn observe(&mut self, event: &Event, now: Instant) {
        let flow = match event {
            Event::Flow(flow) => flow,
            Event::Lost(lost) => {
                for i in 0..self.coverage.len() {
                    let gap = self.coverage[i].lost(lost, now);
                    let rule = self.coverage[i].rule.clone();
                    self.coverage_gap(&rule, gap, now);
                }
                return;
            }
            Event::NodeStatus(status) => {
                for i in 0..self.coverage.len() {
                    let gap = self.coverage[i].node_status(status);
                    let rule = self.coverage[i].rule.clone();
                    self.coverage_gap(&rule, gap, now);
                }
                return;
            }
            // The pipeline flushes the engine itself before the flow store's checkpoint.
            Event::Checkpoint(_) => return,
        };
        for detector in &mut self.flow {
            let hit = match detector.check(flow) {
                Ok(Some(hit)) => hit,
                Ok(None) => continue,
                Err(e) => {
                    store_failed(&self.stats, &e);
                    continue;
                }
            };
            let (rule, samples) = (detector.rule(), detector.samples());
            if let Err(e) = self.manager.hit(rule, hit, flow, samples, now) {
                store_failed(&self.stats, &e);
            }
        }
        if self.volume.is_empty() || flow.source.namespace.is_empty() {
            return;
        }
        let (ns, labels) = (&flow.source.namespace, &flow.source.labels);
        // Once per endpoint in a row: its namespace's labels noted, the volume rules asked.
        let (volume, namespace_labels) = (&self.volume, &mut self.namespace_labels);
        let watched = self.volume_watched.answer(ns, labels, || {
            if !namespace_labels.contains_key(&**ns) && namespace_labels.len() < MAX_NAMESPACES {
                namespace_labels.insert(ns.to_string(), labels.clone());
            }
            volume.iter().any(|d| d.rule.namespaces.matches(ns, labels))
        });
        // Only forwarded flows carried the bytes a spike counts.
        let outgoing = flow.verdict == Verdict::Forwarded
            && flow.direction != TrafficDirection::Ingress
            && flow.is_reply != Some(true);
        if outgoing && watched {
            let key = flow.destination_key(Granularity::Exact);
            let label = || DestinationRef::of(flow, DEFAULT_GROUPING).to_string();
            self.recent
                .record(&flow.source.namespace, label, key, flow.time_ns, 10);
        }
    }

    /// Evaluates the volume rules on an egress report, or counts the time Prometheus has
    /// been unusable.
    pub fn egress(&mut self, report: &EgressReport, now: Instant) {
        let blind_target = Destination::Dependency("prometheus".into());
        if let Some(error) = &report.error {
            let since = *self.blind_since.get_or_insert(now);
            if now.duration_since(since) >= self.blind_after {
                let mut extra = BTreeMap::new();
                extra.insert("summary".into(), "exfilwatch cannot read egress volume from Prometheus: volume spikes go undetected".into());
                extra.insert(
                    "description".into(),
                    format!("For {:?} Prometheus has been unreachable or unusable, so no volume-spike rule is evaluated and baselines are not updated. Last error: {error}", now.duration_since(since)),
                );
                extra.insert("error".into(), error.clone());
                let rule = self.blind_rule.clone();
                if let Err(e) = self.manager.raise(&rule, "*", &blind_target, extra, now) {
                    self.failed(&e);
                }
            }
            return;
        }
        if self.blind_since.take().is_some()
            && let Err(e) = self.manager.clear(BLIND_ALERT, "*", &blind_target)
        {
            self.failed(&e);
        }
        let mut decisions = Vec::new();
        for detector in &mut self.volume {
            for (namespace, egress) in &report.namespaces {
                let labels = self
                    .namespace_labels
                    .get(namespace)
                    .map(|l| &l[..])
                    .unwrap_or(&[]);
                if !detector.rule.namespaces.matches(namespace, labels) {
                    continue;
                }
                let top = self.recent.top(namespace, TOP_DESTINATIONS);
                let history = report.baselines.get(namespace);
                let decision = detector.evaluate(namespace, egress, history, report.at, &top, now);
                decisions.push((detector.rule.clone(), namespace.clone(), decision));
            }
        }
        for (rule, namespace, decision) in decisions {
            let result = match decision {
                Decision::Raise(extra) => {
                    self.manager
                        .raise(&rule, &namespace, &Destination::All, extra, now)
                }
                Decision::Clear => self
                    .manager
                    .clear(&rule.name, &namespace, &Destination::All),
                Decision::Keep => Ok(()),
            };
            if let Err(e) = result {
                self.failed(&e);
            }
        }
    }

    /// Resolves and re-sends alerts as their timers say.
    pub fn tick(&mut self, now: Instant) {
        if let Some(stream) = &self.stream {
            let state = stream.borrow().clone();
            let (up, error) = match &state {
                StreamState::Streaming => (true, String::new()),
                StreamState::Connecting => (false, "connecting".to_owned()),
                StreamState::Retrying { error } => (false, error.clone()),
                StreamState::Stopped { error } => {
                    (false, error.clone().unwrap_or_else(|| "stopped".into()))
                }
            };
            for i in 0..self.coverage.len() {
                let gap = self.coverage[i].stream(up, &error, now);
                let rule = self.coverage[i].rule.clone();
                self.coverage_gap(&rule, gap, now);
            }
        }
        if let Err(e) = self.manager.tick(now) {
            self.failed(&e);
        }
    }

    /// Commits the grown context of every firing alert now (see [`Manager::flush`]); false
    /// when the alert store refused (counted and logged), so what made the alerts is not
    /// called durable.
    pub fn flush(&mut self, now: Instant) -> bool {
        match self.manager.flush(now) {
            Ok(()) => true,
            Err(e) => {
                self.failed(&e);
                false
            }
        }
    }

    /// Alerts firing now, sorted by rule, namespace and destination.
    pub fn firing(&self) -> Vec<Alert> {
        let mut alerts: Vec<Alert> = self.manager.firing().collect();
        alerts.sort_by(|a, b| (&a.rule, &a.labels).cmp(&(&b.rule, &b.labels)));
        alerts
    }
}

fn store_failed(stats: &DeliveryStats, e: &crate::state::StateError) {
    stats.store_errors.fetch_add(1, Ordering::Relaxed);
    tracing::error!("alerts: {e}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{LostEvent, LostEventSource};
    use crate::rules::default_pack;
    use crate::state::Store;

    fn engine() -> Engine {
        let store = Store::in_memory().unwrap();
        crate::detect::testing::engine(&store, Arc::new(DeliveryStats::default()))
    }

    fn gaps(engine: &Engine) -> Vec<String> {
        engine
            .firing()
            .into_iter()
            .filter(|a| a.rule == "ExfilwatchCoverageGap")
            .map(|a| a.labels["destination"].clone())
            .collect()
    }

    #[test]
    fn a_reload_tells_added_changed_removed_and_unchanged_rules_apart() {
        let old: Vec<Arc<Rule>> = default_pack().unwrap().into_iter().map(Arc::new).collect();
        let mut new: Vec<Arc<Rule>> = old[1..].to_vec();
        // Moved in its file: the same rule.
        let mut moved = (*new[0]).clone();
        moved.origin = "elsewhere.yaml:99".into();
        new[0] = Arc::new(moved);
        let mut tuned = (*new[1]).clone();
        tuned.resolve_after = Duration::from_secs(1);
        new[1] = Arc::new(tuned);
        let mut added = (*old[0]).clone();
        added.name = "Added".into();
        new.push(Arc::new(added));
        let changes = RuleChanges::between(&old, &new);
        assert_eq!(changes.added, ["Added"]);
        assert_eq!(changes.changed, [old[2].name.clone()]);
        assert_eq!(changes.removed, [old[0].name.clone()]);
        assert_eq!(changes.unchanged, old.len() - 2);
    }

    #[tokio::test]
    async fn a_stream_down_for_long_is_a_coverage_alert_until_it_returns() {
        let mut engine = engine();
        let (state, rx) = watch::channel(StreamState::Retrying {
            error: "connection refused".into(),
        });
        engine.watch_stream(rx);
        let t = Instant::now();
        engine.tick(t);
        assert!(gaps(&engine).is_empty());
        engine.tick(t + Duration::from_secs(121));
        assert_eq!(gaps(&engine), ["hubble-stream"]);
        state.send_replace(StreamState::Streaming);
        engine.tick(t + Duration::from_secs(125));
        assert!(gaps(&engine).is_empty());
    }

    #[tokio::test]
    async fn a_flood_of_lost_events_is_a_coverage_alert() {
        let mut engine = engine();
        let lost = LostEvent {
            source: LostEventSource::HubbleRingBuffer,
            count: 5000,
            cpu: None,
            first_ns: None,
            last_ns: None,
            node: "gpu-node-a".into(),
        };
        engine.observe(&Event::Lost(lost), Instant::now());
        assert_eq!(gaps(&engine), ["hubble"]);
        let alert = engine
            .firing()
            .into_iter()
            .find(|a| a.rule == "ExfilwatchCoverageGap")
            .unwrap();
        assert_eq!(
            alert.annotations["lost_by_source"],
            "HUBBLE_RING_BUFFER: 5000"
        );
    }
}
