//! What the store holds swings little as chunks come and go: it writes a segment every
//! second or two at 50,000 flows/s, and what a write holds at its peak, and what leaving
//! chunks free at once, is what the service's resident set swings by.
//!
//! A separate test binary because it installs a global allocator that tracks the peak of
//! every thread of the process (polars works on threads of its own): its tests take turns,
//! and no other test runs beside them.

use std::sync::Mutex;
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

/// Held by each test while it runs: the allocator's counts are the whole process's.
static TURN: Mutex<()> = Mutex::new(());

/// A chunk of Cilium-shaped flows (eight labels an endpoint), each with a time and UUID of
/// its own.
fn chunk_of_rows() -> Vec<Row> {
    let now = exfilwatch::common::clock::now_ns();
    let mut cluster = TrainingCluster::new(99, now - 60_000_000_000, 20_000);
    let mut decoder = Decoder::default();
    std::iter::repeat_with(|| {
        let flow = cilium_shaped(cluster.next_flow());
        exfilwatch::sim::received(&mut decoder, flow).map(|f| Row::new(&f))
    })
    .flatten()
    .take(CHUNK)
    .collect()
}

/// A store in a temporary directory whose memory holds one chunk: the flow after it sends
/// the chunk to disk.
fn store_of_one_chunk() -> (tempfile::TempDir, std::sync::Arc<FlowStore>) {
    let dir = tempfile::tempdir().expect("a temporary directory");
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
    (dir, store)
}

#[test]
fn writing_a_segment_holds_less_than_four_fifths_of_its_chunk_beside_it() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let rows = chunk_of_rows();
    let (_dir, store) = store_of_one_chunk();
    let mut written = Vec::new();
    for round in 0..3 {
        // The builder holds the flow that sent the last chunk to disk: a chunk seals after
        // the rest of this one.
        store.append(&rows[usize::from(round > 0)..]);
        // The store counts the builder as full: two chunks' worth.
        let chunk = store.stats.memory_bytes.load(Relaxed) / 2;
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
            *held < chunk * 4 / 5,
            "writing a segment of a {} MB chunk held {} MB more at its peak: {written:?}",
            chunk >> 20,
            held >> 20
        );
    }
}

#[test]
fn a_chunk_leaving_memory_is_freed_as_the_next_one_fills() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let rows = chunk_of_rows();
    let (_dir, store) = store_of_one_chunk();
    // One chunk in memory and the next one filling, as under steady load.
    store.append(&rows);
    // The store counts the builder as full: two chunks' worth.
    let chunk = store.stats.memory_bytes.load(Relaxed) / 2;
    // Two chunks more, a thousand flows at a time: each chunk leaves memory as the one
    // after it fills. What the store holds after each append, and the most one append
    // gave back.
    let mut held = vec![PEAK.current_usage()];
    for _ in 0..2 {
        for batch in rows.chunks(1_000) {
            store.append(batch);
            held.push(PEAK.current_usage());
        }
    }
    assert_eq!(
        store.stats.segments.load(Relaxed),
        2,
        "two chunks left memory"
    );
    let freed = held
        .windows(2)
        .map(|w| w[0].saturating_sub(w[1]) as u64)
        .max()
        .unwrap_or(0);
    assert!(
        freed < chunk / 8,
        "one append of a thousand flows gave back {} KB of a {} KB chunk",
        freed >> 10,
        chunk >> 10
    );
}
