//! The per-event fan-out: sources send [`Event`]s into one bounded channel (backpressure,
//! never an unbounded queue), and [`consume`] hands each event, in this order, to every
//! consumer of [`Consumers`]:
//!
//! 1. the flow store's sink (the flow becomes queryable by the REST API);
//! 2. the progress log;
//! 3. the resume cursor, saved in the state store: every flow before this event has been
//!    through the engine and its alerts are committed;
//! 4. the [`Summary`]: flows per verdict, namespace and drop reason, lost events per source,
//!    and the policy-denied flows leaving watched namespaces (also counted for `/metrics`);
//! 5. the detection engine, whose clock ticks between events; egress reports from the
//!    Prometheus task and reloaded rule packs reach it on their own channels, between events.
//!
//! A source's [`Event::Checkpoint`] goes to the engine, which commits its alert state, then to
//! the flow store's sink, which writes every flow before it to disk and reports it durable.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::alert::sink::DeliveryStats;
use crate::detect::engine::{Engine, RuleChanges};
use crate::egress::watch::EgressReport;
use crate::flow::destination;
use crate::flow::intern::Sym;
use crate::flow::{Event, FlowEvent, Verdict};
use crate::flowstore::FlowSink;
use crate::rules::Rule;
use crate::source::SourceStats;
use crate::source::kafka::Ownership;
use crate::state::Store;

/// Events waiting between sources and consumers before sources have to wait.
pub const CHANNEL_CAPACITY: usize = 8192;

/// Drop reasons that mean "a network policy refused this": POLICY_DENIED (no allow rule
/// matched), POLICY_DENY (an explicit deny rule), AUTH_REQUIRED (mutual auth missing).
pub const POLICY_DROP_REASONS: [u32; 3] = [133, 181, 189];

/// Largest number of distinct keys a summary table keeps; the rest is counted as "(other)".
const MAX_KEYS: usize = 10_000;

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
    /// The same denials by namespace and destination, for `/metrics`.
    #[serde(skip)]
    denied_metric: Option<Arc<DeniedFlows>>,
}

/// Most (namespace, destination) series of `exfilwatch_denied_flows`; further destinations
/// are counted as "(other)" so a scan cannot flood Prometheus with series.
pub const MAX_DENIED_SERIES: usize = 500;

/// Counts of policy-denied flows by namespace and destination, bounded in series; shared
/// with `/metrics`.
#[derive(Debug, Default)]
pub struct DeniedFlows {
    counts: Mutex<HashMap<(String, String), u64>>,
}

