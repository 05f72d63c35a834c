//! The rule format and its loader.
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
//!   annotations: { runbook_url: "https://runbooks.example/egress?ns={{ namespace }}" }
//! ```
//!
//! Loading checks everything and reports every problem as `file:line: rule NAME: field:
//! message`; a pack with any problem is refused whole, so the service never runs half a rule
//! set. serde's YAML values carry no positions, so a rule's line is the line of its `name`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::template::Template;
use crate::config::{parse_duration, parse_yaml};
use crate::flow::DropReason;

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
    pub fn matches(&self, namespace: &str, pod_labels: &[crate::intern::Sym]) -> bool {
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
    pub cidrs: Vec<(std::net::IpAddr, u8)>,
    /// Destination DNS names; a leading `*.` matches any subdomain.
    pub fqdns: Vec<String>,
    /// Destination ports (inclusive ranges); empty means any.
    pub ports: Vec<(u16, u16)>,
    /// What the entry is for, shown in alerts.
    pub description: String,
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
    pub window: Duration,
    /// A label at least this long is suspicious on its own.
    pub max_label_length: usize,
    /// A label of 20+ characters, no hyphen, letters and digits mixed, with at least this
    /// much Shannon entropy (bits per character) looks like encoded data.
    pub max_label_entropy: f64,
    /// Distinct names under one registered domain per window.
    pub unique_subdomains: usize,
    /// Share of TXT/NULL queries to one registered domain, once it had `min_queries`.
    pub txt_share: f64,
    /// Share of NXDOMAIN answers from one registered domain, once it had `min_queries`.
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    kind: String,
    #[serde(default)]
    enabled: Option<bool>,
    namespaces: RawSelector,
    severity: String,
    #[serde(default)]
    resolve_after: Option<String>,
    #[serde(default)]
    params: Option<Value>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawSelector {
    names: Vec<String>,
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawPolicyDenied {
    drop_reasons: Option<Vec<String>>,
    direction: Option<Direction>,
    include_audit: Option<bool>,
    world_prefix_v4: Option<u8>,
    world_prefix_v6: Option<u8>,
    duplicate_window: Option<String>,
    samples: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawVolumeSpike {
    model: Option<String>,
    mad_threshold: Option<f64>,
    factor: Option<f64>,
    window: Option<String>,
    baseline: Option<String>,
    min_coverage: Option<String>,
    floor_bytes_per_second: Option<f64>,
    #[serde(rename = "for")]
    hold_for: Option<String>,
}

/// Collects problems for one rule.
struct Report<'a> {
    file: &'a str,
    line: usize,
    rule: String,
    problems: &'a mut Vec<RuleProblem>,
}

impl Report<'_> {
    fn problem(&mut self, field: &str, message: impl Into<String>) {
        self.problems.push(RuleProblem {
            file: self.file.to_owned(),
            line: self.line,
            rule: self.rule.clone(),
            field: field.to_owned(),
            message: message.into(),
        });
    }

    fn duration(&mut self, field: &str, value: Option<&str>, default: Duration) -> Duration {
        match value.map(parse_duration) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.problem(field, e);
                default
            }
        }
    }
}

/// The line of the `name: NAME` entry of rule `index` (1-based), or of the list's n-th item.
fn rule_line(text: &str, name: Option<&str>, index: usize) -> usize {
    if let Some(name) = name {
        for (i, line) in text.lines().enumerate() {
            let t = line.trim_start().trim_start_matches("- ").trim();
            if let Some(v) = t.strip_prefix("name:")
                && v.trim().trim_matches(|c| c == '"' || c == '\'') == name
            {
                return i + 1;
            }
        }
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("- "))
        .nth(index)
        .map_or(1, |(i, _)| i + 1)
}

fn drop_reason_code(name: &str) -> Option<u32> {
    DropReason::from_str_name(name).map(|r| r as u32)
}

