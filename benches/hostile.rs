//! Hostile load: the watched pod attacking the service that watches it, against the release
//! binary (`exfilwatch run`) as an operator runs it, a Hubble-compatible server and a real
//! Alertmanager on 127.0.0.1.
//!
//! 1. **Decoy flood**: a training pod sends policy-denied flows to 15,000 names of its own
//!    (500 a second). Meanwhile a pod of a second watched namespace makes one real attempt
//!    every half second, to a name of its own, and the time from its flow to Alertmanager listing its
//!    alert is measured; `GET /api/v1/alerts?limit=10` and `GET /ui/` are read in turn and
//!    timed. At the end: how many alerts of the flooded namespace Alertmanager holds.
//! 2. **Half-open connections**: 2,000 connections that send a request line and never end
//!    their headers, reopened as the service closes them, while `/healthz` is read 200 times
//!    on the probes' listener (a new connection each time, as the kubelet does).
//!
//! Targets (issue 39): alert p99 under 1 s and API p99 under 100 ms during the flood;
//! `/healthz` under 100 ms while the connections are held.
//!
//! Run: `cargo bench --bench hostile` (needs `apt-get install prometheus-alertmanager`).

// A benchmark that cannot set up should stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use exfilwatch::common::clock::now_ns;
use exfilwatch::flow::format_uuid;
use exfilwatch::proto::flow::Flow;
use exfilwatch::sim::observer::SimObserver;
use exfilwatch::sim::traffic::TrainingCluster;
use tokio::io::AsyncWriteExt as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[path = "support/alertmanager.rs"]
mod alertmanager;

