//! The `new_destination` detector: a namespace reaching a destination it has not reached in
//! its learned history (7 days by default).
//!
//! Destinations are grouped as `policy_denied` groups them, DNS names first, so cloud IP churn
//! behind a known name is not new. Each namespace is only learned from for `learning` after
//! exfilwatch first sees it; after that, a forwarded egress flow to a destination not seen
//! within `history` (and not on the allowlist) raises an alert per (namespace, destination),
//! and every further flow there joins that alert until it has been quiet for the rule's
//! `resolve_after`. What was learned is persisted, so a restart does not start learning again.
//! Bounded in destinations per namespace.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use ipnet::IpNet;

use super::{FlowDetector, Hit};
use crate::common::clock::span_ns;
use crate::common::hash::FastMap;
use crate::flow::destination::{DEFAULT_GROUPING, DestinationRef};
use crate::flow::intern::{Slots, Sym};
use crate::flow::{FlowEvent, TrafficDirection, Verdict};
use crate::rules::{Kind, NewDestinationParams, Rule, SelectorMemo};
use crate::state::{StateError, Store};

/// Destinations remembered per namespace.
const MAX_PER_NAMESPACE: usize = 50_000;
/// A known destination's last-seen time is saved at most this often (nanoseconds).
const SAVE_EVERY_NS: i64 = 3_600_000_000_000;

/// `pattern` with `*` as any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            text.len() >= head.len() + tail.len()
                && text.starts_with(head)
                && (0..=text.len() - head.len()).any(|i| {
                    text.is_char_boundary(head.len() + i) && glob(tail, &text[head.len() + i..])
                })
        }
    }
}

/// `dest` as text in `buf`, reused from flow to flow.
fn text<'b>(buf: &'b mut String, dest: DestinationRef<'_>) -> &'b str {
    buf.clear();
    let _ = write!(buf, "{dest}");
    buf
}

/// A destination as the detector keeps it: the owned twin of [`DestinationRef`], for its text
/// when it is saved or shared. Flows find it by its key, so a flow to a known destination
/// costs a look-up, no text.
#[derive(Debug)]
enum Owned {
    Fqdn(Box<str>),
    Workload(Box<str>, Box<str>),
    Address(IpAddr),
    Block(IpNet),
    Unknown,
}

impl Owned {
    fn of(d: DestinationRef<'_>) -> Owned {
        match d {
            DestinationRef::Fqdn(n) => Owned::Fqdn(n.into()),
            DestinationRef::Workload { namespace, name } => {
                Owned::Workload(namespace.into(), name.into())
            }
            DestinationRef::Address(ip) => Owned::Address(ip),
            DestinationRef::Block(net) => Owned::Block(net),
            DestinationRef::Unknown => Owned::Unknown,
        }
    }

    fn as_ref(&self) -> DestinationRef<'_> {
        match self {
            Owned::Fqdn(n) => DestinationRef::Fqdn(n),
            Owned::Workload(namespace, name) => DestinationRef::Workload { namespace, name },
            Owned::Address(ip) => DestinationRef::Address(*ip),
            Owned::Block(net) => DestinationRef::Block(*net),
            Owned::Unknown => DestinationRef::Unknown,
        }
    }
}

/// One destination a namespace has reached.
#[derive(Debug)]
struct Known {
    /// [`FlowEvent::destination_key`] of its flows.
    key: u64,
    destination: Owned,
    /// Last seen and last saved, nanoseconds.
    seen: i64,
    saved: i64,
    /// The last flow of the alert raised for it while that alert lives, nanoseconds.
    raised: Option<i64>,
}

/// What one namespace has reached.
#[derive(Debug, Default)]
struct Reached {
    /// When learning from it began (the first flow any run saw from it), nanoseconds.
    since: Option<i64>,
    /// Destinations seen by this process.
    seen: HashTable<Known>,
    /// Destinations an earlier run saved and this one has not seen yet: label to last seen.
    stored: FastMap<String, i64>,
}

impl Reached {
    fn len(&self) -> usize {
        self.seen.len() + self.stored.len()
    }
}

/// One `new_destination` rule's detector.
#[derive(Debug)]
pub struct NewDestination {
    pub rule: Arc<Rule>,
    params: NewDestinationParams,
    /// `history`, `learning` and the rule's `resolve_after`, in nanoseconds.
    history_ns: i64,
    learning_ns: i64,
    quiet_ns: i64,
    store: Store,
    /// What each namespace reached.
    reached: Slots<Reached>,
    /// Reused for a destination's label.
    label: String,
    /// What other replicas learned, merged in when it changes.
    shared: Option<super::SharedLearned>,
    watched: SelectorMemo,
}

