//! The alerts page, one alert with its evidence, and the rule it came from.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::{PAGE, age, cursor, flow_table, page, problem, query_value, refused, svg};
use crate::alert::{Alert, Status};
use crate::api::ApiState;
use crate::api::error::Refusal;
use crate::api::params::blocking;
use crate::api::ui::Access;
use crate::common::clock::now_ns;
use crate::flowstore::Filter;
use crate::flowstore::json::FlowJson;

/// Alerts the alerts page lists at most: the firing ones first.
const SHOWN_ALERTS: usize = 500;
/// Flows read for an alert's timeline.
const TIMELINE_FLOWS: usize = 5_000;
/// Bars of a timeline.
const BUCKETS: i64 = 30;

fn severity(alert: &Alert) -> &str {
    alert.labels.get("severity").map_or("", String::as_str)
}

fn severity_rank(s: &str) -> u8 {
    match s {
        "critical" => 0,
        "warning" => 1,
        _ => 2,
    }
}

fn label<'a>(alert: &'a Alert, key: &str) -> &'a str {
    alert.labels.get(key).map_or("", String::as_str)
}

fn summary(alert: &Alert) -> &str {
    alert
        .annotations
        .get("summary")
        .map_or(alert.rule.as_str(), String::as_str)
}

/// "firing", or how long ago it resolved.
fn status(alert: &Alert) -> Markup {
    html! {
        @if alert.status == Status::Firing {
            "firing"
        } @else {
            span.resolved { "resolved " (age(alert.ends_at_ns)) " ago" }
        }
    }
}

/// `GET /ui/`: firing alerts, then recently resolved ones; by severity, newest first.
pub async fn alerts(
    State(state): State<Arc<ApiState>>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let want = |k: &str| q.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let (ns, sev) = (want("namespace"), want("severity"));
    // The firing alerts first, then the newest resolved ones: two indexed reads.
    let mut alerts = Vec::new();
    for firing in [true, false] {
        let room = SHOWN_ALERTS - alerts.len();
        match crate::api::alerts::read_page(&state, Some(firing), ns.map(str::to_owned), room).await
        {
            Ok(mut a) => alerts.append(&mut a),
            Err(r) => return refused(&state, r),
        }
    }
    alerts.retain(|a| sev.is_none_or(|s| severity(a) == s));
    alerts.sort_by(|a, b| {
        (a.status != Status::Firing)
            .cmp(&(b.status != Status::Firing))
            .then(severity_rank(severity(a)).cmp(&severity_rank(severity(b))))
            .then(b.starts_at_ns.cmp(&a.starts_at_ns))
    });
    let firing = alerts.iter().filter(|a| a.status == Status::Firing).count();
    let body = html! {
        h1 { "Alerts" }
        p.muted {
            (firing) " firing, " (alerts.len() - firing) " resolved recently."
            @if ns.is_some() || sev.is_some() {
                " " a href="/ui/" { "Show all" }
            }
        }
        table #alerts {
            thead { tr {
                th { "Severity" } th { "Alert" } th { "Namespace" } th { "Source pods" }
                th { "Destination" } th.num { "Count" } th { "Age" } th { "Status" }
            } }
            tbody {
                @for a in &alerts {
                    @let more = a.context.source_pods.len().saturating_sub(3);
                    @let pods: Vec<&str> = a.context.source_pods.iter().take(3).collect();
                    tr {
                        td class={ "sev sev-" (severity(a)) } {
                            a href={ "/ui/?severity=" (query_value(severity(a))) } { (severity(a)) }
                        }
                        td {
                            a href={ "/ui/alerts/" (a.fingerprint) } { (summary(a)) }
                            br;
                            span.muted { (a.rule) }
                        }
                        td {
                            a href={ "/ui/?namespace=" (query_value(label(a, "namespace"))) } {
                                (label(a, "namespace"))
                            }
                        }
                        td {
                            (pods.join(", "))
                            @if more > 0 { " " span.muted { "+" (more) } }
                        }
                        td { (label(a, "destination")) }
                        td.num { (a.context.count) }
                        td { (age(a.starts_at_ns)) }
                        td { (status(a)) }
                    }
                }
                @if alerts.is_empty() {
                    tr { td.muted colspan="8" { "No alerts." } }
                }
            }
        }
    };
    page(&state, "Alerts", "Alerts", body)
}

