//! `segmentation`: forwarded traffic that none of the namespace's allowed kinds of traffic
//! covers: what the policies should have denied.

use super::*;

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

/// Parameters of the `segmentation` detector.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SegmentationParams {
    pub allow: Vec<Allowed>,
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

pub(super) fn parse(raw: Option<Value>, report: &mut Report<'_>) -> SegmentationParams {
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

impl Spec for SegmentationParams {
    fn evidence(&self) -> Evidence {
        Evidence::egress(Some("FORWARDED"))
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
