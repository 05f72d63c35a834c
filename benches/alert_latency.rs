//! Alert latency: from a policy-denied flow entering the pipeline to Alertmanager accepting
//! the alert, over 1,000 alerts on loopback.
//!
//! Each flow goes to a new destination, so each raises a new alert: detection, the alert's
//! commit to the SQLite outbox (WAL, fsync on commit), the sink's wake-up and its
//! `POST /api/v2/alerts` to a real Alertmanager (Debian's `prometheus-alertmanager`, started
//! here on 127.0.0.1). One alert is in flight at a time. Prints p50, p90, p99 and max.
//!
//! Run: `cargo bench --bench alert_latency`.

// A benchmark that cannot set up should stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::Duration;

use exfilwatch::app::start_alerting;
use exfilwatch::config::Config;
use exfilwatch::detect::engine::Engine;
use exfilwatch::flow::wire::Decoder;
use exfilwatch::pipeline::{self, Consumers, Summary};
use exfilwatch::rules;
use exfilwatch::rules::DEFAULT_PACK;
use exfilwatch::sim::traffic::TrainingCluster;
use exfilwatch::state::Store;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[path = "support/alertmanager.rs"]
mod alertmanager;

const ALERTS: usize = 1000;

fn main() {
    let am = alertmanager::start();
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let latencies = runtime.block_on(measure(am.port, dir.path()));
    drop(am);

    let mut sorted = latencies.clone();
    sorted.sort();
    let pct =
        |p: f64| sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1];
    println!(
        "alert latency, denied flow in -> Alertmanager accepted, {} alerts:",
        sorted.len()
    );
    println!(
        "  p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        ms(pct(0.50)),
        ms(pct(0.90)),
        ms(pct(0.99)),
        ms(*sorted.last().unwrap())
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn measure(port: u16, dir: &std::path::Path) -> Vec<Duration> {
    exfilwatch::common::http::install_crypto();
    let client = reqwest::Client::new();
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/-/ready"))
            .send()
            .await
            && r.status().is_success()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut config = Config::default();
    config.alertmanager.urls = vec![format!("http://127.0.0.1:{port}")];
    // Every destination alerts on its own here: the bound on firing alerts (and the roll-up
    // past it) is measured in benches/hostile.rs.
    config.alertmanager.max_firing = ALERTS;
    let rules: Vec<Arc<_>> = rules::load_text(DEFAULT_PACK, "pack")
        .unwrap()
        .into_iter()
        .map(Arc::new)
        .collect();
    let store = Store::open(&dir.join("state")).unwrap();
    let (engine, delivery) = start_alerting(&config, &rules, store, true).unwrap();
    let (tx, rx) = mpsc::channel(1024);
    let consumers = Consumers {
        summary: Summary::new(&[]),
        engine: Some(engine),
        ..Default::default()
    };
    let consumer = tokio::spawn(pipeline::consume(
        rx,
        consumers,
        Default::default(),
        Engine::tick_interval(&rules),
    ));
    let mut delivered = delivery.stats.delivered.subscribe();

    let template = TrainingCluster::new(3, exfilwatch::common::clock::now_ns(), 1_000_000)
        .exfiltration_attempt()[3]
        .clone();
    let mut decoder = Decoder::default();
    let mut latencies = Vec::with_capacity(ALERTS);
    for i in 0..ALERTS {
        // A new world /24 without a DNS name each time: a new destination, a new alert.
        let mut flow = template.clone();
        flow.destination_names.clear();
        flow.ip.as_mut().unwrap().destination = format!("100.{}.{}.9", 64 + i / 256, i % 256);
        flow.uuid = exfilwatch::flow::format_uuid(i as u128 + 1);
        let event = decoder
            .decode_response(&exfilwatch::sim::encode(flow))
            .unwrap()
            .unwrap();
        let start = Instant::now();
        tx.send(event).await.unwrap();
        delivered.wait_for(|n| *n as usize > i).await.unwrap();
        latencies.push(start.elapsed());
    }
    drop(tx);
    let _ = consumer.await;
    assert_eq!(delivery.finish().await, 0);
    latencies
}
