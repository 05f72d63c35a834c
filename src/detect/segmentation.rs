//! The `segmentation` detector: the guide's intended connectivity, asserted continuously.
//!
//! A rule lists what a namespace may reach (destination namespaces, pod labels, address
//! blocks, DNS names, each with ports). A FORWARDED egress flow that matches no entry got
//! through the network although the segmentation says it should not: the policy that should
//! have stopped it is missing or too broad. One alert per (namespace, destination), grouped
//! like `policy_denied`'s, with the count, pods, ports and what was expected.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;

use super::Hit;
use crate::common::hash::{FastMap, process_seed};
use crate::flow::destination::{DEFAULT_GROUPING, DestinationRef};
use crate::flow::intern::SymList;
use crate::flow::{Endpoint, FlowEvent, TrafficDirection, Verdict};
use crate::rules::{Allowed, Kind, Rule, SegmentationParams, SelectorMemo};

/// (namespace, destination) pairs counted at once.
const MAX_TRACKED: usize = 10_000;
/// Destinations whose answer is remembered.
const ANSWERS: usize = 256;

/// True when `flow` is traffic `entry` allows.
fn allows(entry: &Allowed, flow: &FlowEvent) -> bool {
    let dst = &flow.destination;
    let names = flow
        .destination_names
        .iter()
        .map(|n| &**n)
        .chain(flow.dns.as_ref().map(|d| &*d.query));
    entry.permits(
        &dst.namespace,
        dst.labels.iter().map(|l| &**l),
        dst.ip,
        dst.port,
        names,
    )
}

/// Whether the entries allow a destination, for the destinations flows went to lately. The
/// answer depends only on the destination's endpoint, DNS names, port and (when an entry
/// lists address blocks) address; the decoder shares one endpoint and one name list between
/// the flows that go to the same place, so they are the key, held (so that no other endpoint
/// can take their address) and compared by pointer. A flow with a DNS query of its own asks
/// the entries: the query is part of the answer and seldom repeats.
#[derive(Debug)]
struct Answers {
    slots: Box<[Option<Answer>]>,
    /// Whether an entry lists address blocks, so the address is part of the key.
    by_address: bool,
}

#[derive(Debug)]
struct Answer {
    endpoint: Arc<Endpoint>,
    names: SymList,
    port: u16,
    ip: Option<IpAddr>,
    allowed: bool,
}

impl Answers {
    fn new(entries: &[Allowed]) -> Answers {
        Answers {
            slots: (0..ANSWERS).map(|_| None).collect(),
            by_address: entries.iter().any(|e| !e.cidrs.is_empty()),
        }
    }

    /// Whether one of `entries` allows `flow`.
    fn allowed(&mut self, entries: &[Allowed], flow: &FlowEvent) -> bool {
        if flow.dns.is_some() {
            return entries.iter().any(|e| allows(e, flow));
        }
        let dst = &flow.destination;
        let ip = if self.by_address { dst.ip } else { None };
        let names = Arc::as_ptr(&flow.destination_names).cast::<u8>();
        let hash = process_seed().hash_one((Arc::as_ptr(&dst.endpoint), names, dst.port, ip));
        let slot = hash as usize % ANSWERS;
        if let Some(a) = &self.slots[slot]
            && Arc::ptr_eq(&a.endpoint, &dst.endpoint)
            && Arc::ptr_eq(&a.names, &flow.destination_names)
            && a.port == dst.port
            && a.ip == ip
        {
            return a.allowed;
        }
        let allowed = entries.iter().any(|e| allows(e, flow));
        self.slots[slot] = Some(Answer {
            endpoint: dst.endpoint.clone(),
            names: flow.destination_names.clone(),
            port: dst.port,
            ip,
            allowed,
        });
        allowed
    }
}

#[derive(Debug, Default)]
struct Seen {
    count: u64,
    pods: BTreeSet<String>,
    ports: BTreeSet<String>,
}

/// One `segmentation` rule's detector.
#[derive(Debug)]
pub struct Segmentation {
    pub rule: Arc<Rule>,
    entries: Vec<Allowed>,
    answers: Answers,
    seen: FastMap<(String, String), Seen>,
    watched: SelectorMemo,
}

