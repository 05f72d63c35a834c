//! Detection cost: flows per second through decode and the detection engine with one
//! detector (`policy_denied`, the guide's first rule) against the whole default pack
//! (`policy_denied`, `scan`, `dns_exfiltration`, `segmentation`, `coverage`, `new_destination`;
//! `volume_spike` works on egress reports, not flows, but fills its recent destinations from
//! them), and against `policy_denied` with each other rule alone (each detector's share).
//! Input: the simulator's training-namespace mix with a denied attempt every 1,000 flows, in
//! both flow shapes. The target: all detectors keep at least 75 % of the
//! single-detector rate.
//!
//! Decoded events reach the engine as they do in the service: the Hubble source is a task of
//! its own that decodes and sends into a channel, and the engine's task takes what is there,
//! so on one core each runs a stretch of flows before the other (tokio lets a task run 128
//! operations before it must yield). The benchmark decodes `RUN` messages, then observes them.
//! `per_flow/*` alternates decode and engine on every flow instead: a bound no deployment
//! meets, where the detectors' tables and the decoder's push each other out of the caches.
//! Run: `cargo bench --bench detectors`.

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

/// Messages decoded before the engine takes them (see the module documentation).
const RUN: usize = 128;

/// Decodes the shape's messages `run` at a time and hands each stretch to `engine`.
fn run(bencher: Bencher, mut engine: Engine, shape: &str, run: usize) {
    let messages = messages(shape);
    let mut decoder = Decoder::default();
    let mut events = Vec::with_capacity(run);
    bencher
        .counter(ItemsCount::new(messages.len()))
        .bench_local(|| {
            let now = Instant::now();
            for stretch in messages.chunks(run) {
                for m in stretch {
                    if let Some(event) = decoder.decode_response(black_box(m)).unwrap() {
                        events.push(event);
                    }
                }
                for event in events.drain(..) {
                    engine.observe(&event, now);
                }
            }
        });
}

/// The guide's first rule, the `policy_denied` one.
const POLICY_DENIED: &str = "TrainingPodUnexpectedEgress";

fn policy_denied() -> Engine {
    engine(|r| r.name == POLICY_DENIED)
}

#[divan::bench(args = SHAPES)]
fn policy_denied_only(bencher: Bencher, shape: &str) {
    run(bencher, policy_denied(), shape, RUN);
}

#[divan::bench(args = SHAPES)]
fn all_detectors(bencher: Bencher, shape: &str) {
    run(bencher, engine(|_| true), shape, RUN);
}

/// Decode and engine alternating on every flow.
#[divan::bench_group]
mod per_flow {
    use super::*;

    #[divan::bench(args = SHAPES)]
    fn policy_denied_only(bencher: Bencher, shape: &str) {
        run(bencher, policy_denied(), shape, 1);
    }

    #[divan::bench(args = SHAPES)]
    fn all_detectors(bencher: Bencher, shape: &str) {
        run(bencher, engine(|_| true), shape, 1);
    }
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
        engine(|r| r.name == POLICY_DENIED || r.name == other),
        "cilium-shaped",
        RUN,
    );
}
