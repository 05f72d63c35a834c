//! Alert delivery against a real Alertmanager (Debian's `prometheus-alertmanager`, started
//! here on 127.0.0.1 with an ephemeral port) that routes to a webhook receiver in the test.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use exfilwatch::app::{Delivery, start_alerting};
use exfilwatch::common::http::HttpAuth;
use exfilwatch::config::Config;
use exfilwatch::detect::engine::Engine;
use exfilwatch::flow::Event;
use exfilwatch::flow::wire::Decoder;
use exfilwatch::pipeline::{self, Consumers, Summary};
use exfilwatch::proto::flow::Flow;
use exfilwatch::rules::{self, Rule};
use exfilwatch::sim::traffic::TrainingCluster;
use exfilwatch::state::Store;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::support::relay;
use crate::support::service::{RunConfig, Service, exfilwatch, output};

const INSTALL: &str = "apt-get install -y --no-install-recommends prometheus-alertmanager (scripts/test.sh does this)";

/// Collects the notifications Alertmanager posts.
pub struct Receiver {
    pub url: String,
    got: Got,
}

type Got = Arc<Mutex<Vec<(Option<String>, Value)>>>;

impl Receiver {
    pub async fn start() -> Receiver {
        async fn hook(
            State(got): State<Got>,
            headers: axum::http::HeaderMap,
            Json(body): Json<Value>,
        ) {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            got.lock().unwrap().push((auth, body));
        }
        let got: Got = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(got.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, got }
    }

