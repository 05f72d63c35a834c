//! `{{ field }}` templates for rule labels and annotations.
//!
//! A template is literal text with placeholders naming fields of the alert (see [`FIELDS`]).
//! Placeholders are checked when the rule loads, so a typo is a load error that names the
//! field, never an empty string in a SOC analyst's alert.

use std::fmt::Write as _;

/// Every field a template may name, with what it holds.
pub const FIELDS: &[(&str, &str)] = &[
    ("rule", "the rule's name"),
    ("severity", "the rule's severity"),
    ("namespace", "the namespace the flows came from"),
    (
        "destination",
        "where they went: FQDN, namespace/workload, or CIDR",
    ),
    ("count", "how many flows the alert counts"),
    ("source_pods", "source pods, comma-separated"),
    ("source_workloads", "source workloads"),
    ("destination_ips", "destination IP addresses"),
    ("destination_fqdns", "destination DNS names"),
    ("destination_namespace", "destination namespace"),
    ("destination_pods", "destination pods"),
    ("ports", "destination ports with protocol, e.g. 443/TCP"),
    ("drop_reasons", "Hubble drop reasons"),
    ("policies", "policies that denied the flows, namespace/name"),
    ("nodes", "nodes that reported the flows"),
    ("first_seen", "time of the first flow, RFC 3339"),
    ("last_seen", "time of the latest flow, RFC 3339"),
    ("sample_flows", "UUIDs of sample flows"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(&'static str),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// The template as a rule writes it.
impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for part in &self.parts {
            match part {
                Part::Text(t) => f.write_str(t)?,
                Part::Field(name) => write!(f, "{{{{ {name} }}}}")?,
            }
        }
        Ok(())
    }
}

impl Template {
    /// Parses `text`; the error names the bad placeholder and lists the known fields.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("unclosed placeholder in {text:?}: expected }}}}"))?;
            let name = after[..close].trim();
            let field = FIELDS
                .iter()
                .find(|(f, _)| *f == name)
                .map(|(f, _)| *f)
                .ok_or_else(|| {
                    let known: Vec<&str> = FIELDS.iter().map(|(f, _)| *f).collect();
                    format!(
                        "unknown placeholder {{{{ {name} }}}}; known fields: {}",
                        known.join(", ")
                    )
                })?;
            parts.push(Part::Field(field));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// Fills the placeholders with `value(field)`.
    pub fn render(&self, value: impl Fn(&str) -> String) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => {
                    let _ = write!(out, "{}", value(f));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_and_text_kept() {
        let t = Template::parse("{{namespace}} -> {{ destination }} ({{count}}x)").unwrap();
        let out = t.render(|f| match f {
            "namespace" => "ai-training".into(),
            "destination" => "paste.example.net".into(),
            "count" => "3".into(),
            _ => unreachable!(),
        });
        assert_eq!(out, "ai-training -> paste.example.net (3x)");
    }

    #[test]
    fn unknown_and_unclosed_placeholders_are_errors() {
        let err = Template::parse("{{ namespce }}").unwrap_err();
        assert!(
            err.contains("unknown placeholder {{ namespce }}") && err.contains("namespace"),
            "{err}"
        );
        assert!(
            Template::parse("{{ namespace")
                .unwrap_err()
                .contains("unclosed")
        );
    }
}
