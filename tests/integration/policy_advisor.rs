//! The policy advisor over a simulated week of the demo's training traffic, stored on disk as
//! the service stores it: `policy suggest` then `policy check` of the suggestion drops nothing
//! that flowed and allows none of the denied attempts; `policy check` of the guide's pack
//! reports exactly the attempts it was written to block; the suggested YAML passes the
//! Kubernetes and Cilium schemas offline.

use std::path::{Path, PathBuf};
use std::process::Command;

use exfilwatch::config::Config;
use exfilwatch::flow::wire::Decoder;
use exfilwatch::flowstore::{FlowStore, Row};
use exfilwatch::sim::traffic::{TrainingCluster, cilium_shaped};
use serde::Deserialize;
use serde_json::Value;

use crate::support::service::{exfilwatch, text};

const WEEK_NS: i64 = 7 * 24 * 3600 * 1_000_000_000;
const FLOWS: i64 = 40_000;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A configuration whose store holds a week of training traffic: benign flows every ~15 s
/// (half of them Cilium-shaped, with a real pod's labels) and an exfiltration attempt a day.
fn simulated_week(dir: &Path) -> PathBuf {
    let config = dir.join("exfilwatch.yaml");
    std::fs::write(
        &config,
        format!(
            "storage:\n  dir: {}\nrules:\n  dir: {}\n",
            dir.join("state").display(),
            root().join("rules").display()
        ),
    )
    .unwrap();
    let loaded = Config::load(&config).unwrap();
    let store = FlowStore::open(loaded.flows.clone()).unwrap();
    let now = exfilwatch::common::clock::now_ns();
    let start = now - WEEK_NS + 3_600_000_000_000;
    let step = (WEEK_NS - 7_200_000_000_000) / FLOWS;
    let mut cluster = TrainingCluster::new(7, start, step);
    let mut decoder = Decoder::default();
    let mut rows = Vec::new();
    for i in 0..FLOWS {
        let flow = cluster.next_flow();
        let flow = if i % 2 == 0 {
            cilium_shaped(flow)
        } else {
            flow
        };
        let event = exfilwatch::sim::received(&mut decoder, flow).unwrap();
        rows.push(Row::new(&event));
        if i % (FLOWS / 7) == 0 {
            for f in cluster.exfiltration_attempt() {
                rows.push(Row::new(
                    &exfilwatch::sim::received(&mut decoder, f).unwrap(),
                ));
            }
        }
    }
    store.append(&rows);
    store.persist().unwrap();
    config
}

fn run(args: &[&str], config: &Path) -> (Option<i32>, String) {
    let out = exfilwatch()
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (out.status.code(), text(&out))
}