    pub fn notifications(&self) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The Authorization header of each request received.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// Waits until `pred` holds for the notifications so far.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let n = self.notifications();
            if pred(&n) {
                return n;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; got {n:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for a notification about `alertname` and returns every one received so far.
    /// Waits until firing notifications name as many destinations as `want`, and checks that
    /// they are exactly those.
    pub async fn wait_for_destinations(&self, want: &[&str]) {
        let got = self
            .wait_for(&format!("alerts for {want:?}"), |n| {
                firing_destinations(n).len() >= want.len()
            })
            .await;
        let got: BTreeSet<String> = firing_destinations(&got).into_iter().collect();
        let want: BTreeSet<String> = want.iter().map(|d| (*d).to_owned()).collect();
        assert_eq!(got, want);
    }

    pub async fn wait_for_alert(&self, alertname: &str) -> Vec<Value> {
        let about = |m: &Value| m["alerts"][0]["labels"]["alertname"] == alertname;
        self.wait_for(alertname, |n| n.iter().any(about))
            .await
            .into_iter()
            .filter(about)
            .collect()
    }
}

/// A real Alertmanager process.
pub struct Alertmanager {
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn alertmanager_binary() -> PathBuf {
    for candidate in ["/usr/bin/prometheus-alertmanager", "/usr/bin/alertmanager"] {
        if std::path::Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("Alertmanager is not installed: {INSTALL}");
}

impl Alertmanager {
    /// Starts Alertmanager on `port`, routing every alert (grouped per destination, 1 s
    /// group wait and interval) to `webhook`.
    pub async fn start(port: u16, webhook: &str) -> Alertmanager {
        Alertmanager::start_with(port, webhook, None).await
    }

    /// Starts Alertmanager serving HTTPS with `tls`: the CA, the server's certificate and
    /// key (PEM), and whether clients must present a certificate the CA signed.
    pub async fn start_with(
        port: u16,
        webhook: &str,
        tls: Option<(&str, &(String, String), bool)>,
    ) -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let mut web_config = None;
        let mut client = reqwest::Client::builder();
        if let Some((ca, (cert, key), mutual)) = tls {
            std::fs::write(dir.path().join("ca.crt"), ca).unwrap();
            std::fs::write(dir.path().join("server.crt"), cert).unwrap();
            std::fs::write(dir.path().join("server.key"), key).unwrap();
            let mut text =
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n".to_owned();
            if mutual {
                text.push_str(
                    "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n",
                );
            }
            let path = dir.path().join("web.yml");
            std::fs::write(&path, text).unwrap();
            web_config = Some(path);
            exfilwatch::common::http::install_crypto();
            client =
                client.add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap());
            if mutual {
                client = client.identity(
                    reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap(),
                );
            }
        }
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: test\n  group_by: [alertname, namespace, destination]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: test\n    webhook_configs:\n      - url: {webhook}\n        send_resolved: true\n"
            ),
        )
        .unwrap();
        let child = Command::new(alertmanager_binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(web_config.map(|p| format!("--web.config.file={}", p.display())))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start Alertmanager ({e}): {INSTALL}"));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let am = Alertmanager {
            url: format!("{scheme}://127.0.0.1:{port}"),
            child,
            _dir: dir,
        };
        exfilwatch::common::http::install_crypto();
        let client = client.build().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client.get(format!("{}/-/ready", am.url)).send().await
                && r.status().is_success()
            {
                return am;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Alertmanager did not become ready on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The alerts Alertmanager holds.
    pub async fn alerts(&self) -> Vec<Value> {
        exfilwatch::common::http::install_crypto();
        let r = reqwest::get(format!("{}/api/v2/alerts", self.url))
            .await
            .unwrap();
        r.json().await.unwrap()
    }
}

/// Denied flows of a compromised trainer: the upload to paste.example.net (explicit deny),
/// the probe of the production database (default deny), and a raw-IP upload.
struct Attack {
    upload: Flow,
    probe: Flow,
    raw_ip: Flow,
    decoder: Decoder,
    rng: fastrand::Rng,
}

impl Attack {
    fn new() -> Attack {
        let flows = TrainingCluster::new(21, exfilwatch::common::clock::now_ns(), 1_000_000)
            .exfiltration_attempt();
        let probe = flows[1].clone();
        let upload = flows[3].clone();
        let mut raw_ip = upload.clone();
        raw_ip.destination_names.clear();
        raw_ip.ip.as_mut().unwrap().destination = "198.51.100.9".into();
        Attack {
            upload,
            probe,
            raw_ip,
            decoder: Decoder::default(),
            rng: fastrand::Rng::with_seed(5),
        }
    }

    /// A fresh copy of `template` (new UUID, source port and time) as a pipeline event.
    fn event(&mut self, template: &Flow) -> Event {
        let mut f = template.clone();
        f.uuid = exfilwatch::flow::format_uuid(self.rng.u128(..));
        if let Some(exfilwatch::proto::flow::layer4::Protocol::Tcp(tcp)) =
            f.l4.as_mut().and_then(|l| l.protocol.as_mut())
        {
            tcp.source_port = self.rng.u32(32_768..61_000);
        }
        let now = exfilwatch::common::clock::now_ns();
        f.time = Some(prost_types::Timestamp {
            seconds: now / 1_000_000_000,
            nanos: (now % 1_000_000_000) as i32,
        });
        Event::Flow(crate::support::received(&mut self.decoder, f))
    }
}

/// The shipped pack with a short quiet period, so resolution comes within the test.
fn rules(resolve_after: &str) -> Vec<Arc<Rule>> {
    let text = exfilwatch::rules::DEFAULT_PACK.replace(
        "resolve_after: 10m",
        &format!("resolve_after: {resolve_after}"),
    );
    rules::load_text(&text, "test-pack")
        .unwrap()
        .into_iter()
        .map(Arc::new)
        .collect()
}

fn config(targets: &[&str], webhooks: &[&str]) -> Config {
    let mut c = Config::default();
    c.alertmanager.urls = targets.iter().map(|s| s.to_string()).collect();
    c.alertmanager.webhooks = webhooks.iter().map(|s| s.to_string()).collect();
    c.alertmanager.update_interval = Duration::from_millis(200);
    c.alertmanager.resend_interval = Duration::from_secs(2);
    c.alertmanager.retry_max = Duration::from_millis(300);
    c.alertmanager.timeout = Duration::from_secs(2);
    c
}

struct Pipeline {
    tx: mpsc::Sender<Event>,
    task: JoinHandle<Consumers>,
    delivery: Delivery,
    _state: tempfile::TempDir,
}

impl Pipeline {
    /// Hands `event` to the pipeline as a source would.
    async fn send(&self, event: Event) {
        self.tx.send(event).await.unwrap();
    }

    fn start(config: &Config, rules: &[Arc<Rule>]) -> Pipeline {
        let state = tempfile::tempdir().unwrap();
        let store = Store::open(state.path()).unwrap();
        let (engine, delivery) = start_alerting(config, rules, store, true).unwrap();
        let (tx, rx) = mpsc::channel(4096);
        let tick = Engine::tick_interval(rules);
        let consumers = Consumers {
            summary: Summary::new(&[]),
            engine: Some(engine),
            ..Default::default()
        };
        let task = tokio::spawn(pipeline::consume(rx, consumers, Default::default(), tick));
        Pipeline {
            tx,
            task,
            delivery,
            _state: state,
        }
    }
}

/// Waits until the outbox is empty: everything queued was delivered.
async fn drained(store: &Store) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.outbox_depth().unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox never drained"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each annotation of `alert` contains its text.
fn assert_annotations(alert: &Value, expected: &[(&str, &str)]) {
    for (key, text) in expected {
        let value = alert["annotations"][key].as_str().unwrap_or("");
        assert!(
            value.contains(text),
            "{key}: {value:?} lacks {text:?}: {alert}"
        );
    }
}

fn firing_destinations(notifications: &[Value]) -> Vec<String> {
    notifications
        .iter()
        .filter(|n| n["status"] == "firing")
        .map(|n| {
            n["alerts"][0]["labels"]["destination"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_flow_notifies_once_repeats_update_the_count_and_quiet_resolves() {
    let receiver = Receiver::start().await;
    let am = Alertmanager::start(crate::support::free_port(), &receiver.url).await;
    let rules = rules("3s");
    let pipeline = Pipeline::start(&config(&[&am.url], &[]), &rules);
    let mut attack = Attack::new();

    pipeline.send(attack.event(&attack.upload.clone())).await;
    let got = receiver
        .wait_for("the firing notification", |n| !n.is_empty())
        .await;
    let alert = &got[0]["alerts"][0];
    assert_eq!(got[0]["status"], "firing");
    assert_eq!(got[0]["alerts"].as_array().unwrap().len(), 1);
    let labels = &alert["labels"];
    assert_eq!(labels["alertname"], "TrainingPodUnexpectedEgress");
    assert_eq!(labels["severity"], "critical");
    assert_eq!(labels["namespace"], "ai-training");
    assert_eq!(labels["destination"], "paste.example.net");
    assert_eq!(labels["rule"], "TrainingPodUnexpectedEgress");
    // The rule's own labels: constant per rule, for routing by technique.
    assert_eq!(labels["mitre_tactic"], "TA0010");
    assert_eq!(labels["mitre_technique"], "T1048");
    assert_eq!(
        labels.as_object().unwrap().len(),
        7,
        "labels stay low-cardinality: {labels}"
    );
    let a = &alert["annotations"];
    assert_eq!(a["count"], "1");
    assert_eq!(a["source_pods"], "ai-training/llm-pretrain-worker-2");
    assert_eq!(
        a["source_workloads"],
        "ai-training/llm-pretrain (PyTorchJob)"
    );
    assert_eq!(a["destination_ips"], "203.0.113.77");
    assert_eq!(a["destination_fqdns"], "paste.example.net");
    assert_eq!(a["ports"], "443/TCP");
    assert_eq!(a["drop_reasons"], "POLICY_DENY");
    assert_eq!(a["policies"], "ai-training/deny-unapproved-egress");
    assert_eq!(a["sample_flows"].as_str().unwrap().len(), 36);
    assert!(a["nodes"].as_str().unwrap().starts_with("gpu-node-"));
    assert_eq!(
        a["summary"],
        "ai-training: 1 egress attempt to paste.example.net denied by network policy"
    );
    assert!(a["description"].as_str().unwrap().contains("Pods ai-training/llm-pretrain-worker-2 in namespace ai-training tried to reach paste.example.net"), "{a}");
    // The runbook served by exfilwatch itself, and the MITRE ATT&CK technique.
    assert_eq!(
        a["runbook_url"],
        "http://127.0.0.1:8080/runbooks/TrainingPodUnexpectedEgress"
    );
    assert_eq!(
        a["mitre_attack"],
        "Exfiltration (TA0010): Exfiltration Over Alternative Protocol (T1048)"
    );
    assert_eq!(alert["labels"]["mitre_technique"], "T1048");
    // The link opens the alert's page in the console.
    let link = alert["generatorURL"].as_str().unwrap();
    let id = link
        .strip_prefix("http://127.0.0.1:8080/ui/alerts/")
        .unwrap_or_else(|| panic!("{link}"));
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{link}"
    );

    // 1,000 more attempts to the same destination: one alert, a growing count.
    for _ in 0..1000 {
        pipeline.send(attack.event(&attack.upload.clone())).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let alerts = am.alerts().await;
        if alerts.len() == 1 && alerts[0]["annotations"]["count"] == "1001" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "count never reached 1001: {alerts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Several group intervals later the count's updates brought no second firing
    // notification (the resolution may already be there on a loaded machine: it comes 3 s
    // after the last attempt, and is checked below).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let notified = receiver.notifications();
    assert_eq!(
        notified.iter().filter(|n| n["status"] == "firing").count(),
        1,
        "{notified:#?}"
    );

    // Quiet for 3 s: resolved.
    let got = receiver
        .wait_for("the resolution", |n| {
            n.iter().any(|x| x["status"] == "resolved")
        })
        .await;
    assert_eq!(got.len(), 2, "{got:#?}");
    let resolved = &got[1]["alerts"][0];
    assert_eq!(resolved["labels"]["destination"], "paste.example.net");
    assert_eq!(resolved["annotations"]["count"], "1001");
    drop(pipeline.tx);
    let _ = pipeline.task.await;
    assert_eq!(pipeline.delivery.finish().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fired_while_alertmanager_is_down_all_arrive_when_it_returns() {
    let receiver = Receiver::start().await;
    let port = crate::support::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut config = config(&[&url], &[]);
    // The retry delay grows to its cap during the outage.
    config.alertmanager.retry_max = Duration::from_secs(5);
    let outage_began = tokio::time::Instant::now();
    let pipeline = Pipeline::start(&config, &rules("10m"));
    let mut attack = Attack::new();
    for template in [
        attack.upload.clone(),
        attack.probe.clone(),
        attack.raw_ip.clone(),
    ] {
        pipeline.send(attack.event(&template)).await;
    }
    // Delivery fails and keeps failing while Alertmanager is down; nothing is lost.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pipeline
        .delivery
        .stats
        .errors
        .load(std::sync::atomic::Ordering::Relaxed)
        < 3
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed attempts recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pipeline.delivery.store.outbox_depth().unwrap(), 3);

    // Alertmanager comes back a minute later.
    tokio::time::sleep_until(outage_began + Duration::from_secs(60)).await;
    assert_eq!(
        pipeline.delivery.store.outbox_depth().unwrap(),
        3,
        "still queued, nothing dropped"
    );
    assert!(receiver.notifications().is_empty());
    let _am = Alertmanager::start(port, &receiver.url).await;
    receiver
        .wait_for_destinations(&[
            "paste.example.net",
            "production/orders-db",
            "198.51.100.0/24",
        ])
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        receiver.notifications().len(),
        3,
        "each alert exactly once: {:#?}",
        receiver.notifications()
    );
    // Re-sends come every 2 s here: wait for one to be delivered rather than race it.
    drained(&pipeline.delivery.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_target_gets_alertmanagers_version_4_payload() {
    let receiver = Receiver::start().await;
    let pipeline = Pipeline::start(&config(&[], &[&receiver.url]), &rules("10m"));
    let mut attack = Attack::new();
    pipeline.send(attack.event(&attack.probe.clone())).await;
    let got = receiver.wait_for("the webhook", |n| !n.is_empty()).await;
    let m = &got[0];
    assert_eq!(m["version"], "4");
    assert_eq!(m["status"], "firing");
    assert_eq!(m["receiver"], "exfilwatch");
    assert_eq!(m["alerts"][0]["status"], "firing");
    assert_eq!(
        m["alerts"][0]["labels"]["destination"],
        "production/orders-db"
    );
    assert_eq!(
        m["alerts"][0]["annotations"]["policies"],
        Value::Null,
        "a default deny names no policy"
    );
    assert_eq!(m["commonLabels"]["namespace"], "ai-training");
    assert!(m["groupKey"].as_str().unwrap().starts_with("exfilwatch/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_undelivered_alerts_then_restart_delivers_each_once() {
    let relay = relay(None).await;
    let receiver = Receiver::start().await;
    let port = crate::support::free_port();
    let config = RunConfig::new(relay.addr).with(
        "alertmanager",
        &format!("urls: [\"http://127.0.0.1:{port}\"]\nretry_max: 300ms\ntimeout: 2s"),
    );
    let first = Service::spawn(&config, tempfile::tempdir().unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while relay.sim.requests().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "exfilwatch did not connect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for flow in TrainingCluster::new(33, exfilwatch::common::clock::now_ns(), 1_000_000)
        .exfiltration_attempt()
    {
        relay.sim.push_flow(flow);
    }
    // Both alerts committed to the outbox, none delivered: Alertmanager is not running.
    let store = Store::open(&first.dir.path().join("state")).unwrap();
    while store.outbox_depth().unwrap() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "alerts never reached the outbox"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dir = first.kill();

    let _am = Alertmanager::start(port, &receiver.url).await;
    let second = Service::spawn(&config, dir);
    receiver
        .wait_for_destinations(&["paste.example.net", "production/orders-db"])
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        receiver.notifications().len(),
        2,
        "each alert exactly once: {:#?}",
        receiver.notifications()
    );
    let (code, msg) = second.terminate().await;
    assert_eq!(code, Some(0), "{msg}");
    assert_eq!(store.outbox_depth().unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_get_the_configured_bearer_or_basic_credentials() {
    let receiver = Receiver::start().await;
    for (auth, expected) in [
        (HttpAuth::Bearer("t0ken".into()), "Bearer t0ken"),
        (
            HttpAuth::Basic {
                username: "soc".into(),
                password: "pw".into(),
            },
            "Basic c29jOnB3",
        ),
    ] {
        let mut config = config(&[], &[&receiver.url]);
        config.alertmanager.auth = Some(auth);
        let pipeline = Pipeline::start(&config, &rules("10m"));
        let mut attack = Attack::new();
        let before = receiver.notifications().len();
        pipeline.send(attack.event(&attack.probe.clone())).await;
        receiver.wait_for("a delivery", |n| n.len() > before).await;
        assert_eq!(
            receiver.authorizations().last().unwrap().as_deref(),
            Some(expected)
        );
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("t0ken") && !debug.contains("\"pw\""),
            "secrets in Debug output: {debug}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_send_delivers_the_alerts_of_a_capture() {
    let receiver = Receiver::start().await;
    let am = Alertmanager::start(crate::support::free_port(), &receiver.url).await;
    let dir = tempfile::tempdir().unwrap();
    let config = RunConfig::empty()
        .with(
            "rules",
            &format!("dir: {}/rules", env!("CARGO_MANIFEST_DIR")),
        )
        .with("storage", "dir: state")
        .with("alertmanager", &format!("urls: [\"{}\"]", am.url))
        .write(dir.path(), 0);
    let mut cmd = exfilwatch();
    cmd.args(["replay", "--send", "--config"])
        .arg(&config)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/flows.jsonl"
        ));
    let out = output(cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("sent: 4 alert state(s) delivered, 0 still queued"),
        "{stdout}"
    );
    receiver
        .wait_for_destinations(&[
            "paste.example.net",
            "production/orders-db",
            "hubble",
            "hubble-nodes",
        ])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_sweep_from_a_training_pod_raises_one_scan_alert() {
    let receiver = Receiver::start().await;
    let pipeline = Pipeline::start(&config(&[], &[&receiver.url]), &rules("10m"));
    let mut attack = Attack::new();
    for host in 1..=40 {
        let mut probe = attack.raw_ip.clone();
        probe.ip.as_mut().unwrap().destination = format!("10.0.9.{host}");
        probe.drop_reason_desc = 0;
        probe.drop_reason = 0;
        probe.verdict = exfilwatch::proto::flow::Verdict::Forwarded as i32;
        pipeline.send(attack.event(&probe)).await;
    }
    let scans = receiver.wait_for_alert("TrainingPodScanning").await;
    let alert = &scans[0]["alerts"][0];
    assert_eq!(alert["labels"]["namespace"], "ai-training");
    assert_eq!(alert["labels"]["destination"], "*");
    assert_annotations(
        alert,
        &[
            ("source_pods", "ai-training/llm-pretrain-worker-2"),
            ("sample_destinations", "10.0.9."),
            ("summary", "1 pod(s) reaching unusually many destinations"),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_queries_carrying_data_raise_one_alert_per_domain() {
    let receiver = Receiver::start().await;
    let pipeline = Pipeline::start(&config(&[], &[&receiver.url]), &rules("10m"));
    let mut attack = Attack::new();
    // dns2tcp's shape: TXT queries with base64 labels, a new name per chunk.
    for i in 0..40 {
        let (name, qtype) = exfilwatch::sim::dns::Tunnel::Dns2tcp.query(i, "x.tunnel.example.com");
        let mut query = attack.probe.clone();
        query.verdict = exfilwatch::proto::flow::Verdict::Forwarded as i32;
        let mut l7 = exfilwatch::sim::traffic::dns_request(&name);
        if let Some(exfilwatch::proto::flow::layer7::Record::Dns(d)) = &mut l7.record {
            d.qtypes = vec![qtype.into()];
        }
        query.l7 = Some(l7);
        pipeline.send(attack.event(&query)).await;
    }
    let alerts = receiver.wait_for_alert("TrainingPodDnsExfiltration").await;
    assert_eq!(alerts.len(), 1, "one alert for the domain: {alerts:#?}");
    let alert = &alerts[0]["alerts"][0];
    assert_eq!(alert["labels"]["destination"], "example.com");
    assert_annotations(
        alert,
        &[
            ("source_pods", "ai-training/llm-pretrain-worker-2"),
            ("reasons", "encoded data"),
            ("query_types", "TXT: "),
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alert_alertmanager_refuses_is_a_dead_letter_and_the_rest_of_its_batch_arrives() {
    use exfilwatch::alert::{Alert, FlowContext, Status, fingerprint};
    use exfilwatch::common::clock::now_ns;
    let receiver = Receiver::start().await;
    let port = crate::support::free_port();
    let am = Alertmanager::start(port, &receiver.url).await;
    let state = tempfile::tempdir().unwrap();
    let store = Store::open(state.path()).unwrap();
    // Three alert states queued together (as after an outage); Alertmanager refuses a label
    // name with a space, so it answers 400 for any batch holding the middle one.
    for (i, bad) in [(0, false), (1, true), (2, false)] {
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("alertname".to_owned(), format!("FaultInjection{i}"));
        labels.insert("namespace".to_owned(), "ai-training".to_owned());
        if bad {
            labels.insert("not a label".to_owned(), "x".to_owned());
        }
        let alert = Alert {
            fingerprint: fingerprint(&labels),
            rule: "TrainingPodUnexpectedEgress".into(),
            labels,
            annotations: Default::default(),
            context: FlowContext::default(),
            status: Status::Firing,
            starts_at_ns: now_ns(),
            ends_at_ns: now_ns() + 600_000_000_000,
            generator_url: "http://127.0.0.1/ui/alerts/x".into(),
            query: String::new(),
        };
        exfilwatch::alert::save(&store, &alert, std::slice::from_ref(&am.url)).unwrap();
    }
    let config = config(&[&am.url], &[]);
    let (_engine, delivery) = start_alerting(&config, &rules("10m"), store.clone(), true).unwrap();
    drained(&store).await;
    assert_eq!(
        delivery
            .stats
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let names: BTreeSet<String> = am
        .alerts()
        .await
        .iter()
        .map(|a| a["labels"]["alertname"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        names.contains("FaultInjection0") && names.contains("FaultInjection2"),
        "{names:?}"
    );
    assert!(!names.contains("FaultInjection1"));
    delivery.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_alertmanager_delays_alerts_but_loses_and_duplicates_none() {
    use axum::body::Bytes;
    use std::sync::atomic::{AtomicBool, Ordering};
    let receiver = Receiver::start().await;
    let port = crate::support::free_port();
    let _am = Alertmanager::start(port, &receiver.url).await;
    // A proxy in front of the real Alertmanager: while `slow`, it holds each request 3 s
    // (longer than exfilwatch's 2 s timeout) and then passes it on anyway, as an overloaded
    // Alertmanager would answer late.
    let slow = Arc::new(AtomicBool::new(true));
    let upstream = format!("http://127.0.0.1:{port}");
    let proxy = {
        let slow = slow.clone();
        let client = reqwest::Client::new();
        Router::new().fallback(move |uri: axum::http::Uri, body: Bytes| {
            let (slow, client, upstream) = (slow.clone(), client.clone(), upstream.clone());
            async move {
                if slow.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                let r = client
                    .post(format!("{upstream}{uri}"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                axum::http::StatusCode::from_u16(r.status().as_u16()).unwrap()
            }
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, proxy).await });

    let pipeline = Pipeline::start(&config(&[&proxy_url], &[]), &rules("10m"));
    let mut attack = Attack::new();
    for template in [attack.upload.clone(), attack.probe.clone()] {
        pipeline.send(attack.event(&template)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while pipeline.delivery.stats.errors.load(Ordering::Relaxed) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no timed-out attempt"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        pipeline.delivery.store.outbox_depth().unwrap() > 0,
        "still queued"
    );
    slow.store(false, Ordering::Relaxed);
    drained(&pipeline.delivery.store).await;
    receiver
        .wait_for_destinations(&["paste.example.net", "production/orders-db"])
        .await;
    // Late copies reached Alertmanager too; it de-duplicates them: one notification each.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        firing_destinations(&receiver.notifications()).len(),
        2,
        "{:#?}",
        receiver.notifications()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_reach_an_alertmanager_that_demands_mutual_tls() {
    use crate::hubble_tls::{ca, leaf};
    use exfilwatch::common::http::HttpTls;
    use std::sync::atomic::Ordering;
    let authority = ca("alertmanager-ca");
    let ca_pem = authority.pem();
    let server = leaf(&authority, &["127.0.0.1"]);
    let client = leaf(&authority, &["exfilwatch"]);
    let receiver = Receiver::start().await;
    let port = crate::support::free_port();
    let am = Alertmanager::start_with(port, &receiver.url, Some((&ca_pem, &server, true))).await;
    assert!(am.url.starts_with("https://"));

    // Without a client certificate the handshake fails; the alert waits in the outbox.
    let mut config = config(&[&am.url], &[]);
    config.alertmanager.tls = Some(HttpTls {
        ca_pem: Some(ca_pem.as_bytes().to_vec()),
        identity_pem: None,
    });
    let refused = Pipeline::start(&config, &rules("10m"));
    let mut attack = Attack::new();
    refused.send(attack.event(&attack.upload.clone())).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while refused.delivery.stats.errors.load(Ordering::Relaxed) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no failed attempt");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(refused.delivery.store.outbox_depth().unwrap(), 1);

    // With the client certificate it arrives.
    config.alertmanager.tls = Some(HttpTls {
        ca_pem: Some(ca_pem.as_bytes().to_vec()),
        identity_pem: Some(format!("{}{}", client.0, client.1).into_bytes()),
    });
    let pipeline = Pipeline::start(&config, &rules("10m"));
    pipeline.send(attack.event(&attack.upload.clone())).await;
    let got = receiver
        .wait_for("the alert over mTLS", |n| {
            !firing_destinations(n).is_empty()
        })
        .await;
    assert_eq!(firing_destinations(&got), ["paste.example.net"]);
    drained(&pipeline.delivery.store).await;
}