impl DeniedFlows {
    pub fn add(&self, namespace: &str, destination: String) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let key = (namespace.to_owned(), destination);
        if let Some(n) = counts.get_mut(&key) {
            *n += 1;
        } else if counts.len() < MAX_DENIED_SERIES {
            counts.insert(key, 1);
        } else {
            *counts.entry((key.0, "(other)".to_owned())).or_default() += 1;
        }
    }

    /// Every series and its count.
    pub fn snapshot(&self) -> Vec<((String, String), u64)> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
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

    /// Also counts the denials in `metric`.
    pub fn with_metric(mut self, metric: Arc<DeniedFlows>) -> Summary {
        self.denied_metric = Some(metric);
        self
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
                    let destination = destination::label(flow);
                    tracing::debug!(
                        reason = flow.drop_reason_name(),
                        node = %flow.node,
                        "policy-denied egress: {}/{} -> {destination}",
                        flow.source.namespace,
                        flow.source.pod,
                    );
                    let key = format!(
                        "{}/{} -> {destination}",
                        flow.source.namespace, flow.source.pod
                    );
                    if let Some(metric) = &self.denied_metric {
                        metric.add(&flow.source.namespace, destination);
                    }
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
            Event::Checkpoint(_) => {}
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

/// Saves the time of the last flow processed under a name in the state store, so that a
/// restarted service resumes the stream from there.
#[derive(Debug)]
pub struct Cursor {
    store: Store,
    name: &'static str,
    every: Duration,
    last_save: Option<Instant>,
}

impl Cursor {
    pub fn new(store: Store, name: &'static str, every: Duration) -> Cursor {
        Cursor {
            store,
            name,
            every,
            last_save: None,
        }
    }

    /// Saves `time_ns` when it is set and the last save is `every` old; the first save comes
    /// with the first flow.
    fn maybe_save(&mut self, time_ns: i64) {
        if time_ns > 0 && self.last_save.is_none_or(|t| t.elapsed() >= self.every) {
            self.last_save = Some(Instant::now());
            self.save(time_ns);
        }
    }

    fn save(&self, time_ns: i64) {
        if let Err(e) = self.store.set_cursor(self.name, time_ns) {
            tracing::error!("{e}");
        }
    }
}

/// Logs what went through every `every`.
#[derive(Debug)]
pub struct Progress {
    every: Duration,
    source: Arc<SourceStats>,
    delivery: Arc<DeliveryStats>,
    store: Store,
    last: Instant,
}

impl Progress {
    pub fn new(
        every: Duration,
        source: Arc<SourceStats>,
        delivery: Arc<DeliveryStats>,
        store: Store,
    ) -> Progress {
        Progress {
            every,
            source,
            delivery,
            store,
            last: Instant::now(),
        }
    }

    fn maybe_log(&mut self, summary: &Summary) {
        if self.last.elapsed() < self.every {
            return;
        }
        self.last = Instant::now();
        tracing::info!(
            flows = summary.flows,
            lost = self.source.lost_total(),
            duplicates = self.source.duplicates.load(Ordering::Relaxed),
            reconnects = self.source.reconnects.load(Ordering::Relaxed),
            alerts_sent = self.delivery.sent.load(Ordering::Relaxed),
            outbox = self.store.outbox_depth().unwrap_or(0),
            "pipeline: progress"
        );
    }
}

/// Everything an event is handed to; the summary always, the rest when present.
#[derive(Debug, Default)]
pub struct Consumers {
    pub summary: Summary,
    pub engine: Option<Engine>,
    pub flows: Option<FlowSink>,
    pub progress: Option<Progress>,
    pub cursor: Option<Cursor>,
}

/// A validated rule pack to put in force, and who wants to know what changed.
#[derive(Debug)]
pub struct RuleUpdate {
    pub rules: Vec<Arc<Rule>>,
    pub applied: oneshot::Sender<RuleChanges>,
}

/// What reaches the engine beside the events.
#[derive(Debug, Default)]
pub struct Side {
    /// Egress reports from the Prometheus task.
    pub egress: Option<mpsc::Receiver<EgressReport>>,
    /// The namespaces this replica owns (a Kafka source's partitions); egress reports reach
    /// the engine for those only, so each namespace's volume is judged by one replica.
    pub owned: Option<watch::Receiver<Arc<Ownership>>>,
    /// Reloaded rule packs.
    pub rules: Option<mpsc::Receiver<RuleUpdate>>,
}

fn ticker(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Consumes events until every sender is gone, handing each to `consumers` in the order the
/// module documentation gives; the engine's clock ticks every `tick_every` and egress reports
/// and rule packs reach it as they come. Returns the consumers; the cursor is saved a last
/// time.
pub async fn consume(
    mut rx: mpsc::Receiver<Event>,
    mut consumers: Consumers,
    side: Side,
    tick_every: Duration,
) -> Consumers {
    let Side {
        mut egress,
        owned,
        rules: mut updates,
    } = side;
    let mut tick = ticker(tick_every);
    let c = &mut consumers;
    loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { break };
                if let Event::Checkpoint(n) = event {
                    // Alert state first, then the flows: the sink reports the checkpoint
                    // durable once both are on disk. One whose alert state the store refused
                    // goes no further: no offset is committed past alerts not saved, and the
                    // source sends another checkpoint later.
                    let saved = c.engine.as_mut().is_none_or(|e| e.flush(Instant::now()));
                    match &c.flows {
                        Some(sink) if saved => sink.checkpoint(n),
                        Some(_) => tracing::warn!(
                            checkpoint = n,
                            "pipeline: the alert store refused the alert state; the checkpoint is not made durable"
                        ),
                        None => {}
                    }
                    continue;
                }
                if let (Some(sink), Event::Flow(flow)) = (&c.flows, &event) {
                    sink.push(flow);
                }
                if let Some(progress) = &mut c.progress {
                    progress.maybe_log(&c.summary);
                }
                if let Some(cursor) = &mut c.cursor {
                    cursor.maybe_save(c.summary.last_flow_ns);
                }
                c.summary.add(&event);
                if let Some(engine) = &mut c.engine {
                    engine.observe(&event, Instant::now());
                }
            }
            report = async { egress.as_mut()?.recv().await }, if egress.is_some() => {
                match (report, &mut c.engine) {
                    (Some(mut report), Some(engine)) => {
                        if let Some(owned) = &owned {
                            keep_owned(&mut report, &owned.borrow());
                        }
                        engine.egress(&report, Instant::now());
                    }
                    (Some(_), None) => {}
                    (None, _) => egress = None,
                }
            }
            update = async { updates.as_mut()?.recv().await }, if updates.is_some() => {
                match (update, &mut c.engine) {
                    (Some(update), Some(engine)) => {
                        let changes = engine.reload(&update.rules);
                        tick = ticker(Engine::tick_interval(&update.rules));
                        let _ = update.applied.send(changes);
                    }
                    (Some(_), None) => {}
                    (None, _) => updates = None,
                }
            }
            _ = tick.tick() => {
                if let Some(engine) = &mut c.engine {
                    engine.tick(Instant::now());
                }
            }
        }
    }
    if let Some(cursor) = &c.cursor
        && c.summary.last_flow_ns > 0
    {
        cursor.save(c.summary.last_flow_ns);
    }
    consumers
}

