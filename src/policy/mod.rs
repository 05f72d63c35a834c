//! The policy advisor: least-privilege network policies from a namespace's flow history
//! ([`suggest`]), and candidate policies checked against that history before they are
//! applied ([`check`]).
//!
//! Both read the flow store's connections (flows folded by local endpoint, peer, port and
//! verdict), never single flows. Semantics and limits: docs/policy.md.

pub mod eval;
pub mod model;
mod render;
mod suggest;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Serialize;

pub use eval::{Decision, decide};
pub use model::{Flavor, Policy, PolicyError, parse};
pub use suggest::{LeftOut, Suggestion, suggest};

use crate::common::clock::format_time;
use crate::flow::{DropReason, Verdict};
use crate::flowstore::{Connection, ConnectionKey};
use crate::rules::{Allowed, Kind, Rule};

/// The segmentation rules' allow lists for `namespace`, by rule name.
pub fn segmentation<'a>(
    rules: impl IntoIterator<Item = &'a Rule>,
    namespace: &str,
) -> Vec<(String, Vec<Allowed>)> {
    rules
        .into_iter()
        .filter(|r| r.enabled && r.namespaces.names.contains(namespace))
        .filter_map(|r| match &r.kind {
            Kind::Segmentation(p) => Some((r.name.clone(), p.allow.clone())),
            _ => None,
        })
        .collect()
}

/// A connection's flows by peer address: each address with its flows, and the flows that
/// had none; one unit of all its flows when it keeps no address.
pub fn units(c: &Connection) -> Vec<(Option<IpAddr>, u64)> {
    let mut out: Vec<(Option<IpAddr>, u64)> =
        c.addresses.iter().map(|(ip, n)| (Some(*ip), *n)).collect();
    let counted: u64 = c.addresses.iter().map(|(_, n)| n).sum();
    if c.flows > counted || out.is_empty() {
        out.push((None, c.flows.saturating_sub(counted)));
    }
    out
}

/// True for a connection the network let through.
pub fn forwarded(key: &ConnectionKey) -> bool {
    key.verdict == Verdict::Forwarded as u32
}

/// True for a connection a network policy refused.
pub fn policy_denied(key: &ConnectionKey) -> bool {
    key.verdict == Verdict::Dropped as u32
        && (key.drop_reason == DropReason::PolicyDenied as u32
            || key.drop_reason == DropReason::PolicyDeny as u32)
}

/// Connections that share a source, destination and port, as a report shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Finding {
    /// Namespace and the identifying labels of the source.
    pub source: String,
    pub destination: String,
    /// "TCP/443".
    pub port: String,
    pub flows: u64,
    pub first_seen: String,
    pub last_seen: String,
    /// Up to eight pods of the namespace involved.
    pub pods: Vec<String>,
    /// Why it would be dropped, or which policies would allow it.
    pub reason: String,
}

/// What a set of candidate policies would have done to a namespace's history.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct CheckReport {
    pub namespace: String,
    pub since: String,
    pub until: String,
    /// "name (file:line)" of each policy that applies to the namespace.
    pub policies: Vec<String>,
    pub connections: usize,
    /// Forwarded flows the policies would have let through.
    pub forwarded_flows_kept: u64,
    /// Forwarded traffic the policies would drop: the reason to not apply them as they are.
    pub would_drop: Vec<Finding>,
    /// Policy-denied attempts the policies would let through.
    pub would_allow: Vec<Finding>,
    /// Policy-denied attempts the policies keep denied.
    pub still_denied: Vec<Finding>,
}

impl CheckReport {
    /// True when the policies would drop traffic that flowed.
    pub fn drops_traffic(&self) -> bool {
        !self.would_drop.is_empty()
    }
}

/// Evaluates `policies` against `connections` of `namespace`.
pub fn check(
    policies: &[Policy],
    connections: &[Connection],
    namespace: &str,
    since_ns: i64,
    until_ns: i64,
) -> CheckReport {
    let mut report = CheckReport {
        namespace: namespace.to_owned(),
        since: format_time(since_ns),
        until: format_time(until_ns),
        policies: policies
            .iter()
            .filter(|p| p.namespace == namespace)
            .map(|p| format!("{} ({})", p.name, p.origin))
            .collect(),
        connections: connections.len(),
        forwarded_flows_kept: 0,
        would_drop: Vec::new(),
        would_allow: Vec::new(),
        still_denied: Vec::new(),
    };
    let (mut drop, mut allow, mut denied) = (Group::default(), Group::default(), Group::default());
    let mut decider = eval::Decider::new(policies, namespace);
    // Addresses matter only to address rules: without any, each connection is decided once.
    let by_address = policies.iter().any(Policy::names_addresses);
    for c in connections {
        let units = if by_address {
            units(c)
        } else {
            vec![(None, c.flows)]
        };
        for (ip, flows) in units {
            let decision = decider.decide(&c.key, ip);
            match (forwarded(&c.key), policy_denied(&c.key), decision) {
                (true, _, Decision::Allowed(_)) => report.forwarded_flows_kept += flows,
                (true, _, Decision::Dropped(why)) => drop.add(c, ip, flows, why),
                (_, true, Decision::Allowed(by)) => {
                    allow.add(c, ip, flows, format!("allowed by {}", by.join(", ")))
                }
                (_, true, Decision::Dropped(why)) => denied.add(c, ip, flows, why),
                _ => {}
            }
        }
    }
    report.would_drop = drop.findings();
    report.would_allow = allow.findings();
    report.still_denied = denied.findings();
    report
}

