//! The `segmentation` detector: the guide's intended connectivity, asserted continuously.
//!
//! A rule lists what a namespace may reach (destination namespaces, pod labels, address
//! blocks, DNS names, each with ports). A FORWARDED egress flow that matches no entry got
//! through the network although the segmentation says it should not: the policy that should
//! have stopped it is missing or too broad. One alert per (namespace, destination), grouped
//! like `policy_denied`'s, with the count, pods, ports and what was expected.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::Hit;
use crate::common::hash::FastMap;
use crate::flow::destination::{DEFAULT_GROUPING, DestinationRef};
use crate::flow::{FlowEvent, TrafficDirection, Verdict};
use crate::rules::{Allowed, Kind, Rule, SegmentationParams, SelectorMemo};

/// (namespace, destination) pairs counted at once.
const MAX_TRACKED: usize = 10_000;

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
            || self.entries.iter().any(|e| allows(e, flow))
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
