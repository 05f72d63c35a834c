//! Reading rule files: raw serde structs per kind, validated into [`Rule`]s.
//!
//! Loading checks everything and reports every problem as `file:line: rule NAME: field:
//! message`; a pack with any problem is refused whole, so the service never runs half a rule
//! set. serde's YAML values carry no positions, so a rule's line is the line of its `name`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::template::Template;
use super::*;
use crate::common::units::parse_duration;
use crate::common::yaml;

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

/// Collects problems for one rule.
pub(super) struct Report<'a> {
    file: &'a str,
    line: usize,
    rule: String,
    problems: &'a mut Vec<RuleProblem>,
}

impl Report<'_> {
    pub(super) fn problem(&mut self, field: &str, message: impl Into<String>) {
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
    pub(super) fn params<T: serde::de::DeserializeOwned + Default>(
        &mut self,
        raw: Option<Value>,
    ) -> T {
        match raw.map(yaml::from_value).transpose() {
            Ok(p) => p.unwrap_or_default(),
            Err(message) => {
                self.problem("params", message);
                T::default()
            }
        }
    }

    pub(super) fn duration(
        &mut self,
        field: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Duration {
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

fn validate(raw: RawRule, report: &mut Report<'_>) -> Rule {
    let kind = Kind::parse(&raw.kind, raw.params, report).unwrap_or_else(|| {
        report.problem(
            "kind",
            format!(
                "unknown detector {:?}; known: {}",
                raw.kind,
                Kind::NAMES.join(", ")
            ),
        );
        // A stand-in: a pack with any problem is refused whole, so it never runs.
        Kind::Segmentation(SegmentationParams::default())
    });
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
