//! An alert's annotations as a person reads them: the flow context field by field, the
//! figures a detector computed itself, a summary and a description, and the rule's own
//! templated annotations. Rendered when an alert is sent; memory keeps only the context.

use std::collections::BTreeMap;

use super::Alert;
use crate::rules::Rule;

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
        for (key, template) in &rule.annotations {
            out.insert(key.clone(), template.render(value));
        }
        return out;
    }
    let attempts = if c.count == 1 { "attempt" } else { "attempts" };
    out.insert(
        "summary".into(),
        format!(
            "{ns}: {} egress {attempts} to {dest} denied by network policy",
            c.count
        ),
    );
    let mut description = format!(
        "Pods {} in namespace {ns} tried to reach {dest}",
        if c.source_pods.is_empty() {
            "(unknown)".to_owned()
        } else {
            value("source_pods")
        }
    );
    let mut seen_as = Vec::new();
    for f in ["destination_ips", "destination_pods"] {
        let v = value(f);
        if !v.is_empty() && v != dest {
            seen_as.push(v);
        }
    }
    if !seen_as.is_empty() {
        description.push_str(&format!(" ({})", seen_as.join("; ")));
    }
    description.push_str(&format!(
        " on {}. Cilium dropped {} flow(s): {}",
        value("ports"),
        c.count,
        value("drop_reasons")
    ));
    if !c.policies.is_empty() {
        description.push_str(&format!(", denied by {}", value("policies")));
    }
    description.push_str(&format!(
        ". First seen {}, last seen {}, on node(s) {}.",
        value("first_seen"),
        value("last_seen"),
        value("nodes")
    ));
    if c.omitted > 0 {
        description.push_str(&format!(
            " {} further distinct value(s) not listed.",
            c.omitted
        ));
    }
    out.insert("description".into(), description);
    for (key, template) in &rule.annotations {
        out.insert(key.clone(), template.render(value));
    }
    out
}
