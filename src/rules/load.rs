//! Reading rule files: raw serde structs per kind, validated into [`Rule`]s.
//!
//! Loading checks everything and reports every problem as `file:line: rule NAME: field:
//! message`; a pack with any problem is refused whole, so the service never runs half a rule
//! set. serde's YAML values carry no positions, so a rule's line is the line of its `name`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::template::Template;
use super::*;
use crate::common::units::parse_duration;
use crate::common::yaml;
use crate::flow::DropReason;

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

    /// The rule's `params` as the kind's raw parameters; the defaults (and a problem) when
    /// they do not fit.
    fn params<T: serde::de::DeserializeOwned + Default>(&mut self, raw: Option<Value>) -> T {
        match raw.map(yaml::from_value).transpose() {
            Ok(p) => p.unwrap_or_default(),
            Err(message) => {
                self.problem("params", message);
                T::default()
            }
        }
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

fn drop_reason_code(name: &str) -> Option<u32> {
    DropReason::from_str_name(name).map(|r| r as u32)
}

fn policy_denied(raw: Option<Value>, report: &mut Report<'_>) -> PolicyDeniedParams {
    let p: RawPolicyDenied = report.params(raw);
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
    let p: RawNewDestination = report.params(raw);
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
    let p: RawCoverage = report.params(raw);
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
    let p: RawSegmentation = report.params(raw);
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
            match c.parse::<ipnet::IpNet>() {
                Ok(net) => cidrs.push(net.trunc()),
                Err(_) => report.problem(
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
    min_names: Option<usize>,
    min_encoded_bytes: Option<u64>,
    label_entropy: Option<f64>,
    txt_share: Option<f64>,
    nxdomain_share: Option<f64>,
    min_queries: Option<usize>,
    allow: Option<Vec<String>>,
}

fn dns(raw: Option<Value>, report: &mut Report<'_>) -> DnsParams {
    let p: RawDns = report.params(raw);
    let share = |field: &str, v: Option<f64>, default: f64, report: &mut Report<'_>| {
        let v = v.unwrap_or(default);
        if !(v > 0.0 && v <= 1.0) {
            report.problem(field, format!("{v} must be in (0, 1]"));
        }
        v
    };
    let txt_share = share("params.txt_share", p.txt_share, 0.5, report);
    let nxdomain_share = share("params.nxdomain_share", p.nxdomain_share, 0.5, report);
    let label_entropy = p.label_entropy.unwrap_or(3.0);
    if !(label_entropy > 1.0 && label_entropy <= 6.0) {
        report.problem(
            "params.label_entropy",
            format!("{label_entropy} is not in (1, 6]"),
        );
    }
    let min_encoded_bytes = p.min_encoded_bytes.unwrap_or(2048);
    if min_encoded_bytes == 0 {
        report.problem("params.min_encoded_bytes", "0 must be above 0");
    }
    let window = report.duration(
        "params.window",
        p.window.as_deref(),
        Duration::from_secs(900),
    );
    if window > Duration::from_secs(3600) || window.is_zero() {
        report.problem(
            "params.window",
            format!("{window:?} is not between 1s and 1h"),
        );
    }
    DnsParams {
        window,
        min_names: p.min_names.unwrap_or(20).max(2),
        min_encoded_bytes,
        label_entropy,
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
    let p: RawScan = report.params(raw);
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
    let p: RawVolumeSpike = report.params(raw);
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
        match yaml::parse::<Option<Vec<Value>>>(text) {
            Ok(items) => items.unwrap_or_default(),
            Err(e) => {
                let (line, message) = match e.position {
                    Some((line, _)) => (line, e.message),
                    None => (1, format!("expected a list of rules: {}", e.message)),
                };
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
        let line = yaml::item_line(text, name.as_deref(), index);
        let mut report = Report {
            file,
            line,
            rule: name.clone().unwrap_or_else(|| format!("#{}", index + 1)),
            problems,
        };
        match yaml::from_value::<RawRule>(item) {
            Ok(raw) => rules.push(validate(raw, &mut report)),
            Err(message) => report.problem("", message),
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

    const PACK: &str = DEFAULT_PACK;

    fn problems(text: &str) -> Vec<String> {
        match load_text(text, "r.yaml") {
            Ok(_) => Vec::new(),
            Err(RuleErrors(p)) => p.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_default_pack_loads() {
        let rules = load_text(PACK, "default.yaml").unwrap();
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
        let labels: Vec<crate::flow::intern::Sym> =
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

    #[test]
    fn a_remembered_answer_is_only_reused_for_the_same_endpoint_strings() {
        use crate::flow::intern::{Sym, SymList};
        let by_label = Selector {
            names: BTreeSet::new(),
            labels: BTreeMap::from([("team".into(), "ml".into())]),
        };
        let research: Sym = "research".into();
        let ml: SymList = vec!["k8s:io.cilium.k8s.namespace.labels.team=ml".into()].into();
        let none: SymList = Vec::<Sym>::new().into();
        // The same namespace with other labels, equal strings in other allocations, and the
        // same strings again: each answered as `matches` answers it.
        let asks = [
            (research.clone(), ml.clone(), true),
            (research.clone(), ml.clone(), true),
            (research.clone(), none.clone(), false),
            (Sym::from("research"), ml.iter().cloned().collect(), true),
            (research.clone(), none.clone(), false),
            (Sym::from("other"), ml.clone(), true),
        ];
        let mut memo = SelectorMemo::default();
        let mut asked = 0;
        for (namespace, labels, want) in &asks {
            let answer = memo.answer(namespace, labels, || {
                asked += 1;
                by_label.matches(namespace, labels)
            });
            assert_eq!(answer, *want, "{namespace} {labels:?}");
        }
        // Asked again for every change of strings, not for the repeats.
        assert_eq!(asked, 5);
        assert!(by_label.matches_endpoint(&mut memo, &research, &ml));
    }
}
