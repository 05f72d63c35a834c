//! Writing a segment holds little memory beside the chunk it writes: the store writes one
//! every second or two at 50,000 flows/s, and what a write holds at its peak is what the
//! service's resident set swings by.
//!
//! A separate test binary because it installs a global allocator that tracks the peak of
//! every thread of the process (polars works on threads of its own): no other test may run
//! beside it.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use exfilwatch::config::FlowStoreConfig;
use exfilwatch::flow::wire::Decoder;
use exfilwatch::flowstore::{FlowStore, Row};
use exfilwatch::sim::traffic::{TrainingCluster, cilium_shaped};
use peak_alloc::PeakAlloc;

#[global_allocator]
static PEAK: PeakAlloc = PeakAlloc;

/// Flows per chunk, and so per segment: the store's default.
const CHUNK: usize = 65_536;

#[test]
fn writing_a_segment_holds_less_than_half_its_chunk_beside_it() {
    // Cilium-shaped flows (eight labels an endpoint), each with a time and UUID of its own.
    let now = exfilwatch::common::clock::now_ns();
    let mut cluster = TrainingCluster::new(99, now - 60_000_000_000, 20_000);
    let mut decoder = Decoder::default();
    let rows: Vec<Row> = std::iter::repeat_with(|| {
        let flow = cilium_shaped(cluster.next_flow());
        exfilwatch::sim::received(&mut decoder, flow).map(|f| Row::new(&f))
    })
    .flatten()
    .take(CHUNK)
    .collect();
    let dir = tempfile::tempdir().expect("a temporary directory");
    // Memory holds one chunk: the flow after it sends the chunk to disk.
    let store = FlowStore::open(FlowStoreConfig {
        memory_flows: CHUNK,
        memory_bytes: 1 << 30,
        chunk_flows: CHUNK,
        disk_bytes: 1 << 30,
        dir: Some(dir.path().into()),
        retention: Duration::from_secs(86_400),
        ..FlowStoreConfig::default()
    })
    .expect("the store opens");
    let mut written = Vec::new();
    for round in 0..3 {
        // The builder holds the flow that sent the last chunk to disk: a chunk seals after
        // the rest of this one.
        store.append(&rows[usize::from(round > 0)..]);
        let chunk = store.stats.memory_bytes.load(Relaxed);
        let segments = store.stats.segments.load(Relaxed);
        let before = PEAK.current_usage();
        PEAK.reset_peak_usage();
        store.append(&rows[..1]);
        let held = (PEAK.peak_usage() - before) as u64;
        assert_eq!(
            store.stats.segments.load(Relaxed),
            segments + 1,
            "round {round}: one segment written"
        );
        written.push((chunk, held));
    }
    // The first write sets up what polars keeps for the process; the others are the rule.
    for (chunk, held) in &written[1..] {
        assert!(
            *held < chunk / 2,
            "writing a segment of a {} MB chunk held {} MB more at its peak: {written:?}",
            chunk >> 20,
            held >> 20
        );
    }
}
