//! Every route of the API and every page of the console, answered in process (`Router` and
//! `oneshot`, no socket): its status and content type, and, with a stored flow and alert whose
//! strings are markup, that the markup reaches no page as markup. The end-to-end tests
//! (`tests/integration`) drive the same routes over HTTP, with real clients and a browser.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt as _;

use super::{ApiState, metrics::Telemetry, prepare, router};
use crate::alert::{Alert, FlowContext, Status};
use crate::config::{ApiConfig, FlowStoreConfig};
use crate::flow::Event;
use crate::flow::json::JsonDecoder;
use crate::flowstore::{FlowStore, Row};
use crate::source::StreamState;
use crate::state::Store;

/// A denied flow whose pod, DNS name, node and policy are markup.
const HOSTILE: &str = r#"{"flow":{"time":"2026-01-01T00:00:00Z","uuid":"0d9f8d5c-7c4e-4d43-9a0e-5c2a5b6f1e01","verdict":"DROPPED","drop_reason_desc":"POLICY_DENIED","IP":{"source":"10.0.0.5","destination":"203.0.113.9","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":40000,"destination_port":443}},"source":{"namespace":"ai-training","pod_name":"<script>alert(1)</script>"},"destination":{},"destination_names":["\"><img src=x onerror=alert(2)>.evil.example"],"node_name":"node-1<b>","egress_denied_by":[{"name":"</td><td>deny","namespace":"ai-training","kind":"CiliumNetworkPolicy"}]}}"#;

const FINGERPRINT: &str = "0123456789abcdef0123456789abcdef";

/// The API's state with one hostile flow and one alert about it.
fn state() -> Arc<ApiState> {
    let store = Store::in_memory().unwrap();
    let flows = FlowStore::in_memory(FlowStoreConfig::default());
    let Event::Flow(flow) = JsonDecoder::default().decode_line(HOSTILE).unwrap() else {
        panic!("not a flow")
    };
    flows.append(&[Row::new(&flow)]);
    let labels = [
        ("alertname", "TrainingPodUnexpectedEgress"),
        ("severity", "critical"),
        ("namespace", "ai-training"),
        ("destination", "\"><img src=x onerror=alert(3)>:443/TCP"),
    ];
    let alert = Alert {
        fingerprint: FINGERPRINT.into(),
        rule: "TrainingPodUnexpectedEgress".into(),
        labels: labels
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        annotations: [("summary".to_owned(), "<script>alert(4)</script>".to_owned())].into(),
        context: FlowContext {
            count: 1,
            first_seen_ns: flow.time_ns,
            ..FlowContext::default()
        },
        status: Status::Firing,
        starts_at_ns: flow.time_ns,
        ends_at_ns: flow.time_ns,
        generator_url: String::new(),
        query: "source_namespace=ai-training&verdict=DROPPED&since=2025-12-31T00:00:00Z".into(),
    };
    crate::alert::save(&store, &alert, &[]).unwrap();
    let telemetry = Arc::new(Telemetry {
        source: Default::default(),
        delivery: Default::default(),
        store: store.clone(),
        egress: None,
        flows: Some(flows.clone()),
        query_latency: super::metrics::query_histogram(),
        bad_requests: Default::default(),
        http: Default::default(),
        denied: Default::default(),
        reload: None,
        kafka: None,
    });
    let (_, stream) = tokio::sync::watch::channel(StreamState::Streaming);
    let mut state = prepare(&ApiConfig::default(), telemetry, stream, None).unwrap();
    state.flows = Some(flows);
    state.alerts = Some(store);
    *state.rules.write().unwrap() = crate::rules::default_pack()
        .unwrap()
        .into_iter()
        .map(Arc::new)
        .collect();
    Arc::new(state)
}

/// One request's answer: status, content type, body.
async fn ask(
    state: &Arc<ApiState>,
    method: &str,
    uri: &str,
    body: &str,
) -> (StatusCode, String, String) {
    let mut request = Request::builder().method(method).uri(uri);
    if method == "POST" {
        request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    }
    let response = router(state.clone())
        .oneshot(request.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let kind = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map_or("", |v| v.to_str().unwrap())
        .to_owned();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, kind, String::from_utf8_lossy(&bytes).into_owned())
}

