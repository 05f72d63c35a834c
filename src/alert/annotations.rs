//! An alert's annotations as a person reads them: the flow context field by field, the
//! figures a detector computed itself, a summary and a description, and the rule's own
//! templated annotations. Rendered when an alert is sent; memory keeps only the context.

use std::collections::BTreeMap;

use super::Alert;
use crate::rules::{Rule, Words};

/// The annotations: the flow context field by field (every kind has one), the figures a
/// detector computed itself, a summary and description a human can read, and the rule's own
/// templated annotations.
pub fn annotations(alert: &Alert, rule: &Rule) -> BTreeMap<String, String> {
    let c = &alert.context;
    let ns = alert.labels.get("namespace").cloned().unwrap_or_default();
    let dest = alert.labels.get("destination").cloned().unwrap_or_default();
    let value = |f: &str| match f {
        "rule" => rule.name.clone(),
        "severity" => rule.severity.as_str().to_owned(),
        "namespace" => ns.clone(),
        "destination" => dest.clone(),
        "omitted_values" if c.omitted > 0 => c.omitted.to_string(),
        "omitted_values" => String::new(),
        other => c.field(other),
    };
    let mut out = BTreeMap::new();
    let fields: &[&str] = if c.count > 0 {
        &[
            "count",
            "source_pods",
            "source_workloads",
            "destination_ips",
            "destination_fqdns",
            "destination_namespace",
            "destination_pods",
            "ports",
            "drop_reasons",
            "policies",
            "nodes",
            "first_seen",
            "last_seen",
            "sample_flows",
        ]
    } else {
        &["first_seen", "last_seen"]
    };
    for name in fields {
        let v = value(name);
        if !v.is_empty() {
            out.insert((*name).to_owned(), v);
        }
    }
    if c.omitted > 0 {
        out.insert("omitted_values".into(), c.omitted.to_string());
    }
    if !c.extra.is_empty() {
        // The detector wrote the summary, description and its own figures.
        out.extend(c.extra.clone());
    } else {
        // Words the kind renders from the alert's fields, which grow while it fires; a kind
        // without any gets plain ones, never another kind's.
        let words = rule.kind.spec().words(&value).unwrap_or_else(|| Words {
            summary: format!("{ns}: {} alert for {dest}", rule.name),
            description: format!(
                "Rule {} ({}) fired in namespace {ns} for {dest}. First seen {}, last seen {}.",
                rule.name,
                rule.kind.name(),
                value("first_seen"),
                value("last_seen")
            ),
        });
        out.insert("summary".into(), words.summary);
        out.insert("description".into(), words.description);
    }
    for (key, template) in &rule.annotations {
        out.insert(key.clone(), template.render(value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{FlowContext, Status};
    use crate::rules::load_text;

    fn alert(context: FlowContext) -> Alert {
        Alert {
            fingerprint: "f".into(),
            rule: "r".into(),
            labels: [
                ("namespace", "ai-training"),
                ("destination", "203.0.113.9:443/TCP"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            annotations: BTreeMap::new(),
            context,
            status: Status::Firing,
            starts_at_ns: 0,
            ends_at_ns: 0,
            generator_url: String::new(),
            query: String::new(),
        }
    }

    fn rule(kind: &str) -> Rule {
        let text = format!(
            "- name: R\n  kind: {kind}\n  namespaces: {{ names: [ai-training] }}\n  severity: warning\n  params: {{ allow: [{{ namespaces: [x] }}] }}\n"
        );
        let text = if kind == "segmentation" {
            text
        } else {
            text.replace("  params: { allow: [{ namespaces: [x] }] }\n", "")
        };
        load_text(&text, "t.yaml").unwrap().remove(0)
    }

    #[test]
    fn a_kind_speaks_its_own_words_and_never_another_kinds() {
        let context = FlowContext {
            count: 3,
            ..FlowContext::default()
        };
        let denied = annotations(&alert(context.clone()), &rule("policy_denied"));
        assert_eq!(
            denied["summary"],
            "ai-training: 3 egress attempts to 203.0.113.9:443/TCP denied by network policy"
        );
        assert!(denied["description"].starts_with("Pods (unknown) in namespace ai-training"));
        // A kind whose detector left no words: plain ones, not policy_denied's.
        let other = annotations(&alert(context), &rule("segmentation"));
        assert!(!other["summary"].contains("denied"), "{}", other["summary"]);
        assert!(other["description"].contains("(segmentation)"));
        // The detector's own words win.
        let mut context = FlowContext::default();
        context
            .extra
            .insert("summary".into(), "scan of 40 ports".into());
        context
            .extra
            .insert("description".into(), "one pod swept the subnet".into());
        let scan = annotations(&alert(context), &rule("scan"));
        assert_eq!(scan["summary"], "scan of 40 ports");
    }
}
