//! The Kafka source's throughput: how many flows per second 1, 2 and 3 replicas of one consumer
//! group take from a topic, each replica on its own thread with a current-thread runtime (one
//! core each where the machine has them), and the same source work as the gRPC end-to-end
//! benchmark of `benches/ingest.rs` (decode, bounded channel, summarising consumer), so the two
//! compare: the difference is the Kafka consumer's overhead.
//!
//! The broker is Tansu on 127.0.0.1 (in-memory storage), sharing the machine's cores with the
//! replicas. The topic has 6 partitions holding Cilium-shaped flows (about 1.25 KB each) as
//! `GetFlowsResponse` protobuf records keyed by 12 namespaces. A run counts from the first
//! flow a replica receives (after the group's join and assignment) to the last.
//!
//! Run: `cargo bench --bench kafka` (`EXFILWATCH_KAFKA_FLOWS` sets the flows, default 300000).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/integration/support/kafka.rs"]
#[allow(dead_code)]
mod kafka;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use exfilwatch::config::KafkaConfig;
use exfilwatch::flow::Event;
use exfilwatch::pipeline::{self, Summary};
use exfilwatch::sim::traffic::{TrainingCluster, cilium_shaped};
use exfilwatch::source::SourceStats;
use exfilwatch::source::kafka::KafkaSource;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "bench-flows";
const PARTITIONS: i32 = 6;
const NAMESPACES: usize = 12;

fn main() {
    let flows: u64 = std::env::var("EXFILWATCH_KAFKA_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let broker = rt.block_on(kafka::Broker::start());
    rt.block_on(broker.create_topic(TOPIC, PARTITIONS));
    let started = Instant::now();
    rt.block_on(produce(&broker, flows));
    println!(
        "produced {flows} Cilium-shaped flows in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!("replicas  flows/s (all)  flows/s per replica  seconds");
    for replicas in 1..=3 {
        let group = format!("bench-{replicas}");
        let (rate, seconds) = consume(&broker.address, &group, replicas, flows);
        println!(
            "{replicas:>8}  {rate:>13.0}  {:>19.0}  {seconds:>7.2}",
            rate / replicas as f64
        );
    }
}

/// Produces `n` flows keyed by namespace, many in flight at once.
async fn produce(broker: &kafka::Broker, n: u64) {
    let producer = broker.producer();
    let mut cluster = TrainingCluster::new(42, exfilwatch::common::clock::now_ns(), 100_000);
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..n {
        let mut flow = cilium_shaped(cluster.next_flow());
        let namespace = format!("team-{}", i as usize % NAMESPACES);
        if let Some(source) = flow.source.as_mut() {
            source.namespace.clone_from(&namespace);
        }
        let value = kafka::record(&flow);
        let producer = producer.clone();
        pending.push(tokio::spawn(async move {
            kafka::produce(&producer, TOPIC, &namespace, &value).await
        }));
        if pending.len() == 10_000 {
            for p in pending.drain(..) {
                p.await.unwrap();
            }
        }
    }
    for p in pending {
        p.await.unwrap();
    }
}

/// `replicas` members of `group`, each on its own thread, until they took `total` flows
/// together; the rate over the time from the first flow to the last, and that time.
fn consume(address: &str, group: &str, replicas: usize, total: u64) -> (f64, f64) {
    let taken = Arc::new(AtomicU64::new(0));
    let first = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let cancel = CancellationToken::new();
    let threads: Vec<_> = (0..replicas)
        .map(|_| {
            let config = KafkaConfig {
                brokers: vec![address.to_owned()],
                topic: TOPIC.into(),
                group: group.into(),
                commit_interval: Duration::from_secs(5),
                ..KafkaConfig::default()
            };
            let (taken, first, cancel) = (taken.clone(), first.clone(), cancel.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(replica(config, total, &taken, &first, cancel));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let seconds = first
        .lock()
        .unwrap()
        .map_or(f64::NAN, |t| t.elapsed().as_secs_f64());
    (total as f64 / seconds, seconds)
}

async fn replica(
    config: KafkaConfig,
    total: u64,
    taken: &AtomicU64,
    first: &std::sync::Mutex<Option<Instant>>,
    cancel: CancellationToken,
) {
    let stats = Arc::new(SourceStats::default());
    let source = KafkaSource::new(config, stats);
    let (tx, mut rx) = mpsc::channel(pipeline::CHANNEL_CAPACITY);
    // Checkpoints are answered at once: this measures the source, not the flow store.
    let (durable_tx, durable) = watch::channel(0);
    let task = tokio::spawn(source.run(tx, durable, cancel.clone()));
    let mut summary = Summary::new(&[]);
    loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { break };
                if let Event::Checkpoint(n) = event {
                    durable_tx.send_replace(n);
                    continue;
                }
                summary.add(&event);
                first.lock().unwrap().get_or_insert_with(Instant::now);
                if taken.fetch_add(1, Ordering::Relaxed) + 1 >= total {
                    cancel.cancel();
                }
            }
            () = cancel.cancelled() => break,
        }
    }
    // Answer the last checkpoint so the source can stop.
    cancel.cancel();
    while let Some(event) = rx.recv().await {
        if let Event::Checkpoint(n) = event {
            durable_tx.send_replace(n);
        }
    }
    task.await.unwrap().unwrap();
}
