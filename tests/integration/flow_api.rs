//! The REST flow API of a running `exfilwatch run`, fed by a Hubble server on loopback: every
//! endpoint and filter, pagination while flows arrive, auth on and off (with a token change
//! picked up live), bad parameters, and a property-based fuzz run of the OpenAPI document.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use exfilwatch::flow::wire::Decoder;
use exfilwatch::flow::{Event, FlowEvent, L4Protocol, Verdict, format_uuid};
use exfilwatch::proto::flow::Flow;
use exfilwatch::sim::traffic::{EXFIL_FQDN, EXFIL_IP, TrainingCluster};
use serde_json::Value;

use crate::support::service::{RunConfig, Service};
use crate::support::{GUARD, Relay, relay};

const TOKEN: &str = "flow-api-token-4f1c9a7e2b8d6053e1a9";

/// The API tests' service configuration: flows queryable within 20 ms, small chunks, and
/// `flows` (more `storage.flows` lines, indented by two).
fn config(relay: &Relay, flows: &str) -> RunConfig {
    RunConfig::new(relay.addr).with(
        "storage",
        &format!("flows:\n  flush_interval: 20ms\n  chunk_flows: 1000\n{flows}"),
    )
}

/// `exfilwatch run` against `relay`, with a token when `tokens`.
async fn start(relay: &Relay, tokens: bool) -> Service {
    start_in(&config(relay, ""), tokens, tempfile::tempdir().unwrap()).await
}

/// `exfilwatch run` with `config` and its state in `dir`, ready.
async fn start_in(config: &RunConfig, tokens: bool, dir: tempfile::TempDir) -> Service {
    let service = if tokens {
        std::fs::write(dir.path().join("tokens"), format!("{TOKEN}\n")).unwrap();
        Service::spawn(&config.clone().with("api", "tokens_file: tokens"), dir).with_token(TOKEN)
    } else {
        Service::spawn(config, dir)
    };
    service.ready().await;
    service
}

