//! Joins flow sources to what consumes their events.
//!
//! Sources send [`Event`]s into one bounded channel (backpressure, never an unbounded queue);
//! the consumer here folds them into a [`Summary`]: flows per verdict, namespace and drop
//! reason, lost events per source (the visibility gaps), and the policy-denied flows leaving
//! watched namespaces. The detection engine attaches to the same channel when it lands.

use std::collections::HashMap;
use std::fmt::Write as _;

use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::detect::engine::Engine;
use crate::egress::watch::EgressReport;

use crate::flow::{Event, FlowEvent, Verdict};
use crate::intern::Sym;

/// Events waiting between sources and consumers before sources have to wait.
pub const CHANNEL_CAPACITY: usize = 8192;

/// Drop reasons that mean "a network policy refused this": POLICY_DENIED (no allow rule
/// matched), POLICY_DENY (an explicit deny rule), AUTH_REQUIRED (mutual auth missing).
pub const POLICY_DROP_REASONS: [u32; 3] = [133, 181, 189];

/// Largest number of distinct keys a summary table keeps; the rest is counted as "(other)".
const MAX_KEYS: usize = 10_000;

/// Where a flow was going, in the most telling form known: FQDN, namespace/pod, or IP.
pub fn destination_label(flow: &FlowEvent) -> String {
    let port = flow.destination.port;
    let proto = flow.protocol.as_str();
    let target = if let Some(name) = flow.destination_names.first() {
        name.to_string()
    } else if !flow.destination.namespace.is_empty() {
        format!("{}/{}", flow.destination.namespace, flow.destination.pod)
    } else {
        flow.destination
            .ip
            .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
    };
    if port == 0 {
        format!("{target} {proto}")
    } else {
        format!("{target}:{port}/{proto}")
    }
}

/// Counts of what flowed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    pub flows: u64,
    pub by_verdict: Counts<&'static str>,
    /// Flows touching each namespace (as source or destination, counted once).
    pub by_namespace: Counts<Sym>,
    pub by_drop_reason: Counts<&'static str>,
    /// Events Hubble reported lost, by source.
    pub lost_events: Counts<&'static str>,
    pub node_status: u64,
    /// Time of the newest flow, nanoseconds since the epoch.
    pub last_flow_ns: i64,
    /// Policy-denied flows from watched namespaces, by "namespace/pod -> destination".
    pub denied: Counts<String>,
    #[serde(skip)]
    watched: Vec<String>,
}

/// Counts keyed by `K`, hashed with foldhash (the summary sits on the per-flow path).
pub type Counts<K> = HashMap<K, u64, foldhash::fast::RandomState>;

fn bump<K: std::hash::Hash + Eq>(map: &mut Counts<K>, key: K, other: impl FnOnce() -> K) {
    if let Some(n) = map.get_mut(&key) {
        *n += 1;
    } else if map.len() >= MAX_KEYS {
        *map.entry(other()).or_default() += 1;
    } else {
        map.insert(key, 1);
    }
}

impl Summary {
    /// A summary that singles out denied flows from `watched` namespaces (all when empty).
    pub fn new(watched: &[String]) -> Summary {
        Summary {
            watched: watched.to_vec(),
            ..Default::default()
        }
    }

    fn is_watched(&self, namespace: &str) -> bool {
        !namespace.is_empty()
            && (self.watched.is_empty() || self.watched.iter().any(|w| w == namespace))
    }

    /// True for a flow a network policy refused, leaving a watched namespace.
    pub fn is_watched_denial(&self, flow: &FlowEvent) -> bool {
        matches!(flow.verdict, Verdict::Dropped | Verdict::Audit)
            && POLICY_DROP_REASONS.contains(&flow.drop_reason)
            && self.is_watched(&flow.source.namespace)
    }

