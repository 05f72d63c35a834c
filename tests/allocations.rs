//! The decode hot path allocates nothing for a flow whose strings and endpoints it has seen.
//!
//! A separate test binary because it installs a counting global allocator, which counts every
//! thread of the process: no other test may run beside it.

use std::alloc::System;

use exfilwatch::flow::wire::Decoder;
use exfilwatch::sim::traffic::TrainingCluster;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn decoding_flows_of_known_pods_allocates_nothing() {
    let mut cluster = TrainingCluster::new(5, 1_764_115_200_000_000_000, 1_000_000);
    // L3/L4 flows only: an L7 DNS record owns its query name, one allocation by design.
    let messages: Vec<Vec<u8>> = std::iter::repeat_with(|| cluster.next_flow())
        .filter(|f| f.l7.is_none())
        .take(2000)
        .map(exfilwatch::sim::encode)
        .collect();
    let mut decoder = Decoder::default();
    // Warm up: the first flows teach the decoder the pods, labels and nodes.
    for m in &messages[..1000] {
        drop(decoder.decode_response(m).expect("decodes"));
    }
    let region = Region::new(GLOBAL);
    let mut decoded = 0;
    for m in &messages[1000..] {
        let event = decoder.decode_response(m).expect("decodes");
        decoded += usize::from(event.is_some());
        drop(event);
    }
    let stats = region.change();
    assert_eq!(decoded, 1000);
    assert_eq!(stats.allocations, 0, "{stats:?}");
    assert_eq!(stats.reallocations, 0, "{stats:?}");
}
