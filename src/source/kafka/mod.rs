//! Flows from a Kafka topic, for clusters past what one Relay and one process carry.
//!
//! Records are Hubble flows as the cluster's nodes export them: `GetFlowsResponse` jsonpb
//! lines (Hubble's flow exporter file, shipped by Vector or Fluent Bit; `hubble observe -o
//! jsonpb`) or `GetFlowsResponse` protobuf bytes. The producer keys each record by the source
//! pod's namespace, so every flow of a namespace lands in one partition, and replicas of one
//! consumer group split the topic's partitions between them: each sees every flow of the
//! namespaces it owns, and per-namespace detection stays exact. [`Ownership`] tells which
//! namespaces those are, computing the producer's [`partition`] of each.
//!
//! The client is librdkafka (through `rdkafka`): the consumer group protocol, rebalancing,
//! TLS, SASL and every compression codec producers use, as most Kafka clients in production
//! rely on.
//!
//! Offsets are committed only once what the records did is durable. Every
//! `kafka.commit_interval` the source puts [`Event::Checkpoint`] behind the events it sent;
//! the pipeline commits the alert state (the engine flushes into the outbox) and the flow
//! store writes every flow before it to disk, then reports the checkpoint durable; the offsets
//! read up to it are committed then. A crash re-reads at most the records since the last
//! durable checkpoint: alerts they raise again carry the same labels, and Alertmanager
//! de-duplicates them. A record that cannot be decoded is logged with its partition and
//! offset, counted, and skipped.

pub mod partition;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{SourceStats, StreamState};
use crate::config::{KafkaConfig, Partitioner, RecordFormat, StartOffset};
use crate::flow::Event;
use crate::flow::json::JsonDecoder;
use crate::flow::wire::Decoder;

/// Counters of the Kafka source, beside the flows it counts in [`SourceStats`].
#[derive(Debug, Default)]
pub struct KafkaStats {
    /// Records read (good and bad).
    pub records: AtomicU64,
    /// Records that could not be decoded (also counted as bad messages).
    pub bad_records: AtomicU64,
    /// Offset commits sent, and those the group coordinator refused.
    pub commits: AtomicU64,
    pub commit_errors: AtomicU64,
    /// Partition assignments received.
    pub rebalances: AtomicU64,
    /// Partitions a rebalance took away from this replica.
    pub revoked: AtomicU64,
    /// Partitions assigned now.
    pub partitions: AtomicU64,
}

/// Which of the topic's partitions this replica holds, and so which namespaces it owns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    pub partitions: BTreeSet<i32>,
    /// Partitions of the topic; zero until known.
    pub partition_count: i32,
    pub partitioner: Partitioner,
}

impl Ownership {
    /// Whether the producer puts `namespace`'s flows in a partition this replica holds.
    pub fn owns(&self, namespace: &str) -> bool {
        self.partitioner
            .partition(namespace.as_bytes(), self.partition_count)
            .is_some_and(|p| self.partitions.contains(&p))
    }
}

/// Why the source could not run.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    #[error("kafka: {0}")]
    Client(String),
}

/// librdkafka's callbacks: logs into `tracing`, assignments into a channel.
struct Context {
    topic: String,
    stats: Arc<KafkaStats>,
    assigned: watch::Sender<BTreeSet<i32>>,
    on_assign: Option<OnAssign>,
    /// Durable positions of partitions held, not yet known committed (each partition's
    /// newest): sent again at the next interval when the group refused them (a rebalance in
    /// progress), and committed before a rebalance takes their partition away.
    uncommitted: std::sync::Mutex<BTreeMap<i32, i64>>,
}

