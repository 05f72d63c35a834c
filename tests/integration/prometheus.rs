//! Egress rates and baselines against a real Prometheus (Debian's `prometheus`), filled with
//! 8 days of generated cAdvisor counters by `promtool tsdb create-blocks-from openmetrics`.
//! exfilwatch's numbers must equal Prometheus's own evaluation of the guide's PromQL.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use exfilwatch::egress::baseline::{HOUR, hour_floor};
use exfilwatch::egress::prometheus::Prometheus;
use exfilwatch::egress::sampler::Sampler;
use exfilwatch::state::Store;

use crate::support::service::{RunConfig, Service, exfilwatch, output};

const INSTALL: &str =
    "apt-get install -y --no-install-recommends prometheus (scripts/test.sh does this)";
const DAY: i64 = 86_400;

fn binary(name: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    assert!(path.exists(), "{name} is not installed: {INSTALL}");
    path
}

/// Deterministic noise in [-1, 1].
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

/// Bytes per second a pod of `namespace` sends at `t`, before noise.
fn rate(namespace: &str, t: i64, end: i64) -> f64 {
    let wave = (2.0 * std::f64::consts::PI * (t % DAY) as f64 / DAY as f64).sin();
    // Its daily peak (1.3x the mean; 1.43x with the noise below) stays under the 1.5x
    // threshold at whatever time of day the test runs: with 1.5x, runs around 08:00 UTC
    // evaluated the 06:00 peak as a spike.
    let daily = 1.0 + 0.3 * wave;
    match namespace {
        // A milder rhythm: its daily peak (1.3x the mean, noise included below 1.45x) must stay
        // under the 1.5x threshold whatever the time of day the test runs at.
        "research" => 200_000.0 * (1.0 + 0.3 * wave),
        "web" => 50_000.0,
        // The training namespace: a daily rhythm, then bulk upload in the last 40 minutes.
        _ => 100_000.0 * daily * if t > end - 40 * 60 { 6.0 } else { 1.0 },
    }
}