impl NewDestination {
    /// The detector for `rule`, with what an earlier run learned from `store`.
    pub fn new(rule: Arc<Rule>, store: Store) -> Option<Result<NewDestination, StateError>> {
        let Kind::NewDestination(params) = &rule.kind else {
            return None;
        };
        let params = params.clone();
        let rows = match store.known_destinations(&rule.name) {
            Ok(rows) => rows,
            Err(e) => return Some(Err(e)),
        };
        let mut detector = NewDestination {
            history_ns: span_ns(params.history),
            learning_ns: span_ns(params.learning),
            quiet_ns: span_ns(rule.resolve_after),
            rule,
            params,
            store,
            reached: Slots::default(),
            label: String::new(),
            shared: None,
            watched: SelectorMemo::default(),
        };
        for (namespace, dest, seen) in rows {
            let reached = detector.reached.get_or_default(&namespace.into());
            if dest.is_empty() {
                // The namespace's learning start.
                reached.since = Some(seen);
            } else {
                reached.stored.insert(dest, seen);
            }
        }
        Some(Ok(detector))
    }

    /// Takes in what other replicas learned for this rule: a namespace another replica
    /// learned from (and whose partitions this one holds now) is not learned again, and the
    /// destinations it reached are known. Learning began at the earliest start any replica
    /// knew; a destination's last sighting is the latest.
    /// Destinations this process has seen itself are kept as they are: only the others go
    /// to `stored`, as an earlier run's would.
    fn merge(&mut self, rows: &[crate::state::Learned]) {
        let mut merged = 0;
        // The labels of the namespace whose rows come now (rows come grouped by namespace).
        let mut labels: Option<(Sym, crate::common::hash::FastSet<String>)> = None;
        for (rule, namespace, destination, seen) in rows {
            if *rule != self.rule.name {
                continue;
            }
            let ns: Sym = namespace.as_str().into();
            let reached = self.reached.get_or_default(&ns);
            if destination.is_empty() {
                reached.since = Some(reached.since.map_or(*seen, |s| s.min(*seen)));
                continue;
            }
            if labels.as_ref().is_none_or(|(n, _)| *n != ns) {
                let own = reached
                    .seen
                    .iter()
                    .map(|k| k.destination.as_ref().to_string())
                    .collect();
                labels = Some((ns, own));
            }
            let seen_here = labels
                .as_ref()
                .is_some_and(|(_, l)| l.contains(destination));
            if seen_here || reached.len() >= MAX_PER_NAMESPACE {
                continue;
            }
            let last = reached.stored.entry(destination.clone()).or_insert(*seen);
            *last = (*last).max(*seen);
            merged += 1;
        }
        tracing::debug!(
            rule = %self.rule.name,
            "new_destination: {merged} destinations other replicas learned are known here"
        );
    }