impl Context {
    fn uncommitted(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, i64>> {
        self.uncommitted.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Called at each new assignment, before any record of it is read: what a replica needs
/// before it judges the namespaces it takes over (what their previous owner learned).
#[derive(Clone)]
pub struct OnAssign(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for OnAssign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnAssign")
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!("kafka: {facility}: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!("kafka: {facility}: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!("kafka: {facility}: {message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!("kafka: {facility}: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!("kafka: {error}: {reason}");
    }
}

impl ConsumerContext for Context {
    /// Before partitions go to another replica, the positions made durable in them are
    /// committed, so that the next owner reads from there, re-reading only what this replica
    /// read and had not made durable yet. The commit is sent, not awaited: librdkafka sends it
    /// before it leaves the partitions, and a commit awaited inside this callback never
    /// completes when the callback runs within the consumer's close.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let partitions: BTreeSet<i32> = revoked.elements().iter().map(|e| e.partition()).collect();
        self.stats
            .revoked
            .fetch_add(partitions.len() as u64, Ordering::Relaxed);
        let mut uncommitted = self.uncommitted();
        let mut list = TopicPartitionList::new();
        for partition in &partitions {
            if let Some(next) = uncommitted.remove(partition)
                && let Err(e) =
                    list.add_partition_offset(&self.topic, *partition, Offset::Offset(next))
            {
                tracing::warn!("kafka: {e}");
            }
        }
        drop(uncommitted);
        tracing::info!(partitions = ?partitions, "kafka: partitions revoked");
        if list.count() == 0 {
            return;
        }
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = consumer.commit(&list, CommitMode::Async) {
            self.stats.commit_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "kafka: committing the revoked partitions' offsets: {e}; their next owner reads from the last commit"
            );
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Error(e) = rebalance {
            tracing::warn!("kafka: rebalance failed: {e}");
            return;
        }
        let assigned: BTreeSet<i32> = match consumer.assignment() {
            Ok(list) => list.elements().iter().map(|e| e.partition()).collect(),
            Err(e) => {
                tracing::warn!("kafka: reading the assignment: {e}");
                return;
            }
        };
        self.stats.rebalances.fetch_add(1, Ordering::Relaxed);
        self.stats
            .partitions
            .store(assigned.len() as u64, Ordering::Relaxed);
        let gained = matches!(rebalance, Rebalance::Assign(_)) && !assigned.is_empty();
        self.assigned.send_replace(assigned);
        if gained && let Some(hook) = &self.on_assign {
            (hook.0)();
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let mut uncommitted = self.uncommitted();
        for e in offsets.elements() {
            if let (Ok(()), Offset::Offset(done)) = (e.error(), e.offset()) {
                // A newer position made durable meanwhile stays.
                if uncommitted.get(&e.partition()) == Some(&done) {
                    uncommitted.remove(&e.partition());
                }
            }
        }
        drop(uncommitted);
        if let Err(e) = result {
            self.stats.commit_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "kafka: committing offsets of {} partition(s) failed: {e}; sent again at the next interval",
                offsets.count()
            );
        }
    }
}

/// How long a stopping source waits for the consumer to leave the group.
const LEAVE_WAIT: Duration = Duration::from_secs(15);

/// Reads flows from the topic `config` names.
#[derive(Debug)]
pub struct KafkaSource {
    config: KafkaConfig,
    stats: Arc<SourceStats>,
    kafka: Arc<KafkaStats>,
    state: watch::Sender<StreamState>,
    ownership: watch::Sender<Arc<Ownership>>,
    on_assign: Option<OnAssign>,
}

impl KafkaSource {
    pub fn new(config: KafkaConfig, stats: Arc<SourceStats>) -> KafkaSource {
        let ownership = Ownership {
            partitioner: config.partitioner,
            ..Ownership::default()
        };
        KafkaSource {
            config,
            stats,
            kafka: Arc::default(),
            state: watch::Sender::new(StreamState::Connecting),
            ownership: watch::Sender::new(Arc::new(ownership)),
            on_assign: None,
        }
    }

    /// Has `hook` run at each assignment before its records are read. It runs on the
    /// thread polling the consumer, so it may block only briefly.
    pub fn on_assign(&mut self, hook: OnAssign) {
        self.on_assign = Some(hook);
    }

    /// What the source is doing; `Streaming` once partitions are assigned.
    pub fn state(&self) -> watch::Receiver<StreamState> {
        self.state.subscribe()
    }

    /// The partitions (and namespaces) this replica owns, as they change.
    pub fn ownership(&self) -> watch::Receiver<Arc<Ownership>> {
        self.ownership.subscribe()
    }

    pub fn stats(&self) -> Arc<KafkaStats> {
        self.kafka.clone()
    }

    /// The librdkafka settings; holds the SASL password, so it is never logged.
    fn client_config(&self) -> ClientConfig {
        let c = &self.config;
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", c.brokers.join(","))
            .set("group.id", &c.group)
            .set("client.id", &c.client_id)
            // A rebalance moves only the partitions that must move; the others keep being read.
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match c.start {
                    StartOffset::Earliest => "earliest",
                    StartOffset::Latest => "latest",
                },
            )
            .set(
                "session.timeout.ms",
                c.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (c.session_timeout.as_millis() / 5).max(100).to_string(),
            )
            .set("log.connection.close", "false");
        let protocol = match (&c.tls, &c.sasl) {
            (None, None) => "plaintext",
            (Some(_), None) => "ssl",
            (None, Some(_)) => "sasl_plaintext",
            (Some(_), Some(_)) => "sasl_ssl",
        };
        config.set("security.protocol", protocol);
        if let Some(tls) = &c.tls {
            config.set("ssl.ca.location", tls.ca_file.display().to_string());
            if let Some((cert, key)) = &tls.identity {
                config
                    .set("ssl.certificate.location", cert.display().to_string())
                    .set("ssl.key.location", key.display().to_string());
            }
        }
        if let Some(sasl) = &c.sasl {
            config
                .set("sasl.mechanisms", &sasl.mechanism)
                .set("sasl.username", &sasl.username)
                .set("sasl.password", &sasl.password);
        }
        if let Some(id) = &c.instance_id {
            config.set("group.instance.id", id);
        }
        for (key, value) in &c.options {
            config.set(key, value);
        }
        config
    }

    /// Follows the topic until `cancel`, sending events to `tx`; `durable` is the last
    /// checkpoint whose effects the pipeline made durable. At the end, one last checkpoint is
    /// awaited (at most `commit_interval` plus 30 s) and committed.
    pub async fn run(
        self,
        tx: mpsc::Sender<Event>,
        durable: watch::Receiver<u64>,
        cancel: CancellationToken,
    ) -> Result<(), KafkaSourceError> {
        let result = self.follow(&tx, durable, &cancel).await;
        let error = result.as_ref().err().map(ToString::to_string);
        self.state.send_replace(StreamState::Stopped { error });
        result
    }

    async fn follow(
        &self,
        tx: &mpsc::Sender<Event>,
        mut durable: watch::Receiver<u64>,
        cancel: &CancellationToken,
    ) -> Result<(), KafkaSourceError> {
        let (assigned_tx, mut assigned) = watch::channel(BTreeSet::new());
        let context = Context {
            topic: self.config.topic.clone(),
            uncommitted: std::sync::Mutex::default(),
            stats: self.kafka.clone(),
            assigned: assigned_tx,
            on_assign: self.on_assign.clone(),
        };
        let consumer: Arc<StreamConsumer<Context>> = Arc::new(
            self.client_config()
                .create_with_context(context)
                .map_err(|e| KafkaSourceError::Client(e.to_string()))?,
        );
        consumer
            .subscribe(&[&self.config.topic])
            .map_err(|e| KafkaSourceError::Client(e.to_string()))?;
        tracing::info!(
            brokers = %self.config.brokers.join(","),
            topic = %self.config.topic,
            group = %self.config.group,
            instance = self.config.instance_id.as_deref().unwrap_or("(dynamic)"),
            "kafka: consuming"
        );
        let mut reader = Reader::new(self.config.format, &self.config.topic);
        let mut offsets = Offsets::default();
        let mut commit_every = tokio::time::interval(self.config.commit_interval);
        commit_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut messages = consumer.stream();
        // Whether the last read failed; the next record read puts the state back.
        let mut failing = false;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let message = match message {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!("kafka: {e}");
                            self.state.send_replace(StreamState::Retrying { error: e.to_string() });
                            failing = true;
                            continue;
                        }
                    };
                    if failing {
                        failing = false;
                        self.state.send_replace(StreamState::Streaming);
                    }
                    self.kafka.records.fetch_add(1, Ordering::Relaxed);
                    offsets.read(message.partition(), message.offset());
                    let events = reader.decode(message.partition(), message.offset(), message.payload().unwrap_or_default(), &self.stats, &self.kafka);
                    for event in events {
                        self.stats.record(&event);
                        if tx.send(event).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                _ = commit_every.tick() => {
                    if let Some(n) = offsets.checkpoint() && tx.send(Event::Checkpoint(n)).await.is_err() {
                        return Ok(());
                    }
                    self.commit(&consumer, None, CommitMode::Async);
                }
                changed = durable.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let done = *durable.borrow_and_update();
                    self.commit(&consumer, offsets.durable(done), CommitMode::Async);
                }
                changed = assigned.changed() => {
                    if changed.is_ok() {
                        let partitions = assigned.borrow_and_update().clone();
                        self.assigned(&consumer, partitions).await;
                    }
                }
            }
        }
        drop(messages);
        // The last checkpoint: everything read is made durable, then committed (a checkpoint
        // sent before and not durable yet is the last when nothing was read since).
        if let Some(n) = offsets.checkpoint()
            && tx.send(Event::Checkpoint(n)).await.is_err()
        {
            return Ok(());
        }
        if let Some(n) = offsets.last_pending() {
            let wait = self.config.commit_interval + Duration::from_secs(30);
            let reached = tokio::time::timeout(wait, durable.wait_for(|&d| d >= n)).await;
            if matches!(reached, Ok(Ok(_))) {
                self.commit(&consumer, offsets.durable(n), CommitMode::Sync);
            } else {
                tracing::warn!(
                    "kafka: the last flows were not made durable in {wait:?}; their records are read again at the next start"
                );
            }
        }
        // Leaving the group waits for the broker; a broker that never answers must not keep
        // the process from exiting.
        let (left_tx, left) = tokio::sync::oneshot::channel();
        let leaving = std::thread::Builder::new()
            .name("kafka-close".into())
            .spawn(move || {
                drop(consumer);
                let _ = left_tx.send(());
            });
        if leaving.is_ok() && tokio::time::timeout(LEAVE_WAIT, left).await.is_err() {
            tracing::warn!(
                "kafka: leaving the group took over {LEAVE_WAIT:?}; exiting without waiting for it"
            );
        }
        Ok(())
    }

    /// Publishes a new assignment with the topic's partition count.
    async fn assigned(&self, consumer: &Arc<StreamConsumer<Context>>, partitions: BTreeSet<i32>) {
        let topic = self.config.topic.clone();
        let client = consumer.clone();
        let count = tokio::task::spawn_blocking(move || {
            client
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .map(|m| {
                    m.topics()
                        .iter()
                        .find(|t| t.name() == topic)
                        .map_or(0, |t| t.partitions().len())
                })
        })
        .await;
        let partition_count = match count {
            Ok(Ok(n)) => i32::try_from(n).unwrap_or(i32::MAX),
            Ok(Err(e)) => {
                tracing::warn!("kafka: reading the topic's partitions: {e}");
                self.ownership.borrow().partition_count
            }
            Err(_) => return,
        };
        tracing::info!(
            partitions = ?partitions,
            of = partition_count,
            "kafka: partitions assigned"
        );
        self.state.send_replace(StreamState::Streaming);
        self.ownership.send_replace(Arc::new(Ownership {
            partitions,
            partition_count,
            partitioner: self.config.partitioner,
        }));
    }

    /// Commits the durable positions of the partitions still assigned (another replica owns
    /// the rest now): `offsets` newly durable, with those the group has not confirmed yet.
    fn commit(
        &self,
        consumer: &StreamConsumer<Context>,
        offsets: Option<BTreeMap<i32, i64>>,
        mode: CommitMode,
    ) {
        let owned: BTreeSet<i32> = match consumer.assignment() {
            Ok(list) => list.elements().iter().map(|e| e.partition()).collect(),
            Err(_) => return,
        };
        let mut uncommitted = consumer.context().uncommitted();
        for (partition, next) in offsets.into_iter().flatten() {
            if owned.contains(&partition) {
                uncommitted.insert(partition, next);
            }
        }
        let mut list = TopicPartitionList::new();
        for (&partition, &next) in uncommitted.iter().filter(|(p, _)| owned.contains(p)) {
            if let Err(e) =
                list.add_partition_offset(&self.config.topic, partition, Offset::Offset(next))
            {
                tracing::warn!("kafka: {e}");
            }
        }
        drop(uncommitted);
        if list.count() == 0 {
            return;
        }
        self.kafka.commits.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = consumer.commit(&list, mode) {
            self.kafka.commit_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("kafka: committing offsets: {e}");
        }
    }
}

