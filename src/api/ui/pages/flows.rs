//! The watched namespaces against their baselines, and the flows explorer.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::{PAGE, cursor, flow_table, page, query_value, refused, svg};
use crate::api::ApiState;
use crate::api::params::{blocking, filter};
use crate::common::clock::now_ns;
use crate::flowstore::json::FlowJson;

/// `GET /ui/namespaces`: every watched namespace with its flows, denials, alerts and egress
/// against its baseline over the last day.
pub async fn namespaces(State(state): State<Arc<ApiState>>) -> Response {
    let rows = match crate::api::namespaces::rows(&state, "24h".into()).await {
        Ok(r) => r,
        Err(r) => return refused(&state, r),
    };
    let end = now_ns() / 1_000_000_000 / 600 * 600;
    let mut charts = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        charts.push(egress_chart(&state, &r.namespace, end, i).await);
    }
    let body = html! {
        h1 { "Namespaces" }
        p.muted {
            "The last 24 hours. Egress: the 10-minute rate (blue) against the 7-day baseline (grey) and 1.5 times it (red)."
        }
        table #namespaces {
            thead { tr {
                th { "Namespace" } th.num { "Flows" } th.num { "Policy-denied" }
                th.num { "Firing alerts" } th.num { "Egress now" } th.num { "Baseline" }
                th { "Egress, 24 h" } th { "Policy" }
            } }
            tbody {
                @for (r, chart) in rows.iter().zip(charts) {
                    @let q = query_value(&r.namespace);
                    tr {
                        td { a href={ "/ui/flows?namespace=" (q) "&since=24h" } { (r.namespace) } }
                        td.num { (r.flows) }
                        td.num {
                            a href={ "/ui/flows?source_namespace=" (q) "&verdict=DROPPED&since=24h" } { (r.denied) }
                        }
                        td.num { a href={ "/ui/?namespace=" (q) } { (r.firing_alerts) } }
                        td.num { (r.egress_rate.map_or_else(|| "-".into(), svg::rate)) }
                        td.num { (r.egress_baseline.map_or_else(|| "-".into(), svg::rate)) }
                        td { (chart) }
                        td { a href={ "/ui/policy?namespace=" (q) } { "advisor" } }
                    }
                }
                @if rows.is_empty() {
                    tr { td.muted colspan="8" { "No watched namespace has sent flows yet." } }
                }
            }
        }
    };
    page(&state, "Namespaces", "Namespaces", body)
}

/// A namespace's egress over the day to `end` against its baseline, or why there is none.
async fn egress_chart(state: &ApiState, namespace: &str, end: i64, i: usize) -> Markup {
    let (Some(api), Some(latest)) = (&state.egress, &state.telemetry.egress) else {
        return html! { span.muted { "prometheus.url not set" } };
    };
    let baseline = latest.borrow().baselines.get(namespace).cloned();
    let Some(b) = baseline else {
        return html! { span.muted { "no baseline yet" } };
    };
    match crate::api::egress::series(api, &b, namespace, end - 86_400, end, 600).await {
        Ok((current, base)) => svg::egress(
            &current,
            &base,
            Some(1.5),
            None,
            &format!("egress-{i}"),
            true,
        ),
        Err(_) => html! { span.muted { "Prometheus unavailable" } },
    }
}

/// The explorer's form fields: (parameter, label, hint).
const FIELDS: [(&str, &str, &str); 13] = [
    ("namespace", "Namespace (either side)", "ai-training"),
    ("source_namespace", "Source namespace", ""),
    ("destination_namespace", "Destination namespace", ""),
    ("pod", "Pod (prefix, either side)", ""),
    ("verdict", "Verdict", "DROPPED,AUDIT"),
    ("drop_reason", "Drop reason", "POLICY_DENIED"),
    ("fqdn", "FQDN or DNS query", "example.com"),
    ("ip", "IP (either side)", ""),
    ("port", "Port (either side)", "443"),
    ("protocol", "Protocol", "TCP"),
    ("uuid", "Flow UUIDs", ""),
    ("since", "Since", "1h or RFC 3339"),
    ("until", "Until", ""),
];

/// The filter parameters of a request: the form's fields that are filled in.
fn filled(q: &[(String, String)]) -> Vec<(String, String)> {
    q.iter()
        .filter(|(k, v)| !v.trim().is_empty() && k != "cursor")
        .map(|(k, v)| (k.clone(), v.trim().to_owned()))
        .collect()
}

/// `GET /ui/flows`: the REST API's filters as a form, results as a table; the URL is the
/// query, so it can be shared.
pub async fn flows(
    State(state): State<Arc<ApiState>>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let mut params = filled(&q);
    if !params.iter().any(|(k, _)| k == "since") {
        params.push(("since".into(), "1h".into()));
    }
    let form = html! {
        h1 { "Flows" }
        form.filters #filters method="get" action="/ui/flows" {
            @for (name, label, hint) in FIELDS {
                @let value = params.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str());
                label { (label) input name=(name) id={ "f-" (name) } value=(value) placeholder=(hint); }
            }
            label { "\u{a0}" button type="submit" #apply { "Apply" } }
        }
    };
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter())
        .finish();
    let parsed = params
        .iter()
        .find(|(k, _)| !crate::flowstore::query::FILTER_PARAMETERS.contains(&k.as_str()))
        .map(|(k, v)| {
            Err(crate::flowstore::BadParameter::new(
                k,
                v,
                "unknown parameter",
            ))
        })
        .unwrap_or_else(|| filter(params.clone(), now_ns()).map(|(f, _)| f));
    let (f, cursor) = match (parsed, cursor(&q)) {
        (Ok(f), Ok(c)) => (f, c),
        (Err(e), _) => {
            let body = html! { (form) p.problem #filter-problem { (e.to_string()) } };
            let mut r = page(&state, "Flows", "Flows", body);
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return r;
        }
        (_, Err(e)) => {
            return page(&state, "Flows", "Flows", html! { (form) p.problem { (e) } });
        }
    };
    let flows = match blocking(&state, move |s| s.list(&f, cursor, PAGE * 2)).await {
        Ok(p) => p,
        Err(r) => {
            let status = r.into_response().status();
            let body = html! { (form) p.problem #filter-problem { (status) } };
            return page(&state, "Flows", "Flows", body);
        }
    };
    let json: Vec<FlowJson> = flows.flows.iter().map(|f| f.to_json()).collect();
    let body = html! {
        (form)
        p.actions {
            span.muted #shown { (json.len()) " flows shown, newest first." }
            " "
            a #export href={ "/ui/flows.ndjson?" (query) } { "Export NDJSON" }
            a href={ "/api/v1/flows?" (query) } { "As JSON" }
        }
        (flow_table(&json, "flows"))
        @if let Some(next) = &flows.next_cursor {
            p.pager {
                a #next-page href={ "/ui/flows?" (query) "&cursor=" (query_value(&next.to_string())) } { "Older flows" }
            }
        }
    };
    page(&state, "Flows", "Flows", body)
}

/// `GET /ui/flows.ndjson`: the explorer's results as `hubble observe -o jsonpb` lines, a
/// download.
pub async fn export(
    State(state): State<Arc<ApiState>>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let mut params = filled(&q);
    params.push(("format".into(), "ndjson".into()));
    params.push(("limit".into(), "10000".into()));
    match crate::api::flows::flows(State(state), Ok(Query(params))).await {
        Ok(mut r) => {
            r.headers_mut().insert(
                header::CONTENT_DISPOSITION,
                header::HeaderValue::from_static("attachment; filename=\"flows.ndjson\""),
            );
            r
        }
        Err(r) => r.into_response(),
    }
}
