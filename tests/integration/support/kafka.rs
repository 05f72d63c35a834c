//! A real Kafka-compatible broker for the scale-out tests: Tansu (Apache-2.0, a Kafka wire
//! protocol broker in Rust, installed with `cargo install` by scripts/setup.sh), started on
//! 127.0.0.1 with an ephemeral port and in-memory storage. Topics are created, records
//! produced and committed offsets read with librdkafka, the client exfilwatch itself uses.
//! `benches/kafka.rs` includes this file too, so it depends on nothing else of the harness.
//!
//! For TLS, stunnel (Debian `stunnel4`) terminates TLS in front of the broker, which
//! advertises stunnel's port: Tansu 0.6's own TLS flags cannot be given together.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use exfilwatch::proto::flow::Flow;
use exfilwatch::proto::observer::GetFlowsResponse;
use exfilwatch::proto::observer::get_flows_response::ResponseTypes;
use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// Upper bound on waiting for the broker to answer.
const GUARD: Duration = Duration::from_secs(20);

const STUNNEL: &str =
    "apt-get install -y --no-install-recommends stunnel4 (scripts/setup.sh does this)";
const INSTALL: &str = "cargo install --locked tansu --version 0.6.0 --root ~/.cache/exfilwatch-tools/tansu-0.6.0 (scripts/setup.sh does this)";

/// The broker binary: `EXFILWATCH_TANSU`, the tool cache scripts/setup.sh fills, or `PATH`.
fn tansu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("EXFILWATCH_TANSU") {
        return path.into();
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let cached = home.join(".cache/exfilwatch-tools/tansu-0.6.0/bin/tansu");
    if cached.exists() {
        return cached;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("tansu"))
        .find(|p| p.exists());
    on_path
        .unwrap_or_else(|| panic!("the Kafka-compatible broker Tansu is not installed: {INSTALL}"))
}

/// A running broker; killed on drop.
pub struct Broker {
    /// `127.0.0.1:port`, for `bootstrap.servers`.
    pub address: String,
    /// The CA file clients trust, when the broker speaks TLS.
    pub ca_file: Option<PathBuf>,
    /// The broker, and stunnel in front of it for TLS.
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

impl Broker {
    /// A broker run by someone else at `address` (librdkafka's own cluster, in the test's
    /// process).
    pub fn at(address: String) -> Broker {
        Broker {
            address,
            ca_file: None,
            children: Vec::new(),
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Starts a broker and waits until it answers metadata requests.
    pub async fn start() -> Broker {
        Broker::start_with(None).await
    }

    /// Starts a broker; with `tls` (the CA's PEM, the broker's certificate and key) it is
    /// reached through TLS only.
    pub async fn start_with(tls: Option<(&str, &(String, String))>) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let mut address = listen.clone();
        let mut ca_file = None;
        let mut children = Vec::new();
        if let Some((ca, (cert, key))) = tls {
            let path = |name: &str| dir.path().join(name);
            std::fs::write(path("ca.crt"), ca).unwrap();
            std::fs::write(path("broker.pem"), format!("{cert}{key}")).unwrap();
            address = format!("127.0.0.1:{}", free_port());
            std::fs::write(
                path("stunnel.conf"),
                format!(
                    "foreground = yes\npid =\noutput = {}\n[kafka]\naccept = {address}\nconnect = {listen}\ncert = {}\n",
                    path("stunnel.log").display(),
                    path("broker.pem").display()
                ),
            )
            .unwrap();
            let stunnel = Command::new("stunnel4")
                .arg(path("stunnel.conf"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start stunnel4 ({e}): {STUNNEL}"));
            children.push(stunnel);
            ca_file = Some(path("ca.crt"));
        }
        let log = std::fs::File::create(dir.path().join("tansu.log")).unwrap();
        let child = Command::new(tansu_binary())
            .arg("broker")
            .arg(format!("--listener-url=tcp://{listen}"))
            .arg(format!("--advertised-listener-url=tcp://{address}"))
            .arg("--storage-engine=memory://tansu/")
            .env(
                "RUST_LOG",
                std::env::var("EXFILWATCH_TANSU_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start Tansu ({e}): {INSTALL}"));
        children.push(child);
        let broker = Broker {
            address,
            ca_file,
            children,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let client = broker.consumer("probe");
            let ready = tokio::task::spawn_blocking(move || {
                client
                    .fetch_metadata(None, Duration::from_millis(500))
                    .is_ok()
            })
            .await
            .unwrap();
            if ready {
                return broker;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Tansu never answered; its log:\n{}",
                broker.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the broker logged so far.
    pub fn log(&self) -> String {
        ["tansu.log", "stunnel.log"]
            .map(|f| std::fs::read_to_string(self._dir.path().join(f)).unwrap_or_default())
            .join("")
    }

    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.address)
            .set("log_level", "3");
        if let Some(ca) = &self.ca_file {
            config
                .set("security.protocol", "ssl")
                .set("ssl.ca.location", ca.display().to_string());
        }
        config
    }

    /// Creates `topic` with `partitions`.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.config().create().unwrap();
        let results = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .unwrap();
        for result in results {
            result.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
        }
    }

    /// A producer that partitions keys as Kafka's Java client does (murmur2).
    pub fn producer(&self) -> FutureProducer {
        self.config()
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .create()
            .unwrap()
    }

    /// A consumer of `group` that joins nothing: for metadata and committed offsets.
    pub fn consumer(&self, group: &str) -> BaseConsumer {
        self.config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap()
    }

    /// The offsets `group` committed for each of `topic`'s `partitions` (absent when none).
    pub async fn committed(&self, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
        let consumer = self.consumer(group);
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut list = TopicPartitionList::new();
            for p in 0..partitions {
                list.add_partition(&topic, p);
            }
            let committed = consumer
                .committed_offsets(list, Duration::from_secs(10))
                .unwrap();
            committed
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect()
        })
        .await
        .unwrap()
    }
}

/// `flow` as a `GetFlowsResponse` in protobuf, as a record's value.
pub fn record(flow: &Flow) -> Vec<u8> {
    GetFlowsResponse {
        node_name: flow.node_name.clone(),
        time: flow.time,
        response_types: Some(ResponseTypes::Flow(flow.clone())),
    }
    .encode_to_vec()
}

/// Sends `value` keyed by `key` to `topic`; the partition and offset it got.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: &[u8],
) -> (i32, i64) {
    let delivery = producer
        .send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
    (delivery.partition, delivery.offset)
}

/// Sends every `(key, value)` to `topic`, thousands in flight at once; where each went, in
/// order.
pub async fn produce_many(
    producer: &FutureProducer,
    topic: &str,
    records: &[(String, Vec<u8>)],
) -> Vec<(i32, i64)> {
    let mut out = Vec::with_capacity(records.len());
    for batch in records.chunks(5_000) {
        let mut pending = Vec::with_capacity(batch.len());
        for (key, value) in batch {
            let record = FutureRecord::to(topic).key(key).payload(value);
            match producer.send_result(record) {
                Ok(delivery) => pending.push(delivery),
                Err((e, _)) => panic!("producing to {topic}: {e}"),
            }
        }
        for delivery in pending {
            let d = delivery
                .await
                .expect("the producer dropped a delivery")
                .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
            out.push((d.partition, d.offset));
        }
    }
    out
}
