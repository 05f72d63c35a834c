//! What the hot path allocates, and what state holds: decoding allocates nothing for a flow
//! whose strings and endpoints it has seen, and a firing alert holds a couple of kilobytes.
//!
//! A separate test binary because it installs a counting global allocator, which counts every
//! thread of the process: its tests take turns, and no other test runs beside them.

use std::alloc::System;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use exfilwatch::alert::Hit;
use exfilwatch::alert::manager::{LifecycleConfig, Manager};
use exfilwatch::flow::FlowEvent;
use exfilwatch::flow::destination::Destination;
use exfilwatch::flow::wire::Decoder;
use exfilwatch::rules::Rule;
use exfilwatch::sim::traffic::{TrainingCluster, cilium_shaped};
use exfilwatch::state::Store;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::sync::Notify;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Held by each test while it runs: the allocator's counts are the whole process's.
static TURN: Mutex<()> = Mutex::new(());

#[test]
fn decoding_flows_of_known_pods_allocates_nothing() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
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

/// Alerts firing beside each other: an alert per new destination a compromised pod tries,
/// each held until it has been quiet for its rule's `resolve_after`.
#[test]
fn a_firing_alert_holds_under_two_and_a_half_kilobytes() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let rules: Vec<Arc<Rule>> = exfilwatch::rules::default_pack()
        .expect("the default pack loads")
        .into_iter()
        .map(Arc::new)
        .collect();
    let rule = rules
        .iter()
        .find(|r| r.name == "TrainingPodUnexpectedEgress")
        .expect("the policy-denied rule")
        .clone();
    let config = LifecycleConfig {
        targets: vec!["alertmanager".into()],
        // Every one its own alert: what one alert holds is the measure.
        max_firing: 2000,
        ..LifecycleConfig::default()
    };
    let store = Store::in_memory().expect("a state store");
    let mut manager =
        Manager::new(config, store, Arc::new(Notify::new()), &rules).expect("a manager");
    // Denied uploads from a training pod, Cilium-shaped, each to a name of its own.
    let mut cluster = TrainingCluster::new(5, 1_764_115_200_000_000_000, 1_000_000);
    let mut decoder = Decoder::default();
    let attempts: Vec<(String, FlowEvent)> = (0..2000)
        .map(|k| {
            let mut upload = cluster
                .exfiltration_attempt()
                .into_iter()
                .find(|f| !f.destination_names.is_empty())
                .expect("an upload");
            let name = format!("exfil-{k}.example.net");
            upload.destination_names = vec![name.clone()];
            let flow = exfilwatch::sim::received(&mut decoder, cilium_shaped(upload));
            (name, flow.expect("decodes"))
        })
        .collect();
    let now = tokio::time::Instant::now();
    let mut raise = |(name, flow): &(String, FlowEvent)| {
        let hit = Hit {
            namespace: "ai-training".into(),
            destination: Destination::Fqdn(name.clone()),
            extra: BTreeMap::new(),
            earlier: None,
        };
        manager.hit(&rule, hit, flow, 10, now).expect("saved");
    };
    // The first thousand; then what the next thousand hold, the table's growth included.
    attempts[..1000].iter().for_each(&mut raise);
    let region = Region::new(GLOBAL);
    attempts[1000..].iter().for_each(&mut raise);
    let stats = region.change();
    let held = stats
        .bytes_allocated
        .saturating_sub(stats.bytes_deallocated)
        / 1000;
    assert_eq!(manager.firing().count(), 2000);
    // Nine sets of one value each were nine trees of room for eleven: 4,867 bytes an alert.
    assert!(held < 2_500, "a firing alert holds {held} bytes: {stats:?}");
}
