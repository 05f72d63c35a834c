//! Suggested policies written as YAML for `kubectl apply`: every string double-quoted (so a
//! label value is never read as a number, a boolean or YAML syntax) and every comment made of
//! printable text only.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::IpAddr;

use ipnet::IpNet;

use super::model::{Flavor, NAMESPACE_KEY};
use crate::common::clock::format_time;
use crate::common::text::printable;

/// The pods a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Subject {
    pub labels: BTreeMap<String, String>,
}

/// Who is on the other side of a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerSpec {
    Pods {
        namespace: String,
        labels: BTreeMap<String, String>,
    },
    Entity(&'static str),
    Name(String),
    Address(IpAddr),
    Block(IpNet),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortSpec {
    pub protocol: &'static str,
    pub port: u16,
}

impl PortSpec {
    pub fn text(&self) -> String {
        format!("{}/{}", self.protocol, self.port)
    }
}

/// One rule to write, with what it was seen doing.
#[derive(Debug, Clone)]
pub struct RuleSpec {
    pub peers: Vec<PeerSpec>,
    pub ports: Vec<PortSpec>,
    /// DNS names seen through a port (Cilium only).
    pub dns: BTreeMap<PortSpec, Vec<String>>,
    pub flows: u64,
    pub last_ns: i64,
    pub pods: BTreeSet<String>,
}

fn q(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

fn comment(out: &mut String, indent: usize, text: &str) {
    let _ = writeln!(out, "{:indent$}# {}", "", printable(text));
}

fn match_labels(out: &mut String, indent: usize, labels: &BTreeMap<String, String>) {
    if labels.is_empty() {
        let _ = writeln!(out, "{:indent$}{{}}", "");
        return;
    }
    let _ = writeln!(out, "{:indent$}matchLabels:", "");
    for (k, v) in labels {
        let _ = writeln!(out, "{:w$}{}: {}", "", q(k), q(v), w = indent + 2);
    }
}

/// The policy's name: `exfilwatch-` and the subject's label values, as a DNS label.
fn name(subject: &Subject, taken: &mut BTreeSet<String>) -> String {
    let mut base: String = subject
        .labels
        .values()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("-")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if base.trim_matches('-').is_empty() {
        base = "all-pods".into();
    }
    let base = format!("exfilwatch-{}", base.trim_matches('-'));
    let base: String = base
        .chars()
        .take(56)
        .collect::<String>()
        .trim_end_matches('-')
        .to_owned();
    let mut candidate = base.clone();
    let mut n = 2;
    while !taken.insert(candidate.clone()) {
        candidate = format!("{base}-{n}");
        n += 1;
    }
    candidate
}

fn usage(rule: &RuleSpec) -> String {
    let pods: Vec<&str> = rule.pods.iter().map(String::as_str).collect();
    format!(
        "{} flows, pods {}, last seen {}",
        rule.flows,
        if pods.is_empty() {
            "-".into()
        } else {
            pods.join(", ")
        },
        format_time(rule.last_ns)
    )
}

/// The suggested policies as YAML documents.
pub fn policies(
    namespace: &str,
    flavor: Flavor,
    specs: &[(Subject, Vec<RuleSpec>, Vec<RuleSpec>)],
    window: (i64, i64),
) -> String {
    let mut out = String::new();
    comment(
        &mut out,
        0,
        &format!(
            "Suggested by exfilwatch from the flows of {namespace} between {} and {}: allows what was forwarded, nothing else. Review before applying.",
            format_time(window.0),
            format_time(window.1)
        ),
    );
    let mut taken = BTreeSet::new();
    // Default deny for every pod of the namespace, both ways.
    let _ = writeln!(out, "---");
    comment(
        &mut out,
        0,
        "Every pod of the namespace: only what the policies below allow gets through.",
    );
    match flavor {
        Flavor::Cilium => {
            header(
                &mut out,
                "cilium.io/v2",
                "CiliumNetworkPolicy",
                "exfilwatch-default-deny",
                namespace,
            );
            let _ = writeln!(
                out,
                "spec:\n  endpointSelector: {{}}\n  ingress:\n    - {{}}\n  egress:\n    - {{}}"
            );
        }
        Flavor::Kubernetes => {
            header(
                &mut out,
                "networking.k8s.io/v1",
                "NetworkPolicy",
                "exfilwatch-default-deny",
                namespace,
            );
            let _ = writeln!(
                out,
                "spec:\n  podSelector: {{}}\n  policyTypes:\n    - Ingress\n    - Egress"
            );
        }
    }
    taken.insert("exfilwatch-default-deny".to_owned());
    for (subject, egress, ingress) in specs {
        let policy_name = name(subject, &mut taken);
        let _ = writeln!(out, "---");
        let who: Vec<String> = subject
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        comment(
            &mut out,
            0,
            &format!(
                "Pods with {}",
                if who.is_empty() {
                    "any labels".into()
                } else {
                    who.join(", ")
                }
            ),
        );
        match flavor {
            Flavor::Cilium => {
                header(
                    &mut out,
                    "cilium.io/v2",
                    "CiliumNetworkPolicy",
                    &policy_name,
                    namespace,
                );
                let _ = writeln!(out, "spec:\n  endpointSelector:");
                match_labels(&mut out, 4, &subject.labels);
                for (section, rules, to) in [("egress", egress, true), ("ingress", ingress, false)]
                {
                    if rules.is_empty() {
                        continue;
                    }
                    let _ = writeln!(out, "  {section}:");
                    for rule in rules {
                        cilium_rule(&mut out, rule, to);
                    }
                }
            }
            Flavor::Kubernetes => {
                header(
                    &mut out,
                    "networking.k8s.io/v1",
                    "NetworkPolicy",
                    &policy_name,
                    namespace,
                );
                let _ = writeln!(out, "spec:\n  podSelector:");
                match_labels(&mut out, 4, &subject.labels);
                let _ = writeln!(out, "  policyTypes:");
                if !ingress.is_empty() {
                    let _ = writeln!(out, "    - Ingress");
                }
                if !egress.is_empty() {
                    let _ = writeln!(out, "    - Egress");
                }
                for (section, rules, to) in [("egress", egress, true), ("ingress", ingress, false)]
                {
                    if rules.is_empty() {
                        continue;
                    }
                    let _ = writeln!(out, "  {section}:");
                    for rule in rules {
                        kubernetes_rule(&mut out, rule, namespace, to);
                    }
                }
            }
        }
    }
    out
}

fn header(out: &mut String, api: &str, kind: &str, name: &str, namespace: &str) {
    let _ = writeln!(
        out,
        "apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {}\n  namespace: {}\n  labels:\n    \"app.kubernetes.io/managed-by\": \"exfilwatch\"",
        q(name),
        q(namespace)
    );
}

fn cilium_rule(out: &mut String, rule: &RuleSpec, to: bool) {
    let dir = if to { "to" } else { "from" };
    comment(out, 4, &usage(rule));
    let mut first = true;
    let mut field = |out: &mut String, name: &str| {
        let dash = if first { "- " } else { "  " };
        first = false;
        let _ = writeln!(out, "    {dash}{name}:");
    };
    let pods: Vec<&PeerSpec> = rule
        .peers
        .iter()
        .filter(|p| matches!(p, PeerSpec::Pods { .. }))
        .collect();
    if !pods.is_empty() {
        field(out, &format!("{dir}Endpoints"));
        for p in pods {
            if let PeerSpec::Pods { namespace, labels } = p {
                let mut all = labels.clone();
                all.insert(NAMESPACE_KEY.to_owned(), namespace.clone());
                let _ = writeln!(out, "        - matchLabels:");
                for (k, v) in &all {
                    let _ = writeln!(out, "            {}: {}", q(k), q(v));
                }
            }
        }
    }
    let entities: Vec<&str> = rule
        .peers
        .iter()
        .filter_map(|p| match p {
            PeerSpec::Entity(e) => Some(*e),
            _ => None,
        })
        .collect();
    if !entities.is_empty() {
        field(out, &format!("{dir}Entities"));
        for e in entities {
            let _ = writeln!(out, "        - {}", q(e));
        }
    }
    let names: Vec<&str> = rule
        .peers
        .iter()
        .filter_map(|p| match p {
            PeerSpec::Name(n) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    if !names.is_empty() {
        field(out, "toFQDNs");
        for n in names {
            let _ = writeln!(out, "        - matchName: {}", q(n));
        }
    }
    let blocks: Vec<String> = rule
        .peers
        .iter()
        .filter_map(|p| match p {
            PeerSpec::Address(ip) => Some(IpNet::from(*ip).to_string()),
            PeerSpec::Block(b) => Some(b.to_string()),
            _ => None,
        })
        .collect();
    if !blocks.is_empty() {
        field(out, &format!("{dir}CIDR"));
        for b in blocks {
            let _ = writeln!(out, "        - {}", q(&b));
        }
    }
    field(out, "toPorts");
    let (with_dns, plain): (Vec<&PortSpec>, Vec<&PortSpec>) =
        rule.ports.iter().partition(|p| rule.dns.contains_key(*p));
    if !plain.is_empty() {
        let _ = writeln!(out, "        - ports:");
        for p in plain {
            let _ = writeln!(
                out,
                "            - port: {}\n              protocol: {}",
                q(&p.port.to_string()),
                p.protocol
            );
        }
    }
    for p in with_dns {
        let _ = writeln!(out, "        - ports:");
        let _ = writeln!(
            out,
            "            - port: {}\n              protocol: {}",
            q(&p.port.to_string()),
            p.protocol
        );
        let _ = writeln!(out, "          rules:\n            dns:");
        for n in &rule.dns[p] {
            let _ = writeln!(out, "              - matchName: {}", q(n));
        }
    }
}

fn kubernetes_rule(out: &mut String, rule: &RuleSpec, namespace: &str, to: bool) {
    let dir = if to { "to" } else { "from" };
    comment(out, 4, &usage(rule));
    let _ = writeln!(out, "    - {dir}:");
    for p in &rule.peers {
        match p {
            PeerSpec::Pods {
                namespace: ns,
                labels,
            } => {
                if ns == namespace {
                    let _ = writeln!(out, "        - podSelector:");
                    match_labels(out, 12, labels);
                } else {
                    let _ = writeln!(out, "        - namespaceSelector:");
                    let _ = writeln!(
                        out,
                        "            matchLabels:\n              \"kubernetes.io/metadata.name\": {}",
                        q(ns)
                    );
                    let _ = writeln!(out, "          podSelector:");
                    match_labels(out, 12, labels);
                }
            }
            PeerSpec::Address(ip) => {
                let _ = writeln!(
                    out,
                    "        - ipBlock:\n            cidr: {}",
                    q(&IpNet::from(*ip).to_string())
                );
            }
            PeerSpec::Block(b) => {
                let _ = writeln!(
                    out,
                    "        - ipBlock:\n            cidr: {}",
                    q(&b.to_string())
                );
            }
            // Not written for Kubernetes: the suggestion turns these into addresses.
            PeerSpec::Entity(_) | PeerSpec::Name(_) => {}
        }
    }
    let _ = writeln!(out, "      ports:");
    for p in &rule.ports {
        let _ = writeln!(
            out,
            "        - protocol: {}\n          port: {}",
            p.protocol, p.port
        );
    }
}
