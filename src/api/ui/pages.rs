//! The console's pages: alerts, one alert with its evidence, namespaces, the flows explorer.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Access, escape, page, problem, svg};
use crate::alert::{Alert, Status};
use crate::api::ApiState;
use crate::api::error::Refusal;
use crate::api::params::{blocking, filter};
use crate::common::clock::now_ns;
use crate::flowstore::Filter;
use crate::flowstore::json::FlowJson;

/// Flows per page of a table.
const PAGE: usize = 50;
/// Alerts the alerts page lists at most: the firing ones first.
const SHOWN_ALERTS: usize = 500;
/// Flows read for an alert's timeline.
const TIMELINE_FLOWS: usize = 5_000;
/// Bars of a timeline.
const BUCKETS: i64 = 30;

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
    let mut body = format!(
        "<h1>Alerts</h1><p class=\"muted\">{firing} firing, {} resolved recently.",
        alerts.len() - firing
    );
    if ns.is_some() || sev.is_some() {
        body.push_str(" <a href=\"/ui/\">Show all</a>");
    }
    body.push_str("</p><table id=\"alerts\"><thead><tr><th>Severity</th><th>Alert</th><th>Namespace</th><th>Source pods</th><th>Destination</th><th class=\"num\">Count</th><th>Age</th><th>Status</th></tr></thead><tbody>");
    for a in &alerts {
        let label = |k: &str| a.labels.get(k).map_or("", String::as_str);
        let summary = a
            .annotations
            .get("summary")
            .map_or(a.rule.as_str(), String::as_str);
        let pods: Vec<&str> = a.context.source_pods.iter().take(3).collect();
        let more = a.context.source_pods.len().saturating_sub(3);
        let status = if a.status == Status::Firing {
            "firing".to_owned()
        } else {
            format!(
                "<span class=\"resolved\">resolved {} ago</span>",
                age(a.ends_at_ns)
            )
        };
        let _ = write!(
            body,
            "<tr><td class=\"sev sev-{sev}\"><a href=\"/ui/?severity={sev}\">{sev}</a></td><td><a href=\"/ui/alerts/{fp}\">{summary}</a><br><span class=\"muted\">{rule}</span></td><td><a href=\"/ui/?namespace={ns_q}\">{ns}</a></td><td>{pods}{more}</td><td>{dest}</td><td class=\"num\">{count}</td><td>{age}</td><td>{status}</td></tr>",
            sev = escape(severity(a)),
            fp = escape(&a.fingerprint),
            summary = escape(summary),
            rule = escape(&a.rule),
            ns_q = escape(
                &form_urlencoded::byte_serialize(label("namespace").as_bytes()).collect::<String>()
            ),
            ns = escape(label("namespace")),
            pods = escape(&pods.join(", ")),
            more = if more > 0 {
                format!(" <span class=\"muted\">+{more}</span>")
            } else {
                String::new()
            },
            dest = escape(label("destination")),
            count = a.context.count,
            age = age(a.starts_at_ns),
        );
    }
    if alerts.is_empty() {
        body.push_str("<tr><td colspan=\"8\" class=\"muted\">No alerts.</td></tr>");
    }
    body.push_str("</tbody></table>");
    page(&state, "Alerts", "Alerts", &body)
}

