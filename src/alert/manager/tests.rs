//! The alert lifecycle's unit tests: the store refusing writes, repeats and quiet, floods.

use super::*;
use crate::flow::Event;
use crate::flow::json::JsonDecoder;
use crate::rules::load_text;

const DENIED: &str = r#"{"flow":{"time":"2026-01-01T00:00:00Z","verdict":"DROPPED","drop_reason_desc":"POLICY_DENIED","traffic_direction":"EGRESS","IP":{"source":"10.0.1.12","destination":"10.0.5.20"},"l4":{"TCP":{"source_port":50000,"destination_port":5432}},"source":{"namespace":"ai-training","pod_name":"w-2"},"destination":{"namespace":"production","pod_name":"db-0"}}}"#;

fn setup() -> (Manager, Store, Arc<Rule>, FlowEvent) {
    let rule = Arc::new(
        load_text(crate::rules::DEFAULT_PACK, "pack")
            .unwrap()
            .remove(0),
    );
    let store = Store::in_memory().unwrap();
    let config = LifecycleConfig {
        targets: vec!["am".into()],
        ..LifecycleConfig::default()
    };
    let manager = Manager::new(
        config,
        store.clone(),
        Arc::new(Notify::new()),
        std::slice::from_ref(&rule),
    )
    .unwrap();
    let Event::Flow(flow) = JsonDecoder::default().decode_line(DENIED).unwrap() else {
        panic!()
    };
    (manager, store, rule, flow)
}

fn db() -> Destination {
    Destination::Workload {
        namespace: "production".into(),
        name: "db-0".into(),
    }
}

/// A denied flow to the database at `now`, counted with 10 samples.
fn hit(
    manager: &mut Manager,
    rule: &Arc<Rule>,
    flow: &FlowEvent,
    now: Instant,
) -> Result<(), StateError> {
    let hit = Hit {
        namespace: "ai-training".into(),
        destination: db(),
        extra: BTreeMap::new(),
        earlier: None,
    };
    manager.hit(rule, hit, flow, 10, now)
}

/// Alerts the state store holds as firing.
fn saved_firing(store: &Store) -> usize {
    crate::alert::saved_firing(store).unwrap().len()
}

#[tokio::test]
async fn an_alert_the_store_could_not_commit_is_kept_and_committed_later() {
    let (mut manager, store, rule, flow) = setup();
    store.refuse_writes(true);
    let now = Instant::now();
    assert!(hit(&mut manager, &rule, &flow, now).is_err());
    assert_eq!(manager.firing().count(), 1, "kept in memory");
    assert!(manager.tick(now).is_err(), "still failing");
    store.refuse_writes(false);
    manager.tick(now).unwrap();
    assert_eq!(saved_firing(&store), 1);
    assert_eq!(store.outbox_depth().unwrap(), 1);
}

#[tokio::test]
async fn a_resolution_the_store_could_not_commit_is_retried() {
    let (mut manager, store, rule, flow) = setup();
    let start = Instant::now();
    hit(&mut manager, &rule, &flow, start).unwrap();
    store.refuse_writes(true);
    let later = start + rule.resolve_after + Duration::from_secs(1);
    assert!(manager.tick(later).is_err());
    assert_eq!(saved_firing(&store), 1, "the store still says firing");
    assert_eq!(manager.firing().count(), 1, "and so does the manager");
    store.refuse_writes(false);
    manager.tick(later).unwrap();
    assert_eq!(saved_firing(&store), 0);
    assert_eq!(manager.firing().count(), 0);
}

#[tokio::test]
async fn repeats_update_one_alert_and_quiet_resolves_it() {
    let (mut manager, store, rule, flow) = setup();
    let start = Instant::now();
    for i in 0..5 {
        hit(&mut manager, &rule, &flow, start + Duration::from_secs(i)).unwrap();
    }
    let alerts: Vec<Alert> = manager.firing().collect();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].context.count, 5);
    // Memory keeps the context; the annotations, rendered from it, are in the store and
    // rendered again when asked.
    assert!(
        manager
            .active
            .values()
            .all(|a| a.alert.annotations.is_empty())
    );
    assert!(
        alerts[0].annotations["summary"].contains("production/db-0"),
        "{:?}",
        alerts[0].annotations
    );
    assert_eq!(alerts[0].labels["destination"], "production/db-0");
    manager
        .tick(start + Duration::from_secs(4) + rule.resolve_after)
        .unwrap();
    assert_eq!(manager.firing().count(), 0);
    assert!(saved_firing(&store) == 0);
}

/// A denied flow to `destination` (a name of its own) at `now`.
fn hit_name(
    manager: &mut Manager,
    rule: &Arc<Rule>,
    flow: &FlowEvent,
    destination: &str,
    now: Instant,
) -> Result<(), StateError> {
    let hit = Hit {
        namespace: "ai-training".into(),
        destination: Destination::Fqdn(destination.into()),
        extra: BTreeMap::new(),
        earlier: None,
    };
    manager.hit(rule, hit, flow, 10, now)
}