    /// A hit when `flow` reaches something its namespace has not reached within `history`.
    pub fn check(&mut self, flow: &FlowEvent) -> Result<Option<Hit>, StateError> {
        if let Some(shared) = &mut self.shared
            && shared.has_changed().unwrap_or(false)
        {
            let rows = shared.borrow_and_update().clone();
            self.merge(&rows);
        }
        let src = &flow.source;
        if flow.verdict != Verdict::Forwarded
            || flow.direction == TrafficDirection::Ingress
            || flow.is_reply == Some(true)
            || src.pod.is_empty()
            || !self.rule.namespaces.matches_endpoint(
                &mut self.watched,
                &src.namespace,
                &src.labels,
            )
        {
            return Ok(None);
        }
        let now = flow.time_ns;
        // Named only when it is saved, new or alerted: a known one is found by its key.
        let dest = || DestinationRef::of(flow, DEFAULT_GROUPING);
        let (history, learning, quiet) = (self.history_ns, self.learning_ns, self.quiet_ns);
        let reached = self.reached.get_or_default(&src.namespace);
        let since = match reached.since {
            Some(since) => since,
            None => {
                // The empty destination records when learning began (the store keeps the
                // latest value per row, so it is written once).
                self.store
                    .save_known_destination(&self.rule.name, &src.namespace, "", now)?;
                reached.since = Some(now);
                now
            }
        };
        let hash = flow.destination_key(DEFAULT_GROUPING);
        let full = reached.len() >= MAX_PER_NAMESPACE;
        let known = match reached.seen.entry(hash, |k| k.key == hash, |k| k.key) {
            Entry::Occupied(entry) => {
                let known = entry.into_mut();
                let was_seen = known.seen;
                known.seen = known.seen.max(now);
                if now.saturating_sub(known.saved) >= SAVE_EVERY_NS {
                    known.saved = now;
                    let label = text(&mut self.label, dest());
                    self.store.save_known_destination(
                        &self.rule.name,
                        &src.namespace,
                        label,
                        now,
                    )?;
                }
                if now.saturating_sub(was_seen) <= history {
                    // Known: a flow joins the alert raised for it while that alert lives.
                    return Ok(match &mut known.raised {
                        Some(last) if now.saturating_sub(*last) < quiet => {
                            *last = now;
                            Some(self.hit(flow))
                        }
                        _ => None,
                    });
                }
                // Seen before, but longer ago than the history: new again.
                known
            }
            Entry::Vacant(_) if full => return Ok(None),
            Entry::Vacant(entry) => {
                let label = text(&mut self.label, dest());
                let stored = reached.stored.remove(label);
                self.store
                    .save_known_destination(&self.rule.name, &src.namespace, label, now)?;
                let known = entry
                    .insert(Known {
                        key: hash,
                        destination: Owned::of(dest()),
                        seen: now,
                        saved: now,
                        raised: None,
                    })
                    .into_mut();
                if stored.is_some_and(|seen| now.saturating_sub(seen) <= history) {
                    return Ok(None);
                }
                known
            }
        };
        let label = text(&mut self.label, dest());
        if now.saturating_sub(since) < learning || self.params.allow.iter().any(|p| glob(p, label))
        {
            return Ok(None);
        }
        known.raised = Some(now);
        Ok(Some(self.hit(flow)))
    }

    /// The hit for `flow`.
    fn hit(&self, flow: &FlowEvent) -> Hit {
        let src = &flow.source;
        let dest = DestinationRef::of(flow, DEFAULT_GROUPING);
        let label = dest.to_string();
        let ip = flow
            .destination
            .ip
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        let port = format!("{}/{}", flow.destination.port, flow.protocol.as_str());
        let pod = format!("{}/{}", src.namespace, src.pod);
        let mut extra = BTreeMap::new();
        extra.insert(
            "summary".into(),
            format!(
                "{}: first connection to {label} in {:?}",
                src.namespace, self.params.history
            ),
        );
        extra.insert(
            "description".into(),
            format!(
                "{pod} reached {label} ({ip}, {port}), a destination namespace {} has not reached in the last {:?}. New destinations are how data leaves quietly through a broad egress rule; if this one is expected, add it to the rule's allow list.",
                src.namespace, self.params.history
            ),
        );
        Hit {
            namespace: src.namespace.to_string(),
            destination: dest.owned(),
            extra,
            earlier: None,
        }
    }
}

impl FlowDetector for NewDestination {
    fn rule(&self) -> &Arc<Rule> {
        &self.rule
    }

    fn check(&mut self, flow: &FlowEvent) -> Result<Option<Hit>, StateError> {
        NewDestination::check(self, flow)
    }