fn policy_denied(raw: Option<Value>, report: &mut Report<'_>) -> PolicyDeniedParams {
    let p: RawPolicyDenied = match raw.map(serde_yaml_ng::from_value).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            report.problem("params", params_message(&e.to_string()));
            RawPolicyDenied::default()
        }
    };
    let mut drop_reasons = BTreeSet::new();
    for name in p
        .drop_reasons
        .unwrap_or_else(|| vec!["POLICY_DENIED".into(), "POLICY_DENY".into()])
    {
        match drop_reason_code(&name) {
            Some(code) if code != 0 => {
                drop_reasons.insert(code);
            }
            _ => report.problem(
                "params.drop_reasons",
                format!("{name:?} is not a Hubble drop reason (e.g. POLICY_DENIED, POLICY_DENY, AUTH_REQUIRED)"),
            ),
        }
    }
    if drop_reasons.is_empty() {
        report.problem("params.drop_reasons", "must name at least one drop reason");
    }
    let world_prefix_v4 = p.world_prefix_v4.unwrap_or(24);
    if !(8..=32).contains(&world_prefix_v4) {
        report.problem(
            "params.world_prefix_v4",
            format!("{world_prefix_v4} is not between 8 and 32"),
        );
    }
    let world_prefix_v6 = p.world_prefix_v6.unwrap_or(64);
    if !(16..=128).contains(&world_prefix_v6) {
        report.problem(
            "params.world_prefix_v6",
            format!("{world_prefix_v6} is not between 16 and 128"),
        );
    }
    let samples = p.samples.unwrap_or(10);
    if !(1..=100).contains(&samples) {
        report.problem(
            "params.samples",
            format!("{samples} is not between 1 and 100"),
        );
    }
    PolicyDeniedParams {
        drop_reasons,
        direction: p.direction.unwrap_or(Direction::Egress),
        include_audit: p.include_audit.unwrap_or(false),
        world_prefix_v4,
        world_prefix_v6,
        duplicate_window: report.duration(
            "params.duplicate_window",
            p.duplicate_window.as_deref(),
            Duration::from_secs(1),
        ),
        samples,
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawNewDestination {
    learning: Option<String>,
    history: Option<String>,
    allow: Vec<String>,
}

fn new_destination(raw: Option<Value>, report: &mut Report<'_>) -> NewDestinationParams {
    let p: RawNewDestination = match raw.map(serde_yaml_ng::from_value).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            report.problem("params", params_message(&e.to_string()));
            RawNewDestination::default()
        }
    };
    let history = report.duration(
        "params.history",
        p.history.as_deref(),
        Duration::from_secs(7 * 86_400),
    );
    if history < Duration::from_secs(3600) {
        report.problem(
            "params.history",
            format!("{history:?} is shorter than an hour"),
        );
    }
    NewDestinationParams {
        learning: report.duration(
            "params.learning",
            p.learning.as_deref(),
            Duration::from_secs(86_400),
        ),
        history,
        allow: p.allow,
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawCoverage {
    window: Option<String>,
    lost_events: Option<u64>,
    stream_down_after: Option<String>,
}

fn coverage(raw: Option<Value>, report: &mut Report<'_>) -> CoverageParams {
    let p: RawCoverage = match raw.map(serde_yaml_ng::from_value).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            report.problem("params", params_message(&e.to_string()));
            RawCoverage::default()
        }
    };
    let lost_events = p.lost_events.unwrap_or(1000);
    if lost_events == 0 {
        report.problem("params.lost_events", "must be at least 1");
    }
    CoverageParams {
        window: report.duration(
            "params.window",
            p.window.as_deref(),
            Duration::from_secs(300),
        ),
        lost_events: lost_events.max(1),
        stream_down_after: report.duration(
            "params.stream_down_after",
            p.stream_down_after.as_deref(),
            Duration::from_secs(120),
        ),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawSegmentation {
    allow: Vec<RawAllowed>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawAllowed {
    description: String,
    namespaces: Vec<String>,
    labels: BTreeMap<String, String>,
    cidrs: Vec<String>,
    fqdns: Vec<String>,
    ports: Vec<serde_yaml_ng::Value>,
}

fn segmentation(raw: Option<Value>, report: &mut Report<'_>) -> SegmentationParams {
    let p: RawSegmentation = match raw.map(serde_yaml_ng::from_value).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            report.problem("params", params_message(&e.to_string()));
            RawSegmentation::default()
        }
    };
    if p.allow.is_empty() {
        report.problem("params.allow", "lists nothing: every flow would alert");
    }
    let mut allow = Vec::new();
    for (i, a) in p.allow.into_iter().enumerate() {
        let field = format!("params.allow[{i}]");
        if a.namespaces.is_empty()
            && a.labels.is_empty()
            && a.cidrs.is_empty()
            && a.fqdns.is_empty()
            && a.ports.is_empty()
        {
            report.problem(
                &field,
                "matches everything: give namespaces, labels, cidrs, fqdns or ports",
            );
        }
        let mut cidrs = Vec::new();
        for c in &a.cidrs {
            let parsed = c.split_once('/').and_then(|(ip, bits)| {
                Some((
                    ip.parse::<std::net::IpAddr>().ok()?,
                    bits.parse::<u8>().ok()?,
                ))
            });
            match parsed {
                Some((ip, bits)) if bits <= if ip.is_ipv4() { 32 } else { 128 } => {
                    cidrs.push((ip, bits))
                }
                _ => report.problem(
                    &format!("{field}.cidrs"),
                    format!("{c:?} is not an address block like 10.0.0.0/8"),
                ),
            }
        }
        let mut ports = Vec::new();
        for v in &a.ports {
            let text = match v {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                other => format!("{other:?}"),
            };
            let range = match text.split_once('-') {
                Some((lo, hi)) => lo
                    .trim()
                    .parse::<u16>()
                    .ok()
                    .zip(hi.trim().parse::<u16>().ok()),
                None => text.trim().parse::<u16>().ok().map(|p| (p, p)),
            };
            match range {
                Some((lo, hi)) if lo > 0 && lo <= hi => ports.push((lo, hi)),
                _ => report.problem(
                    &format!("{field}.ports"),
                    format!("{text:?} is not a port or a range like 29500-29501"),
                ),
            }
        }
        allow.push(Allowed {
            namespaces: a.namespaces,
            labels: a.labels,
            cidrs,
            fqdns: a
                .fqdns
                .into_iter()
                .map(|f| f.to_ascii_lowercase())
                .collect(),
            ports,
            description: a.description,
        });
    }
    SegmentationParams { allow }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawDns {
    window: Option<String>,
    max_label_length: Option<usize>,
    max_label_entropy: Option<f64>,
    unique_subdomains: Option<usize>,
    txt_share: Option<f64>,
    nxdomain_share: Option<f64>,
    min_queries: Option<usize>,
    allow: Option<Vec<String>>,
}

fn dns(raw: Option<Value>, report: &mut Report<'_>) -> DnsParams {
    let p: RawDns = match raw.map(serde_yaml_ng::from_value).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            report.problem("params", params_message(&e.to_string()));
            RawDns::default()
        }
    };
    let share = |field: &str, v: Option<f64>, default: f64, report: &mut Report<'_>| {
        let v = v.unwrap_or(default);
        if !(v > 0.0 && v <= 1.0) {
            report.problem(field, format!("{v} must be in (0, 1]"));
        }
        v
    };
    let txt_share = share("params.txt_share", p.txt_share, 0.5, report);
    let nxdomain_share = share("params.nxdomain_share", p.nxdomain_share, 0.5, report);
    let max_label_length = p.max_label_length.unwrap_or(56);
    if !(8..=63).contains(&max_label_length) {
        report.problem(
            "params.max_label_length",
            format!("{max_label_length} is not between 8 and 63"),
        );
    }
    let max_label_entropy = p.max_label_entropy.unwrap_or(3.5);
    if !(max_label_entropy > 1.0 && max_label_entropy <= 6.0) {
        report.problem(
            "params.max_label_entropy",
            format!("{max_label_entropy} is not in (1, 6]"),
        );
    }
    DnsParams {
        window: report.duration(
            "params.window",
            p.window.as_deref(),
            Duration::from_secs(300),
        ),
        max_label_length,
        max_label_entropy,
        unique_subdomains: p.unique_subdomains.unwrap_or(50).max(2),
        txt_share,
        nxdomain_share,
        min_queries: p.min_queries.unwrap_or(20).max(1),
        allow: p.allow.unwrap_or_else(|| vec!["cluster.local".into()]),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawScan {
    window: Option<String>,
    destinations: Option<usize>,
    ports: Option<usize>,
}

fn scan(raw: Option<Value>, report: &mut Report<'_>) -> ScanParams {
    let p: RawScan = match raw.map(serde_yaml_ng::from_value).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            report.problem("params", params_message(&e.to_string()));
            RawScan::default()
        }
    };
    let mut count = |field: &str, value: Option<usize>, default: usize| {
        let n = value.unwrap_or(default);
        if !(2..=100_000).contains(&n) {
            report.problem(field, format!("{n} is not between 2 and 100000"));
        }
        n
    };
    let destinations = count("params.destinations", p.destinations, 20);
    let ports = count("params.ports", p.ports, 50);
    let window = report.duration(
        "params.window",
        p.window.as_deref(),
        Duration::from_secs(60),
    );
    if window.is_zero() || window > Duration::from_secs(3600) {
        report.problem(
            "params.window",
            format!("{window:?} must be above zero and at most 1h"),
        );
    }
    ScanParams {
        window,
        destinations,
        ports,
    }
}