/// OpenMetrics text for 8 days of 60 s samples ending at `end`: three namespaces of three
/// pods; `web/web-1` restarts (its counter resets) five days in.
fn openmetrics(end: i64) -> String {
    let mut out = String::from(
        "# HELP container_network_transmit_bytes Cumulative count of bytes transmitted\n# TYPE container_network_transmit_bytes counter\n",
    );
    let start = end - 8 * DAY;
    let mut noise = Noise(7);
    for namespace in ["ai-training", "research", "web"] {
        for pod in 0..3 {
            let mut total = 1_000_000.0 * f64::from(pod + 1);
            let mut t = start;
            while t <= end {
                if namespace == "web" && pod == 1 && t == start + 5 * DAY {
                    total = 0.0;
                }
                total += rate(namespace, t, end) * 60.0 * (1.0 + 0.1 * noise.next());
                let _ = writeln!(
                    out,
                    "container_network_transmit_bytes_total{{interface=\"eth0\",namespace=\"{namespace}\",pod=\"{namespace}-{pod}\"}} {total:.1} {t}"
                );
                t += 60;
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

pub struct PromServer {
    pub url: String,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Set when it serves HTTPS.
    web_config: Option<PathBuf>,
    /// A client that trusts it, for the readiness check.
    client: reqwest::Client,
}

impl Drop for PromServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl PromServer {
    /// Backfills the generated data (ai-training's egress spiking for the last 40 minutes
    /// before `end`) and starts Prometheus on it.
    pub async fn start(end: i64) -> PromServer {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("data.om");
        std::fs::write(&input, openmetrics(end)).unwrap();
        let tsdb = dir.path().join("tsdb");
        let status = Command::new(binary("promtool"))
            .args([
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                "--max-block-duration=200h",
            ])
            .arg(&input)
            .arg(&tsdb)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "promtool backfill failed");
        std::fs::write(
            dir.path().join("prometheus.yml"),
            "global:\n  scrape_interval: 1h\n",
        )
        .unwrap();
        let port = crate::support::free_port();
        exfilwatch::common::http::install_crypto();
        let mut server = PromServer {
            url: format!("http://127.0.0.1:{port}"),
            port,
            dir,
            child: None,
            web_config: None,
            client: reqwest::Client::new(),
        };
        server.resume().await;
        server
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the process on the same data and port.
    async fn resume(&mut self) {
        let child = Command::new(binary("prometheus"))
            .arg(format!(
                "--config.file={}",
                self.dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.dir.path().join("tsdb").display()
            ))
            .arg("--storage.tsdb.retention.time=10y")
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .args(
                self.web_config
                    .as_ref()
                    .map(|p| format!("--web.config.file={}", p.display())),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start prometheus ({e}): {INSTALL}"));
        self.child = Some(child);
        exfilwatch::common::http::install_crypto();
        let client = self.client.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(format!("{}/-/ready", self.url)).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn client(url: &str) -> Prometheus {
    Prometheus::new(url, Duration::from_secs(30), None, None).unwrap()
}

/// Prometheus's own value of `query` at `t`, if any.
async fn promql(prom: &Prometheus, query: &str, t: i64) -> Option<f64> {
    let (samples, _) = prom.instant(query, t as f64).await.unwrap();
    assert!(samples.len() <= 1, "{query}: {samples:?}");
    samples.first().map(|s| s.value)
}

fn close(ours: f64, theirs: f64, what: &str) {
    let rel = ((ours - theirs) / theirs).abs();
    assert!(
        rel < 1e-3,
        "{what}: exfilwatch {ours} vs Prometheus {theirs} ({:.4} %)",
        rel * 100.0
    );
}

/// Compares every namespace's rate, baseline, ratio and spike decision with Prometheus at `t`.
async fn matches_prometheus(sampler: &Sampler, prom: &Prometheus, t: i64) -> Vec<(String, bool)> {
    let current = sampler.current(t as f64).await.unwrap();
    assert_eq!(current.len(), 3, "{current:?}");
    let mut decisions = Vec::new();
    for (namespace, rate) in &current {
        let inner = format!(
            "sum(rate(container_network_transmit_bytes_total{{namespace=\"{namespace}\"}}[10m]))"
        );
        let theirs_rate = promql(prom, &inner, t).await.unwrap();
        let theirs_baseline = promql(prom, &format!("avg_over_time({inner}[7d:1h])"), t)
            .await
            .unwrap();
        let ours_baseline = sampler.baselines()[namespace].mean_at(t).unwrap();
        close(*rate, theirs_rate, &format!("{namespace} rate at {t}"));
        close(
            ours_baseline,
            theirs_baseline,
            &format!("{namespace} baseline at {t}"),
        );
        close(
            rate / ours_baseline,
            theirs_rate / theirs_baseline,
            &format!("{namespace} ratio at {t}"),
        );
        let theirs_fires = promql(
            prom,
            &format!("{inner} > 1.5 * avg_over_time({inner}[7d:1h])"),
            t,
        )
        .await
        .is_some();
        let ours_fires = rate / ours_baseline > 1.5;
        assert_eq!(
            ours_fires, theirs_fires,
            "{namespace} spike decision at {t}"
        );
        decisions.push((namespace.clone(), ours_fires));
    }
    decisions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_and_baselines_equal_prometheus_evaluating_the_guides_promql() {
    let end = (exfilwatch::common::clock::now_ns() / 1_000_000_000) / 60 * 60 - 120;
    let server = PromServer::start(end).await;
    let prom = client(&server.url);
    let state = tempfile::tempdir().unwrap();
    let on_the_hour = hour_floor(end) - 2 * HOUR;
    let off_the_hour = end - 17 * 60 - 13;

    // A first run samples the week up to 5 hours before `on_the_hour`, then stops.
    {
        let mut first = Sampler::new(prom.clone(), "", Store::open(state.path()).unwrap()).unwrap();
        let filled = first.fill(on_the_hour - 5 * HOUR).await.unwrap();
        assert_eq!(
            (filled.hours, filled.queries),
            (4 * 168 + 24 + 1, 1),
            "4 weeks and a day of whole hours, both ends"
        );
    }
    // A restart fills only the 5-hour gap, then matches Prometheus on the hour (169 points).
    let mut sampler = Sampler::new(prom.clone(), "", Store::open(state.path()).unwrap()).unwrap();
    assert_eq!(
        sampler.baselines().len(),
        3,
        "baselines come back from the store"
    );
    let filled = sampler.fill(on_the_hour).await.unwrap();
    assert_eq!((filled.hours, filled.queries), (5, 1));
    let decisions = matches_prometheus(&sampler, &prom, on_the_hour).await;
    assert!(
        decisions.iter().all(|(_, fires)| !fires),
        "nothing spikes two hours before the end: {decisions:?}"
    );
    assert_eq!(
        sampler.fill(on_the_hour).await.unwrap().queries,
        0,
        "nothing left to fetch"
    );

    // Off the hour (168 points), during the upload: only the training namespace spikes.
    sampler.fill(off_the_hour).await.unwrap();
    let decisions = matches_prometheus(&sampler, &prom, off_the_hour).await;
    assert_eq!(
        decisions,
        [
            ("ai-training".to_owned(), true),
            ("research".to_owned(), false),
            ("web".to_owned(), false)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_prometheus_leaves_baselines_unchanged_and_sampling_resumes() {
    let end = (exfilwatch::common::clock::now_ns() / 1_000_000_000) / 60 * 60 - 120;
    let mut server = PromServer::start(end).await;
    let prom = client(&server.url);
    let state = tempfile::tempdir().unwrap();
    let t = hour_floor(end) - 3 * HOUR;
    let mut sampler = Sampler::new(prom.clone(), "", Store::open(state.path()).unwrap()).unwrap();
    sampler.fill(t).await.unwrap();
    let before = sampler.baselines().clone();

    server.stop();
    let error = sampler.fill(t + 2 * HOUR).await.unwrap_err().to_string();
    assert!(error.contains(&server.url), "{error}");
    assert!(sampler.current(t as f64).await.is_err());
    assert_eq!(
        sampler.baselines(),
        &before,
        "a blind Prometheus must not touch the baselines"
    );

    server.resume().await;
    let filled = sampler.fill(t + 2 * HOUR).await.unwrap();
    assert_eq!(filled.hours, 2, "the hours missed while blind are filled");
    matches_prometheus(&sampler, &prom, t + 2 * HOUR).await;
}

/// An engine over the shipped rule pack with `blind_after`, alerts kept in memory.
fn engine(blind_after: Duration) -> exfilwatch::detect::engine::Engine {
    use std::sync::Arc;
    let rules: Vec<Arc<_>> = exfilwatch::rules::load_text(exfilwatch::rules::DEFAULT_PACK, "pack")
        .unwrap()
        .into_iter()
        .map(Arc::new)
        .collect();
    let mut config = exfilwatch::config::Config::default();
    config.prometheus.blind_after = blind_after;
    let (engine, _delivery) =
        exfilwatch::app::start_alerting(&config, &rules, Store::in_memory().unwrap(), false)
            .unwrap();
    engine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spike_raises_the_volume_alert_with_pods_and_flow_destinations() {
    use exfilwatch::flow::Event;
    let end = (exfilwatch::common::clock::now_ns() / 1_000_000_000) / 60 * 60 - 120;
    let server = PromServer::start(end).await;
    let mut sampler = Sampler::new(
        client(&server.url),
        "{interface=\"eth0\"}",
        Store::in_memory().unwrap(),
    )
    .unwrap();
    let mut engine = engine(Duration::from_secs(300));
    let now = tokio::time::Instant::now();

    // Flows of the same minutes: the training pods uploading to an unknown host.
    let mut decoder = exfilwatch::flow::json::JsonDecoder::default();
    for i in 0..3 {
        let line = format!(
            r#"{{"flow":{{"time":"2026-01-01T00:00:0{i}Z","verdict":"FORWARDED","traffic_direction":"EGRESS","IP":{{"source":"10.0.1.1{i}","destination":"203.0.113.77"}},"l4":{{"TCP":{{"source_port":4000{i},"destination_port":443}}}},"source":{{"namespace":"ai-training","pod_name":"ai-training-{i}"}},"destination":{{"identity":2}},"destination_names":["paste.example.net"]}}}}"#
        );
        let Event::Flow(mut flow) = decoder.decode_line(&line).unwrap() else {
            panic!()
        };
        flow.time_ns = (end - 60) * 1_000_000_000;
        engine.observe(&Event::Flow(flow), now);
    }

    let quiet =
        exfilwatch::egress::watch::evaluate(&mut sampler, hour_floor(end) - 2 * HOUR, 1.5).await;
    assert_eq!(quiet.error, None);
    engine.egress(&quiet, now);
    let spikes = |engine: &exfilwatch::detect::engine::Engine| -> Vec<exfilwatch::alert::Alert> {
        engine
            .firing()
            .into_iter()
            .filter(|a| a.rule == "TrainingDataEgressVolumeSpike")
            .collect()
    };
    assert!(spikes(&engine).is_empty(), "{:?}", engine.firing());
    // Forwarded uploads to a host the segmentation does not allow are a breach of their own.
    assert!(
        engine
            .firing()
            .iter()
            .any(|a| a.rule == "TrainingNamespaceSegmentation")
    );

    let report = exfilwatch::egress::watch::evaluate(&mut sampler, end - 17 * 60 - 13, 1.5).await;
    let training = &report.namespaces["ai-training"];
    assert!(training.ratio().unwrap() > 1.5);
    assert_eq!(training.top_pods.len(), 3, "{training:?}");
    engine.egress(&report, now);
    let firing = spikes(&engine);
    assert_eq!(firing.len(), 1, "{firing:#?}");
    let alert = &firing[0];
    assert_eq!(alert.labels["alertname"], "TrainingDataEgressVolumeSpike");
    assert_eq!(alert.labels["namespace"], "ai-training");
    assert_eq!(alert.labels["destination"], "*");
    let a = &alert.annotations;
    assert!(a["summary"].starts_with("ai-training: egress "), "{a:?}");
    assert!(
        a["top_pods"].starts_with("ai-training/ai-training-"),
        "{a:?}"
    );
    assert_eq!(a["top_destinations"], "paste.example.net (3 flows)");
    assert_eq!(a["coverage"], "168 hourly samples in 7 days");
    assert!(a["ratio"].parse::<f64>().unwrap() > 1.5);

    // The ratio falls back: resolved at once.
    engine.egress(&quiet, now);
    assert!(spikes(&engine).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blind_prometheus_raises_the_blind_alert_after_the_configured_time_and_no_spike() {
    let end = (exfilwatch::common::clock::now_ns() / 1_000_000_000) / 60 * 60 - 120;
    let mut server = PromServer::start(end).await;
    let mut sampler = Sampler::new(client(&server.url), "", Store::in_memory().unwrap()).unwrap();
    let mut engine = engine(Duration::from_secs(120));
    let start = tokio::time::Instant::now();
    let spiking_at = end - 17 * 60 - 13;
    sampler.fill(spiking_at - HOUR).await.unwrap();
    server.stop();

    let blind = exfilwatch::egress::watch::evaluate(&mut sampler, spiking_at, 1.5).await;
    assert!(
        blind.error.as_deref().unwrap_or("").contains(&server.url),
        "{blind:?}"
    );
    engine.egress(&blind, start);
    engine.egress(&blind, start + Duration::from_secs(60));
    assert!(engine.firing().is_empty(), "not blind for long enough yet");
    engine.egress(&blind, start + Duration::from_secs(121));
    let firing = engine.firing();
    assert_eq!(firing.len(), 1, "{firing:#?}");
    assert_eq!(firing[0].labels["alertname"], "ExfilwatchBlind");
    assert_eq!(firing[0].labels["destination"], "prometheus");

    // Prometheus returns: the blind alert resolves, and the spike it hid is found.
    server.resume().await;
    let report = exfilwatch::egress::watch::evaluate(&mut sampler, spiking_at, 1.5).await;
    assert_eq!(report.error, None);
    engine.egress(&report, start + Duration::from_secs(180));
    let names: Vec<String> = engine
        .firing()
        .iter()
        .map(|a| a.labels["alertname"].clone())
        .collect();
    assert_eq!(names, ["TrainingDataEgressVolumeSpike"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_baselines_and_egress_series_and_fires_the_spike() {
    let end = (exfilwatch::common::clock::now_ns() / 1_000_000_000) / 60 * 60 - 60;
    let server = PromServer::start(end).await;
    let relay = crate::support::relay(None).await;
    let config = RunConfig::new(relay.addr)
        .with("prometheus", &format!("url: {}\ninterval: 1s", server.url));
    let service = Service::spawn(&config, tempfile::tempdir().unwrap());
    let (base, http) = (service.base.clone(), service.client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let baselines: serde_json::Value = loop {
        if let Ok(r) = http.get(format!("{base}/api/v1/baselines")).send().await
            && r.status() == 200
        {
            let v: serde_json::Value = r.json().await.unwrap();
            if v["namespaces"].as_array().is_some_and(|a| a.len() == 3) {
                break v;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no baselines served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let training = baselines["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["namespace"] == "ai-training")
        .unwrap();
    assert_eq!(training["state"], "ready", "{training}");
    assert!(training["ratio"].as_f64().unwrap() > 1.5, "{training}");
    assert_eq!(training["coverage_percent"], 100.0);

    let series = service
        .ok("/api/v1/namespaces/ai-training/egress?range=3h&step=5m")
        .await;
    assert_eq!(series["state"], "ready");
    assert_eq!(
        series["baseline"].as_array().unwrap().len(),
        37,
        "3 h at 5 m, both ends"
    );
    assert!(
        series["current"].as_array().unwrap().len() >= 30,
        "{series}"
    );
    let last_ratio = series["ratio"].as_array().unwrap().last().unwrap()[1]
        .as_f64()
        .unwrap();
    assert!(last_ratio > 1.5, "{series}");

    for (query, status, names) in [
        (
            "/api/v1/namespaces/ai-training/egress?range=forever",
            400,
            "range",
        ),
        (
            "/api/v1/namespaces/ai-training/egress?range=30d",
            400,
            "range",
        ),
        ("/api/v1/namespaces/ai-training/egress?step=1s", 400, "step"),
        (
            "/api/v1/namespaces/ai-training/egress?window=1h",
            400,
            "window",
        ),
        ("/api/v1/namespaces/nowhere/egress", 404, "nowhere"),
    ] {
        let (code, body) = service.get(query).await;
        assert_eq!(code, status, "{query}");
        assert!(
            body["detail"].as_str().unwrap().contains(names),
            "{query}: {body}"
        );
        assert!(body["error"].is_string(), "{body}");
    }
    let metrics = service.text("/metrics").await;
    assert!(
        metrics.contains("exfilwatch_egress_rate_bytes{namespace=\"ai-training\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("exfilwatch_egress_baseline_bytes{namespace=\"web\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("exfilwatch_prometheus_blind 0"),
        "{metrics}"
    );
    let health = service.ok("/healthz").await;
    assert_eq!(health["details"]["prometheus"]["state"], "ok", "{health}");

    let (code, stdout) = service.terminate().await;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("TrainingDataEgressVolumeSpike [warning] ai-training -> *"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_backtests_the_volume_rules_against_prometheus_history() {
    let end = (exfilwatch::common::clock::now_ns() / 1_000_000_000) / 60 * 60 - 60;
    let server = PromServer::start(end).await;
    let rfc3339 = |t: i64| exfilwatch::common::clock::format_time(t * 1_000_000_000);
    let mut cmd = exfilwatch();
    cmd.args([
        "replay",
        "--output",
        "json",
        "--rules",
        concat!(env!("CARGO_MANIFEST_DIR"), "/rules"),
        "--prometheus",
        &server.url,
    ])
    .args([
        "--from",
        &rfc3339(end - 90 * 60),
        "--to",
        &rfc3339(end - 5 * 60),
    ])
    .arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/flows.jsonl"
    ))
    .env("RUST_LOG", "error");
    let out = output(cmd).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let alerts = summary["alerts"].as_array().unwrap();
    let spikes: Vec<&serde_json::Value> = alerts
        .iter()
        .filter(|a| a["rule"] == "TrainingDataEgressVolumeSpike")
        .collect();
    assert_eq!(spikes.len(), 1, "{alerts:#?}");
    assert_eq!(spikes[0]["labels"]["namespace"], "ai-training");
    assert_eq!(
        spikes[0]["status"], "firing",
        "still uploading at the end of the window"
    );
    // The flows of the capture are judged too.
    assert!(
        alerts
            .iter()
            .any(|a| a["rule"] == "TrainingPodUnexpectedEgress")
    );

    // A Prometheus that is not there is an error, not an empty backtest.
    let mut cmd = exfilwatch();
    cmd.args([
        "replay",
        "--prometheus",
        "http://127.0.0.1:9",
        "--from",
        &rfc3339(end - 3600),
        "--to",
        &rfc3339(end),
    ])
    .arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/flows.jsonl"
    ));
    let out = output(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("backtest at "));
}

/// What the fault proxy does to Prometheus's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Status500,
    Garbage,
    NaN,
    Empty,
    Slow,
}

/// An HTTP proxy on loopback in front of the real Prometheus that breaks its answers on
/// demand.
struct FaultProxy {
    url: String,
    fault: std::sync::Arc<std::sync::Mutex<Fault>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FaultProxy {
    async fn start(upstream: String) -> FaultProxy {
        use axum::extract::{Request, State};
        use axum::response::IntoResponse;
        let fault = std::sync::Arc::new(std::sync::Mutex::new(Fault::None));
        let client = reqwest::Client::new();
        let handler = move |State(fault): State<std::sync::Arc<std::sync::Mutex<Fault>>>,
                            request: Request| {
            let client = client.clone();
            let upstream = upstream.clone();
            async move {
                let fault = *fault.lock().unwrap();
                let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
                match fault {
                    Fault::Status500 => {
                        return (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            "internal error",
                        )
                            .into_response();
                    }
                    Fault::Garbage => {
                        return "{\"status\":\"success\",\"data\":{\"resu".into_response();
                    }
                    Fault::Slow => tokio::time::sleep(Duration::from_secs(3)).await,
                    _ => {}
                }
                let answer = client
                    .get(format!("{upstream}{path}"))
                    .send()
                    .await
                    .unwrap();
                let status = answer.status().as_u16();
                let mut body: serde_json::Value = answer.json().await.unwrap();
                if let Some(result) = body["data"]["result"].as_array_mut() {
                    match fault {
                        Fault::Empty => result.clear(),
                        Fault::NaN => {
                            for item in result.iter_mut() {
                                if item["value"].is_array() {
                                    item["value"][1] = "NaN".into();
                                }
                                for v in item["values"].as_array_mut().into_iter().flatten() {
                                    v[1] = "NaN".into();
                                }
                            }
                        }
                        _ => {}
                    }
                }
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    axum::Json(body),
                )
                    .into_response()
            }
        };
        let app = axum::Router::new()
            .fallback(handler)
            .with_state(fault.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = tokio_util::sync::CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(until.cancelled_owned())
                .await
                .unwrap();
        });
        FaultProxy { url, fault, stop }
    }

    fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_prometheus_raises_no_spike_keeps_the_baselines_and_recovers() {
    let end = (exfilwatch::common::clock::now_ns() / 1_000_000_000) / 60 * 60 - 120;
    let server = PromServer::start(end).await;
    let proxy = FaultProxy::start(server.url.clone()).await;
    let prom = Prometheus::new(&proxy.url, Duration::from_secs(1), None, None).unwrap();
    let mut sampler = Sampler::new(prom, "", Store::in_memory().unwrap()).unwrap();
    let mut engine = engine(Duration::from_secs(600));
    let start = tokio::time::Instant::now();
    let spiking_at = end - 17 * 60 - 13;
    sampler.fill(spiking_at - 2 * HOUR).await.unwrap();
    let before = sampler.baselines().clone();

    for (i, fault) in [
        Fault::Status500,
        Fault::Garbage,
        Fault::NaN,
        Fault::Empty,
        Fault::Slow,
    ]
    .into_iter()
    .enumerate()
    {
        proxy.set(fault);
        let report = exfilwatch::egress::watch::evaluate(&mut sampler, spiking_at, 1.5).await;
        match fault {
            Fault::Status500 => {
                let e = report.error.as_deref().unwrap_or("");
                assert!(e.contains("500") && e.contains(&proxy.url), "{e}");
            }
            Fault::Garbage | Fault::Slow => {
                assert!(report.error.is_some(), "{fault:?}: {report:?}");
            }
            // Answers without usable numbers: no rate, so nothing to compare.
            Fault::NaN | Fault::Empty => assert!(
                report.namespaces.values().all(|n| n.rate.is_none()),
                "{fault:?}: {report:?}"
            ),
            Fault::None => unreachable!(),
        }
        engine.egress(&report, start + Duration::from_secs(10 * i as u64));
        assert!(
            engine
                .firing()
                .iter()
                .all(|a| a.rule != "TrainingDataEgressVolumeSpike"),
            "{fault:?} raised a spike"
        );
        assert_eq!(
            sampler.baselines(),
            &before,
            "{fault:?} changed the baselines"
        );
    }

    // Healthy again: the missed hours are filled and the real spike is found.
    proxy.set(Fault::None);
    let report = exfilwatch::egress::watch::evaluate(&mut sampler, spiking_at, 1.5).await;
    assert_eq!(report.error, None);
    engine.egress(&report, start + Duration::from_secs(60));
    assert!(
        engine
            .firing()
            .iter()
            .any(|a| a.rule == "TrainingDataEgressVolumeSpike")
    );
    matches_prometheus(&sampler, &client(&server.url), spiking_at).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_rates_come_over_tls_from_a_prometheus_serving_https() {
    use crate::hubble_tls::{ca, leaf};
    use exfilwatch::common::http::HttpTls;
    let end = (exfilwatch::common::clock::now_ns() / 1_000_000_000) / 60 * 60 - 120;
    let mut server = PromServer::start(end).await;
    server.stop();
    // The same data, now over HTTPS with a certificate for 127.0.0.1 from the test's CA.
    let authority = ca("prometheus-ca");
    let ca_pem = authority.pem();
    let (cert, key) = leaf(&authority, &["127.0.0.1"]);
    let dir = server.dir.path().to_path_buf();
    std::fs::write(dir.join("server.crt"), &cert).unwrap();
    std::fs::write(dir.join("server.key"), &key).unwrap();
    std::fs::write(
        dir.join("web.yml"),
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
    )
    .unwrap();
    server.web_config = Some(dir.join("web.yml"));
    server.url = format!("https://127.0.0.1:{}", server.port);
    server.client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    server.resume().await;

    let tls = HttpTls {
        ca_pem: Some(ca_pem.as_bytes().to_vec()),
        identity_pem: None,
    };
    let prom = Prometheus::new(&server.url, Duration::from_secs(10), None, Some(&tls)).unwrap();
    let mut sampler = Sampler::new(prom, "", Store::in_memory().unwrap()).unwrap();
    let t = hour_floor(end) - 2 * HOUR;
    sampler.fill(t).await.unwrap();
    assert_eq!(sampler.baselines().len(), 3);
    // Without the CA the certificate is not trusted, and the error says so.
    let untrusted = Prometheus::new(&server.url, Duration::from_secs(10), None, None).unwrap();
    let e = untrusted
        .instant("up", t as f64)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&server.url) && e.to_lowercase().contains("certificate"),
        "{e}"
    );
}
