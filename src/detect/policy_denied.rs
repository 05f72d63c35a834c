//! The `policy_denied` detector: flows from a watched namespace that a network policy refused.
//!
//! A flow counts when its verdict is DROPPED (or AUDIT, if the rule asks), its drop reason is
//! one of the rule's (POLICY_DENIED and POLICY_DENY by default), and its direction is the
//! rule's (egress by default; flows without a direction count as egress from their source).
//! Hubble often reports one denied packet twice, as a policy-verdict event and as a drop
//! event: the second report of the same 5-tuple within `duplicate_window` is not counted.
//! Each hit names the alert's destination, in order of what is known: the FQDN, the
//! namespace/workload, or the world address block (/24, /64).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::{FlowDetector, Hit};
use crate::common::clock::span_ns;
use crate::flow::destination::{DestinationRef, Granularity};
use crate::flow::{FlowEvent, Peer, TrafficDirection, Verdict};
use crate::rules::{Direction, Kind, PolicyDeniedParams, Rule};
use crate::state::StateError;

/// Most recent packets remembered for double-report detection.
const RECENT_CAPACITY: usize = 65_536;

/// One `policy_denied` rule's detector.
#[derive(Debug)]
pub struct PolicyDenied {
    pub rule: Arc<Rule>,
    params: PolicyDeniedParams,
    recent: HashMap<u64, (i64, i32), foldhash::fast::RandomState>,
    order: VecDeque<(i64, u64)>,
}

/// How the rule groups destinations into alerts.
fn grouping(params: &PolicyDeniedParams) -> Granularity {
    Granularity::Grouped {
        v4_bits: params.world_prefix_v4,
        v6_bits: params.world_prefix_v6,
    }
}

fn packet_key(flow: &FlowEvent) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    (
        flow.source.ip,
        flow.source.port,
        flow.destination.ip,
        flow.destination.port,
        flow.protocol,
    )
        .hash(&mut h);
    h.finish()
}

impl PolicyDenied {
    /// The detector for `rule`, if it is a `policy_denied` rule.
    pub fn new(rule: Arc<Rule>) -> Option<PolicyDenied> {
        let Kind::PolicyDenied(params) = &rule.kind else {
            return None;
        };
        let params = params.clone();
        Some(PolicyDenied {
            rule,
            params,
            recent: HashMap::default(),
            order: VecDeque::new(),
        })
    }

    fn watched(&self, peer: &Peer) -> bool {
        self.rule.namespaces.matches(&peer.namespace, &peer.labels)
    }

    /// The hit for `flow`, or `None` when it does not concern this rule.
    pub fn check(&mut self, flow: &FlowEvent) -> Option<Hit> {
        let verdict_ok = flow.verdict == Verdict::Dropped
            || (self.params.include_audit && flow.verdict == Verdict::Audit);
        if !verdict_ok || !self.params.drop_reasons.contains(&flow.drop_reason) {
            return None;
        }
        let egress = matches!(
            flow.direction,
            TrafficDirection::Egress | TrafficDirection::Unknown
        ) && self.watched(&flow.source);
        let ingress =
            flow.direction == TrafficDirection::Ingress && self.watched(&flow.destination);
        let namespace = match self.params.direction {
            Direction::Egress if egress => &flow.source.namespace,
            Direction::Ingress if ingress => &flow.destination.namespace,
            Direction::Any if egress => &flow.source.namespace,
            Direction::Any if ingress => &flow.destination.namespace,
            _ => return None,
        };
        if self.second_report(flow) {
            return None;
        }
        Some(Hit {
            namespace: namespace.to_string(),
            destination: DestinationRef::of(flow, grouping(&self.params)).owned(),
            // The alert's context is built from the flows it counts.
            extra: BTreeMap::new(),
            earlier: None,
        })
    }

    /// True when `flow` is the other report (policy verdict vs drop) of a packet just counted.
    fn second_report(&mut self, flow: &FlowEvent) -> bool {
        let window = span_ns(self.params.duplicate_window);
        while let Some(&(t, key)) = self.order.front() {
            if flow.time_ns.saturating_sub(t) <= window && self.order.len() < RECENT_CAPACITY {
                break;
            }
            self.order.pop_front();
            if self.recent.get(&key).is_some_and(|(seen, _)| *seen == t) {
                self.recent.remove(&key);
            }
        }
        let key = packet_key(flow);
        if let Some(&(t, event_type)) = self.recent.get(&key)
            && event_type != flow.event_type
            && flow.time_ns.abs_diff(t) <= window.unsigned_abs()
        {
            // Counted once: forget it, so a later retransmission counts again.
            self.recent.remove(&key);
            return true;
        }
        self.recent.insert(key, (flow.time_ns, flow.event_type));
        self.order.push_back((flow.time_ns, key));
        false
    }
}

impl FlowDetector for PolicyDenied {
    fn rule(&self) -> &Arc<Rule> {
        &self.rule
    }