#[tokio::test]
async fn past_the_bound_destinations_fold_into_one_roll_up_that_resolves_when_quiet() {
    let (mut manager, store, rule, flow) = setup();
    manager.config.max_firing = 3;
    let start = Instant::now();
    for i in 0..50 {
        hit_name(
            &mut manager,
            &rule,
            &flow,
            &format!("decoy-{i}.example"),
            start,
        )
        .unwrap();
    }
    // A repeat of a folded destination is not a new one; the one that matters repeats.
    hit_name(&mut manager, &rule, &flow, "decoy-10.example", start).unwrap();
    for _ in 0..5 {
        hit_name(&mut manager, &rule, &flow, "real.example", start).unwrap();
    }
    let firing: Vec<Alert> = manager.firing().collect();
    assert_eq!(firing.len(), 4, "three alerts and the roll-up");
    let rollup = firing
        .iter()
        .find(|a| a.labels["alertname"] == rollup::ALERTNAME)
        .unwrap();
    assert_eq!(rollup.labels["rule"], rule.name);
    assert_eq!(rollup.labels["severity"], "critical");
    assert_eq!(rollup.context.count, 53);
    assert_eq!(rollup.context.extra["folded"], "48");
    assert!(
        rollup.annotations["summary"].starts_with("ai-training: 51 denied destinations in 1 min"),
        "{}",
        rollup.annotations["summary"]
    );
    assert!(
        rollup.annotations["top_destinations"].starts_with("real.example ("),
        "{:?}",
        rollup.annotations
    );
    assert!(
        rollup.annotations["runbook_url"].ends_with("/runbooks/ExfilwatchAlertFlood"),
        "{:?}",
        rollup.annotations
    );
    // Its query selects every denied flow of the namespace since the first alert of the flood.
    assert!(!rollup.query.contains("destination"), "{}", rollup.query);
    assert!(
        rollup.query.contains("source_namespace=ai-training"),
        "{}",
        rollup.query
    );
    assert_eq!(
        manager.config.folded.counts(),
        [(rule.name.clone(), "ai-training".into(), 48)]
    );
    // Four alerts in the store, not fifty.
    assert_eq!(saved_firing(&store), 4);
    // A destination alerted on its own before the bound keeps its alert.
    hit_name(&mut manager, &rule, &flow, "decoy-0.example", start).unwrap();
    assert_eq!(manager.firing().count(), 4);
    // Quiet: all resolve, the roll-up with them, and a new destination alerts on its own again.
    manager.tick(start + rule.resolve_after).unwrap();
    assert_eq!(manager.firing().count(), 0);
    assert_eq!(saved_firing(&store), 0);
    hit_name(
        &mut manager,
        &rule,
        &flow,
        "late.example",
        start + rule.resolve_after,
    )
    .unwrap();
    let firing: Vec<Alert> = manager.firing().collect();
    assert_eq!(firing[0].labels["alertname"], rule.name);
}

#[tokio::test]
async fn a_roll_up_resumes_after_a_restart_with_its_count() {
    let (mut manager, store, rule, flow) = setup();
    manager.config.max_firing = 1;
    let start = Instant::now();
    for i in 0..5 {
        hit_name(&mut manager, &rule, &flow, &format!("d{i}.example"), start).unwrap();
    }
    manager.flush(start).unwrap();
    let config = LifecycleConfig {
        max_firing: 1,
        ..LifecycleConfig::default()
    };
    let mut resumed = Manager::new(
        config,
        store.clone(),
        Arc::new(Notify::new()),
        std::slice::from_ref(&rule),
    )
    .unwrap();
    assert_eq!(resumed.firing().count(), 2);
    // The bound still holds, and the roll-up goes on counting.
    hit_name(&mut resumed, &rule, &flow, "d9.example", start).unwrap();
    resumed.flush(start).unwrap();
    let rollup = resumed
        .firing()
        .find(|a| a.labels["alertname"] == rollup::ALERTNAME)
        .unwrap();
    assert_eq!(rollup.context.extra["folded"], "5");
    assert_eq!(resumed.firing().count(), 2);
}

#[tokio::test]
async fn resolved_alerts_are_pruned_after_the_retention() {
    let (mut manager, store, rule, flow) = setup();
    manager.config.retention = Duration::ZERO;
    let start = Instant::now();
    hit(&mut manager, &rule, &flow, start).unwrap();
    manager.tick(start + rule.resolve_after).unwrap();
    assert_eq!(
        crate::alert::saved(&store).unwrap().len(),
        1,
        "resolved, kept"
    );
    // Delivered, and past the retention at the next hourly prune.
    let pending = store.pending("am", 10).unwrap();
    store.delivered("am", &pending).unwrap();
    manager
        .tick(start + rule.resolve_after + PRUNE_EVERY)
        .unwrap();
    assert!(crate::alert::saved(&store).unwrap().is_empty());
}
