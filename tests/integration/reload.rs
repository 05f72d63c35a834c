//! Reloading rules in the running service: a ConfigMap-style symlink swap, an edit followed by
//! SIGHUP or `POST /-/reload`, a broken pack that is refused, and the alerts across each.

use std::path::Path;
use std::time::Duration;

use exfilwatch::proto::flow::{Flow, Verdict};
use exfilwatch::sim::traffic::TrainingCluster;
use serde_json::Value;

use crate::alertmanager::{Alertmanager, Receiver};
use crate::support::service::{RunConfig, Service};
use crate::support::{GUARD, free_port, relay};

const TOKEN: &str = "reload-token-7a3e9c2b5d1f8064e7a3c";

/// A pack of two rules: policy-denied egress, and a scan rule needing `destinations`.
fn pack(destinations: u32, with_denied: bool) -> String {
    let mut text = String::new();
    if with_denied {
        text.push_str(
            "- name: Denied\n  kind: policy_denied\n  namespaces: { names: [ai-training] }\n  severity: critical\n  resolve_after: 10m\n",
        );
    }
    text.push_str(&format!(
        "- name: Sweep\n  kind: scan\n  namespaces: {{ names: [ai-training] }}\n  severity: critical\n  resolve_after: 10m\n  params: {{ window: 1m, destinations: {destinations}, ports: 100000 }}\n"
    ));
    text
}

/// A pack whose rule (line 1) has a severity that does not exist.
const BROKEN: &str = "- name: Denied\n  kind: policy_denied\n  namespaces: { names: [ai-training] }\n  severity: catastrophic\n";

/// Makes `dir/rules` hold `text` the way the kubelet mounts a ConfigMap: the file is a
/// symlink through `..data` to a timestamped directory, and an update swaps `..data`.
fn configmap(dir: &Path, version: &str, text: &str) {
    let rules = dir.join("rules");
    std::fs::create_dir_all(rules.join(version)).unwrap();
    std::fs::write(rules.join(version).join("rules.yaml"), text).unwrap();
    let tmp = rules.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, rules.join("..data")).unwrap();
    if !rules.join("rules.yaml").exists() {
        std::os::unix::fs::symlink("..data/rules.yaml", rules.join("rules.yaml")).unwrap();
    }
}

/// Flows of one compromised trainer, each new (uuid, source port, time now).
struct Trainer {
    cluster: TrainingCluster,
    next_ip: u32,
}

impl Trainer {
    fn new() -> Trainer {
        Trainer {
            cluster: TrainingCluster::new(7, exfilwatch::common::clock::now_ns(), 1_000_000),
            next_ip: 1,
        }
    }

    fn now(mut flow: Flow) -> Flow {
        let now = exfilwatch::common::clock::now_ns();
        flow.time = Some(prost_types::Timestamp {
            seconds: now / 1_000_000_000,
            nanos: (now % 1_000_000_000) as i32,
        });
        flow
    }

    /// A probe of the production database, dropped by the default deny.
    fn probe(&mut self) -> Flow {
        Trainer::now(self.cluster.exfiltration_attempt().swap_remove(1))
    }

    /// Forwarded connections to `n` addresses it never reached before.
    fn sweep(&mut self, n: u32) -> Vec<Flow> {
        (0..n)
            .map(|_| {
                let mut f = self.probe();
                f.verdict = Verdict::Forwarded as i32;
                f.drop_reason = 0;
                f.drop_reason_desc = 0;
                f.destination = None;
                let ip = self.next_ip;
                self.next_ip += 1;
                f.ip.as_mut().unwrap().destination =
                    format!("10.0.{}.{}", 200 + ip / 250, ip % 250 + 1);
                f
            })
            .collect()
    }
}

/// The firing alerts of `rule` in the API.
async fn firing(service: &Service, rule: &str) -> Vec<Value> {
    let alerts = service.ok("/api/v1/alerts?status=firing").await;
    alerts
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["rule"] == rule)
        .cloned()
        .collect()
}