impl Segmentation {
    pub fn new(rule: Arc<Rule>) -> Option<Segmentation> {
        let Kind::Segmentation(SegmentationParams { allow }) = &rule.kind else {
            return None;
        };
        let entries = allow.clone();
        Some(Segmentation {
            rule,
            answers: Answers::new(&entries),
            entries,
            seen: FastMap::default(),
            watched: SelectorMemo::default(),
        })
    }

    /// A breach when `flow` left a watched namespace without matching any allowed entry.
    pub fn check(&mut self, flow: &FlowEvent) -> Option<Hit> {
        let src = &flow.source;
        if flow.verdict != Verdict::Forwarded
            || flow.direction == TrafficDirection::Ingress
            || flow.is_reply == Some(true)
            || !self.rule.namespaces.matches_endpoint(
                &mut self.watched,
                &src.namespace,
                &src.labels,
            )
            || self.answers.allowed(&self.entries, flow)
        {
            return None;
        }
        let dest = DestinationRef::of(flow, DEFAULT_GROUPING).owned();
        let key = (src.namespace.to_string(), dest.to_string());
        if !self.seen.contains_key(&key) && self.seen.len() >= MAX_TRACKED {
            return None;
        }
        let seen = self.seen.entry(key).or_default();
        seen.count += 1;
        if seen.pods.len() < 20 && !src.pod.is_empty() {
            seen.pods.insert(format!("{}/{}", src.namespace, src.pod));
        }
        if seen.ports.len() < 20 {
            seen.ports.insert(format!(
                "{}/{}",
                flow.destination.port,
                flow.protocol.as_str()
            ));
        }
        let expected: Vec<&str> = self
            .entries
            .iter()
            .map(|e| e.description.as_str())
            .filter(|d| !d.is_empty())
            .collect();
        let pods = seen.pods.iter().cloned().collect::<Vec<_>>().join(", ");
        let ports = seen.ports.iter().cloned().collect::<Vec<_>>().join(", ");
        let ip = flow
            .destination
            .ip
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        let mut extra = BTreeMap::new();
        extra.insert("expected".into(), expected.join("; "));
        extra.insert(
            "summary".into(),
            format!(
                "{}: traffic to {dest} got through the network although segmentation forbids it",
                src.namespace
            ),
        );
        extra.insert(
            "description".into(),
            format!(
                "Pods {pods} reached {dest} ({ip}) on {ports}, {} flow(s) forwarded by the network. The namespace may only reach: {}. A network policy that should block this is missing or too broad.",
                seen.count,
                expected.join("; ")
            ),
        );
        Some(Hit {
            namespace: src.namespace.to_string(),
            destination: dest,
            extra,
            earlier: None,
        })
    }
}

