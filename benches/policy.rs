//! The policy advisor over a week of history: how fast `policy check` and `policy suggest`
//! answer for one namespace, and what that means for a week at 10,000 flows/s.
//!
//! Flows: 2 million of the simulator's training namespace spread evenly over 7 days (one
//! every 0.3 s), widened like the flow store's benchmark (2,000 source pods, 50,000 external
//! addresses), half Cilium-shaped, with an exfiltration attempt every 200 flows; written as
//! parquet segments of 131,072 flows, as the service writes them.
//!
//! - segments only: a store on the segments alone, every flow read back and folded;
//! - cold: a store opened read-only as the `policy` commands open it, answering from the
//!   hourly summaries written with the segments (and the few segments they do not cover);
//! - warm: the same question again (parsed summaries cached);
//! - check of the guide's pack and suggest, on the connections.
//!
//! Run: `cargo bench --bench policy`; see the README for the figures.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Duration;

use tokio::time::Instant;

use exfilwatch::config::FlowStoreConfig;
use exfilwatch::flow::wire::Decoder;
use exfilwatch::flowstore::{FlowStore, Row};
use exfilwatch::policy::{self, Flavor};
use exfilwatch::sim::traffic::{TrainingCluster, cilium_shaped};

const FLOWS: usize = 2_000_000;
const WEEK_NS: i64 = 7 * 86_400 * 1_000_000_000;
/// A week at 10,000 flows/s.
const WEEK_FLOWS: f64 = 10_000.0 * 7.0 * 86_400.0;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let config = FlowStoreConfig {
        dir: Some(dir.path().to_path_buf()),
        memory_flows: 200_000,
        memory_bytes: 256 << 20,
        retention: Duration::from_secs(8 * 86_400),
        disk_bytes: 64 << 30,
        ..FlowStoreConfig::default()
    };
    let now = exfilwatch::common::clock::now_ns();
    let start = now - WEEK_NS + 60_000_000_000;
    let mut cluster = TrainingCluster::new(3, start, (WEEK_NS - 120_000_000_000) / FLOWS as i64);
    let mut rng = fastrand::Rng::with_seed(9);
    let mut decoder = Decoder::default();
    println!("writing {FLOWS} flows over 7 days ...");
    {
        let store = FlowStore::open(config.clone()).unwrap();
        let mut rows = Vec::with_capacity(10_000);
        for i in 0..FLOWS {
            let batch = if i % 200 == 199 {
                cluster.exfiltration_attempt()
            } else {
                vec![cluster.next_flow()]
            };
            for mut f in batch {
                if let Some(src) = &mut f.source
                    && !src.pod_name.is_empty()
                {
                    src.pod_name = format!("{}-{}", src.pod_name, rng.u32(0..2_000));
                }
                if rng.u8(0..5) == 0
                    && let Some(ip) = &mut f.ip
                {
                    let n = rng.u32(0..50_000);
                    ip.destination = format!("198.18.{}.{}", n / 256, n % 256);
                }
                if i % 2 == 0 {
                    f = cilium_shaped(f);
                }
                rows.push(Row::new(
                    &exfilwatch::sim::received(&mut decoder, f).unwrap(),
                ));
            }
            if rows.len() >= 10_000 {
                store.append(&rows);
                rows.clear();
            }
        }
        store.append(&rows);
        store.persist().unwrap();
    }
    let files = |d: &std::path::Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect()
    };
    let size = |paths: &[std::path::PathBuf]| -> u64 {
        paths
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    };
    let segments = files(dir.path());
    let summaries = files(&dir.path().join("connections"));
    println!(
        "{} segments, {:.1} MB on disk ({:.1} bytes a flow); {} hourly summaries, {:.2} MB",
        segments.len(),
        size(&segments) as f64 / 1e6,
        size(&segments) as f64 / FLOWS as f64,
        summaries.len(),
        size(&summaries) as f64 / 1e6
    );
    let (since, until) = (now - WEEK_NS, now + 1);

    // The segments alone (hard links, no summaries): every flow read back.
    let plain = tempfile::tempdir().unwrap();
    for s in &segments {
        std::fs::hard_link(s, plain.path().join(s.file_name().unwrap())).unwrap();
    }
    let segments_only = FlowStore::open_read_only(FlowStoreConfig {
        dir: Some(plain.path().to_path_buf()),
        ..config.clone()
    })
    .unwrap();
    let started = Instant::now();
    let reference = segments_only
        .connections("ai-training", since, until)
        .unwrap();
    let segments_s = started.elapsed().as_secs_f64();
    println!(
        "segments only, cold: {:.2} s: {:.2} M flows/s",
        segments_s,
        FLOWS as f64 / segments_s / 1e6
    );

    let store = FlowStore::open_read_only(config).unwrap();
    let started = Instant::now();
    let cold = store.connections("ai-training", since, until).unwrap();
    let cold_s = started.elapsed().as_secs_f64();
    assert_eq!(
        cold.iter().map(|c| c.flows).sum::<u64>(),
        reference.iter().map(|c| c.flows).sum::<u64>(),
        "summaries and segments agree"
    );
    let entries: usize = cold.iter().map(|c| c.addresses.len().max(1)).sum();
    let mut warm = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let again = store.connections("ai-training", since, until).unwrap();
        warm.push(started.elapsed().as_secs_f64());
        assert_eq!(again.len(), cold.len());
    }
    warm.sort_by(f64::total_cmp);
    let flows: u64 = cold.iter().map(|c| c.flows).sum();
    println!(
        "with the hourly summaries, cold: {} connections ({entries} with their addresses) from {flows} flows in {:.3} s",
        cold.len(),
        cold_s,
    );
    println!(
        "warm (parsed summaries cached): median {:.1} ms of 5",
        warm[2] * 1e3
    );

    let pack: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/policies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .flat_map(|p| {
            policy::parse(&std::fs::read_to_string(&p).unwrap(), "pack", "ai-training").unwrap()
        })
        .collect();
    let started = Instant::now();
    let report = policy::check(&pack, &cold, "ai-training", since, until);
    let check_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let suggestion = policy::suggest(&cold, "ai-training", Flavor::Cilium, &[], (since, until));
    let suggest_s = started.elapsed().as_secs_f64();
    println!(
        "check of the guide's pack: {:.1} ms ({} would drop, {} keep denied); suggest: {:.1} ms ({} rules)",
        check_s * 1e3,
        report.would_drop.len(),
        report.still_denied.len(),
        suggest_s * 1e3,
        suggestion.rules
    );
    // At 10,000 flows/s a week is 6 G flows but still 168 hours: what the summaries hold
    // follows each hour's distinct connections and peer addresses, not its flows. Entries
    // read: every connection of every summary, and every address of each.
    let read: usize = summaries
        .iter()
        .map(|p| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            v.as_array()
                .unwrap()
                .iter()
                .map(|c| c["addresses"].as_array().unwrap().len().max(1))
                .sum::<usize>()
        })
        .sum();
    // The summaries alone: up to the end of the last summarised hour, on a fresh store.
    let last_hour = summaries
        .iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            name.strip_prefix("hour_")?
                .split('_')
                .next()?
                .parse::<i64>()
                .ok()
        })
        .max()
        .unwrap();
    let fresh = FlowStore::open_read_only(FlowStoreConfig {
        dir: Some(dir.path().to_path_buf()),
        ..FlowStoreConfig::default()
    })
    .unwrap();
    let started = Instant::now();
    fresh
        .connections("ai-training", since, last_hour + 3_600_000_000_000)
        .unwrap();
    let summaries_s = started.elapsed().as_secs_f64();
    let rate = read as f64 / summaries_s;
    // An hour at 10,000 flows/s sees every address of a range that flows spread over: the
    // simulator's S3 range (254 x 254 addresses), and here also 50,000 external addresses;
    // per source label set (one in the demo's traffic; five here: the plain trainers and
    // four Cilium-shaped ones, each pod-template hash its own).
    let demo_hour = 254.0 * 254.0;
    let widened_hour = 5.0 * (254.0 * 254.0 + 50_000.0);
    println!(
        "the {} summaries alone: {read} entries in {:.3} s ({:.2} M entries/s, every namespace's connections parsed)",
        summaries.len(),
        summaries_s,
        rate / 1e6
    );
    println!(
        "a week at 10,000 flows/s ({:.2} G flows): segments only {:.0} s; with summaries about {:.1} s for the demo's traffic, {:.0} s for this widened spread",
        WEEK_FLOWS / 1e9,
        WEEK_FLOWS / (FLOWS as f64 / segments_s),
        168.0 * demo_hour / rate,
        168.0 * widened_hour / rate,
    );
}