/// Waits until `rule` has a firing alert whose count is `count` (any count when None).
async fn wait_firing(service: &Service, rule: &str, count: Option<u64>) -> Value {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let alerts = firing(service, rule).await;
        if let Some(a) = alerts
            .iter()
            .find(|a| count.is_none_or(|n| a["context"]["count"] == n))
        {
            return a.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no firing {rule} alert with count {count:?}: {alerts:#?}\nlog:\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the metric `name` reads `value`.
async fn wait_metric(service: &Service, name: &str, value: u64) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while service.metric(name).await != value {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never became {value}; log:\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running service over `dir`'s ConfigMap-style rules, checking for changes every
/// `watch` (0s: never), with the API token and, when given, Alertmanager at `am`.
async fn start(relay: std::net::SocketAddr, watch: &str, am: Option<&str>) -> Service {
    let dir = tempfile::tempdir().unwrap();
    configmap(dir.path(), "..2026_11_30_01", &pack(1000, true));
    std::fs::write(dir.path().join("tokens"), format!("{TOKEN}\n")).unwrap();
    let mut config = RunConfig::new(relay)
        .with(
            "rules",
            &format!("dir: {{dir}}/rules\nwatch_interval: {watch}"),
        )
        .with("api", "tokens_file: tokens");
    config = config.with(
        "alertmanager",
        "update_interval: 200ms\nresend_interval: 2s",
    );
    if let Some(am) = am {
        config = config.with("alertmanager", &format!("urls: [\"{am}\"]"));
    }
    let service = Service::spawn(&config, dir).with_token(TOKEN);
    service.ready().await;
    service
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_swap_applies_a_new_threshold_keeping_firing_alerts_and_a_broken_one_is_refused()
 {
    let relay = relay(None).await;
    let service = start(relay.addr, "200ms", None).await;
    assert_eq!(
        service
            .metric("exfilwatch_config_last_reload_successful")
            .await,
        1
    );
    let mut trainer = Trainer::new();
    for _ in 0..3 {
        relay.sim.push_flow(trainer.probe());
    }
    let denied = wait_firing(&service, "Denied", Some(3)).await;
    for flow in trainer.sweep(30) {
        relay.sim.push_flow(flow);
    }

    // The kubelet swaps in a pack whose scan threshold is 5 instead of 1000.
    let dir = service.dir.path().to_owned();
    configmap(&dir, "..2026_11_30_02", &pack(5, true));
    let deadline = tokio::time::Instant::now() + GUARD;
    while firing(&service, "Sweep").await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new threshold never applied; log:\n{}",
            service.log()
        );
        for flow in trainer.sweep(6) {
            relay.sim.push_flow(flow);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The policy-denied alert kept firing through the reload, with its count.
    for _ in 0..2 {
        relay.sim.push_flow(trainer.probe());
    }
    let after = wait_firing(&service, "Denied", Some(5)).await;
    assert_eq!(after["fingerprint"], denied["fingerprint"]);
    assert_eq!(firing(&service, "Denied").await.len(), 1);

    // A broken pack is refused, named by file and line, and the old rules stay in force.
    configmap(&dir, "..2026_11_30_03", BROKEN);
    wait_metric(&service, "exfilwatch_config_last_reload_successful", 0).await;
    let log = service.log();
    assert!(
        log.contains("reload refused")
            && log.contains("rules.yaml:1: rule Denied: severity")
            && log.contains("catastrophic"),
        "{log}"
    );
    relay.sim.push_flow(trainer.probe());
    wait_firing(&service, "Denied", Some(6)).await;
    assert_eq!(firing(&service, "Sweep").await.len(), 1);

    // Fixed again: in force, and the metric says so.
    let before = service
        .metric("exfilwatch_config_last_reload_success_timestamp_seconds")
        .await;
    configmap(&dir, "..2026_11_30_04", &pack(5, true));
    wait_metric(&service, "exfilwatch_config_last_reload_successful", 1).await;
    assert!(
        service
            .metric("exfilwatch_config_last_reload_success_timestamp_seconds")
            .await
            >= before
    );
    let (code, out) = service.terminate().await;
    assert_eq!(code, Some(0), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_post_reload_apply_an_edit_and_a_removed_rules_alert_resolves_in_alertmanager() {
    let relay = relay(None).await;
    let receiver = Receiver::start().await;
    let am = Alertmanager::start(free_port(), &receiver.url).await;
    let service = start(relay.addr, "0s", Some(&am.url)).await;
    let mut trainer = Trainer::new();
    relay.sim.push_flow(trainer.probe());
    receiver.wait_for_alert("Denied").await;
    let dir = service.dir.path().to_owned();
    let reload = || {
        service
            .client
            .post(service.url("/-/reload"))
            .bearer_auth(TOKEN)
    };

    // Without a token, no reload.
    let r = service
        .client
        .post(service.url("/-/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // POST /-/reload of a broken pack: refused with every problem, the rules unchanged.
    configmap(&dir, "..2026_11_30_02", BROKEN);
    let r = reload().send().await.unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("rules.yaml:1: rule Denied: severity") && detail.contains("catastrophic"),
        "{body}"
    );
    assert_eq!(
        service
            .metric("exfilwatch_config_last_reload_successful")
            .await,
        0
    );
    relay.sim.push_flow(trainer.probe());
    wait_firing(&service, "Denied", Some(2)).await;

    // POST /-/reload of a valid edit: answered with what changed.
    configmap(&dir, "..2026_11_30_03", &pack(50, true));
    let r = reload().send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let changes = body["changes"].as_str().unwrap();
    assert!(changes.contains("1 changed [\"Sweep\"]"), "{body}");
    assert_eq!(
        service
            .metric("exfilwatch_config_last_reload_successful")
            .await,
        1
    );

    // SIGHUP after removing the policy-denied rule: its alert resolves in Alertmanager. The
    // listen address changed too: that applies at the next start, and the log says so.
    configmap(&dir, "..2026_11_30_04", &pack(50, false));
    let config_file = dir.join("exfilwatch.yaml");
    let text = std::fs::read_to_string(&config_file).unwrap();
    let port = service.base.rsplit(':').next().unwrap().to_owned();
    std::fs::write(&config_file, text.replace(&port, &free_port().to_string())).unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &service.pid().to_string()])
        .status()
        .unwrap();
    let resolved = |n: &[Value]| {
        n.iter()
            .any(|m| m["status"] == "resolved" && m["alerts"][0]["labels"]["alertname"] == "Denied")
    };
    receiver.wait_for("Denied resolved", resolved).await;
    assert!(firing(&service, "Denied").await.is_empty());
    let active: Vec<Value> = am
        .alerts()
        .await
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == "Denied" && a["status"]["state"] == "active")
        .collect();
    assert!(active.is_empty(), "{active:#?}");
    assert!(
        service.log().contains("api.listen changed in")
            && service.log().contains("applies at the next start"),
        "{}",
        service.log()
    );
    let (code, out) = service.terminate().await;
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains(TOKEN), "the token must not be logged");
}
