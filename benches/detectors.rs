//! Detection cost: flows per second through decode and the detection engine with one
//! detector (`policy_denied`, the guide's first rule) against the whole default pack
//! (`policy_denied`, `scan`, `dns_exfiltration`, `segmentation`, `coverage`, `new_destination`;
//! `volume_spike` works on egress reports, not flows). Input: the simulator's training-namespace mix with a denied
//! attempt every 1,000 flows. The target: all detectors keep at least half the
//! single-detector rate. Run: `cargo bench --bench detectors`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use divan::Bencher;
use divan::counter::ItemsCount;
use exfilwatch::app::start_alerting;
use exfilwatch::config::Config;
use exfilwatch::detect::engine::Engine;
use exfilwatch::flow::wire::Decoder;
use exfilwatch::rules::DEFAULT_PACK;
use exfilwatch::rules::{self, Rule};
use exfilwatch::sim::traffic::TrainingCluster;
use exfilwatch::state::Store;
use tokio::time::Instant;

fn main() {
    divan::main();
}

const BATCH: usize = 4096;

/// The two flow shapes: the simulator's (about 600 bytes) and Cilium-shaped (about 1.25 KB).
const SHAPES: [&str; 2] = ["simulator", "cilium-shaped"];

fn messages(shape: &str) -> Vec<Vec<u8>> {
    let mut cluster = TrainingCluster::new(11, 1_764_115_200_000_000_000, 100_000);
    let mut out = Vec::with_capacity(BATCH);
    while out.len() < BATCH {
        let flows = if out.len() % 1000 == 999 {
            cluster.exfiltration_attempt()
        } else {
            vec![cluster.next_flow()]
        };
        for f in flows {
            let f = if shape == "cilium-shaped" {
                exfilwatch::sim::traffic::cilium_shaped(f)
            } else {
                f
            };
            out.push(exfilwatch::sim::encode(f));
        }
    }
    out
}

fn engine(keep: impl Fn(&Rule) -> bool) -> Engine {
    let rules: Vec<Arc<Rule>> = rules::load_text(DEFAULT_PACK, "pack")
        .unwrap()
        .into_iter()
        .filter(|r| keep(r))
        .map(Arc::new)
        .collect();
    start_alerting(
        &Config::default(),
        &rules,
        Store::in_memory().unwrap(),
        false,
    )
    .unwrap()
    .0
}

fn run(bencher: Bencher, mut engine: Engine, shape: &str) {
    let messages = messages(shape);
    let mut decoder = Decoder::default();
    bencher
        .counter(ItemsCount::new(messages.len()))
        .bench_local(|| {
            let now = Instant::now();
            for m in &messages {
                if let Some(event) = decoder.decode_response(black_box(m)).unwrap() {
                    engine.observe(&event, now);
                }
            }
        });
}

#[divan::bench(args = SHAPES)]
fn policy_denied_only(bencher: Bencher, shape: &str) {
    run(
        bencher,
        engine(|r| r.name == "TrainingPodUnexpectedEgress"),
        shape,
    );
}

#[divan::bench(args = SHAPES)]
fn all_detectors(bencher: Bencher, shape: &str) {
    run(bencher, engine(|_| true), shape);
}

/// The rules beside `policy_denied`, one at a time: what each adds to the single-detector cost.
const OTHERS: [&str; 6] = [
    "TrainingDataEgressVolumeSpike",
    "TrainingPodScanning",
    "TrainingPodDnsExfiltration",
    "TrainingNamespaceSegmentation",
    "ExfilwatchCoverageGap",
    "TrainingPodNewDestination",
];

#[divan::bench(args = OTHERS)]
fn policy_denied_and(bencher: Bencher, other: &str) {
    run(
        bencher,
        engine(|r| r.name == "TrainingPodUnexpectedEgress" || r.name == other),
        "cilium-shaped",
    );
}
