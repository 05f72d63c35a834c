//! The policy advisor's pages: the policies it suggests for a namespace, and what candidate
//! policies would have done to its flows.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use maud::{Markup, html};

use super::{page, query_value, refused};
use crate::api::ApiState;
use crate::policy::Finding;

/// The advisor page's window and flavour from its query: (namespace, since, flavor).
fn advisor_query(q: &[(String, String)]) -> (String, String, &'static str) {
    let get = |k: &str| {
        q.iter()
            .find(|(key, _)| key == k)
            .map_or("", |(_, v)| v.as_str())
    };
    let since = match get("since") {
        "" => "7d".to_owned(),
        s => s.to_owned(),
    };
    let flavor = if get("flavor") == "kubernetes" {
        "kubernetes"
    } else {
        "cilium"
    };
    (get("namespace").to_owned(), since, flavor)
}

/// The advisor's findings as a table.
fn findings_table(id: &str, title: &str, list: &[Finding]) -> Markup {
    html! {
        h2 {
            (title) " "
            span.muted { "(" (list.len()) " groups, " (list.iter().map(|f| f.flows).sum::<u64>()) " flows)" }
        }
        @if !list.is_empty() {
            table id=(id) {
                thead { tr {
                    th { "Source" } th { "Destination" } th { "Port" } th.num { "Flows" }
                    th { "Last seen" } th { "Pods" } th { "Why" }
                } }
                tbody {
                    @for f in list {
                        tr {
                            td { (f.source) } td { (f.destination) } td { (f.port) }
                            td.num { (f.flows) } td { (f.last_seen) } td { (f.pods.join(", ")) }
                            td { (f.reason) }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /ui/policy?namespace=NS[&since=7d][&flavor=cilium|kubernetes]`: the policies the
/// advisor suggests for a namespace, what it left out, and a form to check candidates.
pub async fn policy(
    State(state): State<Arc<ApiState>>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let (namespace, since, flavor) = advisor_query(&q);
    let suggestion = match crate::api::policy::suggestion(&state, &namespace, &since, flavor).await
    {
        Ok(s) => s,
        Err(r) => return refused(&state, r),
    };
    let (ns_q, since_q) = (query_value(&namespace), query_value(&since));
    let body = html! {
        h1 { "Policy advisor: " (namespace) }
        p.muted {
            "Least-privilege policies from the namespace's flows of the last " (since)
            ": what was forwarded is allowed, nothing else. Review before applying."
        }
        p {
            @for (label, f, s) in [
                ("CiliumNetworkPolicy, 7 days", "cilium", "7d"),
                ("NetworkPolicy, 7 days", "kubernetes", "7d"),
                ("CiliumNetworkPolicy, 24 hours", "cilium", "24h"),
            ] {
                a href={ "/ui/policy?namespace=" (ns_q) "&flavor=" (f) "&since=" (s) } { (label) }
                " · "
            }
            a href={ "/api/v1/policy/suggest?namespace=" (ns_q) "&flavor=" (flavor) "&since=" (since_q) "&format=yaml" } {
                "YAML (API)"
            }
        }
        p #summary {
            (suggestion.policies) " policies, " (suggestion.rules) " rules, "
            (suggestion.flows_allowed) " forwarded flows allowed."
        }
        @if !suggestion.left_out.is_empty() {
            h2 { "Left out" }
            table #left-out {
                thead { tr {
                    th { "Source" } th { "Destination" } th { "Port" } th.num { "Flows" } th { "Why" }
                } }
                tbody {
                    @for l in &suggestion.left_out {
                        tr {
                            td { (l.source) } td { (l.destination) } td { (l.port) }
                            td.num { (l.flows) } td { (l.reason) }
                        }
                    }
                }
            }
        }
        h2 { "Suggested policies" }
        pre #yaml { (suggestion.yaml) }
        h2 { "Check candidate policies" }
        form method="post" action={ "/ui/policy/check?namespace=" (ns_q) "&since=" (since_q) } {
            textarea name="policies" #policies rows="16" cols="100"
                placeholder="CiliumNetworkPolicy or NetworkPolicy YAML" required {}
            br;
            button type="submit" #check { "Check against the history" }
        }
    };
    page(&state, "Policy advisor", "Namespaces", body)
}

/// `POST /ui/policy/check?namespace=NS[&since=7d]` (form field `policies`): what the
/// candidate policies would have done to the namespace's flows.
pub async fn policy_check(
    State(state): State<Arc<ApiState>>,
    Query(q): Query<Vec<(String, String)>>,
    body: axum::body::Bytes,
) -> Response {
    let (namespace, since, _) = advisor_query(&q);
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let text = form
        .iter()
        .find(|(k, _)| k == "policies")
        .map_or("", |(_, v)| v.as_str());
    let report =
        match crate::api::policy::checked(&state, &namespace, &since, text, "policies").await {
            Ok(r) => r,
            Err(r) => return refused(&state, r),
        };
    let body = html! {
        h1 { "Policy check: " (namespace) }
        @if report.drops_traffic() {
            p.problem #verdict { "These policies would drop traffic that flowed." }
        } @else {
            p #verdict { "These policies keep every forwarded flow." }
        }
        p.muted {
            (report.connections) " connections from " (report.since) " to " (report.until)
            "; policies: " (report.policies.join(", ")) ". Forwarded flows kept: "
            (report.forwarded_flows_kept) "."
        }
        (findings_table("would-drop", "Would drop traffic that flowed", &report.would_drop))
        (findings_table("would-allow", "Would allow attempts that were denied", &report.would_allow))
        (findings_table("still-denied", "Keep denied", &report.still_denied))
    };
    page(&state, "Policy check", "Namespaces", body)
}
