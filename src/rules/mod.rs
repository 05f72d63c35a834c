//! Rules: what the service looks for, as operators write it in `rules.dir`.
//!
//! - this module: the validated rule model ([`Rule`], one [`Kind`] per detector with its
//!   parameters), the namespace [`Selector`], and the default pack shipped in `rules/`;
//! - [`load`]: reading rule files, with every problem reported as `file:line`;
//! - [`template`]: the `{{ field }}` templates of labels and annotations.
//!
//! Every `*.yaml` file in `rules.dir` holds a list of rules:
//!
//! ```yaml
//! - name: TrainingPodUnexpectedEgress      # unique across the pack; the alertname
//!   kind: policy_denied                    # a detector: policy_denied | volume_spike
//!   namespaces: { names: [ai-training] }   # and/or labels: { team: ml } (namespace labels)
//!   severity: critical                     # info | warning | critical
//!   resolve_after: 10m                     # quiet period before the alert resolves
//!   params: { drop_reasons: [POLICY_DENIED, POLICY_DENY], direction: egress }
//!   labels: { team: security }             # extra labels, templated
//!   annotations: { dashboard: "https://grafana.example/d/egress?var-ns={{ namespace }}" }
//! ```
//!
//! Kinds: `policy_denied`, `volume_spike`, `scan`, `dns_exfiltration`, `segmentation`,
//! `coverage`, `new_destination` (see rules/README.md for each one's parameters).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::flow::intern::{Sym, SymList};

pub mod load;
pub mod runbooks;
pub mod template;

pub use load::{load_dir, load_text, parse_file};
use template::Template;

/// The rule pack shipped in `rules/`, used when no configuration names another.
pub const DEFAULT_PACK: &str = include_str!("../../rules/default.yaml");
/// The name of [`DEFAULT_PACK`] in messages.
pub const DEFAULT_PACK_NAME: &str = "rules/default.yaml";

/// The default pack, validated.
pub fn default_pack() -> Result<Vec<Rule>, RuleErrors> {
    load_text(DEFAULT_PACK, DEFAULT_PACK_NAME)
}

/// Prefix of the Cilium labels that carry a pod's namespace labels.
pub const NAMESPACE_LABEL_PREFIX: &str = "k8s:io.cilium.k8s.namespace.labels.";

/// Label names the service sets itself; rules may not override them.
pub const RESERVED_LABELS: [&str; 5] =
    ["alertname", "severity", "namespace", "destination", "rule"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Which namespaces a rule watches: by name, or by namespace labels (all must match).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub names: BTreeSet<String>,
    pub labels: BTreeMap<String, String>,
}

impl Selector {
    /// True when `namespace` (whose pods carry `pod_labels`) is selected.
    pub fn matches(&self, namespace: &str, pod_labels: &[crate::flow::intern::Sym]) -> bool {
        if namespace.is_empty() {
            return false;
        }
        if self.names.contains(namespace) {
            return true;
        }
        !self.labels.is_empty()
            && self.labels.iter().all(|(k, v)| {
                pod_labels.iter().any(|l| {
                    l.strip_prefix(NAMESPACE_LABEL_PREFIX)
                        .and_then(|kv| kv.split_once('='))
                        .is_some_and(|(lk, lv)| lk == k && lv == v)
                })
            })
    }
}

/// The last endpoint a detector asked about (its interned namespace and labels), and the
/// answer: flows of one pod follow each other and share their endpoint's strings, so most
/// flows cost two pointer comparisons instead of the question.
#[derive(Debug, Clone, Default)]
pub struct SelectorMemo {
    last: Option<(Sym, SymList, bool)>,
}

impl SelectorMemo {
    /// `ask()`, unless `namespace` and `labels` are the very strings asked about last.
    pub fn answer(
        &mut self,
        namespace: &Sym,
        labels: &SymList,
        ask: impl FnOnce() -> bool,
    ) -> bool {
        if let Some((ns, ls, answer)) = &self.last
            && Arc::ptr_eq(ns, namespace)
            && Arc::ptr_eq(ls, labels)
        {
            return *answer;
        }
        let answer = ask();
        self.last = Some((namespace.clone(), labels.clone(), answer));
        answer
    }
}