fn volume_spike(raw: Option<Value>, report: &mut Report<'_>) -> VolumeSpikeParams {
    let p: RawVolumeSpike = match raw.map(serde_yaml_ng::from_value).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            report.problem("params", params_message(&e.to_string()));
            RawVolumeSpike::default()
        }
    };
    let factor = p.factor.unwrap_or(1.5);
    if !(factor.is_finite() && factor > 1.0) {
        report.problem(
            "params.factor",
            format!("{factor} must be a number above 1"),
        );
    }
    let floor = p.floor_bytes_per_second.unwrap_or(0.0);
    if !(floor.is_finite() && floor >= 0.0) {
        report.problem(
            "params.floor_bytes_per_second",
            format!("{floor} must be zero or more"),
        );
    }
    let mad_threshold = p.mad_threshold.unwrap_or(3.0);
    if !(mad_threshold.is_finite() && mad_threshold > 0.0) {
        report.problem(
            "params.mad_threshold",
            format!("{mad_threshold} must be a number above 0"),
        );
    }
    let model = match p.model.as_deref().unwrap_or("mean") {
        "mean" => BaselineModel::Mean,
        "hour_of_week" => BaselineModel::HourOfWeek,
        "median_mad" => BaselineModel::MedianMad {
            threshold: mad_threshold,
        },
        other => {
            report.problem(
                "params.model",
                format!("{other:?} is not one of mean, hour_of_week, median_mad"),
            );
            BaselineModel::Mean
        }
    };
    VolumeSpikeParams {
        model,
        factor,
        window: report.duration(
            "params.window",
            p.window.as_deref(),
            Duration::from_secs(600),
        ),
        baseline: report.duration(
            "params.baseline",
            p.baseline.as_deref(),
            Duration::from_secs(7 * 86_400),
        ),
        min_coverage: report.duration(
            "params.min_coverage",
            p.min_coverage.as_deref(),
            Duration::from_secs(3 * 86_400),
        ),
        floor_bytes_per_second: floor,
        hold_for: report.duration("params.for", p.hold_for.as_deref(), Duration::ZERO),
    }
}