    fn check(&mut self, flow: &FlowEvent) -> Result<Option<Hit>, StateError> {
        Ok(PolicyDenied::check(self, flow))
    }

    fn samples(&self) -> usize {
        self.params.samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Event;
    use crate::flow::destination::DEFAULT_GROUPING;
    use crate::flow::json::JsonDecoder;
    use crate::rules::load_text;

    fn detector() -> PolicyDenied {
        let rules = load_text(include_str!("../../rules/default.yaml"), "pack").unwrap();
        PolicyDenied::new(Arc::new(rules[0].clone())).unwrap()
    }

    fn flow(json: &str) -> FlowEvent {
        match JsonDecoder::default().decode_line(json).unwrap() {
            Event::Flow(f) => f,
            other => panic!("{other:?}"),
        }
    }

    const DENIED_DB: &str = r#"{"flow":{"time":"2026-01-01T00:00:00Z","verdict":"DROPPED","drop_reason_desc":"POLICY_DENIED","traffic_direction":"EGRESS","event_type":{"type":5},"IP":{"source":"10.0.1.12","destination":"10.0.5.20"},"l4":{"TCP":{"source_port":50000,"destination_port":5432}},"source":{"namespace":"ai-training","pod_name":"w-2"},"destination":{"namespace":"production","pod_name":"orders-db-0","workloads":[{"name":"orders-db","kind":"StatefulSet"}]}}}"#;

    #[test]
    fn a_denied_egress_flow_hits_with_the_workload_as_destination() {
        let hit = detector().check(&flow(DENIED_DB)).unwrap();
        assert_eq!(hit.namespace, "ai-training");
        assert_eq!(hit.destination.to_string(), "production/orders-db");
    }

    #[test]
    fn the_drop_report_of_the_same_packet_counts_once_but_a_retransmission_counts() {
        let mut d = detector();
        assert!(d.check(&flow(DENIED_DB)).is_some());
        let drop = DENIED_DB
            .replace(r#""type":5"#, r#""type":1,"sub_type":133"#)
            .replace("00:00:00Z", "00:00:00.000040Z");
        assert!(
            d.check(&flow(&drop)).is_none(),
            "same packet, reported as a drop"
        );
        let retransmit = DENIED_DB.replace("00:00:00Z", "00:00:03Z");
        assert!(d.check(&flow(&retransmit)).is_some());
    }

    #[test]
    fn other_verdicts_reasons_namespaces_and_directions_do_not_hit() {
        let mut d = detector();
        for json in [
            DENIED_DB.replace("DROPPED", "FORWARDED"),
            DENIED_DB.replace("POLICY_DENIED", "CT_MAP_INSERTION_FAILED"),
            DENIED_DB.replace(r#""namespace":"ai-training""#, r#""namespace":"web""#),
            DENIED_DB.replace("EGRESS", "INGRESS"),
        ] {
            assert!(d.check(&flow(&json)).is_none(), "{json}");
        }
    }

    #[test]
    fn world_destinations_group_by_fqdn_or_block() {
        let mut d = detector();
        let world = DENIED_DB
            .replace(r#""namespace":"production","pod_name":"orders-db-0","workloads":[{"name":"orders-db","kind":"StatefulSet"}]"#, r#""identity":2"#)
            .replace("10.0.5.20", "203.0.113.77");
        assert_eq!(
            d.check(&flow(&world)).unwrap().destination.to_string(),
            "203.0.113.0/24"
        );
        let named = world
            .replace(
                r#""IP""#,
                r#""destination_names":["paste.example.net"],"IP""#,
            )
            .replace("50000", "50001");
        assert_eq!(
            d.check(&flow(&named)).unwrap().destination.to_string(),
            "paste.example.net"
        );
    }

    #[test]
    fn the_borrowed_destination_reads_as_the_owned_one() {
        let world = DENIED_DB
            .replace(r#""namespace":"production","pod_name":"orders-db-0","workloads":[{"name":"orders-db","kind":"StatefulSet"}]"#, r#""identity":2"#)
            .replace("10.0.5.20", "203.0.113.77");
        let named = world.replace(
            r#""IP""#,
            r#""destination_names":["paste.example.net"],"IP""#,
        );
        let nowhere = world.replace(
            r#""IP":{"source":"10.0.1.12","destination":"203.0.113.77"},"#,
            "",
        );
        let mut texts = Vec::new();
        for json in [DENIED_DB, world.as_str(), named.as_str(), nowhere.as_str()] {
            let f = flow(json);
            let borrowed = DestinationRef::of(&f, DEFAULT_GROUPING);
            assert_eq!(borrowed.to_string(), borrowed.owned().to_string());
            texts.push(borrowed.to_string());
        }
        assert_eq!(
            texts,
            [
                "production/orders-db",
                "203.0.113.0/24",
                "paste.example.net",
                "unknown"
            ]
        );
    }
}