flow_detector!(Segmentation);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testing::{default_rule, flow_event as event, rule_in};
    use crate::flow::wire::Decoder;
    use crate::rules::fqdn_matches;
    use crate::sim::traffic::TrainingCluster;

    fn detector() -> Segmentation {
        Segmentation::new(default_rule("TrainingNamespaceSegmentation")).unwrap()
    }

    #[test]
    fn the_guides_allowed_traffic_is_quiet() {
        let mut d = detector();
        let mut decoder = Decoder::default();
        let mut cluster = TrainingCluster::new(8, 1_764_115_200_000_000_000, 1_000_000);
        for _ in 0..20_000 {
            let f = event(&mut decoder, cluster.next_flow());
            assert_eq!(d.check(&f), None, "{f:?}");
        }
    }

    #[test]
    fn a_remembered_answer_is_for_its_port_and_names_only() {
        let mut d = detector();
        let mut decoder = Decoder::default();
        let mut cluster = TrainingCluster::new(8, 1_764_115_200_000_000_000, 1_000_000);
        let port =
            |f: &crate::proto::flow::Flow| match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
                Some(crate::proto::flow::layer4::Protocol::Tcp(tcp)) => tcp.destination_port,
                _ => 0,
            };
        let peer = std::iter::repeat_with(|| cluster.next_flow())
            .find(|f| port(f) == 29500)
            .unwrap();
        let s3 = std::iter::repeat_with(|| cluster.next_flow())
            .find(|f| port(f) == 443)
            .unwrap();
        let mut on_22 = peer.clone();
        if let Some(crate::proto::flow::layer4::Protocol::Tcp(tcp)) =
            on_22.l4.as_mut().and_then(|l| l.protocol.as_mut())
        {
            tcp.destination_port = 22;
        }
        let mut unnamed = s3.clone();
        unnamed.destination_names.clear();
        for _ in 0..2 {
            // The same endpoints (shared by the decoder) with another port or without names.
            assert_eq!(d.check(&event(&mut decoder, peer.clone())), None);
            assert!(d.check(&event(&mut decoder, on_22.clone())).is_some());
            assert_eq!(d.check(&event(&mut decoder, s3.clone())), None);
            assert!(d.check(&event(&mut decoder, unnamed.clone())).is_some());
        }
    }

    #[test]
    fn address_blocks_allow_the_addresses_inside_them_only() {
        let pack = "- name: S\n  kind: segmentation\n  namespaces: { names: [ai-training] }\n  severity: critical\n  params:\n    allow:\n      - cidrs: [\"198.51.100.7/24\", \"2001:db8::/32\"]\n        ports: [443]\n";
        let mut d = Segmentation::new(rule_in(pack, "S")).unwrap();
        let mut decoder = Decoder::default();
        let upload = TrainingCluster::new(9, 1_764_115_200_000_000_000, 1_000_000)
            .exfiltration_attempt()[3]
            .clone();
        let to = |ip: &str| {
            let mut f = upload.clone();
            f.verdict = Verdict::Forwarded as i32;
            f.drop_reason_desc = 0;
            f.destination_names.clear();
            f.ip.as_mut().unwrap().destination = ip.into();
            f
        };
        // The block is the /24 around the address written in the rule.
        assert_eq!(d.check(&event(&mut decoder, to("198.51.100.250"))), None);
        assert!(d.check(&event(&mut decoder, to("198.51.101.1"))).is_some());
        assert!(d.check(&event(&mut decoder, to("203.0.113.9"))).is_some());
        let problems = crate::rules::load_text(&pack.replace("/24", "/33"), "r.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            problems.contains("\"198.51.100.7/33\" is not an address block"),
            "{problems}"
        );
    }

    #[test]
    fn forwarded_traffic_to_production_or_an_unknown_host_breaches() {
        let mut d = detector();
        let mut decoder = Decoder::default();
        let flows =
            TrainingCluster::new(9, 1_764_115_200_000_000_000, 1_000_000).exfiltration_attempt();
        // The same attempts, but a too-broad policy let them through.
        for template in [&flows[1], &flows[3]] {
            let mut f = template.clone();
            f.verdict = Verdict::Forwarded as i32;
            f.drop_reason_desc = 0;
            let breach = d.check(&event(&mut decoder, f)).expect("a breach");
            assert_eq!(breach.namespace, "ai-training");
            assert!(
                breach.extra["expected"].contains("trainer peers"),
                "{:?}",
                breach.extra
            );
        }
        // Denied traffic is the policy working: not a breach.
        assert_eq!(d.check(&event(&mut decoder, flows[1].clone())), None);
    }

    #[test]
    fn fqdn_patterns_and_blocks_match_precisely() {
        assert!(fqdn_matches(
            "*.s3.us-east-1.amazonaws.com",
            "training-data.s3.us-east-1.amazonaws.com."
        ));
        assert!(!fqdn_matches(
            "*.s3.us-east-1.amazonaws.com",
            "s3.us-east-1.amazonaws.com"
        ));
        assert!(!fqdn_matches(
            "*.s3.us-east-1.amazonaws.com",
            "evil-s3.us-east-1.amazonaws.com"
        ));
        // Resolvers randomise the case of queries; DNS names compare without it.
        assert!(fqdn_matches(
            "*.s3.us-east-1.amazonaws.com",
            "Training-Data.S3.us-east-1.AmazonAWS.com."
        ));
        assert!(!fqdn_matches(
            "*.s3.us-east-1.amazonaws.com",
            ".s3.us-east-1.amazonaws.com"
        ));
    }
}