/// serde's message for a params mapping, with a suggestion for a misspelt key.
fn params_message(message: &str) -> String {
    let mut m = message.to_owned();
    if let Some(cut) = m.find(" at line ") {
        m.truncate(cut);
    }
    crate::config::suggest(&m).map_or(m.clone(), |hint| m + &hint)
}

fn validate(raw: RawRule, report: &mut Report<'_>) -> Rule {
    let kind = match raw.kind.as_str() {
        "policy_denied" => Kind::PolicyDenied(policy_denied(raw.params, report)),
        "volume_spike" => Kind::VolumeSpike(volume_spike(raw.params, report)),
        "scan" => Kind::Scan(scan(raw.params, report)),
        "dns_exfiltration" => Kind::DnsExfiltration(dns(raw.params, report)),
        "segmentation" => Kind::Segmentation(segmentation(raw.params, report)),
        "coverage" => Kind::Coverage(coverage(raw.params, report)),
        "new_destination" => Kind::NewDestination(new_destination(raw.params, report)),
        other => {
            report.problem(
                "kind",
                format!("unknown detector {other:?}; known: policy_denied, volume_spike, scan, dns_exfiltration, segmentation, coverage, new_destination"),
            );
            Kind::PolicyDenied(policy_denied(None, report))
        }
    };
    let enabled = raw.enabled.unwrap_or(true);
    let severity = match raw.severity.as_str() {
        "info" => Severity::Info,
        "warning" => Severity::Warning,
        "critical" => Severity::Critical,
        other => {
            report.problem(
                "severity",
                format!("{other:?} is not one of info, warning, critical"),
            );
            Severity::Warning
        }
    };
    let namespaces = Selector {
        names: raw.namespaces.names.into_iter().collect(),
        labels: raw.namespaces.labels,
    };
    if namespaces.names.is_empty() && namespaces.labels.is_empty() {
        report.problem("namespaces", "selects nothing: give names, labels or both");
    }
    for name in &namespaces.names {
        if name.is_empty()
            || name.len() > 63
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            report.problem(
                "namespaces.names",
                format!("{name:?} is not a valid namespace name"),
            );
        }
    }
    for (k, v) in &namespaces.labels {
        if k.is_empty() || k.contains('=') || v.contains('=') {
            report.problem(
                "namespaces.labels",
                format!("{k:?}: {v:?} is not a label key and value"),
            );
        }
    }
    let templates = |field: &str, map: BTreeMap<String, String>, report: &mut Report<'_>| {
        let mut out = BTreeMap::new();
        for (key, text) in map {
            if field == "labels" && RESERVED_LABELS.contains(&key.as_str()) {
                report.problem(
                    &format!("labels.{key}"),
                    "is set by exfilwatch and cannot be overridden",
                );
            }
            match Template::parse(&text) {
                Ok(t) => {
                    out.insert(key, t);
                }
                Err(e) => report.problem(&format!("{field}.{key}"), e),
            }
        }
        out
    };
    let labels = templates("labels", raw.labels, report);
    let annotations = templates("annotations", raw.annotations, report);
    let resolve_after = report.duration(
        "resolve_after",
        raw.resolve_after.as_deref(),
        Duration::from_secs(600),
    );
    Rule {
        name: raw.name,
        kind,
        enabled,
        namespaces,
        severity,
        resolve_after,
        labels,
        annotations,
        origin: format!("{}:{}", report.file, report.line),
    }
}