/// The flows of `filter` per time bucket between its first and last.
async fn timeline(state: &Arc<ApiState>, f: Filter) -> Result<Markup, Refusal> {
    let page = blocking(state, move |s| s.list(&f, None, TIMELINE_FLOWS)).await?;
    let times: Vec<i64> = page
        .flows
        .iter()
        .map(|f| f.time_ns / 1_000_000_000)
        .collect();
    let (Some(&last), Some(&first)) = (times.first(), times.last()) else {
        return Ok(html! {});
    };
    let step = ((last - first) / BUCKETS + 1).max(1);
    let mut buckets: Vec<(i64, u64)> = (0..BUCKETS).map(|i| (first + i * step, 0)).collect();
    for t in times {
        let i = ((t - first) / step).clamp(0, BUCKETS - 1) as usize;
        buckets[i].1 += 1;
    }
    Ok(html! {
        h2 { "Timeline" }
        (svg::bars(&buckets, step, "timeline"))
        @if page.next_cursor.is_some() {
            p.muted { "The newest " (TIMELINE_FLOWS) " flows." }
        }
    })
}

/// The egress chart of a volume-spike alert: rate, baseline and its limit around the alert.
async fn spike_chart(state: &Arc<ApiState>, alert: &Alert) -> Markup {
    let (Some(api), Some(latest)) = (&state.egress, &state.telemetry.egress) else {
        return html! {};
    };
    let ns = label(alert, "namespace").to_owned();
    let report = latest.borrow().clone();
    let Some(baseline) = report.baselines.get(&ns) else {
        return html! {};
    };
    let factor = alert
        .annotations
        .get("factor")
        .and_then(|f| f.parse::<f64>().ok());
    let start_s = alert.starts_at_ns / 1_000_000_000;
    let end_s = if alert.status == Status::Firing {
        now_ns() / 1_000_000_000
    } else {
        alert.ends_at_ns / 1_000_000_000 + 1800
    };
    let (from, step) = (start_s - 3 * 3600, 300);
    let to = end_s.min(now_ns() / 1_000_000_000) / step * step;
    let from = from / step * step;
    let series = crate::api::egress::series(api, baseline, &ns, from, to, step).await;
    html! {
        h2 { "Egress against the 7-day baseline" }
        @match series {
            Ok((current, base)) => {
                p.legend {
                    span.swatch-rate { "■ 10-minute rate" }
                    span.swatch-base { "■ baseline" }
                    span.swatch-limit {
                        "┅ " (factor.map_or_else(|| "limit".into(), |f| f.to_string())) " x baseline"
                    }
                }
                (svg::egress(&current, &base, factor, Some((start_s, end_s)), "spike-chart", false))
            }
            Err(e) => p.problem { "Prometheus: " (e) }
        }
    }
}

/// A prefilled silence in Alertmanager for the alert's identifying labels.
fn silence_link(am: &str, alert: &Alert) -> String {
    let matchers: Vec<String> = ["alertname", "namespace", "destination"]
        .iter()
        .filter_map(|k| {
            let v = alert.labels.get(*k)?;
            Some(format!("{k}={}", crate::common::text::quoted(v)))
        })
        .collect();
    let filter = format!("{{{}}}", matchers.join(","));
    format!(
        "{}/#/silences/new?filter={}",
        am.trim_end_matches('/'),
        query_value(&filter)
    )
}