    fn share_learned(&mut self, learned: &super::SharedLearned) {
        self.shared = Some(learned.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testing::default_rule;
    use crate::flow::Event;
    use crate::flow::json::JsonDecoder;

    const HOUR: i64 = 3_600_000_000_000;

    fn detector(store: &Store) -> NewDestination {
        NewDestination::new(default_rule("TrainingPodNewDestination"), store.clone())
            .unwrap()
            .unwrap()
    }

    fn flow(decoder: &mut JsonDecoder, name: &str, at_ns: i64) -> FlowEvent {
        let line = format!(
            r#"{{"flow":{{"verdict":"FORWARDED","traffic_direction":"EGRESS","IP":{{"source":"10.0.1.12","destination":"52.216.1.2"}},"l4":{{"TCP":{{"source_port":40000,"destination_port":443}}}},"source":{{"namespace":"ai-training","pod_name":"w-2"}},"destination":{{"identity":2}},"destination_names":["{name}"]}}}}"#
        );
        let Event::Flow(mut f) = decoder.decode_line(&line).unwrap() else {
            panic!()
        };
        f.time_ns = at_ns;
        f
    }

    #[test]
    fn a_namespace_learned_by_another_replica_is_not_learned_again() {
        let mut decoder = JsonDecoder::default();
        let rule = "TrainingPodNewDestination".to_owned();
        let learned =
            |ns: &str, dest: &str, at: i64| (rule.clone(), ns.to_owned(), dest.to_owned(), at);
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(Vec::new()));
        let mut d = detector(&Store::in_memory().unwrap());
        d.share_learned(&rx);
        // Another replica began learning ai-training two days ago and saw pypi.org.
        tx.send(Arc::new(vec![
            learned("ai-training", "", 0),
            learned("ai-training", "pypi.org", 40 * HOUR),
            learned("other", "x.example.com", 40 * HOUR),
        ]))
        .unwrap();
        assert_eq!(
            d.check(&flow(&mut decoder, "pypi.org", 48 * HOUR)).unwrap(),
            None
        );
        let hit = d
            .check(&flow(&mut decoder, "paste.example.net", 48 * HOUR))
            .unwrap()
            .expect("new at once: learning is over");
        assert_eq!(hit.destination.to_string(), "paste.example.net");
        // Read again, a destination seen here is not kept twice.
        tx.send(Arc::new(vec![learned(
            "ai-training",
            "pypi.org",
            41 * HOUR,
        )]))
        .unwrap();
        assert_eq!(
            d.check(&flow(&mut decoder, "pypi.org", 49 * HOUR)).unwrap(),
            None
        );
        let ns: Sym = "ai-training".into();
        let reached = d.reached.get_or_default(&ns);
        assert!(reached.stored.is_empty(), "{:?}", reached.stored);
        assert_eq!(reached.len(), 2);
        // Without what the other replica learned, the namespace starts learning here.
        let mut alone = detector(&Store::in_memory().unwrap());
        assert_eq!(
            alone
                .check(&flow(&mut decoder, "pypi.org", 48 * HOUR))
                .unwrap(),
            None
        );
        assert_eq!(
            alone
                .check(&flow(&mut decoder, "paste.example.net", 48 * HOUR))
                .unwrap(),
            None
        );
    }

    #[test]
    fn learns_first_then_reports_what_is_new_and_remembers_across_restarts() {
        let store = Store::in_memory().unwrap();
        let mut decoder = JsonDecoder::default();
        let mut d = detector(&store);
        // Learning for the first day: nothing alerts.
        assert_eq!(
            d.check(&flow(
                &mut decoder,
                "training-data.s3.us-east-1.amazonaws.com",
                0
            ))
            .unwrap(),
            None
        );
        assert_eq!(
            d.check(&flow(&mut decoder, "pypi.org", 2 * HOUR)).unwrap(),
            None
        );
        // After learning: known names are quiet, a new one alerts.
        assert_eq!(
            d.check(&flow(&mut decoder, "pypi.org", 30 * HOUR)).unwrap(),
            None
        );
        let hit = d
            .check(&flow(&mut decoder, "paste.example.net", 31 * HOUR))
            .unwrap()
            .expect("a new destination");
        assert_eq!(hit.destination.to_string(), "paste.example.net");
        assert!(
            hit.extra["summary"].contains("first connection to paste.example.net"),
            "{:?}",
            hit.extra
        );
        // Allowlisted names are never new.
        assert_eq!(
            d.check(&flow(&mut decoder, "files.pythonhosted.org", 32 * HOUR))
                .unwrap(),
            None
        );

        // A restart remembers both the history and that learning is over.
        let mut again = detector(&store);
        assert_eq!(
            again
                .check(&flow(&mut decoder, "pypi.org", 33 * HOUR))
                .unwrap(),
            None
        );
        assert!(
            again
                .check(&flow(&mut decoder, "another.example.org", 34 * HOUR))
                .unwrap()
                .is_some()
        );
        // A name unseen for longer than the history (last seen at 0) is new again.
        let late = 8 * 24 * HOUR;
        assert!(
            again
                .check(&flow(
                    &mut decoder,
                    "training-data.s3.us-east-1.amazonaws.com",
                    late
                ))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn globs_match_runs_of_characters() {
        assert!(glob("*.pythonhosted.org", "files.pythonhosted.org"));
        assert!(glob("*", "anything"));
        assert!(!glob("*.pythonhosted.org", "pythonhosted.org.evil"));
        assert!(glob("10.0.*", "10.0.5.0/24"));
    }
}