/// Parses the rules in one file's text; problems are appended to `problems`.
pub fn parse_file(text: &str, file: &str, problems: &mut Vec<RuleProblem>) -> Vec<Rule> {
    let items: Vec<Value> = if text.trim().is_empty() {
        Vec::new()
    } else {
        match parse_yaml::<Option<Vec<Value>>>(text) {
            Ok(items) => items.unwrap_or_default(),
            Err(message) => {
                let (line, message) = message
                    .split_once(':')
                    .and_then(|(l, rest)| {
                        Some((l.parse().ok()?, rest.split_once(": ")?.1.to_owned()))
                    })
                    .unwrap_or((1, format!("expected a list of rules: {message}")));
                problems.push(RuleProblem {
                    file: file.into(),
                    line,
                    rule: String::new(),
                    field: String::new(),
                    message,
                });
                return Vec::new();
            }
        }
    };
    let mut rules = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let name = item.get("name").and_then(Value::as_str).map(str::to_owned);
        let line = rule_line(text, name.as_deref(), index);
        let mut report = Report {
            file,
            line,
            rule: name.clone().unwrap_or_else(|| format!("#{}", index + 1)),
            problems,
        };
        match serde_yaml_ng::from_value::<RawRule>(item) {
            Ok(raw) => rules.push(validate(raw, &mut report)),
            Err(e) => report.problem("", params_message(&e.to_string())),
        }
    }
    rules
}