/// Keeps the namespaces of `report` this replica owns: each namespace's volume is judged by
/// the replica that holds its partition.
fn keep_owned(report: &mut EgressReport, owned: &Ownership) {
    report
        .namespaces
        .retain(|namespace, _| owned.owns(namespace));
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::config::Partitioner;

    #[test]
    fn egress_reports_keep_the_namespaces_this_replica_owns() {
        let names = ["ai-training", "team-a", "team-b", "team-c", "team-d"];
        let partition = |ns: &str| Partitioner::Murmur2.partition(ns.as_bytes(), 4).unwrap();
        let owned = Ownership {
            partitions: BTreeSet::from([partition("ai-training")]),
            partition_count: 4,
            partitioner: Partitioner::Murmur2,
        };
        let mut report = EgressReport::default();
        for ns in names {
            report.namespaces.insert(ns.into(), Default::default());
        }
        keep_owned(&mut report, &owned);
        let kept: Vec<&str> = report.namespaces.keys().map(String::as_str).collect();
        let expected: Vec<&str> = names
            .into_iter()
            .filter(|ns| partition(ns) == partition("ai-training"))
            .collect();
        assert_eq!(kept, expected);
        assert!(
            kept.contains(&"ai-training") && kept.len() < names.len(),
            "{kept:?}"
        );
    }

    #[tokio::test]
    async fn a_checkpoint_whose_alert_state_is_not_saved_is_not_made_durable() {
        let store = Store::in_memory().unwrap();
        let stats = Arc::new(DeliveryStats::default());
        let engine = crate::detect::testing::engine(&store, stats.clone());
        let flows = crate::flowstore::FlowStore::in_memory(Default::default());
        let (sink, writer) = FlowSink::start(flows);
        let mut durable = sink.durable();
        let consumers = Consumers {
            summary: Summary::new(&[]),
            engine: Some(engine),
            flows: Some(sink.clone()),
            progress: None,
            cursor: None,
        };
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(consume(
            rx,
            consumers,
            Side::default(),
            Duration::from_secs(3600),
        ));
        // A denied attempt whose alert the store refuses, then a checkpoint.
        store.refuse_writes(true);
        let mut cluster =
            crate::sim::traffic::TrainingCluster::new(3, 1_767_225_600_000_000_000, 1_000);
        let mut decoder = crate::flow::wire::Decoder::default();
        for f in cluster.exfiltration_attempt() {
            let event = crate::detect::testing::flow_event(&mut decoder, f);
            tx.send(Event::Flow(event)).await.unwrap();
        }
        tx.send(Event::Checkpoint(1)).await.unwrap();
        // Refused twice: when the alert started, and by the checkpoint's flush.
        let deadline = Instant::now() + Duration::from_secs(10);
        while stats.store_errors.load(Ordering::Relaxed) < 2 {
            assert!(Instant::now() < deadline, "the store was never asked");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            *durable.borrow(),
            0,
            "checkpoint 1 made durable without its alerts"
        );
        // The store takes writes again: the next checkpoint saves the alert and is durable.
        store.refuse_writes(false);
        tx.send(Event::Checkpoint(2)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), durable.wait_for(|&d| d >= 2))
            .await
            .unwrap()
            .unwrap();
        drop(tx);
        let consumers = task.await.unwrap();
        let firing = consumers.engine.unwrap().firing().len();
        assert!(firing > 0);
        assert_eq!(
            crate::alert::saved_firing(&store).unwrap().len(),
            firing,
            "every firing alert saved"
        );
        sink.close();
        writer.join().unwrap();
    }
}