/// The table of `flows`, with a link to the next page when there is one.
fn flow_table(flows: &[FlowJson], id: &str) -> String {
    let mut out = format!(
        "<table id=\"{id}\"><thead><tr><th>Time</th><th>Verdict</th><th>Source</th><th>Destination</th><th>Port</th><th>Drop reason / policy</th><th>Node</th><th>UUID</th></tr></thead><tbody>"
    );
    for f in flows {
        let side = |e: &crate::flowstore::json::EndpointJson, ip: &str| {
            if e.pod_name.is_empty() {
                ip.to_owned()
            } else {
                format!("{}/{}", e.namespace, e.pod_name)
            }
        };
        let (src_ip, dst_ip) = f.ip.as_ref().map_or((String::new(), String::new()), |ip| {
            (ip.source.clone(), ip.destination.clone())
        });
        let mut dest = side(&f.destination, &dst_ip);
        if let Some(name) = f.destination_names.first() {
            dest = format!("{name} ({dest})");
        }
        if let Some(l7) = &f.l7 {
            dest = format!("{dest}; DNS {} {}", l7.kind, l7.dns.query);
        }
        let port = f.l4.as_ref().and_then(|l4| {
            l4.tcp
                .as_ref()
                .map(|p| format!("{}/TCP", p.destination_port))
                .or_else(|| {
                    l4.udp
                        .as_ref()
                        .map(|p| format!("{}/UDP", p.destination_port))
                })
                .or_else(|| {
                    l4.sctp
                        .as_ref()
                        .map(|p| format!("{}/SCTP", p.destination_port))
                })
        });
        let policy = f
            .egress_denied_by
            .iter()
            .chain(&f.ingress_denied_by)
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect::<Vec<_>>()
            .join(", ");
        let reason = [f.drop_reason_desc.as_str(), policy.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" · ");
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            escape(&f.time),
            escape(f.verdict),
            escape(&side(&f.source, &src_ip)),
            escape(&dest),
            escape(port.as_deref().unwrap_or("")),
            escape(&reason),
            escape(&f.node_name),
            escape(&f.uuid)
        );
    }
    if flows.is_empty() {
        out.push_str("<tr><td colspan=\"8\" class=\"muted\">No flows.</td></tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// A cursor parameter, or a page saying it is not one.
fn cursor(q: &[(String, String)]) -> Result<Option<crate::flowstore::Cursor>, String> {
    q.iter()
        .find(|(k, _)| k == "cursor")
        .map(|(_, v)| {
            v.parse()
                .map_err(|e: crate::flowstore::BadParameter| e.to_string())
        })
        .transpose()
}

/// The flows of `filter` per time bucket between its first and last.
async fn timeline(state: &Arc<ApiState>, f: Filter) -> Result<String, Refusal> {
    let page = blocking(state, move |s| s.list(&f, None, TIMELINE_FLOWS)).await?;
    let times: Vec<i64> = page
        .flows
        .iter()
        .map(|f| f.time_ns / 1_000_000_000)
        .collect();
    let (Some(&last), Some(&first)) = (times.first(), times.last()) else {
        return Ok(String::new());
    };
    let step = ((last - first) / BUCKETS + 1).max(1);
    let mut buckets: Vec<(i64, u64)> = (0..BUCKETS).map(|i| (first + i * step, 0)).collect();
    for t in times {
        let i = ((t - first) / step).clamp(0, BUCKETS - 1) as usize;
        buckets[i].1 += 1;
    }
    let mut out = String::from("<h2>Timeline</h2>");
    out.push_str(&svg::bars(&buckets, step, "timeline"));
    if page.next_cursor.is_some() {
        let _ = write!(
            out,
            "<p class=\"muted\">The newest {TIMELINE_FLOWS} flows.</p>"
        );
    }
    Ok(out)
}

/// The egress chart of a volume-spike alert: rate, baseline and its limit around the alert.
async fn spike_chart(state: &Arc<ApiState>, alert: &Alert) -> String {
    let (Some(api), Some(latest)) = (&state.egress, &state.telemetry.egress) else {
        return String::new();
    };
    let ns = alert.labels.get("namespace").cloned().unwrap_or_default();
    let report = latest.borrow().clone();
    let Some(baseline) = report.baselines.get(&ns) else {
        return String::new();
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
    match crate::api::egress::series(api, baseline, &ns, from, to, step).await {
        Ok((current, base)) => format!(
            "<h2>Egress against the 7-day baseline</h2><p class=\"legend\"><span class=\"swatch-rate\">■ 10-minute rate</span><span class=\"swatch-base\">■ baseline</span><span class=\"swatch-limit\">┅ {} x baseline</span></p>{}",
            factor.map_or_else(|| "limit".into(), |f| f.to_string()),
            svg::egress(
                &current,
                &base,
                factor,
                Some((start_s, end_s)),
                "spike-chart",
                false
            )
        ),
        Err(e) => format!(
            "<h2>Egress against the 7-day baseline</h2><p class=\"problem\">Prometheus: {}</p>",
            escape(&e)
        ),
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
        form_urlencoded::byte_serialize(filter.as_bytes()).collect::<String>()
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
    let summary = a
        .annotations
        .get("summary")
        .map_or(a.rule.as_str(), String::as_str);
    let mut body = format!(
        "<h1 id=\"alert-summary\">{}</h1><p><span class=\"sev sev-{sev}\">{sev}</span> · {} · {} in <a href=\"/ui/?namespace={}\">{}</a> · started {} ago",
        escape(summary),
        escape(&a.rule),
        if a.status == Status::Firing {
            "firing".to_owned()
        } else {
            format!(
                "<span class=\"resolved\">resolved {} ago</span>",
                age(a.ends_at_ns)
            )
        },
        escape(
            &form_urlencoded::byte_serialize(
                a.labels
                    .get("namespace")
                    .map_or("", String::as_str)
                    .as_bytes()
            )
            .collect::<String>()
        ),
        escape(a.labels.get("namespace").map_or("", String::as_str)),
        age(a.starts_at_ns),
        sev = escape(severity(a)),
    );
    body.push_str("</p><p class=\"actions\">");
    if let Some(url) = a.annotations.get("runbook_url") {
        let _ = write!(
            body,
            "<a id=\"runbook\" href=\"{}\">Runbook</a>",
            escape(url)
        );
    }
    if let Some(am) = &state.alertmanager {
        let _ = write!(
            body,
            "<a id=\"silence\" href=\"{}\">Silence in Alertmanager</a>",
            escape(&silence_link(am, a))
        );
    }
    let _ = write!(
        body,
        "<a id=\"explore\" href=\"/ui/flows?{q}\">Open in the flows explorer</a><a href=\"/api/v1/flows?{q}\">As JSON</a><a id=\"rule\" href=\"/ui/rules/{rule}\">Rule {rule}</a></p>",
        rule = escape(&a.rule),
        q = escape(&a.query),
    );
    if let Some(d) = a.annotations.get("description") {
        let _ = write!(body, "<p>{}</p>", escape(d));
    }
    if a.annotations.contains_key("current_rate") {
        body.push_str(&spike_chart(&state, a).await);
    }
    match timeline(&state, f.clone()).await {
        Ok(t) => body.push_str(&t),
        Err(r) => return refused(&state, r),
    }
    body.push_str("<h2>Context</h2><dl class=\"context\" id=\"context\">");
    for (k, v) in &a.annotations {
        if matches!(k.as_str(), "summary" | "description" | "runbook_url") {
            continue;
        }
        let _ = write!(body, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(v));
    }
    for (k, v) in &a.labels {
        let _ = write!(body, "<dt>label {}</dt><dd>{}</dd>", escape(k), escape(v));
    }
    body.push_str("</dl>");
    let page_result = blocking(&state, move |s| s.list(&f, cursor, PAGE)).await;
    let flows = match page_result {
        Ok(p) => p,
        Err(r) => return refused(&state, r),
    };
    let json: Vec<FlowJson> = flows.flows.iter().map(|f| f.to_json()).collect();
    body.push_str("<h2>Flows</h2>");
    body.push_str(&flow_table(&json, "flows"));
    if let Some(next) = flows.next_cursor {
        let _ = write!(
            body,
            "<p class=\"pager\"><a id=\"next-page\" href=\"/ui/alerts/{}?cursor={next}\">Older flows</a></p>",
            escape(&a.fingerprint)
        );
    }
    page(&state, summary, "Alerts", &body)
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
    let mut body = format!(
        "<h1>Rule {}</h1><dl class=\"context\" id=\"rule-definition\"><dt>kind</dt><dd>{}</dd><dt>defined at</dt><dd>{}</dd><dt>enabled</dt><dd>{}</dd><dt>severity</dt><dd>{}</dd><dt>namespaces</dt><dd>{}</dd><dt>resolves after</dt><dd>{:?} of quiet</dd>",
        escape(&r.name),
        r.kind.name(),
        escape(&r.origin),
        r.enabled,
        r.severity.as_str(),
        escape(&format!(
            "names {:?}, labels {:?}",
            r.namespaces.names, r.namespaces.labels
        )),
        r.resolve_after,
    );
    for (k, t) in r.labels.iter().chain(&r.annotations) {
        let _ = write!(
            body,
            "<dt>{}</dt><dd>{}</dd>",
            escape(k),
            escape(&t.to_string())
        );
    }
    let _ = write!(
        body,
        "</dl><h2>Parameters</h2><pre>{}</pre><p class=\"actions\"><a href=\"/runbooks/{n}\">Runbook</a></p>",
        escape(&format!("{:#?}", r.kind)),
        n = escape(&r.name)
    );
    page(&state, &r.name, "Alerts", &body)
}

/// `GET /ui/namespaces`: every watched namespace with its flows, denials, alerts and egress
/// against its baseline over the last day.
pub async fn namespaces(State(state): State<Arc<ApiState>>) -> Response {
    let rows = match crate::api::namespaces::rows(&state, "24h".into()).await {
        Ok(r) => r,
        Err(r) => return refused(&state, r),
    };
    let mut body = String::from(
        "<h1>Namespaces</h1><p class=\"muted\">The last 24 hours. Egress: the 10-minute rate (blue) against the 7-day baseline (grey) and 1.5 times it (red).</p><table id=\"namespaces\"><thead><tr><th>Namespace</th><th class=\"num\">Flows</th><th class=\"num\">Policy-denied</th><th class=\"num\">Firing alerts</th><th class=\"num\">Egress now</th><th class=\"num\">Baseline</th><th>Egress, 24 h</th><th>Policy</th></tr></thead><tbody>",
    );
    let end = now_ns() / 1_000_000_000 / 600 * 600;
    for (i, r) in rows.iter().enumerate() {
        let chart = match (&state.egress, &state.telemetry.egress) {
            (Some(api), Some(latest)) => {
                let baseline = latest.borrow().baselines.get(&r.namespace).cloned();
                match baseline {
                    Some(b) => match crate::api::egress::series(
                        api,
                        &b,
                        &r.namespace,
                        end - 86_400,
                        end,
                        600,
                    )
                    .await
                    {
                        Ok((current, base)) => svg::egress(
                            &current,
                            &base,
                            Some(1.5),
                            None,
                            &format!("egress-{i}"),
                            true,
                        ),
                        Err(_) => "<span class=\"muted\">Prometheus unavailable</span>".into(),
                    },
                    None => "<span class=\"muted\">no baseline yet</span>".into(),
                }
            }
            _ => "<span class=\"muted\">prometheus.url not set</span>".into(),
        };
        let ns_q = form_urlencoded::byte_serialize(r.namespace.as_bytes()).collect::<String>();
        let _ = write!(
            body,
            "<tr><td><a href=\"/ui/flows?namespace={q}&amp;since=24h\">{ns}</a></td><td class=\"num\">{}</td><td class=\"num\"><a href=\"/ui/flows?source_namespace={q}&amp;verdict=DROPPED&amp;since=24h\">{}</a></td><td class=\"num\"><a href=\"/ui/?namespace={q}\">{}</a></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{chart}</td><td><a href=\"/ui/policy?namespace={q}\">advisor</a></td></tr>",
            r.flows,
            r.denied,
            r.firing_alerts,
            r.egress_rate.map_or_else(|| "-".into(), svg::rate),
            r.egress_baseline.map_or_else(|| "-".into(), svg::rate),
            q = escape(&ns_q),
            ns = escape(&r.namespace),
        );
    }
    if rows.is_empty() {
        body.push_str("<tr><td colspan=\"8\" class=\"muted\">No watched namespace has sent flows yet.</td></tr>");
    }
    body.push_str("</tbody></table>");
    page(&state, "Namespaces", "Namespaces", &body)
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
    let mut body = String::from(
        "<h1>Flows</h1><form method=\"get\" action=\"/ui/flows\" class=\"filters\" id=\"filters\">",
    );
    for (name, label, hint) in FIELDS {
        let value = params
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str());
        let _ = write!(
            body,
            "<label>{label}<input name=\"{name}\" id=\"f-{name}\" value=\"{}\" placeholder=\"{}\"></label>",
            escape(value),
            escape(hint)
        );
    }
    body.push_str(
        "<label>&nbsp;<button type=\"submit\" id=\"apply\">Apply</button></label></form>",
    );
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
    let f = match (parsed, cursor(&q)) {
        (Ok(f), Ok(c)) => (f, c),
        (Err(e), _) => {
            let _ = write!(
                body,
                "<p class=\"problem\" id=\"filter-problem\">{}</p>",
                escape(&e.to_string())
            );
            let mut r = page(&state, "Flows", "Flows", &body);
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return r;
        }
        (_, Err(e)) => {
            let _ = write!(body, "<p class=\"problem\">{}</p>", escape(&e));
            return page(&state, "Flows", "Flows", &body);
        }
    };
    let (f, cursor) = f;
    let result = blocking(&state, move |s| s.list(&f, cursor, PAGE * 2)).await;
    let flows = match result {
        Ok(p) => p,
        Err(r) => {
            let response = r.into_response();
            let _ = write!(
                body,
                "<p class=\"problem\" id=\"filter-problem\">{}</p>",
                response.status()
            );
            return page(&state, "Flows", "Flows", &body);
        }
    };
    let json: Vec<FlowJson> = flows.flows.iter().map(|f| f.to_json()).collect();
    let _ = write!(
        body,
        "<p class=\"actions\"><span class=\"muted\" id=\"shown\">{} flows shown, newest first.</span> <a id=\"export\" href=\"/ui/flows.ndjson?{q}\">Export NDJSON</a><a href=\"/api/v1/flows?{q}\">As JSON</a></p>",
        json.len(),
        q = escape(&query)
    );
    body.push_str(&flow_table(&json, "flows"));
    if let Some(next) = flows.next_cursor {
        let _ = write!(
            body,
            "<p class=\"pager\"><a id=\"next-page\" href=\"/ui/flows?{}&amp;cursor={next}\">Older flows</a></p>",
            escape(&query)
        );
    }
    page(&state, "Flows", "Flows", &body)
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
fn findings_table(id: &str, title: &str, list: &[crate::policy::Finding]) -> String {
    let mut out = format!(
        "<h2>{} <span class=\"muted\">({} groups, {} flows)</span></h2>",
        escape(title),
        list.len(),
        list.iter().map(|f| f.flows).sum::<u64>()
    );
    if list.is_empty() {
        return out;
    }
    let _ = write!(
        out,
        "<table id=\"{id}\"><thead><tr><th>Source</th><th>Destination</th><th>Port</th><th class=\"num\">Flows</th><th>Last seen</th><th>Pods</th><th>Why</th></tr></thead><tbody>"
    );
    for f in list {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&f.source),
            escape(&f.destination),
            escape(&f.port),
            f.flows,
            escape(&f.last_seen),
            escape(&f.pods.join(", ")),
            escape(&f.reason)
        );
    }
    out.push_str("</tbody></table>");
    out
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
    let ns_q = form_urlencoded::byte_serialize(namespace.as_bytes()).collect::<String>();
    let mut body = format!(
        "<h1>Policy advisor: {ns}</h1><p class=\"muted\">Least-privilege policies from the namespace's flows of the last {since}: what was forwarded is allowed, nothing else. Review before applying.</p><p>",
        ns = escape(&namespace),
        since = escape(&since),
    );
    for (label, f, s) in [
        ("CiliumNetworkPolicy, 7 days", "cilium", "7d"),
        ("NetworkPolicy, 7 days", "kubernetes", "7d"),
        ("CiliumNetworkPolicy, 24 hours", "cilium", "24h"),
    ] {
        let _ = write!(
            body,
            "<a href=\"/ui/policy?namespace={}&amp;flavor={f}&amp;since={s}\">{label}</a> · ",
            escape(&ns_q)
        );
    }
    let _ = write!(
        body,
        "<a href=\"/api/v1/policy/suggest?namespace={}&amp;flavor={flavor}&amp;since={}&amp;format=yaml\">YAML (API)</a></p><p id=\"summary\">{} policies, {} rules, {} forwarded flows allowed.</p>",
        escape(&ns_q),
        escape(&form_urlencoded::byte_serialize(since.as_bytes()).collect::<String>()),
        suggestion.policies,
        suggestion.rules,
        suggestion.flows_allowed
    );
    if !suggestion.left_out.is_empty() {
        body.push_str("<h2>Left out</h2><table id=\"left-out\"><thead><tr><th>Source</th><th>Destination</th><th>Port</th><th class=\"num\">Flows</th><th>Why</th></tr></thead><tbody>");
        for l in &suggestion.left_out {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                escape(&l.source),
                escape(&l.destination),
                escape(&l.port),
                l.flows,
                escape(&l.reason)
            );
        }
        body.push_str("</tbody></table>");
    }
    let _ = write!(
        body,
        "<h2>Suggested policies</h2><pre id=\"yaml\">{}</pre><h2>Check candidate policies</h2><form method=\"post\" action=\"/ui/policy/check?namespace={}&amp;since={}\"><textarea name=\"policies\" id=\"policies\" rows=\"16\" cols=\"100\" placeholder=\"CiliumNetworkPolicy or NetworkPolicy YAML\" required></textarea><br><button type=\"submit\" id=\"check\">Check against the history</button></form>",
        escape(&suggestion.yaml),
        escape(&ns_q),
        escape(&form_urlencoded::byte_serialize(since.as_bytes()).collect::<String>()),
    );
    page(&state, "Policy advisor", "Namespaces", &body)
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
    let verdict = if report.drops_traffic() {
        "<p class=\"problem\" id=\"verdict\">These policies would drop traffic that flowed.</p>"
    } else {
        "<p id=\"verdict\">These policies keep every forwarded flow.</p>"
    };
    let mut out = format!(
        "<h1>Policy check: {}</h1>{verdict}<p class=\"muted\">{} connections from {} to {}; policies: {}. Forwarded flows kept: {}.</p>",
        escape(&namespace),
        report.connections,
        escape(&report.since),
        escape(&report.until),
        escape(&report.policies.join(", ")),
        report.forwarded_flows_kept
    );
    out.push_str(&findings_table(
        "would-drop",
        "Would drop traffic that flowed",
        &report.would_drop,
    ));
    out.push_str(&findings_table(
        "would-allow",
        "Would allow attempts that were denied",
        &report.would_allow,
    ));
    out.push_str(&findings_table(
        "still-denied",
        "Keep denied",
        &report.still_denied,
    ));
    page(&state, "Policy check", "Namespaces", &out)
}