impl Selector {
    /// [`Selector::matches`] for an endpoint's interned namespace and labels, answered from
    /// `memo` when they are the strings asked about last.
    pub fn matches_endpoint(
        &self,
        memo: &mut SelectorMemo,
        namespace: &Sym,
        labels: &SymList,
    ) -> bool {
        memo.answer(namespace, labels, || self.matches(namespace, labels))
    }
}

/// Which traffic direction a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Egress,
    Ingress,
    Any,
}

/// Parameters of the `policy_denied` detector.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDeniedParams {
    /// `DropReason` codes that count as a policy denial.
    pub drop_reasons: BTreeSet<u32>,
    pub direction: Direction,
    /// Also count AUDIT verdicts (policy audit mode reports would-be denials that way).
    pub include_audit: bool,
    /// Prefix lengths that group world destinations without a name.
    pub world_prefix_v4: u8,
    pub world_prefix_v6: u8,
    /// Two reports of one packet (policy verdict and drop) closer than this count once.
    pub duplicate_window: Duration,
    /// Sample flow UUIDs kept per alert.
    pub samples: usize,
}

/// What a namespace's egress is compared with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BaselineModel {
    /// The mean of the last 7 days' hourly rates: the guide's `avg_over_time(...[7d:1h])`.
    Mean,
    /// The mean of the same hour of the week over the last 4 weeks.
    HourOfWeek,
    /// The median of the last 7 days' hourly rates; the rate must also be `threshold`
    /// robust standard deviations (1.4826 x MAD) above it.
    MedianMad { threshold: f64 },
}

impl BaselineModel {
    pub fn name(self) -> &'static str {
        match self {
            BaselineModel::Mean => "mean",
            BaselineModel::HourOfWeek => "hour_of_week",
            BaselineModel::MedianMad { .. } => "median_mad",
        }
    }
}

/// Parameters of the `volume_spike` detector.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeSpikeParams {
    pub model: BaselineModel,
    pub factor: f64,
    pub window: Duration,
    pub baseline: Duration,
    pub min_coverage: Duration,
    pub floor_bytes_per_second: f64,
    pub hold_for: Duration,
}

/// The detectors, a closed set.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    PolicyDenied(PolicyDeniedParams),
    VolumeSpike(VolumeSpikeParams),
    Scan(ScanParams),
    DnsExfiltration(DnsParams),
    Segmentation(SegmentationParams),
    Coverage(CoverageParams),
    NewDestination(NewDestinationParams),
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::PolicyDenied(_) => "policy_denied",
            Kind::VolumeSpike(_) => "volume_spike",
            Kind::Scan(_) => "scan",
            Kind::DnsExfiltration(_) => "dns_exfiltration",
            Kind::Segmentation(_) => "segmentation",
            Kind::Coverage(_) => "coverage",
            Kind::NewDestination(_) => "new_destination",
        }
    }
}

/// One kind of traffic a namespace may send: every field given must match.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Allowed {
    /// Destination namespaces.
    pub namespaces: Vec<String>,
    /// Destination pod labels, key to value.
    pub labels: BTreeMap<String, String>,
    /// Destination address blocks.
    pub cidrs: Vec<ipnet::IpNet>,
    /// Destination DNS names; a leading `*.` matches any subdomain.
    pub fqdns: Vec<String>,
    /// Destination ports (inclusive ranges); empty means any.
    pub ports: Vec<(u16, u16)>,
    /// What the entry is for, shown in alerts.
    pub description: String,
}

