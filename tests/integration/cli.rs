//! The `exfilwatch` binary: exit codes, messages, the demo, and shutdown on SIGTERM.

use std::time::Duration;

use exfilwatch::sim::traffic::TrainingCluster;
use tonic::Code;

use crate::support::relay;
use crate::support::service::{RunConfig, Service, exfilwatch, run_once, text};

const GOOD_RULE: &str = "- name: A\n  kind: policy_denied\n  namespaces: { names: [ai-training] }\n  severity: critical\n";

/// `exfilwatch check --config <config>`: its exit code and everything it printed.
fn check(config: &std::path::Path) -> (Option<i32>, String) {
    let out = exfilwatch()
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (out.status.code(), text(&out))
}

#[test]
fn check_lists_every_config_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("exfilwatch.yaml");
    std::fs::write(
        &config,
        "hubble:\n  address: tls://relay:443\n  namespaces: [Prod_DB]\napi:\n  listen: nowhere\n",
    )
    .unwrap();
    let (code, msg) = check(&config);
    assert_eq!(code, Some(64), "{msg}");
    assert!(msg.contains("exfilwatch.yaml: 3 problem(s)"), "{msg}");
    assert!(msg.contains("hubble.tls.ca_file: is required"), "{msg}");
    assert!(
        msg.contains("hubble.namespaces: \"Prod_DB\" is not a valid namespace name"),
        "{msg}"
    );
    assert!(msg.contains("api.listen: \"nowhere\""), "{msg}");
}

#[test]
fn check_names_a_misspelt_key_with_its_line_and_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        "hubble:\n  namespaces: [ai-training]\n  adress: http://relay:80\n",
    )
    .unwrap();
    let (code, msg) = check(&config);
    assert_eq!(code, Some(64), "{msg}");
    assert!(
        msg.contains("c.yaml:3:3: hubble: unknown field `adress`"),
        "{msg}"
    );
    assert!(msg.contains("did you mean `address`?"), "{msg}");
}

#[test]
fn check_reports_a_broken_rule_file_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/good.yaml"), GOOD_RULE).unwrap();
    std::fs::write(
        dir.path().join("rules/bad.yaml"),
        "- name: b\n  kind: [unclosed\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("c.yaml"), "rules:\n  dir: rules\n").unwrap();
    let (code, msg) = check(&dir.path().join("c.yaml"));
    assert_eq!(code, Some(64), "{msg}");
    assert!(
        msg.contains("rules/bad.yaml:3: did not find expected ',' or ']'"),
        "{msg}"
    );
    assert!(!msg.contains("good.yaml"), "{msg}");

    std::fs::remove_file(dir.path().join("rules/bad.yaml")).unwrap();
    let (code, msg) = check(&dir.path().join("c.yaml"));
    assert_eq!(code, Some(0), "{msg}");
    assert!(msg.contains("1 rule(s), 1 enabled"), "{msg}");
}

#[test]
fn the_shipped_example_config_passes_check() {
    let (code, msg) = check(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/exfilwatch.yaml"
    )));
    assert_eq!(code, Some(0), "{msg}");
}

#[test]
fn replay_prints_a_json_summary_with_bad_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("capture.jsonl");
    let good = include_str!("../fixtures/flows.jsonl");
    std::fs::write(&capture, format!("{good}{{\"flow\": nope}}\n")).unwrap();
    let out = exfilwatch()
        .args(["replay", "--output", "json"])
        .arg(&capture)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["flows"], 5);
    assert_eq!(summary["bad_lines"], 1);
    assert_eq!(summary["by_verdict"]["DROPPED"], 2);
    assert_eq!(summary["by_drop_reason"]["POLICY_DENY"], 1);
    assert_eq!(
        summary["lost_events"]["HUBBLE_RING_BUFFER"],
        12_345_678_901u64
    );
    let bad = summary["files"][0]["bad"][0].as_str().unwrap();
    assert!(
        bad.starts_with(&format!("{}:8: invalid JSON", capture.display())),
        "{bad}"
    );
}