/// A finding with its first and last time, pods and reasons while it is gathered.
type Gathered = (Finding, i64, i64, BTreeSet<String>, BTreeSet<String>);

/// Findings being gathered, by (source, destination, port).
#[derive(Default)]
struct Group {
    by: BTreeMap<(String, String, String), Gathered>,
}

impl Group {
    fn add(&mut self, c: &Connection, ip: Option<IpAddr>, flows: u64, reason: String) {
        // Without a unit's address, a single address still names the peer.
        let ip = ip.or(match c.addresses.as_slice() {
            [(only, _)] => Some(*only),
            _ => None,
        });
        let key = (
            source_text(&c.key, ip),
            destination_text(&c.key, ip),
            port_text(&c.key),
        );
        let entry = self.by.entry(key.clone()).or_insert_with(|| {
            (
                Finding {
                    source: key.0,
                    destination: key.1,
                    port: key.2,
                    flows: 0,
                    first_seen: String::new(),
                    last_seen: String::new(),
                    pods: Vec::new(),
                    reason: String::new(),
                },
                i64::MAX,
                i64::MIN,
                BTreeSet::new(),
                BTreeSet::new(),
            )
        });
        entry.0.flows += flows;
        entry.1 = entry.1.min(c.first_ns);
        entry.2 = entry.2.max(c.last_ns);
        for p in &c.pods {
            if entry.3.len() < 8 {
                entry.3.insert(p.to_string());
            }
        }
        entry.4.insert(reason);
    }

    fn findings(self) -> Vec<Finding> {
        let mut out: Vec<Finding> = self
            .by
            .into_values()
            .map(|(mut f, first, last, pods, reasons)| {
                f.first_seen = format_time(first);
                f.last_seen = format_time(last);
                f.pods = pods.into_iter().collect();
                f.reason = reasons.into_iter().collect::<Vec<_>>().join("; ");
                f
            })
            .collect();
        out.sort_by(|a, b| b.flows.cmp(&a.flows).then_with(|| a.source.cmp(&b.source)));
        out
    }
}

/// A namespace and the labels that identify an endpoint, e.g. "storage app=minio".
fn endpoint_text(namespace: &str, labels: &str, identity: u32) -> String {
    let all = eval::labels(labels);
    let chosen = suggest::identifying(&all);
    if namespace.is_empty() {
        return match all.iter().find(|l| l.source == "reserved") {
            Some(l) => format!("reserved:{}", l.key),
            None if identity != 0 => format!("identity {identity}"),
            None => "world".into(),
        };
    }
    let labels: Vec<String> = chosen.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if labels.is_empty() {
        namespace.to_owned()
    } else {
        format!("{namespace} {}", labels.join(","))
    }
}

fn source_text(k: &ConnectionKey, ip: Option<IpAddr>) -> String {
    let mut s = endpoint_text(&k.src_namespace, &k.src_labels, k.src_identity);
    if k.src_namespace.is_empty()
        && k.direction == 1
        && let Some(ip) = ip
    {
        s = format!("{s} {ip}");
    }
    s
}

fn destination_text(k: &ConnectionKey, ip: Option<IpAddr>) -> String {
    let mut s = endpoint_text(&k.dst_namespace, &k.dst_labels, k.dst_identity);
    if k.dst_namespace.is_empty() && k.direction != 1 {
        if !k.fqdn.is_empty() {
            s = format!("{s} {}", k.fqdn);
        } else if let Some(ip) = ip {
            s = format!("{s} {ip}");
        }
    }
    if !k.dns_query.is_empty() {
        s = format!("{s} (DNS {})", k.dns_query.trim_end_matches('.'));
    }
    s
}

fn port_text(k: &ConnectionKey) -> String {
    let p = crate::flowstore::json::protocol(k.protocol);
    match p {
        crate::flow::L4Protocol::Tcp
        | crate::flow::L4Protocol::Udp
        | crate::flow::L4Protocol::Sctp => {
            format!("{}/{}", p.as_str(), k.dst_port)
        }
        crate::flow::L4Protocol::Unknown => "-".into(),
        other => other.as_str().to_owned(),
    }
}

/// The report as text for a terminal.
pub fn report_text(r: &CheckReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "namespace {}: {} connections from {} to {}; policies: {}",
        r.namespace,
        r.connections,
        r.since,
        r.until,
        if r.policies.is_empty() {
            "none".into()
        } else {
            r.policies.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "forwarded flows the policies keep: {}",
        r.forwarded_flows_kept
    );
    for (title, list) in [
        ("WOULD DROP traffic that flowed", &r.would_drop),
        ("would ALLOW attempts that were denied", &r.would_allow),
        ("keep denied", &r.still_denied),
    ] {
        let flows: u64 = list.iter().map(|f| f.flows).sum();
        let _ = writeln!(out, "{title}: {} groups, {flows} flows", list.len());
        for f in list {
            let _ = writeln!(
                out,
                "  {} -> {} {}: {} flows, last {} (pods {}): {}",
                crate::common::text::printable(&f.source),
                crate::common::text::printable(&f.destination),
                f.port,
                f.flows,
                f.last_seen,
                crate::common::text::printable(&f.pods.join(", ")),
                crate::common::text::printable(&f.reason),
            );
        }
    }
    out
}
