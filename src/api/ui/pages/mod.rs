//! The console's pages, as maud templates: alerts and one alert with its evidence
//! ([`alerts`]), namespaces and the flows explorer ([`flows`]), the policy advisor
//! ([`policy`]). What they share is here.

mod alerts;
mod flows;
mod policy;

pub use alerts::{alert, alerts, rule};
pub use flows::{export, flows, namespaces};
pub use policy::{policy, policy_check};

use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::{page, problem, svg};
use crate::api::ApiState;
use crate::api::error::Refusal;
use crate::common::clock::now_ns;
use crate::flowstore::json::{EndpointJson, FlowJson};

/// Flows per page of a table.
const PAGE: usize = 50;

/// A refusal as a page.
fn refused(state: &ApiState, r: Refusal) -> Response {
    let response = r.into_response();
    let status = response.status();
    problem(state, status, "Cannot show this", &format!("{status}"))
}

/// "3m", "2h", "4d" since `ns`.
fn age(ns: i64) -> String {
    let s = ((now_ns() - ns) / 1_000_000_000).max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7_199 => format!("{}m", s / 60),
        7_200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `text` as a URL query value.
fn query_value(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A cursor parameter, or the message saying it is not one.
fn cursor(q: &[(String, String)]) -> Result<Option<crate::flowstore::Cursor>, String> {
    q.iter()
        .find(|(k, _)| k == "cursor")
        .map(|(_, v)| {
            v.parse()
                .map_err(|e: crate::flowstore::BadParameter| e.to_string())
        })
        .transpose()
}

/// One flow as the table shows it: time, verdict, source, destination, port, why, node, UUID.
struct FlowRow<'a> {
    flow: &'a FlowJson,
}

impl FlowRow<'_> {
    /// An endpoint as namespace/pod, else its address.
    fn side(e: &EndpointJson, ip: &str) -> String {
        if e.pod_name.is_empty() {
            ip.to_owned()
        } else {
            format!("{}/{}", e.namespace, e.pod_name)
        }
    }

    fn source(&self) -> String {
        let ip = self.flow.ip.as_ref().map_or("", |ip| ip.source.as_str());
        Self::side(&self.flow.source, ip)
    }

    /// The destination with the DNS name it was reached by and the DNS query it carried.
    fn destination(&self) -> String {
        let f = self.flow;
        let ip = f.ip.as_ref().map_or("", |ip| ip.destination.as_str());
        let mut dest = Self::side(&f.destination, ip);
        if let Some(name) = f.destination_names.first() {
            dest = format!("{name} ({dest})");
        }
        if let Some(l7) = &f.l7 {
            dest = format!("{dest}; DNS {} {}", l7.kind, l7.dns.query);
        }
        dest
    }

    fn port(&self) -> String {
        let Some(l4) = &self.flow.l4 else {
            return String::new();
        };
        [
            (l4.tcp.as_ref(), "TCP"),
            (l4.udp.as_ref(), "UDP"),
            (l4.sctp.as_ref(), "SCTP"),
        ]
        .into_iter()
        .find_map(|(p, name)| p.map(|p| format!("{}/{name}", p.destination_port)))
        .unwrap_or_default()
    }

    /// The drop reason and the policies that denied the flow.
    fn reason(&self) -> String {
        let f = self.flow;
        let policy = f
            .egress_denied_by
            .iter()
            .chain(&f.ingress_denied_by)
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect::<Vec<_>>()
            .join(", ");
        [f.drop_reason_desc.as_str(), policy.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" · ")
    }
}

/// The table of `flows`.
fn flow_table(flows: &[FlowJson], id: &str) -> Markup {
    html! {
        table id=(id) {
            thead { tr {
                th { "Time" } th { "Verdict" } th { "Source" } th { "Destination" } th { "Port" }
                th { "Drop reason / policy" } th { "Node" } th { "UUID" }
            } }
            tbody {
                @for f in flows {
                    @let row = FlowRow { flow: f };
                    tr {
                        td { (f.time) } td { (f.verdict) } td { (row.source()) }
                        td { (row.destination()) } td { (row.port()) } td { (row.reason()) }
                        td { (f.node_name) } td { code { (f.uuid) } }
                    }
                }
                @if flows.is_empty() {
                    tr { td.muted colspan="8" { "No flows." } }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FlowStoreConfig;
    use crate::flow::Event;
    use crate::flow::json::JsonDecoder;
    use crate::flowstore::{Filter, FlowStore, Row};

    /// A flow whose pod, DNS name, node and policy are markup, as Hubble would relay them.
    const HOSTILE: &str = r#"{"flow":{"time":"2026-01-01T00:00:00Z","uuid":"0d9f8d5c-7c4e-4d43-9a0e-5c2a5b6f1e01","verdict":"DROPPED","drop_reason_desc":"POLICY_DENIED","IP":{"source":"10.0.0.5","destination":"203.0.113.9","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":40000,"destination_port":443}},"source":{"namespace":"ai-training","pod_name":"<script>alert(1)</script>"},"destination":{},"destination_names":["\"><img src=x onerror=alert(2)>.evil.example"],"node_name":"node-1<b>","egress_denied_by":[{"name":"</td><td>deny","namespace":"ai-training","kind":"CiliumNetworkPolicy"}]}}"#;

    #[test]
    fn a_flow_whose_strings_carry_markup_is_shown_as_text() {
        let Event::Flow(flow) = JsonDecoder::default().decode_line(HOSTILE).unwrap() else {
            panic!("not a flow")
        };
        let store = FlowStore::in_memory(FlowStoreConfig::default());
        store.append(&[Row::new(&flow)]);
        let page = store.list(&Filter::default(), None, 10).unwrap();
        let json: Vec<FlowJson> = page.flows.iter().map(|f| f.to_json()).collect();
        let html = flow_table(&json, "flows").into_string();
        for markup in ["<script", "<img", "<b>", "</td><td>deny"] {
            assert!(!html.contains(markup), "{markup} in {html}");
        }
        for text in [
            "ai-training/&lt;script&gt;alert(1)&lt;/script&gt;",
            "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;.evil.example",
            "node-1&lt;b&gt;",
            "ai-training/&lt;/td&gt;&lt;td&gt;deny",
        ] {
            assert!(html.contains(text), "{text} not in {html}");
        }
        assert_eq!(
            html.matches("<tr>").count(),
            2,
            "a header row and the flow's"
        );
    }
}
