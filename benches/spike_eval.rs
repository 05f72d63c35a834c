//! Volume-spike evaluation for 1,000 namespaces: one exfilwatch round against Prometheus
//! evaluating the guide's rule on the same data, side by side.
//!
//! Data: 8 days of 5-minute samples of `container_network_transmit_bytes_total` for 1,000
//! namespaces (one pod each, daily rhythm, 1 % of them spiking in the last 30 minutes),
//! backfilled into a real Prometheus with promtool. Then, at the same evaluation time:
//!
//! - exfilwatch: a steady-state round, `egress::watch::evaluate` (the instant query of
//!   `sum by (namespace) (rate(...[10m]))`, baselines from memory, top pods of the spiking
//!   namespaces) plus the engine's decisions for every namespace;
//! - Prometheus: the instant query of the rule,
//!   `sum by (namespace) (rate(...[10m])) > 1.5 * avg_over_time(sum by (namespace) (rate(...[10m]))[7d:1h])`.
//!
//! Both must find the same spiking namespaces. Prints medians over 15 rounds and the ratio.
//! Run: `cargo bench --bench spike_eval` (needs Debian's prometheus package).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use exfilwatch::app::start_alerting;
use exfilwatch::config::Config;
use exfilwatch::egress::prometheus::Prometheus;
use exfilwatch::egress::sampler::Sampler;
use exfilwatch::rules;
use exfilwatch::rules::DEFAULT_PACK;
use exfilwatch::state::Store;
use tokio::time::Instant;

const NAMESPACES: usize = 1000;
const ROUNDS: usize = 15;
const DAY: i64 = 86_400;

fn openmetrics(end: i64) -> String {
    let mut out = String::with_capacity(220_000_000);
    out.push_str("# TYPE container_network_transmit_bytes counter\n");
    for n in 0..NAMESPACES {
        let mut total = 0.0;
        let mut t = end - 8 * DAY;
        let base = 10_000.0 + (n as f64) * 100.0;
        while t <= end {
            let daily =
                1.0 + 0.5 * (2.0 * std::f64::consts::PI * (t % DAY) as f64 / DAY as f64).sin();
            let spike = if n % 100 == 7 && t > end - 30 * 60 {
                5.0
            } else {
                1.0
            };
            total += base * daily * spike * 300.0;
            let _ = writeln!(
                out,
                "container_network_transmit_bytes_total{{namespace=\"ns-{n:04}\",pod=\"p-{n:04}\"}} {total:.0} {t}"
            );
            t += 300;
        }
    }
    out.push_str("# EOF\n");
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let end = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64)
        / 300
        * 300;
    println!("generating 8 days x {NAMESPACES} namespaces ...");
    std::fs::write(dir.path().join("data.om"), openmetrics(end)).unwrap();
    println!("backfilling with promtool ...");
    let status = Command::new("/usr/bin/promtool")
        .args([
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            "--max-block-duration=200h",
        ])
        .arg(dir.path().join("data.om"))
        .arg(dir.path().join("tsdb"))
        .stdout(Stdio::null())
        .status()
        .expect("promtool: apt-get install -y --no-install-recommends prometheus");
    assert!(status.success());
    std::fs::remove_file(dir.path().join("data.om")).unwrap();
    std::fs::write(dir.path().join("p.yml"), "global: {}\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut prom_process = Command::new("/usr/bin/prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("p.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg("--storage.tsdb.retention.time=10y")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let url = format!("http://127.0.0.1:{port}");
        exfilwatch::common::http::install_crypto();
        let http = reqwest::Client::new();
        while !http.get(format!("{url}/-/ready")).send().await.is_ok_and(|r| r.status().is_success()) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let prom = Prometheus::new(&url, Duration::from_secs(120), None, None).unwrap();
        let t = end - 7 * 60 - 13;
        let rules: Vec<Arc<_>> = rules::load_text(DEFAULT_PACK, "pack")
            .unwrap()
            .into_iter()
            .map(|mut r| {
                // Watch every namespace of the benchmark.
                r.namespaces.names = (0..NAMESPACES).map(|n| format!("ns-{n:04}")).collect();
                Arc::new(r)
            })
            .collect();
        let (mut engine, _delivery) = start_alerting(&Config::default(), &rules, Store::in_memory().unwrap(), false).unwrap();
        let mut sampler = Sampler::new(prom.clone(), "", Store::in_memory().unwrap()).unwrap();
        let filled = sampler.fill(t).await.unwrap();
        println!("baselines: {} namespaces, {} hours sampled (start-up backfill, not timed)", sampler.baselines().len(), filled.hours);

        let rule = "sum by (namespace) (rate(container_network_transmit_bytes_total[10m])) > 1.5 * avg_over_time(sum by (namespace) (rate(container_network_transmit_bytes_total[10m]))[7d:1h])";
        let (mut ours, mut local, mut theirs, mut fetch) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut spiking_ours = BTreeSet::new();
        let mut spiking_theirs = BTreeSet::new();
        for _ in 0..ROUNDS {
            let start = Instant::now();
            let report = exfilwatch::egress::watch::evaluate(&mut sampler, t, 1.5).await;
            let decided = Instant::now();
            engine.egress(&report, decided);
            let done = Instant::now();
            ours.push(done - start);
            local.push(done - decided);
            spiking_ours = report.namespaces.iter().filter(|(_, e)| e.ratio().is_some_and(|r| r > 1.5)).map(|(n, _)| n.clone()).collect();

            let start = Instant::now();
            sampler.current(t as f64).await.unwrap();
            fetch.push(start.elapsed());

            let start = Instant::now();
            let (samples, _) = prom.instant(rule, t as f64).await.unwrap();
            theirs.push(start.elapsed());
            spiking_theirs = samples.iter().filter_map(|s| s.labels.get("namespace").cloned()).collect();
        }
        assert_eq!(spiking_ours, spiking_theirs, "both must find the same spikes");
        assert_eq!(engine.firing().len(), spiking_ours.len());
        let (ours, local, theirs, fetch) = (median(ours), median(local), median(theirs), median(fetch));
        println!("spiking namespaces: {} (same in both)", spiking_ours.len());
        println!("exfilwatch round (rate query + baselines + top pods + decisions): {:.2} ms", ours.as_secs_f64() * 1e3);
        println!("  of which the current-rate query alone: {:.2} ms", fetch.as_secs_f64() * 1e3);
        println!("  of which decisions for {NAMESPACES} namespaces in memory: {:.3} ms", local.as_secs_f64() * 1e3);
        println!("Prometheus evaluating the rule: {:.2} ms", theirs.as_secs_f64() * 1e3);
        println!("ratio, whole round: {:.0}x less time", theirs.as_secs_f64() / ours.as_secs_f64());
        println!("ratio, evaluation without the data fetch: {:.0}x less time", theirs.as_secs_f64() / local.as_secs_f64());
    });
    let _ = prom_process.kill();
    let _ = prom_process.wait();
}