impl Allowed {
    /// True when this entry allows a destination: its namespace, Cilium labels
    /// ("source:key=value"), address, port and the DNS names it is known by.
    pub fn permits<'a, L, N>(
        &self,
        namespace: &str,
        labels: L,
        ip: Option<std::net::IpAddr>,
        port: u16,
        names: N,
    ) -> bool
    where
        L: IntoIterator<Item = &'a str> + Clone,
        N: IntoIterator<Item = &'a str>,
    {
        // Cheapest tests first: most flows are told apart by port or namespace.
        (self.ports.is_empty()
            || self
                .ports
                .iter()
                .any(|(lo, hi)| (*lo..=*hi).contains(&port)))
            && (self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace))
            && (self.cidrs.is_empty()
                || ip.is_some_and(|ip| self.cidrs.iter().any(|c| c.contains(&ip))))
            && (self.fqdns.is_empty()
                || names
                    .into_iter()
                    .any(|n| self.fqdns.iter().any(|p| fqdn_matches(p, n))))
            && self
                .labels
                .iter()
                .all(|(k, v)| labels.clone().into_iter().any(|l| label_is(l, k, v)))
    }
}

/// True when the Cilium label `label` ("source:key=value", the source prefix optional) reads
/// `key=value` after its source: the text after its first ':' (or all of it, without one)
/// splits at its first '=' into `key` and `value`. Decided from the label's end, so a label
/// of another length or value costs a comparison, not a search.
fn label_is(label: &str, key: &str, value: &str) -> bool {
    let b = label.as_bytes();
    let Some(at) = b.len().checked_sub(key.len() + 1 + value.len()) else {
        return false;
    };
    let (head, tail) = b.split_at(at);
    tail[key.len()] == b'='
        && tail.ends_with(value.as_bytes())
        && tail.starts_with(key.as_bytes())
        && !key.as_bytes().contains(&b'=')
        && match head {
            [] => !tail.contains(&b':'),
            [source @ .., b':'] => !source.contains(&b':'),
            _ => false,
        }
}

/// True when `name` (a DNS name, trailing dot or not, any case) matches `pattern`: a name, or
/// `*.` and a suffix that must follow at least one label.
pub fn fqdn_matches(pattern: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            let Some(head) = name.len().checked_sub(suffix.len() + 1) else {
                return false;
            };
            name.as_bytes()[head] == b'.'
                && name.as_bytes()[head + 1..].eq_ignore_ascii_case(suffix.as_bytes())
                && head > 0
        }
        None => name.eq_ignore_ascii_case(pattern),
    }
}

/// Parameters of the `new_destination` detector.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDestinationParams {
    /// How long a namespace is only learned from before anything new alerts.
    pub learning: Duration,
    /// How long a destination stays known after it was last seen.
    pub history: Duration,
    /// Destinations never reported; `*` matches any run of characters.
    pub allow: Vec<String>,
}

/// Parameters of the `coverage` detector.
#[derive(Debug, Clone, PartialEq)]
pub struct CoverageParams {
    pub window: Duration,
    /// Events Hubble reported lost within `window` that make a gap worth an alert.
    pub lost_events: u64,
    /// How long the Hubble stream may be down before it is an alert.
    pub stream_down_after: Duration,
}

/// Parameters of the `segmentation` detector.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SegmentationParams {
    pub allow: Vec<Allowed>,
}

/// Parameters of the `dns_exfiltration` detector.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsParams {
    /// How long the evidence of one pod and registered domain adds up.
    pub window: Duration,
    /// Distinct names a channel needs within the window: one lookup is not a data channel.
    pub min_names: usize,
    /// Bytes of data the names must carry within the window (estimated from their encoded
    /// labels), before the query-type and NXDOMAIN weights.
    pub min_encoded_bytes: u64,
    /// A label of the hostname alphabet counts as encoded from 16 characters, letters and
    /// digits mixed, with at least this Shannon entropy (bits per character).
    pub label_entropy: f64,
    /// A share of TXT/NULL queries at least this (once `min_queries` were seen) doubles the
    /// evidence: it is how a tunnel gets data back.
    pub txt_share: f64,
    /// A share of NXDOMAIN answers at least this (once `min_queries` were seen) doubles it.
    pub nxdomain_share: f64,
    pub min_queries: usize,
    /// Registered domains (and their subdomains) never reported, e.g. the cluster's own.
    pub allow: Vec<String>,
}