/// The next offset to read of each partition, and the positions at each checkpoint sent.
#[derive(Debug, Default)]
struct Offsets {
    next: BTreeMap<i32, i64>,
    /// Whether records were read since the last checkpoint.
    moved: bool,
    last: u64,
    /// Checkpoints sent and not yet durable, oldest first.
    pending: VecDeque<(u64, BTreeMap<i32, i64>)>,
}

impl Offsets {
    fn read(&mut self, partition: i32, offset: i64) {
        self.next.insert(partition, offset + 1);
        self.moved = true;
    }

    /// A new checkpoint's number, when records were read since the last, or when the last is
    /// still not durable an interval later (making it durable failed: the disk or the bucket
    /// refused), so that the store tries again though no record comes.
    fn checkpoint(&mut self) -> Option<u64> {
        if !self.moved {
            let (_, offsets) = self.pending.pop_back()?;
            self.last += 1;
            self.pending.push_back((self.last, offsets));
            return Some(self.last);
        }
        self.moved = false;
        self.last += 1;
        self.pending.push_back((self.last, self.next.clone()));
        Some(self.last)
    }

    /// The newest checkpoint sent and not durable yet.
    fn last_pending(&self) -> Option<u64> {
        self.pending.back().map(|(n, _)| *n)
    }

