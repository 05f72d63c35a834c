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

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use super::{FlowDetector, Hit};
use crate::flow::destination::{DEFAULT_GROUPING, DestinationRef};
use crate::flow::intern::Sym;
use crate::flow::{FlowEvent, TrafficDirection, Verdict};
use crate::rules::{Kind, NewDestinationParams, Rule};
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

/// One `new_destination` rule's detector.
#[derive(Debug)]
pub struct NewDestination {
    pub rule: Arc<Rule>,
    params: NewDestinationParams,
    store: Store,
    /// namespace → destination → (last seen, last saved), nanoseconds.
    known: HashMap<Sym, HashMap<String, (i64, i64)>>,
    /// namespace → when exfilwatch first saw it.
    since: HashMap<Sym, i64>,
    /// namespace → destination alerted on → its last flow, nanoseconds: while the alert
    /// lives, flows there join it.
    raised: HashMap<Sym, HashMap<String, i64>>,
    /// Reused for each flow's destination label.
    label: String,
}

impl NewDestination {
    /// The detector for `rule`, with what an earlier run learned from `store`.
    pub fn new(rule: Arc<Rule>, store: Store) -> Option<Result<NewDestination, StateError>> {
        let Kind::NewDestination(params) = &rule.kind else {
            return None;
        };
        let params = params.clone();
        let loaded = store.known_destinations(&rule.name).map(|rows| {
            let mut known: HashMap<Sym, HashMap<String, (i64, i64)>> = HashMap::new();
            let mut since: HashMap<Sym, i64> = HashMap::new();
            for (namespace, dest, seen) in rows {
                let ns: Sym = namespace.into();
                if dest.is_empty() {
                    // The namespace's learning start.
                    since.insert(ns, seen);
                } else {
                    known.entry(ns).or_default().insert(dest, (seen, seen));
                }
            }
            (known, since)
        });
        Some(loaded.map(|(known, since)| NewDestination {
            rule,
            params,
            store,
            known,
            since,
            raised: HashMap::new(),
            label: String::new(),
        }))
    }

    /// A hit when `flow` reaches something its namespace has not reached within `history`.
    pub fn check(&mut self, flow: &FlowEvent) -> Result<Option<Hit>, StateError> {
        let src = &flow.source;
        if flow.verdict != Verdict::Forwarded
            || flow.direction == TrafficDirection::Ingress
            || flow.is_reply == Some(true)
            || src.pod.is_empty()
            || !self.rule.namespaces.matches(&src.namespace, &src.labels)
        {
            return Ok(None);
        }
        let now = flow.time_ns;
        let dest = DestinationRef::of(flow, DEFAULT_GROUPING);
        self.label.clear();
        let _ = write!(self.label, "{dest}");
        let label = self.label.as_str();
        if !self.since.contains_key(&src.namespace) {
            // The empty destination records when learning began (the store keeps the latest
            // value per row, so it is written once).
            self.store
                .save_known_destination(&self.rule.name, &src.namespace, "", now)?;
            self.since.insert(src.namespace.clone(), now);
        }
        let history = i64::try_from(self.params.history.as_nanos()).unwrap_or(i64::MAX);
        let learning = i64::try_from(self.params.learning.as_nanos()).unwrap_or(i64::MAX);
        let known = self.known.entry(src.namespace.clone()).or_default();
        if let Some((seen, saved)) = known.get_mut(label) {
            let was_seen = *seen;
            *seen = (*seen).max(now);
            if now.saturating_sub(*saved) >= SAVE_EVERY_NS {
                *saved = now;
                self.store
                    .save_known_destination(&self.rule.name, &src.namespace, label, now)?;
            }
            if now.saturating_sub(was_seen) <= history {
                let quiet = i64::try_from(self.rule.resolve_after.as_nanos()).unwrap_or(i64::MAX);
                let raised = self
                    .raised
                    .get_mut(&src.namespace)
                    .and_then(|r| r.get_mut(label));
                match raised {
                    Some(last) if now.saturating_sub(*last) < quiet => *last = now,
                    _ => return Ok(None),
                }
                return Ok(Some(self.hit(flow)));
            }
        } else if known.len() < MAX_PER_NAMESPACE {
            known.insert(label.to_owned(), (now, now));
            self.store
                .save_known_destination(&self.rule.name, &src.namespace, label, now)?;
        } else {
            return Ok(None);
        }
        let since = self.since.get(&src.namespace).copied().unwrap_or(now);
        if now.saturating_sub(since) < learning || self.params.allow.iter().any(|p| glob(p, label))
        {
            return Ok(None);
        }
        let raised = self.raised.entry(src.namespace.clone()).or_default();
        if raised.len() >= MAX_PER_NAMESPACE {
            let quiet = i64::try_from(self.rule.resolve_after.as_nanos()).unwrap_or(i64::MAX);
            raised.retain(|_, last| now.saturating_sub(*last) < quiet);
        }
        if raised.len() < MAX_PER_NAMESPACE {
            raised.insert(self.label.clone(), now);
        }
        Ok(Some(self.hit(flow)))
    }

    /// The hit for `flow`, whose destination is in `self.label`.
    fn hit(&self, flow: &FlowEvent) -> Hit {
        let src = &flow.source;
        let label = self.label.as_str();
        let dest = DestinationRef::of(flow, DEFAULT_GROUPING);
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