/// Every flow a query selects, following cursors; their times, newest first.
async fn all_times(service: &Service, query: &str, limit: usize) -> Vec<String> {
    let mut times = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/flows?limit={limit}");
        if !query.is_empty() {
            path.push('&');
            path.push_str(query);
        }
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = service.ok(&path).await;
        let flows = page["flows"].as_array().unwrap();
        assert!(flows.len() <= limit);
        times.extend(flows.iter().map(|f| f["time"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return times,
        }
    }
}

/// Waits until the store holds `n` flows.
async fn wait_for_flows(service: &Service, n: u64) {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let top = service.ok("/api/v1/flows/top?by=verdict").await;
        if top["total"].as_u64() == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "store holds {} flows, expected {n}",
            top["total"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The flows as exfilwatch decodes them, to compute what each filter should select.
fn decoded(flows: &[Flow]) -> Vec<FlowEvent> {
    let mut decoder = Decoder::default();
    flows
        .iter()
        .map(|f| crate::support::received(&mut decoder, f.clone()))
        .collect()
}

/// Simulated traffic: `n` flows with an exfiltration attempt every 100.
fn traffic(cluster: &mut TrainingCluster, n: usize) -> Vec<Flow> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        if out.len() % 100 == 99 {
            out.extend(cluster.exfiltration_attempt());
        } else {
            out.push(cluster.next_flow());
        }
    }
    out
}

fn time_of(f: &FlowEvent) -> String {
    exfilwatch::common::clock::format_time(f.time_ns)
}

/// A service holding 3,000 flows of simulated traffic with exfiltration attempts among them,
/// and those flows as exfilwatch decodes them.
struct Loaded {
    _relay: Relay,
    service: Service,
    flows: Vec<Flow>,
    events: Vec<FlowEvent>,
}

async fn loaded() -> Loaded {
    let relay = relay(None).await;
    let service = start(&relay, true).await;
    let mut cluster = TrainingCluster::new(21, exfilwatch::common::clock::now_ns(), 1_000_000);
    let flows = traffic(&mut cluster, 3_000);
    for f in &flows {
        relay.sim.push_flow(f.clone());
    }
    wait_for_flows(&service, flows.len() as u64).await;
    let events = decoded(&flows);
    Loaded {
        _relay: relay,
        service,
        flows,
        events,
    }
}

/// Exfiltration attempts among `events`: Hubble reports each denied packet twice.
fn attempts(events: &[FlowEvent]) -> usize {
    events
        .iter()
        .filter(|f| f.verdict == Verdict::Dropped)
        .count()
        / 2
}

#[tokio::test(flavor = "multi_thread")]
async fn every_filter_selects_what_it_names() {
    let Loaded {
        service, events, ..
    } = loaded().await;
    let middle = time_of(&events[1_500]);
    type Keep = Box<dyn Fn(&FlowEvent) -> bool>;
    let has_port = |f: &FlowEvent, p: u16| f.source.port == p || f.destination.port == p;
    let cases: Vec<(String, Keep)> = vec![
        ("".into(), Box::new(|_| true)),
        (
            "verdict=DROPPED".into(),
            Box::new(|f| f.verdict == Verdict::Dropped),
        ),
        (
            "verdict=dropped,audit".into(),
            Box::new(|f| matches!(f.verdict, Verdict::Audit | Verdict::Dropped)),
        ),
        (
            "drop_reason=POLICY_DENY".into(),
            Box::new(|f| f.drop_reason == 181),
        ),
        (
            "namespace=storage".into(),
            Box::new(|f| {
                &*f.source.namespace == "storage" || &*f.destination.namespace == "storage"
            }),
        ),
        (
            "source_namespace=ai-training&destination_namespace=kube-system".into(),
            Box::new(|f| {
                &*f.source.namespace == "ai-training" && &*f.destination.namespace == "kube-system"
            }),
        ),
        (
            "destination_pod=coredns".into(),
            Box::new(|f| f.destination.pod.starts_with("coredns")),
        ),
        (
            "pod=llm-pretrain-worker-1".into(),
            Box::new(|f| {
                f.source.pod.starts_with("llm-pretrain-worker-1")
                    || f.destination.pod.starts_with("llm-pretrain-worker-1")
            }),
        ),
        (
            "workload=minio".into(),
            Box::new(|f| &*f.source.workload == "minio" || &*f.destination.workload == "minio"),
        ),
        (
            format!("ip={EXFIL_IP}"),
            Box::new(|f| {
                [f.source.ip, f.destination.ip]
                    .iter()
                    .any(|ip| ip.map(|i| i.to_string()).as_deref() == Some(EXFIL_IP))
            }),
        ),
        (
            "destination_cidr=10.0.0.0%2F8".into(),
            Box::new(|f| {
                f.destination
                    .ip
                    .is_some_and(|ip| ip.to_string().starts_with("10."))
            }),
        ),
        ("port=29500".into(), Box::new(move |f| has_port(f, 29500))),
        (
            "destination_port=53&protocol=UDP".into(),
            Box::new(|f| f.destination.port == 53 && f.protocol == L4Protocol::Udp),
        ),
        (
            // The simulated flows all leave their pods: direction narrows nothing on its own.
            "direction=EGRESS&protocol=TCP".into(),
            Box::new(|f| {
                f.direction == exfilwatch::flow::TrafficDirection::Egress
                    && f.protocol == L4Protocol::Tcp
            }),
        ),
        (
            // The destination's name or a DNS record's query.
            "fqdn=amazonaws.com".into(),
            Box::new(|f| {
                f.destination_names
                    .first()
                    .is_some_and(|n| n.trim_end_matches('.').ends_with(".amazonaws.com"))
                    || f.dns
                        .as_ref()
                        .is_some_and(|d| d.query.trim_end_matches('.').ends_with(".amazonaws.com"))
            }),
        ),
        (
            format!(
                "uuid={},{}",
                format_uuid(events[10].uuid.unwrap()),
                format_uuid(events[2_000].uuid.unwrap())
            ),
            Box::new({
                let wanted = [events[10].uuid, events[2_000].uuid];
                move |f| wanted.contains(&f.uuid)
            }),
        ),
        (
            format!("fqdn={EXFIL_FQDN}"),
            Box::new(|f| f.destination_names.first().map(|n| &**n) == Some(EXFIL_FQDN)),
        ),
        (
            "node=gpu-node-a".into(),
            Box::new(|f| &*f.node == "gpu-node-a"),
        ),
        (
            format!("since={}", middle.replace(':', "%3A")),
            Box::new({
                let t = events[1_500].time_ns;
                move |f| f.time_ns >= t
            }),
        ),
        (
            format!("until={}", middle.replace(':', "%3A")),
            Box::new({
                let t = events[1_500].time_ns;
                move |f| f.time_ns < t
            }),
        ),
        ("since=1h".into(), Box::new(|_| true)),
    ];
    for (query, keep) in &cases {
        let want: Vec<String> = events
            .iter()
            .rev()
            .filter(|f| keep(f))
            .map(time_of)
            .collect();
        let got = all_times(&service, query, 400).await;
        assert_eq!(got.len(), want.len(), "{query}");
        assert_eq!(got, want, "{query}");
        let top = service
            .ok(&format!("/api/v1/flows/top?by=verdict&{query}"))
            .await;
        assert_eq!(
            top["total"].as_u64(),
            Some(want.len() as u64),
            "top {query}"
        );
    }
    // Each filter (but the first and the last) must select a proper, non-empty subset, or the
    // comparison above proves little.
    for (query, keep) in &cases[1..cases.len() - 1] {
        let n = events.iter().filter(|f| keep(f)).count();
        assert!(
            n > 0 && n < events.len(),
            "{query} selects {n} of {}",
            events.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_flow_reads_as_hubble_json_and_as_ndjson() {
    let Loaded {
        service, events, ..
    } = loaded().await;
    // The policy that denied the upload is in the flow.
    let denied = service
        .ok(&format!("/api/v1/flows?fqdn={EXFIL_FQDN}&limit=1"))
        .await;
    let flow = &denied["flows"][0];
    assert_eq!(flow["verdict"], "DROPPED");
    assert_eq!(flow["drop_reason_desc"], "POLICY_DENY");
    assert_eq!(flow["destination_names"][0], EXFIL_FQDN);
    assert_eq!(flow["source"]["namespace"], "ai-training");
    assert_eq!(flow["l4"]["TCP"]["destination_port"], 443);
    assert!(flow["egress_denied_by"][0]["name"].is_string(), "{flow}");
    // Its Hubble UUID is kept, and finds the flow again.
    let uuid = flow["uuid"].as_str().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.uuid.map(format_uuid).as_deref() == Some(uuid)),
        "{uuid} was sent"
    );
    let again = service.ok(&format!("/api/v1/flows?uuid={uuid}")).await;
    assert_eq!(again["flows"].as_array().unwrap().len(), 1);
    assert_eq!(again["flows"][0]["time"], flow["time"]);
    // A DNS request keeps its query, as an L7 record.
    let dns = service
        .ok("/api/v1/flows?fqdn=amazonaws.com&destination_port=53&limit=1")
        .await;
    let dns = &dns["flows"][0];
    assert_eq!(dns["Type"], "L7", "{dns}");
    assert_eq!(dns["l7"]["type"], "REQUEST", "{dns}");
    assert!(
        dns["l7"]["dns"]["query"]
            .as_str()
            .unwrap()
            .trim_end_matches('.')
            .ends_with(".amazonaws.com"),
        "{dns}"
    );

    // ndjson: lines `hubble observe -o jsonpb` users can pipe on, read by exfilwatch's own
    // jsonpb decoder; the cursor comes in a header.
    let r = service
        .get_raw("/api/v1/flows?verdict=DROPPED&format=ndjson&limit=25")
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    assert!(r.headers().contains_key("x-next-cursor"));
    let body = r.text().await.unwrap();
    let mut decoder = exfilwatch::flow::json::JsonDecoder::default();
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 25);
    for line in lines {
        match decoder.decode_line(line).unwrap() {
            Event::Flow(f) => {
                assert_eq!(f.verdict, Verdict::Dropped);
                assert!(f.uuid.is_some(), "{line}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn top_groups_count_the_flows_they_cover() {
    let Loaded {
        service, events, ..
    } = loaded().await;
    // Top groups.
    let top = service
        .ok("/api/v1/flows/top?by=destination&verdict=DROPPED&limit=2")
        .await;
    let groups = top["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    let attempts = attempts(&events);
    assert_eq!(groups[0]["count"].as_u64(), Some(attempts as u64), "{top}");
    assert!(groups[0]["first_seen"].as_str().unwrap() <= groups[0]["last_seen"].as_str().unwrap());
    let keys: BTreeSet<&str> = groups.iter().map(|g| g["key"].as_str().unwrap()).collect();
    assert!(
        keys.contains(format!("{EXFIL_FQDN}:443/TCP").as_str()),
        "{top}"
    );
    for by in ["source", "fqdn", "port", "namespace", "verdict"] {
        let top = service.ok(&format!("/api/v1/flows/top?by={by}")).await;
        let sum: u64 = top["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["count"].as_u64().unwrap())
            .sum();
        assert!(sum <= top["total"].as_u64().unwrap(), "{by}: {top}");
        assert!(!top["groups"].as_array().unwrap().is_empty(), "{by}");
    }
    let ports = service.ok("/api/v1/flows/top?by=port&limit=100").await;
    assert!(
        ports["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["key"] == "29500/TCP"),
        "{ports}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_lead_to_the_flows_behind_them() {
    let Loaded {
        service, events: _, ..
    } = loaded().await;
    // Alerts, with the flows behind them.
    let deadline = tokio::time::Instant::now() + GUARD;
    let alerts = loop {
        let alerts = service.ok("/api/v1/alerts?status=firing").await;
        if !alerts.as_array().unwrap().is_empty() {
            break alerts;
        }
        assert!(tokio::time::Instant::now() < deadline, "no alert");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let alert = &alerts[0];
    assert_eq!(alert["status"], "firing");
    assert_eq!(alert["labels"]["namespace"], "ai-training");
    assert!(alert["context"]["count"].as_u64().unwrap() > 0);
    let fingerprint = alert["fingerprint"].as_str().unwrap();
    let detail = service
        .ok(&format!("/api/v1/alerts/{fingerprint}?limit=500"))
        .await;
    assert_eq!(detail["alert"]["fingerprint"], fingerprint);
    let behind = detail["flows"].as_array().unwrap();
    assert!(!behind.is_empty(), "{detail}");
    for f in behind {
        assert_eq!(f["verdict"], "DROPPED", "{f}");
        assert_eq!(f["source"]["namespace"], "ai-training", "{f}");
    }
    let (status, body) = service.get("/api/v1/alerts/0123456789abcdef").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
    let none = service.ok("/api/v1/alerts?namespace=production").await;
    assert!(none.as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn namespaces_and_metrics_count_the_stored_flows() {
    let Loaded {
        service,
        flows,
        events,
        ..
    } = loaded().await;
    let attempts = attempts(&events);
    // Namespaces.
    let namespaces = service.ok("/api/v1/namespaces").await;
    let training = namespaces
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["namespace"] == "ai-training")
        .unwrap_or_else(|| panic!("{namespaces}"));
    assert_eq!(training["watched"], true);
    let from_training = events
        .iter()
        .filter(|f| &*f.source.namespace == "ai-training")
        .count();
    assert_eq!(training["flows"].as_u64(), Some(from_training as u64));
    assert_eq!(
        training["denied"].as_u64(),
        Some(
            events
                .iter()
                .filter(|f| f.verdict == Verdict::Dropped)
                .count() as u64
        )
    );
    assert!(training["firing_alerts"].as_u64().unwrap() >= 1);
    assert_eq!(
        namespaces.as_array().unwrap().len(),
        1,
        "only the watched namespace: {namespaces}"
    );

    // Store metrics.
    let metrics = service.get_raw("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(&format!(
            "exfilwatch_store_flows_appended_total {}",
            flows.len()
        )),
        "{metrics}"
    );
    assert!(metrics.contains("exfilwatch_api_query_duration_seconds_count"));
    assert!(
        metrics.contains(&format!(
            "exfilwatch_denied_flows_total{{namespace=\"ai-training\",destination=\"{EXFIL_FQDN}:443/TCP\"}} {attempts}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("exfilwatch_alerts_firing{alertname=\"TrainingPodUnexpectedEgress\",namespace=\"ai-training\"}"),
        "{metrics}"
    );
    // The query caches, one series each.
    for cache in ["segments", "top", "matches"] {
        assert!(
            metrics.contains(&format!(
                "exfilwatch_store_cache_bytes{{cache=\"{cache}\"}} "
            )),
            "{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_neither_skip_nor_repeat_while_flows_arrive() {
    let relay = relay(None).await;
    let service = start(&relay, false).await;
    let mut cluster = TrainingCluster::new(5, exfilwatch::common::clock::now_ns(), 1_000_000);
    let first = traffic(&mut cluster, 2_000);
    for f in &first {
        relay.sim.push_flow(f.clone());
    }
    wait_for_flows(&service, first.len() as u64).await;
    let expected: Vec<String> = decoded(&first).iter().rev().map(time_of).collect();
    // Between every two pages 150 more flows arrive and are stored before the next read.
    let mut stored = first.len() as u64;
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/api/v1/flows?limit=150".to_owned(),
            Some(c) => format!("/api/v1/flows?limit=150&cursor={c}"),
        };
        let page = service.ok(&path).await;
        seen.extend(
            page["flows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["time"].as_str().unwrap().to_owned()),
        );
        let more = traffic(&mut cluster, 150);
        for f in &more {
            relay.sim.push_flow(f.clone());
        }
        stored += more.len() as u64;
        wait_for_flows(&service, stored).await;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert!(
        stored > first.len() as u64 + 1_500,
        "flows arrived while paging"
    );
    assert_eq!(seen.len(), expected.len(), "no flow skipped or repeated");
    assert_eq!(seen, expected);
    // Auth off (loopback, no tokens file): the API answers without a token.
    let open = reqwest::get(service.url("/api/v1/flows?limit=1"))
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_a_status_and_a_message_naming_the_parameter() {
    let relay = relay(None).await;
    let mut service = start(&relay, true).await;
    let cases = [
        ("/api/v1/flows?verdict=MAYBE", "verdict"),
        ("/api/v1/flows?drop_reason=OOPS", "drop_reason"),
        ("/api/v1/flows?direction=SIDEWAYS", "direction"),
        ("/api/v1/flows?protocol=QUIC", "protocol"),
        ("/api/v1/flows?port=99999", "port"),
        ("/api/v1/flows?source_port=-1", "source_port"),
        ("/api/v1/flows?cidr=10.0.0.0%2F33", "cidr"),
        (
            "/api/v1/flows?destination_cidr=10.0.0.0",
            "destination_cidr",
        ),
        ("/api/v1/flows?ip=10.0.0", "ip"),
        ("/api/v1/flows?since=yesterday", "since"),
        ("/api/v1/flows?since=9999999999d", "since"),
        ("/api/v1/flows/top?until=3651d", "until"),
        ("/api/v1/flows?until=2026-13-01T00%3A00%3A00Z", "until"),
        (
            "/api/v1/flows?since=2026-01-02T00%3A00%3A00Z&until=2026-01-01T00%3A00%3A00Z",
            "until",
        ),
        (
            "/api/v1/flows?since=2025-01-01T00%3A00%3A00Z&until=2026-01-01T00%3A00%3A00Z",
            "since",
        ),
        ("/api/v1/flows?limit=0", "limit"),
        ("/api/v1/flows?limit=100001", "limit"),
        ("/api/v1/flows?limit=ten", "limit"),
        ("/api/v1/flows?cursor=abc", "cursor"),
        ("/api/v1/flows?format=xml", "format"),
        ("/api/v1/flows?pod=", "pod"),
        ("/api/v1/flows?colour=blue", "colour"),
        ("/api/v1/flows?namespace=a&namespace=b", "namespace"),
        ("/api/v1/flows/top?by=colour", "by"),
        ("/api/v1/flows/top?cursor=1", "cursor"),
        ("/api/v1/alerts?status=maybe", "status"),
        ("/api/v1/alerts?limit=-3", "limit"),
        ("/api/v1/alerts/abc?verdict=DROPPED", "verdict"),
        ("/api/v1/namespaces?since=soon", "since"),
    ];
    for (path, parameter) in cases {
        let (status, body) = service.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "bad_parameter", "{path}: {body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(&format!("parameter {parameter}=")),
            "{path}: {detail}"
        );
    }
    let long = format!("/api/v1/flows?pod={}", "a".repeat(9_000));
    let (status, body) = service.get(&long).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "too_large");
    let with_body = service
        .client
        .get(service.url("/api/v1/flows"))
        .bearer_auth(TOKEN)
        .body("x".repeat(100))
        .send()
        .await
        .unwrap();
    assert_eq!(with_body.status(), 413);
    let (status, body) = service.get("/api/v1/nowhere").await;
    assert_eq!(status, 404, "{body}");

    // Auth: every route of the router's own table needs the token, except the probes.
    let doc = service.ok("/api/v1/openapi.json").await;
    let routes = exfilwatch::api::routes();
    assert!(routes.len() >= 11);
    for (path, open, _) in &routes {
        let concrete = path
            .replace("{fingerprint}", "abc")
            .replace("{ns}", "ai-training")
            .replace("{name}", "TrainingPodScanning");
        let r = reqwest::get(service.url(&concrete)).await.unwrap();
        if *open {
            assert_eq!(r.status(), 200, "{path} is a probe");
        } else {
            assert_eq!(r.status(), 401, "{path} answered without a token");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"], "unauthorized");
        }
        if *path != "/api/v1/openapi.json" {
            assert!(
                doc["paths"].get(*path).is_some(),
                "{path} is not documented"
            );
        }
    }
    for path in doc["paths"].as_object().unwrap().keys() {
        assert!(
            routes.iter().any(|(p, _, _)| p == path),
            "{path} is documented but not routed"
        );
    }
    let unknown = reqwest::get(service.url("/nowhere")).await.unwrap();
    assert_eq!(unknown.status(), 401, "unknown paths are protected too");
    // A changed tokens file takes effect without a restart; the old token stops working.
    std::fs::write(
        service.dir.path().join("tokens"),
        "rotated-token-8c2e5b1f9a7d4036c2e8b\n",
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        if service.get_raw("/api/v1/flows").await.status() == 401 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "old token still accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    service.token = Some("rotated-token-8c2e5b1f9a7d4036c2e8b".into());
    assert_eq!(service.get_raw("/api/v1/flows").await.status(), 200);
    // An emptied file keeps the tokens in force rather than opening the API.
    std::fs::write(service.dir.path().join("tokens"), "").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        reqwest::get(service.url("/api/v1/flows"))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(service.get_raw("/api/v1/flows").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigkilled_service_restarts_with_its_stored_flows_intact() {
    let relay = relay(None).await;
    let service = start_in(
        &config(&relay, "  memory_flows: 2000\n"),
        false,
        tempfile::tempdir().unwrap(),
    )
    .await;
    let mut cluster = TrainingCluster::new(17, exfilwatch::common::clock::now_ns(), 1_000_000);
    let flows = traffic(&mut cluster, 7_000);
    for f in &flows {
        relay.sim.push_flow(f.clone());
    }
    wait_for_flows(&service, flows.len() as u64).await;
    // The writer appends what the pipeline received, then moves chunks to disk after they
    // became queryable (the size gauges change when a move ends): wait until memory and disk
    // hold every flow and memory is back within its bound, when nothing more will move.
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let memory = service.metric("exfilwatch_store_memory_flows").await;
        let disk = service.metric("exfilwatch_store_disk_flows").await;
        if memory <= 2_000 && memory + disk == flows.len() as u64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "memory never within bounds"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let on_disk = service.metric("exfilwatch_store_disk_flows").await;
    assert!(on_disk >= 5_000, "{on_disk} flows on disk");
    let newest_on_disk: Vec<String> = all_times(&service, "", 1_000)
        .await
        .into_iter()
        .skip(flows.len() - on_disk as usize)
        .collect();
    let dir = service.kill();

    // Restarted against an empty Relay: exactly the flows on disk are there, newest first.
    let empty = crate::support::relay(None).await;
    let service = start_in(&config(&empty, "  memory_flows: 2000\n"), false, dir).await;
    assert_eq!(service.metric("exfilwatch_store_disk_flows").await, on_disk);
    assert_eq!(all_times(&service, "", 999).await, newest_on_disk);
    // New flows continue the sequence: they come first, and pages still neither skip nor repeat.
    let more = traffic(&mut cluster, 300);
    for f in &more {
        empty.sim.push_flow(f.clone());
    }
    wait_for_flows(&service, on_disk + more.len() as u64).await;
    let all = all_times(&service, "", 123).await;
    assert_eq!(all.len() as u64, on_disk + more.len() as u64);
    assert_eq!(&all[more.len()..], &newest_on_disk[..]);
    let alerts = service.ok("/api/v1/alerts").await;
    assert!(
        !alerts.as_array().unwrap().is_empty(),
        "alerts survived the kill"
    );
}

/// Destinations the webhook receiver has had an alert for.
fn alerted(receiver: &crate::alertmanager::Receiver) -> BTreeSet<String> {
    receiver
        .notifications()
        .iter()
        .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["labels"]["destination"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_loses_no_alert_and_no_stored_segment() {
    let receiver = crate::alertmanager::Receiver::start().await;
    let relay = relay(None).await;
    let config = config(&relay, "  memory_flows: 2000\n").with(
        "alertmanager",
        &format!("webhooks: [\"{}\"]\nretry_max: 300ms", receiver.url),
    );
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut cluster = TrainingCluster::new(23, exfilwatch::common::clock::now_ns(), 1_000_000);
    let mut dir = tempfile::tempdir().unwrap();
    let mut destinations = Vec::new();
    let mut on_disk = 0;
    let mut killed_before_delivery = 0;
    for round in 0..6 {
        let service = start_in(&config, false, dir).await;
        // What earlier rounds wrote to disk is all there, and the alert store answers.
        let stored = service.ok("/api/v1/flows/top?by=verdict").await["total"]
            .as_u64()
            .unwrap();
        assert!(
            stored >= on_disk,
            "round {round}: {stored} flows, {on_disk} were on disk"
        );
        service.ok("/api/v1/alerts").await;
        on_disk = service.metric("exfilwatch_store_disk_flows").await;
        // Traffic with a new exfiltration destination, then a kill at a random moment, often
        // before its alert can have gone out (delivery takes milliseconds).
        let destination = format!("exfil-round-{round}.example.net");
        for f in traffic(&mut cluster, 1_500) {
            relay.sim.push_flow(f);
        }
        for mut f in cluster.exfiltration_attempt() {
            if !f.destination_names.is_empty() {
                f.destination_names = vec![destination.clone()];
            }
            relay.sim.push_flow(f);
        }
        destinations.push(destination);
        tokio::time::sleep(Duration::from_millis(rng.u64(0..12))).await;
        dir = service.kill();
        if !alerted(&receiver).contains(destinations.last().unwrap()) {
            killed_before_delivery += 1;
        }
    }
    // After the last restart every attempt has alerted at least once: those the killed
    // processes never saw come back from Relay through the resume overlap.
    let service = start_in(&config, false, dir).await;
    let deadline = tokio::time::Instant::now() + GUARD;
    // The seeded kill times include kills before the attempt's alert went out.
    assert!(
        killed_before_delivery >= 1,
        "no kill landed before a delivery"
    );
    loop {
        let seen = alerted(&receiver);
        if destinations.iter().all(|d| seen.contains(d)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alerts lost: {destinations:?} vs {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    service.ok("/api/v1/flows?limit=10").await;
}

/// The OpenAPI document is what the server serves, and a property-based run of schemathesis
/// against the live server finds no server error and no response outside the document.
#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_holds_under_schemathesis() {
    let schemathesis =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/schemathesis");
    assert!(
        schemathesis.exists(),
        "{} is missing: run scripts/test.sh, which installs it (pip install schemathesis into .tools/venv)",
        schemathesis.display()
    );
    let relay = relay(None).await;
    let service = start(&relay, true).await;
    let mut cluster = TrainingCluster::new(3, exfilwatch::common::clock::now_ns(), 1_000_000);
    let flows = traffic(&mut cluster, 500);
    for f in &flows {
        relay.sim.push_flow(f.clone());
    }
    wait_for_flows(&service, flows.len() as u64).await;
    let doc = service.ok("/api/v1/openapi.json").await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for p in [
        "/api/v1/flows",
        "/api/v1/flows/top",
        "/api/v1/alerts",
        "/api/v1/alerts/{fingerprint}",
        "/api/v1/namespaces",
    ] {
        assert!(paths.contains(p), "{p} not documented: {paths:?}");
    }
    let schema_file = service.dir.path().join("openapi.json");
    std::fs::write(&schema_file, doc.to_string()).unwrap();
    let seconds: u64 = std::env::var("EXFILWATCH_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let out = tokio::task::spawn_blocking({
        let base = service.base.clone();
        move || {
            Command::new(schemathesis)
                .args(["run", "--url"])
                .arg(&base)
                .arg(&schema_file)
                .args([
                    "--checks",
                    "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                    "--header",
                    &format!("Authorization: Bearer {TOKEN}"),
                    "--max-time",
                    &seconds.to_string(),
                    "--workers",
                    "2",
                    "--seed",
                    "42",
                ])
                .env("SCHEMATHESIS_HOOKS", "")
                // Its cache goes beside the schema, not into the checkout.
                .current_dir(schema_file.parent().unwrap())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    eprintln!("{text}");
    assert!(text.contains("passed") || text.contains("PASSED"), "{text}");
}