    /// The positions to commit now that checkpoint `done` is durable.
    fn durable(&mut self, done: u64) -> Option<BTreeMap<i32, i64>> {
        let mut latest = None;
        while self.pending.front().is_some_and(|(n, _)| *n <= done) {
            latest = self.pending.pop_front().map(|(_, offsets)| offsets);
        }
        latest
    }
}

/// Decodes records into events; reports and counts the ones that cannot be.
#[derive(Debug)]
struct Reader {
    format: RecordFormat,
    topic: String,
    json: JsonDecoder,
    wire: Decoder,
    /// The events of the record being read; one buffer for every record.
    events: Vec<Event>,
}

impl Reader {
    fn new(format: RecordFormat, topic: &str) -> Reader {
        Reader {
            format,
            topic: topic.to_owned(),
            json: JsonDecoder::default(),
            wire: Decoder::default(),
            events: Vec::new(),
        }
    }

    fn decode(
        &mut self,
        partition: i32,
        offset: i64,
        payload: &[u8],
        stats: &SourceStats,
        kafka: &KafkaStats,
    ) -> std::vec::Drain<'_, Event> {
        let events = &mut self.events;
        events.clear();
        let jsonpb = match self.format {
            RecordFormat::Jsonpb => true,
            RecordFormat::Protobuf => false,
            RecordFormat::Auto => payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
        };
        let result: Result<(), String> = if jsonpb {
            match std::str::from_utf8(payload) {
                Ok(text) => text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                    .try_for_each(|(i, line)| {
                        let event = self
                            .json
                            .decode_line(line.trim())
                            .map_err(|e| format!("line {}: {e}", i + 1))?;
                        events.push(event);
                        Ok(())
                    }),
                Err(e) => Err(format!("invalid UTF-8 at byte {}", e.valid_up_to())),
            }
        } else {
            match self.wire.decode_response(payload) {
                Ok(event) => {
                    events.extend(event);
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        };
        if let Err(reason) = result {
            stats.bad_messages.fetch_add(1, Ordering::Relaxed);
            kafka.bad_records.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "kafka: {}[{partition}]@{offset}: record skipped: {}",
                self.topic,
                reason.escape_debug()
            );
            // A record is whole or nothing: its good lines are not half-applied.
            self.events.clear();
        }
        self.events.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_commit_only_what_a_durable_checkpoint_covers() {
        let mut o = Offsets::default();
        assert_eq!(o.checkpoint(), None, "nothing read, nothing to checkpoint");
        o.read(0, 10);
        o.read(3, 7);
        let first = o.checkpoint().unwrap();
        o.read(0, 11);
        let second = o.checkpoint().unwrap();
        o.read(3, 8);
        assert_eq!(o.durable(0), None);
        assert_eq!(o.durable(first), Some(BTreeMap::from([(0, 11), (3, 8)])));
        assert_eq!(o.durable(first), None, "committed once");
        assert_eq!(o.durable(second), Some(BTreeMap::from([(0, 12), (3, 8)])));
        // Offset 8 of partition 3 is in no durable checkpoint yet.
        let third = o.checkpoint().unwrap();
        assert_eq!(o.durable(third), Some(BTreeMap::from([(0, 12), (3, 9)])));
        assert_eq!(o.checkpoint(), None, "everything durable, nothing read");

        // A checkpoint that did not become durable (the store failed) is sent again an
        // interval later though nothing was read, under a new number, for the same offsets.
        o.read(0, 12);
        let failed = o.checkpoint().unwrap();
        let again = o.checkpoint().unwrap();
        assert!(again > failed);
        assert_eq!(o.pending.len(), 1, "retries do not pile up");
        assert_eq!(o.durable(again), Some(BTreeMap::from([(0, 13), (3, 9)])));
        assert_eq!(o.checkpoint(), None);
    }

    #[test]
    fn ownership_follows_the_producers_partitioner() {
        let partitioner = Partitioner::Murmur2;
        let p = partitioner.partition(b"ai-training", 8).unwrap();
        let mine = Ownership {
            partitions: BTreeSet::from([p]),
            partition_count: 8,
            partitioner,
        };
        assert!(mine.owns("ai-training"));
        let theirs = Ownership {
            partitions: (0..8).filter(|&q| q != p).collect(),
            ..mine.clone()
        };
        assert!(!theirs.owns("ai-training"));
        assert!(
            !Ownership::default().owns("ai-training"),
            "unknown partition count"
        );
    }

    #[test]
    fn records_decode_in_both_formats_and_bad_ones_are_counted_whole() {
        let stats = SourceStats::default();
        let kafka = KafkaStats::default();
        let mut reader = Reader::new(RecordFormat::Auto, "flows");
        let line = r#"{"flow":{"time":"2026-11-30T10:00:00Z","verdict":"DROPPED","drop_reason_desc":"POLICY_DENIED","source":{"namespace":"ai-training","pod_name":"trainer-0"},"destination":{"namespace":"prod","pod_name":"db-0"},"l4":{"TCP":{"destination_port":5432}}}}"#;
        let two = format!("{line}\n\n{line}\n");
        assert_eq!(reader.decode(0, 1, two.as_bytes(), &stats, &kafka).len(), 2);
        let half = format!("{line}\n{{\"flow\": 7}}\n");
        assert_eq!(
            reader.decode(0, 2, half.as_bytes(), &stats, &kafka).len(),
            0
        );
        assert_eq!(
            reader
                .decode(0, 3, b"\xff\x00garbage", &stats, &kafka)
                .len(),
            0
        );
        // The buffer is the reader's: a record after a bad one decodes whole.
        assert_eq!(
            reader.decode(0, 4, line.as_bytes(), &stats, &kafka).len(),
            1
        );
        assert_eq!(kafka.bad_records.load(Ordering::Relaxed), 2);
        assert_eq!(stats.bad_messages.load(Ordering::Relaxed), 2);
    }
}