    /// Folds one event in.
    pub fn add(&mut self, event: &Event) {
        match event {
            Event::Flow(flow) => {
                self.flows += 1;
                self.last_flow_ns = self.last_flow_ns.max(flow.time_ns);
                bump(
                    &mut self.by_verdict,
                    flow.verdict.as_str_name(),
                    || "(other)",
                );
                let (src, dst) = (&flow.source.namespace, &flow.destination.namespace);
                if !src.is_empty() {
                    bump(&mut self.by_namespace, src.clone(), || "(other)".into());
                }
                if !dst.is_empty() && dst != src {
                    bump(&mut self.by_namespace, dst.clone(), || "(other)".into());
                }
                if flow.verdict == Verdict::Dropped {
                    let reason = match flow.drop_reason_name() {
                        "" => "(unknown code)",
                        name => name,
                    };
                    bump(&mut self.by_drop_reason, reason, || "(other)");
                }
                if self.is_watched_denial(flow) {
                    let key = format!(
                        "{}/{} -> {}",
                        flow.source.namespace,
                        flow.source.pod,
                        destination_label(flow)
                    );
                    bump(&mut self.denied, key, || "(other)".into());
                }
            }
            Event::Lost(lost) => {
                *self
                    .lost_events
                    .entry(lost.source.as_str_name())
                    .or_default() += lost.count;
            }
            Event::NodeStatus(_) => self.node_status += 1,
        }
    }

    /// The summary as aligned text tables, biggest counts first.
    pub fn to_table(&self, extra: &[(&str, u64)]) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "flows: {}", self.flows);
        for (name, value) in extra {
            let _ = writeln!(out, "{name}: {value}");
        }
        table(
            &mut out,
            "verdict",
            self.by_verdict.iter().map(|(k, v)| (k.to_string(), *v)),
        );
        table(
            &mut out,
            "namespace",
            self.by_namespace.iter().map(|(k, v)| (k.to_string(), *v)),
        );
        table(
            &mut out,
            "drop reason",
            self.by_drop_reason.iter().map(|(k, v)| (k.to_string(), *v)),
        );
        table(
            &mut out,
            "lost events (source)",
            self.lost_events.iter().map(|(k, v)| (k.to_string(), *v)),
        );
        table(
            &mut out,
            "policy-denied from watched namespaces",
            self.denied.iter().map(|(k, v)| (k.clone(), *v)),
        );
        out
    }
}

fn table(out: &mut String, title: &str, rows: impl Iterator<Item = (String, u64)>) {
    let mut rows: Vec<_> = rows.collect();
    if rows.is_empty() {
        return;
    }
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let width = rows
        .iter()
        .map(|r| r.0.len())
        .max()
        .unwrap_or(0)
        .max(title.len());
    let _ = writeln!(out, "\n{title:<width$}  count");
    for (key, count) in rows {
        let _ = writeln!(out, "{key:<width$}  {count:>5}");
    }
}

/// Consumes events until every sender is gone: each event goes to `each` (live output), the
/// summary and the detection engine, whose clock ticks every `tick_every`; egress reports go
/// to the engine as they come. Returns both.
pub async fn consume(
    mut rx: mpsc::Receiver<Event>,
    mut summary: Summary,
    mut engine: Option<Engine>,
    mut egress: Option<mpsc::Receiver<EgressReport>>,
    tick_every: Duration,
    mut each: impl FnMut(&Summary, &Event),
) -> (Summary, Option<Engine>) {
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { break };
                each(&summary, &event);
                summary.add(&event);
                if let Some(engine) = &mut engine {
                    engine.observe(&event, Instant::now());
                }
            }
            report = async { egress.as_mut()?.recv().await }, if egress.is_some() => {
                match (report, &mut engine) {
                    (Some(report), Some(engine)) => engine.egress(&report, Instant::now()),
                    (Some(_), None) => {}
                    (None, _) => egress = None,
                }
            }
            _ = tick.tick() => {
                if let Some(engine) = &mut engine {
                    engine.tick(Instant::now());
                }
            }
        }
    }
    (summary, engine)
}
