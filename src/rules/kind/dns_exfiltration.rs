//! `dns_exfiltration`: a pod's DNS names under one registered domain carrying encoded data.

use super::*;

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

pub(super) fn parse(raw: Option<Value>, report: &mut Report<'_>) -> DnsParams {
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

impl Spec for DnsParams {
    /// Requests leave the pod, answers come back to it: either side.
    fn evidence(&self) -> Evidence {
        Evidence {
            side: "namespace",
            pod: Some("pod"),
            ..Evidence::egress(None)
        }
    }
}
