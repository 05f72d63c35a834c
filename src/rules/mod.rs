//! Rules: what the service looks for, as operators write it in `rules.dir`.
//!
//! - this module: the validated rule model ([`Rule`]), the namespace [`Selector`], and the
//!   default pack shipped in `rules/`;
//! - [`kind`]: one file per [`Kind`] of rule: its parameters, its evidence and its words;
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

use crate::flow::intern::{Sym, SymList};

pub mod kind;
pub mod load;
pub mod runbooks;
pub mod template;

pub use kind::{
    Allowed, BaselineModel, CoverageParams, Direction, DnsParams, Evidence, Kind,
    NewDestinationParams, PolicyDeniedParams, ScanParams, SegmentationParams, Spec,
    VolumeSpikeParams, Words,
};
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