/// Loads every `*.yaml`/`*.yml` file in `dir`, all or nothing.
pub fn load_dir(dir: &Path) -> Result<Vec<Rule>, RuleErrors> {
    let mut problems = Vec::new();
    let mut rules = Vec::new();
    let dir_name = dir.display().to_string();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            return Err(RuleErrors(vec![RuleProblem {
                file: dir_name,
                line: 0,
                rule: String::new(),
                field: "rules.dir".into(),
                message: e.to_string(),
            }]));
        }
    };
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    paths.sort();
    for path in paths {
        let file = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => rules.extend(parse_file(&text, &file, &mut problems)),
            Err(e) => problems.push(RuleProblem {
                file,
                line: 0,
                rule: String::new(),
                field: String::new(),
                message: e.to_string(),
            }),
        }
    }
    check_unique(&rules, &mut problems);
    if problems.is_empty() {
        Ok(rules)
    } else {
        Err(RuleErrors(problems))
    }
}

/// Parses a pack given as text (the demo's embedded rules).
pub fn load_text(text: &str, name: &str) -> Result<Vec<Rule>, RuleErrors> {
    let mut problems = Vec::new();
    let rules = parse_file(text, name, &mut problems);
    check_unique(&rules, &mut problems);
    if problems.is_empty() {
        Ok(rules)
    } else {
        Err(RuleErrors(problems))
    }
}