const POLICY: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: ai-training}\nspec:\n  endpointSelector: {}\n  egress:\n  - toEntities: [world]\n";

#[tokio::test]
async fn every_route_answers_with_its_status_and_type() {
    let state = state();
    let policy_form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("policies", POLICY)
        .finish();
    let fp = FINGERPRINT;
    // (method, path, body, status, content type, a text the answer holds)
    #[rustfmt::skip]
    let table: Vec<(&str, String, String, StatusCode, &str, &str)> = vec![
        ("GET", "/healthz".into(), "".into(), StatusCode::OK, "application/json", "\"hubble\":\"streaming\""),
        ("GET", "/readyz".into(), "".into(), StatusCode::OK, "application/json", "\"ready\":true"),
        ("GET", "/runbooks/".into(), "".into(), StatusCode::OK, "text/", "TrainingPodUnexpectedEgress"),
        ("GET", "/runbooks/TrainingPodUnexpectedEgress".into(), "".into(), StatusCode::OK, "text/", "TrainingPodUnexpectedEgress"),
        ("GET", "/metrics".into(), "".into(), StatusCode::OK, "application/openmetrics-text", "exfilwatch_"),
        ("POST", "/-/reload".into(), "".into(), StatusCode::SERVICE_UNAVAILABLE, "application/json", "error"),
        ("GET", "/api/v1/openapi.json".into(), "".into(), StatusCode::OK, "application/json", "/api/v1/flows/top"),
        ("GET", "/api/v1/flows?since=2025-01-01T00:00:00Z".into(), "".into(), StatusCode::OK, "application/json", "0d9f8d5c-7c4e-4d43-9a0e-5c2a5b6f1e01"),
        ("GET", "/api/v1/flows?verdict=NOPE".into(), "".into(), StatusCode::BAD_REQUEST, "application/json", "verdict"),
        ("GET", "/api/v1/flows/top?by=source&since=2025-01-01T00:00:00Z".into(), "".into(), StatusCode::OK, "application/json", "\"count\":1"),
        ("GET", "/api/v1/alerts".into(), "".into(), StatusCode::OK, "application/json", fp),
        ("GET", format!("/api/v1/alerts/{fp}"), "".into(), StatusCode::OK, "application/json", "TrainingPodUnexpectedEgress"),
        ("GET", "/api/v1/alerts/00000000000000000000000000000000".into(), "".into(), StatusCode::NOT_FOUND, "application/json", "error"),
        ("GET", "/api/v1/namespaces".into(), "".into(), StatusCode::OK, "application/json", "["),
        // Without Prometheus, egress data does not exist here.
        ("GET", "/api/v1/baselines".into(), "".into(), StatusCode::NOT_FOUND, "application/json", "prometheus.url"),
        ("GET", "/api/v1/namespaces/ai-training/egress".into(), "".into(), StatusCode::NOT_FOUND, "application/json", "prometheus.url"),
        ("GET", "/api/v1/policy/suggest?namespace=ai-training&since=3650d".into(), "".into(), StatusCode::OK, "application/json", "yaml"),
        ("POST", "/api/v1/policy/check?namespace=ai-training&since=3650d".into(), POLICY.into(), StatusCode::OK, "application/json", "would_drop"),
        ("GET", "/api/v1/nope".into(), "".into(), StatusCode::NOT_FOUND, "application/json", "no such route"),
        ("GET", "/ui".into(), "".into(), StatusCode::PERMANENT_REDIRECT, "", ""),
        ("GET", "/ui/console.css".into(), "".into(), StatusCode::OK, "text/css", "body"),
        // Without tokens there is no sign-in.
        ("GET", "/ui/login".into(), "".into(), StatusCode::SEE_OTHER, "", ""),
        ("POST", "/ui/logout".into(), "".into(), StatusCode::SEE_OTHER, "", ""),
        ("GET", "/ui/".into(), "".into(), StatusCode::OK, "text/html", fp),
        ("GET", "/ui/?severity=critical".into(), "".into(), StatusCode::OK, "text/html", "Show all"),
        ("GET", format!("/ui/alerts/{fp}"), "".into(), StatusCode::OK, "text/html", "id=\"flows\""),
        ("GET", "/ui/alerts/00000000000000000000000000000000".into(), "".into(), StatusCode::NOT_FOUND, "text/html", "No such alert"),
        ("GET", format!("/ui/alerts/{fp}?cursor=x"), "".into(), StatusCode::BAD_REQUEST, "text/html", "cursor"),
        ("GET", "/ui/namespaces".into(), "".into(), StatusCode::OK, "text/html", "id=\"namespaces\""),
        ("GET", "/ui/flows?since=2025-01-01T00:00:00Z".into(), "".into(), StatusCode::OK, "text/html", "1 flows shown"),
        ("GET", "/ui/flows?verdict=NOPE".into(), "".into(), StatusCode::BAD_REQUEST, "text/html", "filter-problem"),
        ("GET", "/ui/flows.ndjson?since=2025-01-01T00:00:00Z".into(), "".into(), StatusCode::OK, "application/x-ndjson", "0d9f8d5c"),
        ("GET", "/ui/rules/TrainingPodUnexpectedEgress".into(), "".into(), StatusCode::OK, "text/html", "policy_denied"),
        ("GET", "/ui/rules/nope".into(), "".into(), StatusCode::NOT_FOUND, "text/html", "No such rule"),
        ("GET", "/ui/policy?namespace=ai-training&since=3650d".into(), "".into(), StatusCode::OK, "text/html", "id=\"yaml\""),
        ("POST", "/ui/policy/check?namespace=ai-training&since=3650d".into(), policy_form, StatusCode::OK, "text/html", "id=\"verdict\""),
    ];
    // Every route the API declares is asked for.
    for (template, _, _) in super::routes() {
        let prefix = template.split('{').next().unwrap_or(template);
        assert!(
            table
                .iter()
                .any(|(_, path, ..)| path.split('?').next() == Some(template)
                    || (template.contains('{') && path.starts_with(prefix))),
            "{template} is not asked for"
        );
    }
    let mut wrong = Vec::new();
    for (method, path, body, status, kind, holds) in table {
        let (got, got_kind, text) = ask(&state, method, &path, &body).await;
        let what = format!(
            "{method} {path}: {got} {got_kind}\n{}",
            &text[..text.len().min(400)]
        );
        if got != status || !got_kind.starts_with(kind) || !text.contains(holds) {
            wrong.push(format!("want {status} {kind} holding {holds:?}; {what}"));
        }
        if got_kind.starts_with("text/html") {
            for markup in ["<script", "<img", "<b>", "</td><td>deny"] {
                if text.contains(markup) {
                    wrong.push(format!("{markup} in {what}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[tokio::test]
async fn pages_show_the_hostile_strings_as_text() {
    let state = state();
    let (_, _, alert) = ask(&state, "GET", &format!("/ui/alerts/{FINGERPRINT}"), "").await;
    assert!(
        alert.contains("&lt;script&gt;alert(4)&lt;/script&gt;"),
        "the summary"
    );
    assert!(
        alert.contains("&quot;&gt;&lt;img src=x onerror=alert(3)&gt;:443/TCP"),
        "a label"
    );
    assert!(
        alert.contains("ai-training/&lt;script&gt;alert(1)&lt;/script&gt;"),
        "the flow's pod"
    );
    let (_, _, flows) = ask(&state, "GET", "/ui/flows?since=2025-01-01T00:00:00Z", "").await;
    assert!(flows.contains("&quot;&gt;&lt;img src=x onerror=alert(2)&gt;.evil.example"));
    assert!(flows.contains("node-1&lt;b&gt;"));
}