fn stdout(args: &[&str], config: &Path) -> (Option<i32>, String) {
    let out = exfilwatch()
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

fn documents(text: &str) -> Vec<serde_yaml_ng::Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde_yaml_ng::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn check_json(files: &[&Path], config: &Path) -> (Option<i32>, Value) {
    let mut args = vec![
        "policy",
        "check",
        "--namespace",
        "ai-training",
        "--output",
        "json",
    ];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let (code, out) = stdout(&args, config);
    (
        code,
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")),
    )
}

fn destinations(list: &Value) -> Vec<String> {
    let mut out: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "{} {}",
                f["destination"].as_str().unwrap(),
                f["port"].as_str().unwrap()
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn suggest_then_check_keeps_every_forwarded_flow_and_no_denied_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = simulated_week(dir.path());
    for flavor in ["cilium", "kubernetes"] {
        let (code, yaml) = stdout(
            &[
                "policy",
                "suggest",
                "--namespace",
                "ai-training",
                "--flavor",
                flavor,
            ],
            &config,
        );
        assert_eq!(code, Some(0), "{yaml}");
        let docs = documents(&yaml);
        assert!(docs.len() >= 2, "{yaml}");
        // Peers by labels, never by pod name.
        assert!(!yaml.contains("llm-pretrain-worker-0\""), "{yaml}");
        assert!(yaml.contains("\"app\": \"minio\""), "{yaml}");
        if let Some(out) = std::env::var_os("EXFILWATCH_DUMP_SUGGESTION") {
            std::fs::write(
                std::path::Path::new(&out).join(format!("{flavor}.yaml")),
                &yaml,
            )
            .unwrap();
        }
        let file = dir.path().join(format!("suggested-{flavor}.yaml"));
        std::fs::write(&file, &yaml).unwrap();
        let (code, report) = check_json(&[&file], &config);
        assert_eq!(code, Some(0), "{flavor}: {report:#}\n{yaml}");
        assert_eq!(
            report["would_drop"],
            Value::Array(vec![]),
            "{flavor}: {report:#}"
        );
        assert_eq!(
            report["would_allow"],
            Value::Array(vec![]),
            "{flavor}: {report:#}"
        );
        assert_eq!(
            report["forwarded_flows_kept"].as_u64(),
            Some(FLOWS as u64),
            "{flavor}: {report:#}"
        );
        let denied = destinations(&report["still_denied"]);
        assert_eq!(denied.len(), 2, "{flavor}: {denied:?}");
        if flavor == "cilium" {
            // Object storage by name, DNS with the names that were resolved.
            assert!(
                yaml.contains("matchName: \"training-data.s3.us-east-1.amazonaws.com\""),
                "{yaml}"
            );
            assert!(yaml.contains("rules:\n            dns:"), "{yaml}");
        }
    }
}

#[test]
fn checking_the_guides_pack_reports_exactly_the_attempts_it_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let config = simulated_week(dir.path());
    let pack: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/policies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    let files: Vec<&Path> = pack.iter().map(PathBuf::as_path).collect();
    let (code, report) = check_json(&files, &config);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["would_drop"], Value::Array(vec![]), "{report:#}");
    assert_eq!(report["would_allow"], Value::Array(vec![]), "{report:#}");
    assert_eq!(
        destinations(&report["still_denied"]),
        [
            "production app=postgres TCP/5432",
            "reserved:world paste.example.net TCP/443",
        ],
        "{report:#}"
    );
    assert_eq!(
        report["policies"].as_array().unwrap().len(),
        4,
        "{report:#}"
    );

    // Without the object-storage policy, the dataset reads would be dropped: exit 1, named.
    let partial: Vec<&Path> = files
        .iter()
        .copied()
        .filter(|p| !p.ends_with("40-allow-object-storage.yaml"))
        .collect();
    let (code, report) = check_json(&partial, &config);
    assert_eq!(code, Some(1), "{report:#}");
    // Grouped by source: half the trainers' flows carry the Helm labels of Cilium-shaped pods.
    let drops = destinations(&report["would_drop"]);
    assert_eq!(
        drops,
        [
            "reserved:world training-data.s3.us-east-1.amazonaws.com TCP/443",
            "reserved:world training-data.s3.us-east-1.amazonaws.com TCP/443",
            "storage app.kubernetes.io/name=minio TCP/9000",
            "storage app=minio TCP/9000",
        ],
        "{report:#}"
    );
    let dropped: u64 = report["would_drop"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["flows"].as_u64().unwrap())
        .sum();
    assert!(dropped > FLOWS as u64 / 5, "{dropped}");
    let (_, text_report) = run(
        &[
            "policy",
            "check",
            "--namespace",
            "ai-training",
            partial[0].to_str().unwrap(),
        ],
        &config,
    );
    assert!(
        text_report.contains("WOULD DROP traffic that flowed"),
        "{text_report}"
    );
}

#[test]
fn a_policy_the_advisor_cannot_evaluate_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = simulated_week(dir.path());
    let file = dir.path().join("p.yaml");
    std::fs::write(
        &file,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: svc\n  namespace: ai-training\nspec:\n  endpointSelector: {}\n  egress:\n    - toServices:\n        - k8sService: { serviceName: x, namespace: y }\n",
    )
    .unwrap();
    let (code, msg) = run(
        &[
            "policy",
            "check",
            "--namespace",
            "ai-training",
            file.to_str().unwrap(),
        ],
        &config,
    );
    assert_eq!(code, Some(64), "{msg}");
    assert!(msg.contains("p.yaml:9"), "{msg}");
    assert!(msg.contains("toServices"), "{msg}");
}

use crate::support::schema::cilium_errors as cilium_schema_errors;