#[test]
fn replay_shows_the_context_an_alert_grew_to() {
    // 60 dnscat2-shaped queries, two a second: the alert fires partway and keeps counting.
    let mut capture = String::new();
    for i in 0..60u64 {
        let (name, qtype) = exfilwatch::sim::dns::Tunnel::Dnscat2.query(i, "t.tunnel.example");
        capture.push_str(&format!(
            r#"{{"flow":{{"time":"2026-01-01T00:00:{:02}.{:03}Z","uuid":"{}","verdict":"FORWARDED","Type":"L7","l7":{{"type":"REQUEST","dns":{{"query":"{name}.","qtypes":["{qtype}"]}}}},"source":{{"namespace":"ai-training","pod_name":"llm-pretrain-worker-2"}},"destination":{{"namespace":"kube-system","pod_name":"coredns-0"}},"traffic_direction":"EGRESS"}}}}"#,
            i / 2,
            (i % 2) * 500,
            exfilwatch::flow::format_uuid(u128::from(i) + 1)
        ));
        capture.push('\n');
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tunnel.jsonl");
    std::fs::write(&path, capture).unwrap();
    let out = exfilwatch()
        .args(["replay", "--output", "json"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let alert = summary["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["rule"] == "TrainingPodDnsExfiltration")
        .unwrap_or_else(|| panic!("{summary:#}"));
    assert_eq!(alert["labels"]["destination"], "tunnel.example");
    // Every query counts, those before the alert too, and the figures are the last ones.
    let a = &alert["annotations"];
    assert_eq!(a["count"], "60", "{alert:#}");
    assert_eq!(a["queries"], "60", "{alert:#}");
    assert_eq!(a["distinct_names"], "60", "{alert:#}");
    assert_eq!(a["source_pods"], "ai-training/llm-pretrain-worker-2");
    assert_eq!(a["query_types"], "TXT: 20, CNAME: 20, MX: 20", "{alert:#}");
}

#[test]
fn replay_of_a_missing_file_exits_66() {
    let out = exfilwatch()
        .args(["replay", "/nonexistent/capture.jsonl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(66));
    assert!(text(&out).contains("/nonexistent/capture.jsonl"));
}

#[test]
fn the_demo_shows_the_exfiltration_attempt() {
    let out = exfilwatch()
        .args(["demo", "--duration", "3s", "--rate", "2000"])
        .output()
        .unwrap();
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(0), "{msg}");
    assert!(
        msg.contains("TrainingPodUnexpectedEgress [critical] ai-training -> paste.example.net"),
        "{msg}"
    );
    assert!(
        msg.contains("TrainingPodUnexpectedEgress [critical] ai-training -> production/orders-db"),
        "{msg}"
    );
    assert!(
        msg.contains("policies: ai-training/deny-unapproved-egress"),
        "{msg}"
    );
    assert!(
        msg.contains("TrainingDataEgressVolumeSpike [warning] ai-training -> *"),
        "{msg}"
    );
    assert!(
        msg.contains("top pods: ai-training/llm-pretrain-worker-2"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_stops_cleanly_on_sigterm_with_a_summary() {
    let relay = relay(None).await;
    let service = Service::spawn(&RunConfig::new(relay.addr), tempfile::tempdir().unwrap());
    // Wait for the stream, then send flows.
    tokio::time::timeout(crate::support::GUARD, async {
        while relay.sim.requests().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let mut cluster = TrainingCluster::new(12, 1_764_115_200_000_000_000, 1_000_000);
    for _ in 0..50 {
        relay.sim.push_flow(cluster.next_flow());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, msg) = service.terminate().await;
    assert_eq!(code, Some(0), "{msg}");
    assert!(msg.starts_with("flows: 50\n"), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_exits_69_when_the_relay_refuses_the_credentials() {
    let relay = relay(None).await;
    relay
        .sim
        .refuse_with(Some((Code::PermissionDenied, "mTLS required")));
    let dir = tempfile::tempdir().unwrap();
    let out = run_once(&RunConfig::new(relay.addr), dir.path()).await;
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(69), "{msg}");
    assert!(
        msg.contains("PermissionDenied")
            && msg.contains("mTLS required")
            && msg.contains("hubble.tls"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_refuses_a_rule_pack_with_any_bad_rule_and_never_connects() {
    let relay = relay(None).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/a.yaml"), GOOD_RULE).unwrap();
    std::fs::write(
        dir.path().join("rules/b.yaml"),
        "- name: B\n  kind: dns_tunnel\n  namespaces: { names: [ai-training] }\n  severity: critical\n",
    )
    .unwrap();
    let config = RunConfig::new(relay.addr)
        .with("rules", "dir: rules")
        .with("storage", "dir: state");
    let out = run_once(&config, dir.path()).await;
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(64), "{msg}");
    assert!(
        msg.contains("rules/b.yaml:1: rule B: kind: unknown detector \"dns_tunnel\""),
        "{msg}"
    );
    assert!(
        relay.sim.requests().is_empty(),
        "started with half a rule set"
    );
}

#[test]
fn replay_reports_the_alerts_the_rules_would_raise() {
    let out = exfilwatch()
        .args([
            "replay",
            "--output",
            "json",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/flows.jsonl"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let all = summary["alerts"].as_array().unwrap();
    // The capture's lost-events notice is a coverage gap of its own.
    let gap = all
        .iter()
        .find(|a| a["rule"] == "ExfilwatchCoverageGap")
        .expect("a coverage alert");
    assert_eq!(gap["labels"]["destination"], "hubble");
    assert_eq!(gap["annotations"]["lost_events"], "12345678901");
    let alerts: Vec<&serde_json::Value> = all
        .iter()
        .filter(|a| a["rule"] == "TrainingPodUnexpectedEgress")
        .collect();
    let destinations: Vec<&str> = alerts
        .iter()
        .map(|a| a["labels"]["destination"].as_str().unwrap())
        .collect();
    // The AUDIT flow is not a drop, so the default rule leaves it out.
    assert_eq!(destinations, ["paste.example.net", "production/orders-db"]);
    // ...and so is the node Relay reported unavailable.
    assert!(
        all.iter()
            .any(|a| a["labels"]["destination"] == "hubble-nodes"),
        "{all:#?}"
    );
    assert_eq!(all.len(), 4, "{all:#?}");
    assert_eq!(
        alerts[0]["annotations"]["policies"],
        "ai-training/deny-unapproved-egress, cluster-lockdown"
    );
    assert_eq!(alerts[1]["annotations"]["drop_reasons"], "POLICY_DENIED");
    assert_eq!(alerts[1]["status"], "firing");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_serves_metrics_health_and_readiness_behind_tokens() {
    exfilwatch::common::http::install_crypto();
    let relay = relay(None).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokens"),
        "# dashboards\ns3cret-token-9e4b2d7a1c8f6035b9e4d\n",
    )
    .unwrap();
    let service = Service::spawn(
        &RunConfig::new(relay.addr).with("api", "tokens_file: tokens"),
        dir,
    );
    service.ready().await;
    let (base, client) = (service.base.clone(), service.client.clone());
    let deadline = tokio::time::Instant::now() + crate::support::GUARD;
    let mut cluster = TrainingCluster::new(13, exfilwatch::common::clock::now_ns(), 1_000_000);
    for _ in 0..30 {
        relay.sim.push_flow(cluster.next_flow());
    }
    for flow in cluster.exfiltration_attempt() {
        relay.sim.push_flow(flow);
    }

    let health = service.ok("/healthz").await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(health["revision"], revision());
    assert_eq!(health["hubble"], "streaming");
    let refused = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let wrong = client
        .get(format!("{base}/metrics"))
        .bearer_auth("s3cret-tokem")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        client
            .get(format!("{base}/nowhere"))
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "unknown routes are protected too"
    );
    let metrics = loop {
        let r = client
            .get(format!("{base}/metrics"))
            .bearer_auth("s3cret-token-9e4b2d7a1c8f6035b9e4d")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        if text.contains("exfilwatch_flows_received_total{verdict=\"DROPPED\"} 4") {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "flows never counted: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        metrics.contains("exfilwatch_flows_received_total{verdict=\"FORWARDED\"} 30"),
        "{metrics}"
    );
    assert!(
        metrics.contains("exfilwatch_alert_outbox_depth 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("exfilwatch_alert_delivery_errors_total 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("exfilwatch_lost_events_total{source=\"HUBBLE_RING_BUFFER\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("exfilwatch_alert_delivery_latency_seconds_bucket"),
        "{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "exfilwatch_build_info{{version=\"{}\",revision=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            revision()
        )),
        "{metrics}"
    );
    // The process's memory: its resident set, and the heap as jemalloc (the binary's
    // allocator by default) counts it.
    let value = |name: &str| -> u64 {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name} ")));
        let line = line.unwrap_or_else(|| panic!("no {name}: {metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let rss = value("process_resident_memory_bytes");
    let (allocated, resident) = (
        value("exfilwatch_heap_allocated_bytes"),
        value("exfilwatch_heap_resident_bytes"),
    );
    assert!(
        (1 << 20..1 << 30).contains(&allocated) && allocated <= resident && rss >= 1 << 20,
        "allocated {allocated}, resident {resident}, resident set {rss}"
    );
    // jemalloc purges from the threads that allocate: a background thread gave pages back in
    // batches at the heap's lows, and the resident set dipped (docs/reliability.md).
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", service.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect();
    assert!(!threads.is_empty());
    assert!(
        !threads.iter().any(|t| t.starts_with("jemalloc_bg")),
        "{threads:?}"
    );
    // The scheme is matched without case (RFC 7235).
    let lower = client
        .get(format!("{base}/metrics"))
        .header("Authorization", "bearer s3cret-token-9e4b2d7a1c8f6035b9e4d")
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 200);

    let (code, msg) = service.terminate().await;
    assert_eq!(code, Some(0), "{msg}");
    assert!(!msg.contains("s3cret"), "a token leaked into the output");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_refuses_a_non_loopback_api_without_tokens() {
    let relay = relay(None).await;
    let dir = tempfile::tempdir().unwrap();
    let config = RunConfig::new(relay.addr).with("api", "listen: 0.0.0.0:0");
    let out = run_once(&config, dir.path()).await;
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(64), "{msg}");
    assert!(
        msg.contains("api.listen 0.0.0.0:0 is not a loopback address: set api.tokens_file"),
        "{msg}"
    );
    assert!(relay.sim.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn run_exits_73_naming_a_storage_dir_it_cannot_use() {
    let relay = relay(None).await;
    for broken in ["state", "state/flows"] {
        let dir = tempfile::tempdir().unwrap();
        // A file where a directory must be: nothing can be written there.
        let path = dir.path().join(broken);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"not a directory").unwrap();
        let out = run_once(&RunConfig::new(relay.addr), dir.path()).await;
        let msg = text(&out);
        assert_eq!(out.status.code(), Some(73), "{broken}: {msg}");
        assert!(msg.contains(&path.display().to_string()), "{broken}: {msg}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"not a directory",
            "left as it was"
        );
    }
    assert!(relay.sim.requests().is_empty(), "never connected");
}

/// What `git rev-parse` says of the checkout the binary was built from, as the build saw it.
fn revision() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        )
}

#[test]
fn version_names_the_build_revision() {
    let out = exfilwatch().arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "exfilwatch {} (revision {})",
            env!("CARGO_PKG_VERSION"),
            revision()
        )
    );
}

/// Waits until the service has logged the warning every default start gives without
/// Prometheus, and returns the log.
async fn startup_log(service: &Service) -> String {
    service.ready().await;
    let deadline = tokio::time::Instant::now() + crate::support::GUARD;
    loop {
        let log = service.log();
        if log.contains("volume_spike rules are not evaluated") {
            return log;
        }
        assert!(tokio::time::Instant::now() < deadline, "no warning: {log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_written_to_a_file_carries_no_terminal_escape_codes() {
    let relay = relay(None).await;
    let service = Service::spawn(&RunConfig::new(relay.addr), tempfile::tempdir().unwrap());
    let log = startup_log(&service).await;
    assert!(!log.contains('\u{1b}'), "escape codes in {log:?}");
    assert!(log.contains(" WARN "), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_json_log_is_one_object_per_line_with_level_target_and_fields() {
    let relay = relay(None).await;
    let config = RunConfig::new(relay.addr).with("log", "format: json");
    let service = Service::spawn(&config, tempfile::tempdir().unwrap());
    let log = startup_log(&service).await;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let warning = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("volume_spike"))
        })
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["target"], "exfilwatch::app");
    assert!(warning["timestamp"].is_string(), "{warning}");
    assert!(
        warning["rules"].is_string(),
        "the event's fields: {warning}"
    );

    // The flag sets it where there is no configuration, and for every line.
    let out = exfilwatch()
        .args([
            "--log-format",
            "json",
            "demo",
            "--duration",
            "1s",
            "--rate",
            "50",
        ])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().count() > 2, "{stderr}");
    for line in stderr.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(
            event["level"].is_string() && event["message"].is_string(),
            "{line}"
        );
    }
    let bad = exfilwatch()
        .args(["check", "--config"])
        .arg(
            RunConfig::new(relay.addr)
                .with("log", "format: yaml")
                .write(service.dir.path(), 0),
        )
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    assert!(
        text(&bad).contains("log.format: \"yaml\" is not text or json"),
        "{}",
        text(&bad)
    );
}