/// `GET /ui/alerts/{fingerprint}`: the alert with its evidence. An API client (bearer token,
/// `Accept: application/json`) gets the alert and its flows as JSON.
pub async fn alert(
    State(state): State<Arc<ApiState>>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    Path(fingerprint): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    if access == Access::Bearer || (wants_json && access == Access::Open) {
        return match crate::api::alerts::detail(&state, &fingerprint, 100).await {
            Ok(r) => r,
            Err(r) => r.into_response(),
        };
    }
    let alert = match crate::api::alerts::find(&state, &fingerprint).await {
        Ok(a) => a,
        Err(r) if r.status() == StatusCode::NOT_FOUND => {
            return problem(
                &state,
                StatusCode::NOT_FOUND,
                "No such alert",
                "No alert has this fingerprint; it may have been resolved long ago.",
            );
        }
        Err(r) => return refused(&state, r),
    };
    let cursor = match cursor(&q) {
        Ok(c) => c,
        Err(e) => return problem(&state, StatusCode::BAD_REQUEST, "Bad page", &e),
    };
    let f = match crate::api::alerts::alert_filter(&alert) {
        Ok(f) => f,
        Err(e) => {
            return problem(
                &state,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Bad alert query",
                &e.to_string(),
            );
        }
    };
    let a = &alert;
    let chart = if a.annotations.contains_key("current_rate") {
        spike_chart(&state, a).await
    } else {
        html! {}
    };
    let timeline = match timeline(&state, f.clone()).await {
        Ok(t) => t,
        Err(r) => return refused(&state, r),
    };
    let flows = match blocking(&state, move |s| s.list(&f, cursor, PAGE)).await {
        Ok(p) => p,
        Err(r) => return refused(&state, r),
    };
    let json: Vec<FlowJson> = flows.flows.iter().map(|f| f.to_json()).collect();
    let ns = label(a, "namespace");
    let body = html! {
        h1 #alert-summary { (summary(a)) }
        p {
            span class={ "sev sev-" (severity(a)) } { (severity(a)) }
            " · " (a.rule) " · " (status(a)) " in "
            a href={ "/ui/?namespace=" (query_value(ns)) } { (ns) }
            " · started " (age(a.starts_at_ns)) " ago"
        }
        p.actions {
            @if let Some(url) = a.annotations.get("runbook_url") {
                a #runbook href=(url) { "Runbook" }
            }
            @if let Some(am) = &state.alertmanager {
                a #silence href=(silence_link(am, a)) { "Silence in Alertmanager" }
            }
            a #explore href={ "/ui/flows?" (a.query) } { "Open in the flows explorer" }
            a href={ "/api/v1/flows?" (a.query) } { "As JSON" }
            a #rule href={ "/ui/rules/" (a.rule) } { "Rule " (a.rule) }
        }
        @if let Some(d) = a.annotations.get("description") {
            p { (d) }
        }
        (chart)
        (timeline)
        h2 { "Context" }
        dl.context #context {
            @for (k, v) in &a.annotations {
                @if !matches!(k.as_str(), "summary" | "description" | "runbook_url") {
                    dt { (k) } dd { (v) }
                }
            }
            @for (k, v) in &a.labels {
                dt { "label " (k) } dd { (v) }
            }
        }
        h2 { "Flows" }
        (flow_table(&json, "flows"))
        @if let Some(next) = &flows.next_cursor {
            p.pager {
                a #next-page href={ "/ui/alerts/" (a.fingerprint) "?cursor=" (query_value(&next.to_string())) } { "Older flows" }
            }
        }
    };
    page(&state, summary(a), "Alerts", body)
}

/// `GET /ui/rules/{name}`: a rule of the pack in force, as it was loaded.
pub async fn rule(State(state): State<Arc<ApiState>>, Path(name): Path<String>) -> Response {
    let rule = state
        .rules
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|r| r.name == name)
        .cloned();
    let Some(r) = rule else {
        return problem(
            &state,
            StatusCode::NOT_FOUND,
            "No such rule",
            "No rule of this name is in force (it may be built in, or removed by a reload).",
        );
    };
    let body = html! {
        h1 { "Rule " (r.name) }
        dl.context #rule-definition {
            dt { "kind" } dd { (r.kind.name()) }
            dt { "defined at" } dd { (r.origin) }
            dt { "enabled" } dd { (r.enabled) }
            dt { "severity" } dd { (r.severity.as_str()) }
            dt { "namespaces" } dd { "names " (format!("{:?}", r.namespaces.names)) ", labels " (format!("{:?}", r.namespaces.labels)) }
            dt { "resolves after" } dd { (format!("{:?}", r.resolve_after)) " of quiet" }
            @for (k, t) in r.labels.iter().chain(&r.annotations) {
                dt { (k) } dd { (t.to_string()) }
            }
        }
        h2 { "Parameters" }
        pre { (format!("{:#?}", r.kind)) }
        p.actions { a href={ "/runbooks/" (r.name) } { "Runbook" } }
    };
    page(&state, &r.name, "Alerts", body)
}