#[test]
fn suggested_policies_pass_the_kubernetes_and_cilium_schemas_offline() {
    let dir = tempfile::tempdir().unwrap();
    let config = simulated_week(dir.path());
    let (_, cilium) = stdout(
        &["policy", "suggest", "--namespace", "ai-training"],
        &config,
    );
    let docs = documents(&cilium);
    assert!(
        docs.iter().all(|d| d["kind"] == "CiliumNetworkPolicy"),
        "{cilium}"
    );
    let errors = cilium_schema_errors(&docs);
    assert!(errors.is_empty(), "{errors}\n{cilium}");
    // The validator is not a rubber stamp: a broken policy fails it.
    let mut broken = docs[1].clone();
    broken["spec"]["egress"][0]["toPorts"][0]["ports"][0]["protocol"] = "SCTPX".into();
    assert!(!cilium_schema_errors(&[broken]).is_empty());

    let (_, kubernetes) = stdout(
        &[
            "policy",
            "suggest",
            "--namespace",
            "ai-training",
            "--flavor",
            "kubernetes",
        ],
        &config,
    );
    let file = dir.path().join("np.yaml");
    std::fs::write(&file, &kubernetes).unwrap();
    let validate = std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("kubernetes-validate"))
                .find(|p| p.is_file())
        })
        .expect("kubernetes-validate is not on PATH: run the tests through scripts/test.sh");
    let out = Command::new(validate)
        .args(["--strict", "--quiet"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{kubernetes}", text(&out));
}

/// POSTs `body` to `/api/v1/policy/check` of `service` with its token.
async fn post_check(
    service: &crate::support::service::Service,
    query: &str,
    body: String,
) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(service.url(&format!("/api/v1/policy/check?{query}")))
        .bearer_auth(service.token.as_deref().unwrap())
        .header("content-type", "application/yaml")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rest_api_suggests_and_checks_from_the_running_service() {
    use crate::support::relay;
    use crate::support::service::{RunConfig, Service};

    let relay = relay(None).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokens"),
        "policy-token-6d2a8f4c1e9b7053a6d2f\n",
    )
    .unwrap();
    let config = RunConfig::new(relay.addr)
        .with(
            "storage",
            "flows:\n  flush_interval: 20ms\n  chunk_flows: 1000\n",
        )
        .with("api", "tokens_file: tokens");
    let service = Service::spawn(&config, dir).with_token("policy-token-6d2a8f4c1e9b7053a6d2f");
    service.ready().await;
    let now = exfilwatch::common::clock::now_ns();
    let mut cluster = TrainingCluster::new(5, now - 3_600_000_000_000, 1_000_000_000);
    let mut pushed = 0;
    for i in 0..2_000 {
        let flow = cluster.next_flow();
        relay.sim.push_flow(if i % 2 == 0 {
            cilium_shaped(flow)
        } else {
            flow
        });
        pushed += 1;
    }
    for f in cluster.exfiltration_attempt() {
        relay.sim.push_flow(f);
        pushed += 1;
    }
    let deadline = tokio::time::Instant::now() + crate::support::GUARD;
    while service.ok("/api/v1/flows/top?by=verdict").await["total"].as_u64() != Some(pushed) {
        assert!(tokio::time::Instant::now() < deadline, "flows not stored");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let suggestion = service
        .ok("/api/v1/policy/suggest?namespace=ai-training&since=2h")
        .await;
    assert_eq!(
        suggestion["flows_allowed"].as_u64(),
        Some(2_000),
        "{suggestion:#}"
    );
    let yaml = suggestion["yaml"].as_str().unwrap().to_owned();
    assert!(yaml.contains("kind: CiliumNetworkPolicy"), "{yaml}");
    let plain = service
        .get_raw(
            "/api/v1/policy/suggest?namespace=ai-training&since=2h&format=yaml&flavor=kubernetes",
        )
        .await;
    assert_eq!(plain.headers()["content-type"], "application/yaml");
    assert!(plain.text().await.unwrap().contains("kind: NetworkPolicy"));

    let (status, report) = post_check(&service, "namespace=ai-training&since=2h", yaml).await;
    assert_eq!(status, 200, "{report:#}");
    assert_eq!(report["would_drop"], Value::Array(vec![]), "{report:#}");
    assert_eq!(report["would_allow"], Value::Array(vec![]), "{report:#}");
    assert_eq!(
        report["still_denied"].as_array().unwrap().len(),
        2,
        "{report:#}"
    );

    let pack =
        std::fs::read_to_string(root().join("deploy/policies/10-default-deny.yaml")).unwrap();
    let (status, report) = post_check(&service, "namespace=ai-training&since=2h", pack).await;
    assert_eq!(status, 200);
    assert!(
        report["would_drop"].as_array().unwrap().len() >= 4,
        "{report:#}"
    );

    // Bad input: the policy's line, the parameter's name.
    let (status, body) = post_check(
        &service,
        "namespace=ai-training",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec:\n  endpointSelector: {}\n  egress: [{toPortz: []}]\n".into(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_policy")),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap().starts_with("body:6:"),
        "{body}"
    );
    let (status, body) = service
        .get("/api/v1/policy/suggest?namespace=AI_training")
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("namespace"),
        "{body}"
    );
    let (status, body) = service
        .get("/api/v1/policy/suggest?namespace=ai-training&flavor=calico")
        .await;
    assert_eq!(status, 400, "{body}");
    // Without the token: refused.
    let r = reqwest::get(service.url("/api/v1/policy/suggest?namespace=ai-training"))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The commands against the running service's API.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("token"),
        "policy-token-6d2a8f4c1e9b7053a6d2f\n",
    )
    .unwrap();
    let cli = |args: &[&str], token: bool| {
        let mut cmd = exfilwatch();
        cmd.arg("policy").args(args);
        cmd.args(["--namespace", "ai-training", "--since", "2h", "--api"]);
        cmd.arg(service.url(""));
        if token {
            cmd.arg("--token-file").arg(dir.path().join("token"));
        }
        cmd
    };
    let out = crate::support::service::output(cli(&["suggest"], true)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let suggested = String::from_utf8(out.stdout).unwrap();
    assert!(
        suggested.contains("kind: CiliumNetworkPolicy"),
        "{suggested}"
    );
    let file = dir.path().join("suggested.yaml");
    std::fs::write(&file, &suggested).unwrap();
    let out = crate::support::service::output(cli(&["check", file.to_str().unwrap()], true)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let deny = root().join("deploy/policies/10-default-deny.yaml");
    let out = crate::support::service::output(cli(&["check", deny.to_str().unwrap()], true)).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("WOULD DROP traffic that flowed"),
        "{}",
        text(&out)
    );
    let out = crate::support::service::output(cli(&["suggest"], false)).await;
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    assert!(text(&out).contains("401"), "{}", text(&out));
}