const DECOYS: usize = 15_000;
const DECOYS_PER_SECOND: u64 = 500;
const HALF_OPEN: usize = 2_000;
const PROBES: usize = 200;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn percentiles(name: &str, mut values: Vec<Duration>) {
    values.sort();
    let pct = |p: f64| {
        values[((values.len() as f64 * p).ceil() as usize).clamp(1, values.len()) - 1].as_secs_f64()
            * 1000.0
    };
    println!(
        "  {name}: {} samples, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        values.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}

fn main() {
    let am = alertmanager::start();
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(am.port, dir.path()));
}

async fn run(am_port: u16, dir: &std::path::Path) {
    exfilwatch::common::http::install_crypto();
    let stop = CancellationToken::new();
    let sim = SimObserver::new(100_000);
    let relay = sim.clone().spawn_local(None, stop.clone()).await.unwrap();
    // The default pack, watching a second training namespace beside the flooded one.
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    let pack = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/default.yaml"))
        .unwrap()
        .replace("names: [ai-training]", "names: [ai-training, ai-research]");
    std::fs::write(dir.join("rules/default.yaml"), pack).unwrap();
    let (api_port, probe_port) = (free_port(), free_port());
    std::fs::write(
        dir.join("exfilwatch.yaml"),
        format!(
            "hubble:\n  address: http://{relay}\n  namespaces: [ai-training, ai-research]\n\
             alertmanager:\n  urls: [\"http://127.0.0.1:{am_port}\"]\n\
             api:\n  listen: 127.0.0.1:{api_port}\n  probe_listen: 127.0.0.1:{probe_port}\n\
             rules:\n  dir: {rules}\nstorage:\n  dir: {state}\n",
            rules = dir.join("rules").display(),
            state = dir.join("state").display(),
        ),
    )
    .unwrap();
    let _service = Killed(
        Command::new(env!("CARGO_BIN_EXE_exfilwatch"))
            .args(["run", "--config"])
            .arg(dir.join("exfilwatch.yaml"))
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    let api = format!("http://127.0.0.1:{api_port}");
    let am = format!("http://127.0.0.1:{am_port}");
    for url in [format!("{api}/readyz"), format!("{am}/-/ready")] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < deadline, "{url} never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    println!("decoy flood: {DECOYS} denied flows to names of their own at {DECOYS_PER_SECOND}/s");
    let flooding = Arc::new(AtomicBool::new(true));
    let flood = tokio::spawn(decoys(sim.clone(), flooding.clone()));
    let real = tokio::spawn(real_attempts(
        sim.clone(),
        client.clone(),
        am.clone(),
        flooding.clone(),
    ));
    let reads = tokio::spawn(api_reads(client.clone(), api.clone(), flooding.clone()));
    flood.await.unwrap();
    let real = real.await.unwrap();
    let (alerts, ui) = reads.await.unwrap();
    percentiles("real attempt -> Alertmanager", real);
    percentiles("GET /api/v1/alerts?limit=10", alerts);
    percentiles("GET /ui/", ui);
    // Let the last updates go out, then count what Alertmanager holds of the flood.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let held: serde_json::Value = client
        .get(format!(
            "{am}/api/v2/alerts?filter=namespace%3D%22ai-training%22"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let held = held.as_array().unwrap();
    let rollup = held
        .iter()
        .find(|a| a["labels"]["alertname"] == "ExfilwatchAlertFlood");
    println!(
        "  Alertmanager holds {} alerts of the flooded namespace; roll-up: {}",
        held.len(),
        rollup.map_or("none".into(), |r| r["annotations"]["summary"].to_string())
    );

    println!("half-open connections: {HALF_OPEN} held against the API's port");
    let holding = Arc::new(AtomicBool::new(true));
    let holder = tokio::spawn(hold_half_open(api_port, holding.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut probes, mut failed) = (Vec::with_capacity(PROBES), 0);
    let (mut api_probes, mut api_failed) = (Vec::with_capacity(PROBES), 0);
    for _ in 0..PROBES {
        for (port, into, failures) in [
            (probe_port, &mut probes, &mut failed),
            (api_port, &mut api_probes, &mut api_failed),
        ] {
            // A new connection for each probe, as the kubelet makes.
            let probe_client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(1))
                .build()
                .unwrap();
            let start = Instant::now();
            match probe_client
                .get(format!("http://127.0.0.1:{port}/healthz"))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => into.push(start.elapsed()),
                _ => *failures += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holding.store(false, Ordering::Relaxed);
    let (opened, closed, open) = holder.await.unwrap();
    percentiles("GET /healthz on the probes' listener", probes);
    println!("  failed: {failed} of {PROBES}");
    if !api_probes.is_empty() {
        percentiles(
            "GET /healthz on the API's port (for comparison)",
            api_probes,
        );
    }
    println!(
        "  failed: {api_failed} of {PROBES} on the API's port (closed at once while api.max_connections are held)"
    );
    println!(
        "  half-open connections: {opened} opened, {closed} closed by the service, {open} open at the end"
    );
    stop.cancel();
}

/// The decoy flood: denied uploads from a training pod to `decoy-N.example`.
async fn decoys(sim: SimObserver, flooding: Arc<AtomicBool>) {
    let mut cluster = TrainingCluster::new(7, now_ns(), 1_000_000);
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / (DECOYS_PER_SECOND / 50)));
    let mut sent = 0;
    while sent < DECOYS {
        tick.tick().await;
        for _ in 0..50 {
            cluster.set_now_ns(now_ns());
            let mut flow = cluster.exfiltration_attempt().swap_remove(3);
            flow.destination_names = vec![format!("decoy-{sent}.example")];
            sim.push_flow(flow);
            sent += 1;
        }
    }
    flooding.store(false, Ordering::Relaxed);
}

/// One real attempt at a time from `ai-research` during the flood: its latency to
/// Alertmanager.
async fn real_attempts(
    sim: SimObserver,
    client: reqwest::Client,
    am: String,
    flooding: Arc<AtomicBool>,
) -> Vec<Duration> {
    let mut cluster = TrainingCluster::new(11, now_ns(), 1_000_000);
    let mut latencies = Vec::new();
    let mut n = 0;
    while flooding.load(Ordering::Relaxed) {
        cluster.set_now_ns(now_ns());
        let mut flow: Flow = cluster.exfiltration_attempt().swap_remove(3);
        let source = flow.source.as_mut().unwrap();
        source.namespace = "ai-research".into();
        source.pod_name = "notebook-0".into();
        let name = format!("real-{n}.example");
        flow.destination_names = vec![name.clone()];
        flow.uuid = format_uuid(fastrand::u128(..));
        let start = Instant::now();
        sim.push_flow(flow);
        let url = format!("{am}/api/v2/alerts?filter=destination%3D%22{name}%22");
        loop {
            let found = client
                .get(&url)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap();
            if found.as_array().is_some_and(|a| !a.is_empty()) {
                latencies.push(start.elapsed());
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{name} never reached Alertmanager"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        n += 1;
        // Fewer than `alertmanager.max_firing` in the flood's 30 s: each its own alert.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    latencies
}

/// `/api/v1/alerts?limit=10` and `/ui/`, in turn, for the flood's length.
async fn api_reads(
    client: reqwest::Client,
    api: String,
    flooding: Arc<AtomicBool>,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut alerts, mut ui) = (Vec::new(), Vec::new());
    while flooding.load(Ordering::Relaxed) {
        for (path, into) in [("/api/v1/alerts?limit=10", &mut alerts), ("/ui/", &mut ui)] {
            let start = Instant::now();
            let r = client.get(format!("{api}{path}")).send().await.unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            r.bytes().await.unwrap();
            into.push(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (alerts, ui)
}

/// Keeps `HALF_OPEN` half-open connections to `port` while `holding`: each sends a request
/// line and part of its headers; one the service closes is opened again, a hundred at a time.
/// (opened, closed by the service, open at the end).
async fn hold_half_open(port: u16, holding: Arc<AtomicBool>) -> (u64, u64, usize) {
    let (mut opened, mut closed) = (0u64, 0u64);
    let mut held: Vec<tokio::net::TcpStream> = Vec::with_capacity(HALF_OPEN);
    while holding.load(Ordering::Relaxed) {
        // Drop the connections the service closed (a read returns end of file).
        let before = held.len();
        held.retain(|s| {
            let mut buf = [0u8; 256];
            match s.try_read(&mut buf) {
                Ok(0) => false,
                Ok(_) => true,
                Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            }
        });
        closed += (before - held.len()) as u64;
        let mut connecting = tokio::task::JoinSet::new();
        for _ in 0..(HALF_OPEN - held.len()).min(100) {
            connecting.spawn(async move {
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()?;
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .ok()?;
                Some(s)
            });
        }
        while let Some(done) = connecting.join_next().await {
            if let Ok(Some(s)) = done {
                held.push(s);
                opened += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (opened, closed, held.len())
}