/// Parameters of the `scan` detector.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanParams {
    /// The sliding window distinct destinations and ports are counted in.
    pub window: Duration,
    /// Distinct destinations (FQDN, namespace/workload or address block) that make a scan.
    pub destinations: usize,
    /// Distinct (destination, port) pairs that make a scan.
    pub ports: usize,
}

/// One validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub kind: Kind,
    pub enabled: bool,
    pub namespaces: Selector,
    pub severity: Severity,
    pub resolve_after: Duration,
    pub labels: BTreeMap<String, Template>,
    pub annotations: BTreeMap<String, Template>,
    /// Where the rule was defined, "file:line".
    pub origin: String,
}

impl Rule {
    /// True when `other` behaves the same: every field but where it was written. A reload
    /// keeps the detector (and what it learned) of a rule that is only moved in its file.
    pub fn same_as(&self, other: &Rule) -> bool {
        let Rule {
            name,
            kind,
            enabled,
            namespaces,
            severity,
            resolve_after,
            labels,
            annotations,
            origin: _,
        } = self;
        *name == other.name
            && *kind == other.kind
            && *enabled == other.enabled
            && *namespaces == other.namespaces
            && *severity == other.severity
            && *resolve_after == other.resolve_after
            && *labels == other.labels
            && *annotations == other.annotations
    }
}

/// Every problem found in a rule pack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} problem(s) in the rules:\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct RuleErrors(pub Vec<RuleProblem>);

/// One problem: where, which rule, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProblem {
    pub file: String,
    pub line: usize,
    pub rule: String,
    pub field: String,
    pub message: String,
}

impl fmt::Display for RuleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: ", self.file, self.line)?;
        } else {
            write!(f, "{}: ", self.file)?;
        }
        if !self.rule.is_empty() {
            write!(f, "rule {}: ", self.rule)?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::label_is;
    use proptest::prelude::*;

    /// The definition `label_is` implements: strip the source up to the first ':', split
    /// the rest at its first '='.
    fn by_splitting(label: &str, key: &str, value: &str) -> bool {
        label
            .split_once(':')
            .map_or(label, |(_, rest)| rest)
            .split_once('=')
            == Some((key, value))
    }

    #[test]
    fn labels_match_after_their_source() {
        assert!(label_is("k8s:app=minio", "app", "minio"));
        assert!(label_is("app=minio", "app", "minio"));
        assert!(label_is("k8s:app=a=b", "app", "a=b"));
        assert!(label_is("k8s:app=a:b", "app", "a:b"));
        assert!(!label_is("k8s:app=minio2", "app", "minio"));
        assert!(!label_is("k8s:xapp=minio", "app", "minio"));
        assert!(!label_is("a:k8s:app=minio", "app", "minio"));
        assert!(!label_is("app=a:b", "app", "a:b"));
        assert!(!label_is("k8s:a=b=c", "a=b", "c"));
    }

    proptest! {
        /// Over labels, keys and values built from the characters that matter (':', '=')
        /// and a few others, `label_is` answers as splitting does.
        #[test]
        fn label_is_answers_as_splitting(
            label in "[a:=b]{0,8}",
            key in "[a:=b]{0,3}",
            value in "[a:=b]{0,3}",
        ) {
            prop_assert_eq!(label_is(&label, &key, &value), by_splitting(&label, &key, &value));
        }

        /// Labels made of a source, the key and the value, each possibly carrying ':' or '='.
        #[test]
        fn label_is_answers_as_splitting_on_likely_labels(
            source in "(|[a:]{0,3}:)",
            key in "[a:=]{0,3}",
            value in "[a:=]{0,3}",
        ) {
            let label = format!("{source}{key}={value}");
            prop_assert_eq!(label_is(&label, &key, &value), by_splitting(&label, &key, &value));
        }
    }
}
