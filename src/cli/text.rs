//! Alerts as the commands print them.

use std::fmt::Write as _;

use crate::alert::{Alert, Status};

/// Alerts as text: one block per alert.
pub(super) fn alerts_table(alerts: &[Alert]) -> String {
    let mut out = String::new();
    if alerts.is_empty() {
        out.push_str("\nalerts: none\n");
        return out;
    }
    let firing = alerts.iter().filter(|a| a.status == Status::Firing).count();
    if firing == alerts.len() {
        let _ = writeln!(out, "\nalerts firing: {firing}");
    } else {
        let _ = writeln!(out, "\nalerts: {}, {firing} still firing", alerts.len());
    }
    for a in alerts {
        let get = |k: &str| a.annotations.get(k).map_or("", String::as_str);
        let label = |k: &str| a.labels.get(k).map_or("", String::as_str);
        let severity = match a.status {
            Status::Firing => label("severity").to_owned(),
            Status::Resolved => format!("{}, resolved", label("severity")),
        };
        let _ = writeln!(
            out,
            "  {} [{}] {} -> {}\n    {}",
            label("alertname"),
            severity,
            label("namespace"),
            label("destination"),
            get("summary")
        );
        if a.context.extra.is_empty() {
            let policies = if get("policies").is_empty() {
                "(default deny)"
            } else {
                get("policies")
            };
            let _ = writeln!(
                out,
                "    pods: {}  ports: {}  policies: {policies}",
                get("source_pods"),
                get("ports")
            );
        } else if !get("expected").is_empty() {
            let _ = writeln!(
                out,
                "    pods: {}  ports: {}\n    expected only: {}",
                get("source_pods"),
                get("ports"),
                get("expected")
            );
        } else if !get("reasons").is_empty() {
            let _ = writeln!(
                out,
                "    {}\n    names: {}",
                get("reasons"),
                get("sample_queries")
            );
        } else if !get("scanners").is_empty() {
            let _ = writeln!(
                out,
                "    {}\n    destinations include: {}",
                get("scanners"),
                get("sample_destinations")
            );
        } else if !get("top_pods").is_empty() || !get("top_destinations").is_empty() {
            let _ = writeln!(
                out,
                "    top pods: {}\n    top destinations: {}",
                get("top_pods"),
                get("top_destinations")
            );
        }
    }
    out
}
