//! The flow store's bounds hold while 5 million flows stream through the pipeline's sink:
//! memory by the store's accounting and by the process's resident set, disk by retention.

use std::sync::atomic::Ordering;
use std::time::Duration;

use exfilwatch::config::FlowStoreConfig;
use exfilwatch::flow::FlowEvent;
use exfilwatch::flow::wire::Decoder;
use exfilwatch::flowstore::{Filter, FlowSink, FlowStore};
use exfilwatch::sim::traffic::TrainingCluster;

const FLOWS: u64 = 5_000_000;
const MEMORY_BYTES: usize = 24 << 20;
const DISK_BYTES: u64 = 16 << 20;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// 10,000 distinct flows to cycle through, with fresh times.
fn pool() -> Vec<FlowEvent> {
    let mut cluster = TrainingCluster::new(9, exfilwatch::common::clock::now_ns(), 1_000);
    let mut decoder = Decoder::default();
    (0..10_000)
        .map(|i| {
            let f = if i % 100 == 99 {
                cluster.exfiltration_attempt().remove(1)
            } else {
                cluster.next_flow()
            };
            crate::support::received(&mut decoder, f)
        })
        .collect()
}

#[test]
fn five_million_flows_stay_within_the_configured_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let store = FlowStore::open(FlowStoreConfig {
        memory_flows: 400_000,
        memory_bytes: MEMORY_BYTES,
        chunk_flows: 50_000,
        dir: Some(dir.path().to_path_buf()),
        disk_bytes: DISK_BYTES,
        flush_interval: Duration::from_millis(10),
        ..FlowStoreConfig::default()
    })
    .unwrap();
    let (sink, writer) = FlowSink::start(store.clone());
    let pool = pool();
    let start_ns = exfilwatch::common::clock::now_ns();
    let stats = &store.stats;
    let mut rss_after_first_million = 0;
    let mut rss_max = 0;
    let mut pushed = 0u64;
    while pushed < FLOWS {
        for _ in 0..50_000 {
            let mut f = pool[(pushed % pool.len() as u64) as usize].clone();
            f.time_ns = start_ns + pushed as i64 * 1_000;
            sink.push(&f);
            pushed += 1;
        }
        // Keep the writer within one batch of the pipeline, as a steady stream would.
        while stats.appended.load(Ordering::Relaxed) + 100_000 < pushed {
            std::thread::sleep(Duration::from_millis(1));
        }
        let memory = stats.memory_bytes.load(Ordering::Relaxed);
        assert!(
            memory <= MEMORY_BYTES as u64,
            "{memory} bytes in memory after {pushed} flows"
        );
        assert!(stats.memory_flows.load(Ordering::Relaxed) <= 400_000);
        let disk = stats.disk_bytes.load(Ordering::Relaxed);
        assert!(
            disk <= DISK_BYTES,
            "{disk} bytes on disk after {pushed} flows"
        );
        let rss = rss_bytes();
        if pushed == 1_000_000 {
            rss_after_first_million = rss;
        }
        rss_max = rss_max.max(rss);
    }
    sink.close();
    writer.join().unwrap();
    assert_eq!(stats.appended.load(Ordering::Relaxed), FLOWS);
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
    assert!(
        stats.expired.load(Ordering::Relaxed) > 0,
        "retention deleted segments"
    );
    let growth = rss_max.saturating_sub(rss_after_first_million);
    assert!(
        growth < 48 << 20,
        "resident set grew by {} MiB after the first million flows",
        growth >> 20
    );
    // What is left still answers, newest first.
    let page = store.list(&Filter::default(), None, 10).unwrap();
    assert_eq!(page.flows[0].seq, FLOWS);
    assert_eq!(page.flows.len(), 10);
}