/// The console's advisor page in a real browser: the namespaces page links to it, the
/// suggested YAML is shown as text (a crafted pod name stays inert), and the check form
/// evaluates the suggestion against the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_suggestion_and_checks_pasted_policies() {
    use crate::support::browser::Browser;
    use crate::support::relay;
    use crate::support::service::{RunConfig, Service};

    let relay = relay(None).await;
    let config = RunConfig::new(relay.addr).with(
        "storage",
        "flows:\n  flush_interval: 20ms\n  chunk_flows: 1000\n",
    );
    let service = Service::spawn(&config, tempfile::tempdir().unwrap());
    service.ready().await;
    let now = exfilwatch::common::clock::now_ns();
    let mut cluster = TrainingCluster::new(9, now - 600_000_000_000, 100_000_000);
    let crafted = "<img src=x onerror=alert(1)>";
    for i in 0..1_000 {
        let mut flow = cluster.next_flow();
        if i == 0
            && let Some(src) = flow.source.as_mut()
        {
            src.pod_name = crafted.into();
        }
        relay.sim.push_flow(flow);
    }
    let deadline = tokio::time::Instant::now() + crate::support::GUARD;
    while service.ok("/api/v1/flows/top?by=verdict").await["total"].as_u64() != Some(1_000) {
        assert!(tokio::time::Instant::now() < deadline, "flows not stored");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let browser = Browser::start().await;
    browser.goto(&service.url("/ui/namespaces")).await;
    browser.click("#namespaces a[href^='/ui/policy']").await;
    browser
        .wait_url("the advisor page", |u| {
            u.contains("/ui/policy?namespace=ai-training")
        })
        .await;
    let yaml = browser.text("#yaml").await;
    assert!(yaml.contains("kind: CiliumNetworkPolicy"), "{yaml}");
    assert!(yaml.contains(crafted), "the pod name shown as text: {yaml}");
    assert!(!browser.source().await.contains(crafted), "never as markup");
    assert!(
        browser
            .text("#summary")
            .await
            .contains("1000 forwarded flows allowed")
    );

    browser.type_into("#policies", &yaml).await;
    browser.click("#check").await;
    browser
        .wait_url("the check result", |u| u.contains("/ui/policy/check"))
        .await;
    let verdict = browser.text("#verdict").await;
    assert_eq!(verdict, "These policies keep every forwarded flow.");

    // The guide's default deny alone would drop everything: the page says so and lists it.
    browser
        .goto(&service.url("/ui/policy?namespace=ai-training"))
        .await;
    let deny =
        std::fs::read_to_string(root().join("deploy/policies/10-default-deny.yaml")).unwrap();
    browser.type_into("#policies", &deny).await;
    browser.click("#check").await;
    browser
        .wait_url("the check result", |u| u.contains("/ui/policy/check"))
        .await;
    assert_eq!(
        browser.text("#verdict").await,
        "These policies would drop traffic that flowed."
    );
    assert!(browser.all("#would-drop tbody tr").await.len() >= 4);
}