fn check_unique(rules: &[Rule], problems: &mut Vec<RuleProblem>) {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for rule in rules {
        if let Some(first) = seen.insert(&rule.name, &rule.origin) {
            let (file, line) = rule.origin.rsplit_once(':').unwrap_or((&rule.origin, "0"));
            problems.push(RuleProblem {
                file: file.into(),
                line: line.parse().unwrap_or(0),
                rule: rule.name.clone(),
                field: "name".into(),
                message: format!("already defined at {first}"),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACK: &str = include_str!("../../rules/segmentation.yaml");

    fn problems(text: &str) -> Vec<String> {
        match load_text(text, "r.yaml") {
            Ok(_) => Vec::new(),
            Err(RuleErrors(p)) => p.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_default_pack_loads() {
        let rules = load_text(PACK, "segmentation.yaml").unwrap();
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "TrainingPodUnexpectedEgress",
                "TrainingDataEgressVolumeSpike",
                "TrainingPodScanning",
                "TrainingPodDnsExfiltration",
                "TrainingNamespaceSegmentation",
                "ExfilwatchCoverageGap",
                "TrainingPodNewDestination"
            ]
        );
        let Kind::PolicyDenied(p) = &rules[0].kind else {
            panic!()
        };
        assert_eq!(p.drop_reasons, BTreeSet::from([133, 181]));
        assert_eq!(p.direction, Direction::Egress);
        assert!(rules[0].namespaces.names.contains("ai-training"));
        assert!(rules[1].enabled);
        let Kind::VolumeSpike(v) = &rules[1].kind else {
            panic!()
        };
        assert_eq!((v.factor, v.min_coverage.as_secs()), (1.5, 3 * 86_400));
    }

    #[test]
    fn an_unknown_detector_is_named_with_file_line_and_rule() {
        let p = problems(
            "- name: A\n  kind: policy_deny\n  namespaces: { names: [x] }\n  severity: critical\n",
        );
        assert_eq!(
            p,
            [
                "r.yaml:1: rule A: kind: unknown detector \"policy_deny\"; known: policy_denied, volume_spike, scan, dns_exfiltration, segmentation, coverage, new_destination"
            ]
        );
    }

    #[test]
    fn a_misspelt_field_gets_a_suggestion() {
        let p = problems(
            "- name: A\n  kind: policy_denied\n  namespace: { names: [x] }\n  severity: critical\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("r.yaml:1: rule A: unknown field `namespace`"),
            "{}",
            p[0]
        );
        assert!(p[0].contains("did you mean `namespaces`?"), "{}", p[0]);
        let p = problems(
            "- name: A\n  kind: policy_denied\n  namespaces: { names: [x] }\n  severity: critical\n  params: { drop_reason: [POLICY_DENY] }\n",
        );
        assert!(
            p[0].contains("params: unknown field `drop_reason`")
                && p[0].contains("did you mean `drop_reasons`?"),
            "{}",
            p[0]
        );
    }

    #[test]
    fn bad_selectors_templates_and_values_are_each_reported() {
        let text = "\
- name: A
  kind: policy_denied
  namespaces: {}
  severity: urgent
- name: B
  kind: policy_denied
  namespaces: { names: [Bad_NS] }
  severity: critical
  params: { drop_reasons: [POLICY_DENIED, NOT_A_REASON], world_prefix_v4: 40 }
  annotations: { runbook: \"see {{ namespac }}\" }
  labels: { severity: low }
";
        let p = problems(text);
        let expect = [
            "r.yaml:1: rule A: severity: \"urgent\" is not one of info, warning, critical",
            "r.yaml:1: rule A: namespaces: selects nothing",
            "r.yaml:5: rule B: params.drop_reasons: \"NOT_A_REASON\" is not a Hubble drop reason",
            "r.yaml:5: rule B: params.world_prefix_v4: 40 is not between 8 and 32",
            "r.yaml:5: rule B: namespaces.names: \"Bad_NS\" is not a valid namespace name",
            "r.yaml:5: rule B: labels.severity: is set by exfilwatch",
            "r.yaml:5: rule B: annotations.runbook: unknown placeholder {{ namespac }}",
        ];
        for e in expect {
            assert!(
                p.iter().any(|m| m.starts_with(e)),
                "missing {e:?} in {p:#?}"
            );
        }
        assert_eq!(p.len(), expect.len(), "{p:#?}");
    }

    #[test]
    fn duplicate_names_and_yaml_errors_are_reported() {
        let p = problems(
            "- name: A\n  kind: policy_denied\n  namespaces: { names: [x] }\n  severity: info\n- name: A\n  kind: policy_denied\n  namespaces: { names: [y] }\n  severity: info\n",
        );
        assert_eq!(p, ["r.yaml:1: rule A: name: already defined at r.yaml:1"]);
        let p = problems("- name: A\n  kind: [oops\n");
        assert!(p[0].starts_with("r.yaml:3: "), "{p:?}");
    }

    #[test]
    fn volume_parameters_are_checked() {
        let p = problems(
            "- name: V\n  kind: volume_spike\n  namespaces: { names: [x] }\n  severity: warning\n  params: { model: ewma, factor: 0.9, mad_threshold: -1 }\n",
        );
        let expect = [
            "r.yaml:1: rule V: params.model: \"ewma\" is not one of mean, hour_of_week, median_mad",
            "r.yaml:1: rule V: params.factor: 0.9 must be a number above 1",
            "r.yaml:1: rule V: params.mad_threshold: -1 must be a number above 0",
        ];
        for e in expect {
            assert!(p.iter().any(|m| m == e), "missing {e:?} in {p:#?}");
        }
        assert_eq!(p.len(), 3, "{p:#?}");
    }

    #[test]
    fn selectors_match_names_or_namespace_labels() {
        let by_label = Selector {
            names: BTreeSet::new(),
            labels: BTreeMap::from([("team".into(), "ml".into())]),
        };
        let labels: Vec<crate::intern::Sym> =
            vec!["k8s:io.cilium.k8s.namespace.labels.team=ml".into()];
        assert!(by_label.matches("research", &labels));
        assert!(!by_label.matches("research", &[]));
        let by_name = Selector {
            names: BTreeSet::from(["ai-training".into()]),
            labels: BTreeMap::new(),
        };
        assert!(by_name.matches("ai-training", &[]));
        assert!(!by_name.matches("", &[]));
    }
}
