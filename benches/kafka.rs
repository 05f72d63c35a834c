//! The Kafka source's throughput: how many flows per second 1, 2 and 3 replicas of one consumer
//! group take from a topic, each replica on its own thread with a current-thread runtime (one
//! core each where the machine has them), and the same source work as the gRPC end-to-end
//! benchmark of `benches/ingest.rs` (decode, bounded channel, summarising consumer), so the two
//! compare: the difference is the Kafka consumer's overhead.
//!
//! The broker is Tansu on 127.0.0.1 (in-memory storage), sharing the machine's cores with the
//! replicas and the producer. For each replica count a fresh topic of 6 partitions is made,
//! the replicas join one group and wait until they share the partitions (a rebalance is not
//! what this measures), then a producer thread sends Cilium-shaped flows (about 1.25 KB each)
//! as `GetFlowsResponse` protobuf records keyed by 12 namespaces, while the replicas take
//! them. A run counts from the first flow a replica receives to the last.
//!
//! With `EXFILWATCH_KAFKA_PREFILL=1` the topic is filled before the replicas start (no producer
//! competing for the cores): they join and take from a full topic, so the figure for 2 and 3
//! replicas includes the group's settling while the first reads.
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
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
    let prefill = std::env::var("EXFILWATCH_KAFKA_PREFILL").is_ok_and(|v| v == "1");
    let records = Arc::new(records(flows));
    println!(
        "replicas  flows/s (all)  flows/s per replica  seconds  ({})",
        if prefill {
            "topic filled beforehand"
        } else {
            "produced meanwhile"
        }
    );
    for replicas in 1..=3 {
        let topic = format!("bench-flows-{replicas}");
        rt.block_on(broker.create_topic(&topic, PARTITIONS));
        if prefill {
            produce(&broker.address, &topic, &records);
        }
        let (rate, seconds) = consume(&broker, &topic, replicas, &records, prefill);
        println!(
            "{replicas:>8}  {rate:>13.0}  {:>19.0}  {seconds:>7.2}",
            rate / replicas as f64
        );
    }
}

/// `n` Cilium-shaped flows as (namespace, record) pairs.
fn records(n: u64) -> Vec<(String, Vec<u8>)> {
    let mut cluster = TrainingCluster::new(42, exfilwatch::common::clock::now_ns(), 100_000);
    (0..n)
        .map(|i| {
            let mut flow = cilium_shaped(cluster.next_flow());
            let namespace = format!("team-{}", i as usize % NAMESPACES);
            if let Some(source) = flow.source.as_mut() {
                source.namespace.clone_from(&namespace);
            }
            (namespace, kafka::record(&flow))
        })
        .collect()
}

/// Produces `records` from a thread of their own, through librdkafka's producer thread.
fn produce(address: &str, topic: &str, records: &[(String, Vec<u8>)]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", address)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    for (key, value) in records {
        let mut record = BaseRecord::to(topic)
            .key(key.as_str())
            .payload(value.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// `replicas` members of one group, each on its own thread: once they share the topic's
/// partitions, `records` are produced (unless the topic holds them already: `prefilled`), and
/// the replicas take them. The rate over the time from the first flow a replica receives to
/// the last, and that time.
fn consume(
    broker: &kafka::Broker,
    topic: &str,
    replicas: usize,
    records: &Arc<Vec<(String, Vec<u8>)>>,
    prefilled: bool,
) -> (f64, f64) {
    let total = records.len() as u64;
    let taken = Arc::new(AtomicU64::new(0));
    let first = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let cancel = CancellationToken::new();
    let mut owned = Vec::new();
    let threads: Vec<_> = (0..replicas)
        .map(|_| {
            let config = KafkaConfig {
                brokers: vec![broker.address.clone()],
                topic: topic.to_owned(),
                group: format!("{topic}-group"),
                commit_interval: Duration::from_secs(5),
                options: options(),
                ..KafkaConfig::default()
            };
            let source = KafkaSource::new(config, Arc::new(SourceStats::default()));
            owned.push(source.ownership());
            let (taken, first, cancel) = (taken.clone(), first.clone(), cancel.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(replica(source, total, &taken, &first, cancel));
            })
        })
        .collect();
    // The group settles first: a rebalance is not what this measures.
    if !prefilled {
        loop {
            let held: Vec<usize> = owned.iter().map(|o| o.borrow().partitions.len()).collect();
            if held.iter().all(|&n| n > 0) && held.iter().sum::<usize>() == PARTITIONS as usize {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let (address, topic_name, all) = (broker.address.clone(), topic.to_owned(), records.clone());
    let producer =
        (!prefilled).then(|| std::thread::spawn(move || produce(&address, &topic_name, &all)));
    for t in threads {
        t.join().unwrap();
    }
    if let Some(p) = producer {
        p.join().unwrap();
    }
    let seconds = first
        .lock()
        .unwrap()
        .map_or(f64::NAN, |t| t.elapsed().as_secs_f64());
    (total as f64 / seconds, seconds)
}

/// librdkafka properties from `EXFILWATCH_KAFKA_OPTIONS` (`key=value,key=value`), to try
/// tunings. By default a fetch waits at most 10 ms: Tansu answers a fetch when its wait
/// expires even with records at hand, and librdkafka's 500 ms default then caps a replica at
/// about 15,000 flows/s, which measures the broker, not exfilwatch.
fn options() -> std::collections::BTreeMap<String, String> {
    std::env::var("EXFILWATCH_KAFKA_OPTIONS")
        .unwrap_or_else(|_| "fetch.wait.max.ms=10".into())
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

async fn replica(
    source: KafkaSource,
    total: u64,
    taken: &AtomicU64,
    first: &std::sync::Mutex<Option<Instant>>,
    cancel: CancellationToken,
) {
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
