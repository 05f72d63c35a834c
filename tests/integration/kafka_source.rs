//! `source: kafka` against a real Kafka-compatible broker (Tansu, see `support::kafka`) and a
//! real Alertmanager: flows produced keyed by namespace are alerted, stored and their offsets
//! committed only once durable; a replica killed before its checkpoint loses nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use exfilwatch::common::clock::now_ns;
use exfilwatch::config::Partitioner;
use exfilwatch::proto::flow::Flow;
use exfilwatch::sim::traffic::TrainingCluster;

use crate::alertmanager::{Alertmanager, Receiver};
use crate::support::kafka::{Broker, produce, produce_many, record};
use crate::support::s3::S3;
use crate::support::service::{RunConfig, Service};
use crate::support::{GUARD, free_port};

const TOPIC: &str = "hubble-flows";
const PARTITIONS: i32 = 4;
const NAMESPACES: [&str; 6] = [
    "ai-training",
    "team-a",
    "team-b",
    "team-c",
    "team-d",
    "team-e",
];
/// Namespaces whose trainers try to exfiltrate.
const ATTACKED: [&str; 2] = ["ai-training", "team-c"];

/// The training job's flows, as if it ran in `namespace`.
fn moved(mut flow: Flow, namespace: &str) -> Flow {
    for endpoint in [flow.source.as_mut(), flow.destination.as_mut()]
        .into_iter()
        .flatten()
    {
        if endpoint.namespace == "ai-training" {
            endpoint.namespace = namespace.into();
        }
    }
    flow
}

/// What was produced: records per namespace, the partition of each namespace, and the end
/// offset of each partition.
#[derive(Debug, Default)]
struct Produced {
    flows: BTreeMap<String, u64>,
    uuids: BTreeSet<String>,
    partition_of: BTreeMap<String, i32>,
    end: BTreeMap<i32, i64>,
}

impl Produced {
    fn note(&mut self, namespace: &str, (partition, offset): (i32, i64), flows: u64) {
        *self.flows.entry(namespace.into()).or_default() += flows;
        let known = self.partition_of.insert(namespace.into(), partition);
        assert!(
            known.is_none_or(|p| p == partition),
            "{namespace} moved partitions"
        );
        let end = self.end.entry(partition).or_default();
        *end = (*end).max(offset + 1);
    }

    fn total(&self) -> u64 {
        self.flows.values().sum()
    }
}

/// Produces `per_namespace` benign flows in every namespace and an exfiltration attempt in
/// each attacked one, as protobuf records keyed by namespace; then a jsonpb record of two
/// lines and a record that is not a flow.
async fn produce_traffic(broker: &Broker, per_namespace: usize, seed: u64) -> Produced {
    let producer = broker.producer();
    let mut cluster = TrainingCluster::new(seed, now_ns(), 1_000_000);
    let mut produced = Produced::default();
    for i in 0..per_namespace * NAMESPACES.len() {
        let namespace = NAMESPACES[i % NAMESPACES.len()];
        let flow = moved(cluster.next_flow(), namespace);
        let at = produce(&producer, TOPIC, namespace, &record(&flow)).await;
        produced.note(namespace, at, 1);
        produced.uuids.insert(flow.uuid);
    }
    for namespace in ATTACKED {
        for flow in cluster.exfiltration_attempt() {
            let flow = moved(flow, namespace);
            let at = produce(&producer, TOPIC, namespace, &record(&flow)).await;
            produced.note(namespace, at, 1);
            produced.uuids.insert(flow.uuid);
        }
    }
    let t = chrono_like(now_ns());
    let line = format!(
        r#"{{"flow":{{"time":"{t}","uuid":"UUID","verdict":"FORWARDED","source":{{"namespace":"team-a","pod_name":"loader-0"}},"destination":{{"namespace":"storage","pod_name":"minio-0"}},"l4":{{"TCP":{{"source_port":40000,"destination_port":9000}}}},"Type":"L3_L4"}},"node_name":"node-1","time":"{t}"}}"#
    );
    let two = format!(
        "{}\n{}\n",
        line.replace("UUID", "4a3b1c2d-0000-4000-8000-000000000001"),
        line.replace("UUID", "4a3b1c2d-0000-4000-8000-000000000002")
    );
    let at = produce(&producer, TOPIC, "team-a", two.as_bytes()).await;
    produced.note("team-a", at, 2);
    for n in 1..=2 {
        produced
            .uuids
            .insert(format!("4a3b1c2d-0000-4000-8000-00000000000{n}"));
    }
    let at = produce(&producer, TOPIC, "team-b", b"{\"flow\": \"not a flow\"}").await;
    produced.note("team-b", at, 0);
    produced
}

/// A broker with the topic, a real Alertmanager and its receiver, and traffic produced:
/// what most tests here start from.
struct Setup {
    broker: Broker,
    _receiver: Receiver,
    am: Alertmanager,
    produced: Produced,
    /// Flows per namespace the history must hold.
    want: BTreeMap<String, u64>,
}

async fn setup(per_namespace: usize, seed: u64) -> Setup {
    let broker = Broker::start().await;
    broker.create_topic(TOPIC, PARTITIONS).await;
    let receiver = Receiver::start().await;
    let am = Alertmanager::start(free_port(), &receiver.url).await;
    let produced = produce_traffic(&broker, per_namespace, seed).await;
    let want = produced
        .flows
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    Setup {
        broker,
        _receiver: receiver,
        am,
        produced,
        want,
    }
}

/// RFC 3339 UTC with nanoseconds, as jsonpb writes timestamps.
fn chrono_like(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A policy-denied rule over every namespace of `namespaces`, beside the shipped pack's
/// others.
fn rules_dir(dir: &std::path::Path, namespaces: &[&str]) -> String {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/default.yaml"))
            .unwrap();
    let watched = format!("names: [{}]", namespaces.join(", "));
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("default.yaml"),
        shipped.replacen("names: [ai-training]", &watched, 1),
    )
    .unwrap();
    rules.display().to_string()
}

fn kafka_config(
    broker: &Broker,
    am: &Alertmanager,
    group: &str,
    commit: &str,
    dir: &std::path::Path,
) -> RunConfig {
    watching(broker, am, group, commit, dir, &NAMESPACES)
}

/// [`kafka_config`] for replicas watching `namespaces`.
fn watching(
    broker: &Broker,
    am: &Alertmanager,
    group: &str,
    commit: &str,
    dir: &std::path::Path,
    namespaces: &[&str],
) -> RunConfig {
    RunConfig::empty()
        .with("source", "kafka")
        .with(
            "kafka",
            &format!(
                "brokers: ['{}']\ntopic: {TOPIC}\ngroup: {group}\ncommit_interval: {commit}\nsession_timeout: 6s",
                broker.address
            ),
        )
        .with("hubble", &format!("namespaces: [{}]", namespaces.join(", ")))
        .with("rules", &format!("dir: {}", rules_dir(dir, namespaces)))
        .with("storage", "dir: {dir}/state")
        .with("alertmanager", &format!("urls: [\"{}\"]", am.url))
        .with("api", "listen: 127.0.0.1:{port}")
}

/// Waits until `group` has committed `want` for `TOPIC`'s `partitions`.
async fn wait_committed(
    broker: &Broker,
    group: &str,
    partitions: i32,
    want: &BTreeMap<i32, i64>,
    log: impl Fn() -> String,
) {
    wait_committed_for(broker, group, partitions, want, GUARD, log).await;
}

/// [`wait_committed`], waiting at most `bound`.
async fn wait_committed_for(
    broker: &Broker,
    group: &str,
    partitions: i32,
    want: &BTreeMap<i32, i64>,
    bound: Duration,
    log: impl Fn() -> String,
) {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let got = broker.committed(group, TOPIC, partitions).await;
        if &got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{group} committed {got:?}, produced up to {want:?}; log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Flows per namespace the service's API holds.
async fn stored(service: &Service) -> BTreeMap<String, u64> {
    let top = service
        .ok("/api/v1/flows/top?by=namespace&since=24h&limit=100")
        .await;
    top["groups"]
        .as_array()
        .unwrap_or_else(|| panic!("{top}"))
        .iter()
        .map(|g| {
            (
                g["key"].as_str().unwrap().to_owned(),
                g["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

async fn wait_stored(service: &Service, want: &BTreeMap<String, u64>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = stored(service).await;
        if &got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stored {got:?}, produced {want:?}; log:\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_flows_are_alerted_stored_and_committed_once_durable() {
    let Setup {
        broker,
        _receiver,
        am,
        produced,
        want,
    } = setup(100, 11).await;
    // The producer (librdkafka's murmur2 partitioner) and exfilwatch agree on where every
    // namespace's flows are.
    for (namespace, partition) in &produced.partition_of {
        assert_eq!(
            Partitioner::Murmur2.partition(namespace.as_bytes(), PARTITIONS),
            Some(*partition),
            "{namespace}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let config = kafka_config(&broker, &am, "replicas", "300ms", dir.path());
    let service = Service::spawn(&config, dir);
    service.ready().await;
    wait_stored(&service, &want).await;
    assert_eq!(
        service.metric("exfilwatch_kafka_bad_records_total").await,
        1
    );
    assert_eq!(
        service.metric("exfilwatch_kafka_records_total").await,
        produced.total() - 2 + 1 + 1,
        "every record read once: the flows, the two-line record, the bad one"
    );
    assert_eq!(
        service.metric("exfilwatch_kafka_assigned_partitions").await,
        PARTITIONS as u64
    );
    assert!(
        service
            .log()
            .contains(&format!("{TOPIC}[{}]@", produced.partition_of["team-b"])),
        "the bad record is reported with its partition and offset:\n{}",
        service.log()
    );

    // Every attacked namespace is alerted in Alertmanager.
    alerted(&am, &ATTACKED).await;

    // Every record is committed once its checkpoint is durable.
    wait_committed(&broker, "replicas", PARTITIONS, &produced.end, || {
        service.log()
    })
    .await;
    // Killed now, a replica finds everything on disk and nothing to read again.
    let dir = service.kill();
    let again = Service::spawn(&config, dir);
    again.ready().await;
    wait_stored(&again, &want).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(again.metric("exfilwatch_kafka_records_total").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_before_its_checkpoint_commits_nothing_and_loses_nothing() {
    let Setup {
        broker,
        _receiver,
        am,
        produced,
        want,
    } = setup(50, 12).await;

    // A checkpoint an hour away: the flows are read and queryable, nothing is durable yet.
    let dir = tempfile::tempdir().unwrap();
    let slow = kafka_config(&broker, &am, "replicas", "1h", dir.path());
    let service = Service::spawn(&slow, dir);
    service.ready().await;
    wait_stored(&service, &want).await;
    let dir = service.kill();
    assert_eq!(
        broker.committed("replicas", TOPIC, PARTITIONS).await,
        BTreeMap::new(),
        "no offset may be committed before its flows are on disk"
    );

    // The next replica reads every record again; the history holds each flow.
    let fast = kafka_config(&broker, &am, "replicas", "300ms", dir.path());
    let again = Service::spawn(&fast, dir);
    again.ready().await;
    wait_stored(&again, &want).await;
    wait_committed(&broker, "replicas", PARTITIONS, &produced.end, || {
        again.log()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_tls_verifies_the_brokers_certificate() {
    let ca = crate::hubble_tls::ca("kafka-ca");
    let broker_cert = crate::hubble_tls::leaf(&ca, &["127.0.0.1", "localhost"]);
    let broker = Broker::start_with(Some((&ca.pem(), &broker_cert))).await;
    broker.create_topic(TOPIC, 1).await;
    let producer = broker.producer();
    let mut cluster = TrainingCluster::new(13, now_ns(), 1_000_000);
    for _ in 0..20 {
        produce(
            &producer,
            TOPIC,
            "ai-training",
            &record(&cluster.next_flow()),
        )
        .await;
    }
    let receiver = Receiver::start().await;
    let am = Alertmanager::start(free_port(), &receiver.url).await;
    let tls = |dir: &std::path::Path, ca_pem: &str| {
        std::fs::write(dir.join("kafka-ca.crt"), ca_pem).unwrap();
        "tls: { ca_file: kafka-ca.crt }"
    };

    // The broker's CA: the flows arrive over TLS.
    let dir = tempfile::tempdir().unwrap();
    let line = tls(dir.path(), &ca.pem());
    let config = kafka_config(&broker, &am, "tls", "300ms", dir.path()).with("kafka", line);
    let service = Service::spawn(&config, dir);
    service.ready().await;
    wait_stored(&service, &BTreeMap::from([("ai-training".to_owned(), 20)])).await;

    // Another CA: the broker's certificate is refused, nothing is read, and the log says why.
    let dir = tempfile::tempdir().unwrap();
    let line = tls(dir.path(), &crate::hubble_tls::ca("other-ca").pem());
    let config = kafka_config(&broker, &am, "tls-wrong", "300ms", dir.path()).with("kafka", line);
    let wrong = Service::spawn(&config, dir);
    let deadline = tokio::time::Instant::now() + GUARD;
    while !wrong.log().contains("certificate verify failed") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no certificate error logged:\n{}",
            wrong.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(wrong.get_raw("/readyz").await.status(), 200);
}

/// The UUIDs of every flow the service's API holds, page by page.
async fn stored_uuids(service: &Service) -> BTreeSet<String> {
    let (uuids, pages) = paged_uuids(service, 1000).await;
    assert_eq!(
        pages.iter().map(Vec::len).sum::<usize>(),
        uuids.len(),
        "no flow twice"
    );
    uuids
}

/// Every flow's UUID through `/flows` pages of `limit`, and the pages (newest first).
async fn paged_uuids(service: &Service, limit: usize) -> (BTreeSet<String>, Vec<Vec<String>>) {
    let mut uuids = BTreeSet::new();
    let mut pages = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = service
            .ok(&format!("/api/v1/flows?since=24h&limit={limit}{cursor}"))
            .await;
        let mut this = Vec::new();
        for flow in page["flows"].as_array().unwrap() {
            let uuid = flow["uuid"].as_str().unwrap().to_owned();
            uuids.insert(uuid.clone());
            this.push(uuid);
        }
        pages.push(this);
        assert!(pages.len() < 10_000, "pages never end");
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return (uuids, pages),
        }
    }
}

/// The partitions a replica holds, from `/healthz`.
async fn partitions(service: &Service) -> BTreeSet<i32> {
    let health = service.ok("/healthz").await;
    health["details"]["kafka"]["partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("{health}"))
        .iter()
        .map(|p| i32::try_from(p.as_i64().unwrap()).unwrap())
        .collect()
}

/// Waits until the replicas hold `want` partitions each, every partition once.
async fn split(replicas: &[&Service], want: &[usize]) -> Vec<BTreeSet<i32>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut held = Vec::new();
        for r in replicas {
            held.push(partitions(r).await);
        }
        let all: BTreeSet<i32> = held.iter().flatten().copied().collect();
        let sizes: Vec<usize> = held.iter().map(BTreeSet::len).collect();
        if sizes == want && all.len() == PARTITIONS as usize {
            return held;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "partitions held: {held:?}; logs:\n{}",
            replicas
                .iter()
                .map(|r| r.log())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until Alertmanager holds a policy-denied alert for each of `namespaces`.
async fn alerted(am: &Alertmanager, namespaces: &[&str]) {
    let want: BTreeSet<String> = namespaces.iter().map(|s| (*s).to_owned()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got: BTreeSet<String> = am
            .alerts()
            .await
            .iter()
            .filter(|a| a["labels"]["alertname"] == "TrainingPodUnexpectedEgress")
            .filter_map(|a| a["labels"]["namespace"].as_str().map(str::to_owned))
            .collect();
        if got == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "alerted {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_split_the_namespaces_each_storing_and_alerting_its_own() {
    let broker = Broker::start().await;
    broker.create_topic(TOPIC, PARTITIONS).await;
    let receiver = Receiver::start().await;
    let am = Alertmanager::start(free_port(), &receiver.url).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Service::spawn(
        &kafka_config(&broker, &am, "pair", "300ms", dir_a.path()),
        dir_a,
    );
    let b = Service::spawn(
        &kafka_config(&broker, &am, "pair", "300ms", dir_b.path()),
        dir_b,
    );
    a.ready().await;
    b.ready().await;
    let held = split(&[&a, &b], &[2, 2]).await;

    // Each replica stores exactly the namespaces whose partitions it holds, every flow of
    // them, and each attack is alerted by the replica that sees it.
    let produced = produce_traffic(&broker, 40, 31).await;
    let mut stored = BTreeSet::new();
    for (replica, partitions) in [(&a, &held[0]), (&b, &held[1])] {
        let want: BTreeMap<String, u64> = produced
            .flows
            .iter()
            .filter(|(ns, n)| **n > 0 && partitions.contains(&produced.partition_of[*ns]))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        assert!(!want.is_empty(), "{partitions:?} carry no namespace");
        wait_stored(replica, &want).await;
        stored.extend(stored_uuids(replica).await);
    }
    assert_eq!(stored, produced.uuids);
    alerted(&am, &ATTACKED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_with_sigterm_commits_what_it_made_durable() {
    let Setup {
        broker,
        _receiver,
        am,
        produced,
        want,
    } = setup(30, 14).await;
    // No checkpoint comes in the hour: the one made at SIGTERM commits everything.
    let dir = tempfile::tempdir().unwrap();
    let config = kafka_config(&broker, &am, "stopping", "1h", dir.path());
    let service = Service::spawn(&config, dir);
    service.ready().await;
    wait_stored(&service, &want).await;
    let (code, output) = service.terminate().await;
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(
        broker.committed("stopping", TOPIC, PARTITIONS).await,
        produced.end
    );
}

/// Replicas whose segments go to one bucket: each replica's API answers for every flow
/// (its own and the others'), a replica joining later too, and an independent engine
/// (pyarrow, reading the bucket as a hive-partitioned parquet dataset) counts what the API
/// counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_bucket_each_answer_for_every_flow() {
    let s3 = S3::start().await;
    let broker = Broker::start().await;
    broker.create_topic(TOPIC, PARTITIONS).await;
    let receiver = Receiver::start().await;
    let am = Alertmanager::start(free_port(), &receiver.url).await;
    let shared = |dir: &std::path::Path, replica: &str| {
        kafka_config(&broker, &am, "shared", "300ms", dir).with(
            "storage",
            &format!(
                "flows:\n  chunk_flows: 1000\n  memory_flows: 1000\n  object_store: {}",
                s3.config(dir, replica)
            ),
        )
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Service::spawn(&shared(dir_a.path(), "replica-a"), dir_a);
    let b = Service::spawn(&shared(dir_b.path(), "replica-b"), dir_b);
    a.ready().await;
    b.ready().await;
    split(&[&a, &b], &[2, 2]).await;

    let produced = produce_traffic(&broker, 400, 51).await;
    let want: BTreeMap<String, u64> = produced
        .flows
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    for replica in [&a, &b] {
        wait_stored(replica, &want).await;
        assert_eq!(stored_uuids(replica).await, produced.uuids);
    }
    alerted(&am, &ATTACKED).await;
    // Pages of a few flows cut through both replicas' segments and memory alike.
    let (uuids, pages) = paged_uuids(&b, 97).await;
    assert_eq!(uuids, produced.uuids);
    assert_eq!(pages.iter().map(Vec::len).sum::<usize>(), uuids.len());
    assert!(b.metric("exfilwatch_bucket_uploads_total").await > 0);
    assert!(b.metric("exfilwatch_bucket_downloads_total").await > 0);
    assert!(!b.log().contains(crate::support::s3::SECRET_KEY));

    // Killed, a replica's flows stay answerable; one joining with an empty disk answers
    // for all of them from the bucket alone.
    drop(a.kill());
    let dir_c = tempfile::tempdir().unwrap();
    let c = Service::spawn(&shared(dir_c.path(), "replica-c"), dir_c);
    c.listening().await;
    wait_stored(&c, &want).await;
    wait_stored(&b, &want).await;

    // DuckDB reads the bucket on its own, as the Delta table it is, and counts the same
    // flows per namespace, from both replicas' files.
    let read = s3.duckdb(
        r#"
counts = dict(con.sql(f"SELECT src_namespace, count(*) FROM {flows} GROUP BY 1").fetchall())
files = [r[0] for r in con.sql(f"SELECT DISTINCT filename FROM {flows}").fetchall()]
replicas = sorted({f.rsplit("/", 1)[1].rsplit("-", 2)[0] for f in files})
print(json.dumps({"counts": counts, "replicas": replicas}))
"#,
    );
    let read: serde_json::Value = serde_json::from_str(&read).unwrap();
    let counts: BTreeMap<String, u64> = read["counts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    assert_eq!(counts, want, "DuckDB's counts of the table");
    assert_eq!(
        read["replicas"],
        serde_json::json!(["replica-a", "replica-b"])
    );
}

/// While the bucket refuses uploads no offset is committed (the flows are on the replica's
/// disk only); once it is back, the next checkpoint uploads them and commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_offset_is_committed_while_the_bucket_refuses_uploads() {
    let mut s3 = S3::start().await;
    let Setup {
        broker,
        _receiver,
        am,
        produced: first,
        want: _,
    } = setup(20, 61).await;
    let dir = tempfile::tempdir().unwrap();
    let config = kafka_config(&broker, &am, "outage", "300ms", dir.path()).with(
        "storage",
        &format!(
            "flows:\n  object_store: {}",
            s3.config(dir.path(), "replica-a")
        ),
    );
    let service = Service::spawn(&config, dir);
    service.ready().await;
    wait_committed(&broker, "outage", PARTITIONS, &first.end, || service.log()).await;

    s3.stop();
    let second = produce_traffic(&broker, 20, 62).await;
    let records = first.total() + second.total();
    let deadline = tokio::time::Instant::now() + GUARD;
    while service.metric("exfilwatch_kafka_records_total").await < records {
        assert!(tokio::time::Instant::now() < deadline, "{}", service.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Several checkpoints come and go meanwhile: every one fails at the bucket.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        broker.committed("outage", TOPIC, PARTITIONS).await,
        first.end
    );
    assert!(service.metric("exfilwatch_bucket_errors_total").await > 0);
    assert_eq!(service.metric("exfilwatch_bucket_pending_uploads").await, 1);
    let health = service.ok("/healthz").await;
    assert_eq!(
        health["details"]["bucket"]["replica"], "replica-a",
        "{health}"
    );
    assert_eq!(
        health["details"]["bucket"]["pending_uploads"], 1,
        "{health}"
    );

    s3.resume().await;
    wait_committed(&broker, "outage", PARTITIONS, &second.end, || service.log()).await;
    assert_eq!(service.metric("exfilwatch_bucket_pending_uploads").await, 0);
    assert!(!service.log().contains(crate::support::s3::SECRET_KEY));
}

/// Failover: a topic of 8 partitions, 3 replicas in one group sharing a
/// bucket, a producer keyed by namespace streaming 12 namespaces with attacks in 4; one
/// replica is SIGKILLed mid-run and another joins. Every attack is alerted in a real
/// Alertmanager, every flow produced is in the history counted through each surviving
/// replica's API, and the group's offsets reach the end.
///
/// The broker is librdkafka's own cluster (its mock brokers, speaking the Kafka protocol on
/// 127.0.0.1, the coordinator librdkafka tests its consumer groups against): Tansu 0.6 never
/// drops a member killed while others heartbeat, so a failover cannot be shown on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_survive_a_sigkill_and_a_join_with_no_alert_or_flow_missing() {
    const SPREAD: [&str; 12] = [
        "ai-training",
        "team-01",
        "team-02",
        "team-03",
        "team-04",
        "team-05",
        "team-06",
        "team-07",
        "team-08",
        "team-09",
        "team-10",
        "team-11",
    ];
    const ATTACKS: [&str; 4] = ["ai-training", "team-03", "team-07", "team-10"];
    const EIGHT: i32 = 8;
    let kafka = rdkafka::mocking::MockCluster::new(3).unwrap();
    kafka.create_topic(TOPIC, EIGHT, 1).unwrap();
    let broker = Broker::at(kafka.bootstrap_servers());
    let s3 = S3::start().await;
    let receiver = Receiver::start().await;
    let am = Alertmanager::start(free_port(), &receiver.url).await;
    let replica = |name: &str| {
        let dir = tempfile::tempdir().unwrap();
        let config = watching(&broker, &am, "scaled", "300ms", dir.path(), &SPREAD).with(
            "storage",
            &format!(
                "flows:\n  chunk_flows: 1000\n  memory_flows: 1000\n  object_store: {}",
                s3.config(dir.path(), name)
            ),
        );
        Service::spawn(&config, dir)
    };
    let (a, b, c) = (
        replica("replica-a"),
        replica("replica-b"),
        replica("replica-c"),
    );
    for r in [&a, &b, &c] {
        r.ready().await;
    }
    holding_all(&[&a, &b, &c], EIGHT).await;

    // The first half of the traffic; replica a is killed while it reads.
    let producer = broker.producer();
    let mut cluster = TrainingCluster::new(71, now_ns(), 1_000_000);
    let mut produced = Produced::default();
    let send = async |flow: Flow, namespace: &str, produced: &mut Produced| {
        let at = produce(&producer, TOPIC, namespace, &record(&flow)).await;
        produced.note(namespace, at, 1);
        produced.uuids.insert(flow.uuid);
    };
    for i in 0..1_200 {
        let namespace = SPREAD[i % SPREAD.len()];
        send(
            moved(cluster.next_flow(), namespace),
            namespace,
            &mut produced,
        )
        .await;
    }
    let deadline = tokio::time::Instant::now() + GUARD;
    while a.metric("exfilwatch_kafka_records_total").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "{}", a.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let held_by_a = partitions(&a).await;
    drop(a.kill());

    // The rest, attacks among it; a fourth replica joins meanwhile.
    let d = replica("replica-d");
    for i in 0..1_200 {
        let namespace = SPREAD[i % SPREAD.len()];
        send(
            moved(cluster.next_flow(), namespace),
            namespace,
            &mut produced,
        )
        .await;
        if i % 300 == 0 {
            for namespace in ATTACKS {
                for flow in cluster.exfiltration_attempt() {
                    send(moved(flow, namespace), namespace, &mut produced).await;
                }
            }
        }
    }

    // The survivors and the newcomer hold every partition, a's among them.
    let held = holding_all(&[&b, &c, &d], EIGHT).await;
    assert!(held_by_a.iter().all(|p| held.contains(p)), "{held_by_a:?}");
    alerted(&am, &ATTACKS).await;
    // Every flow produced is in the history, whichever replica is asked.
    for r in [&b, &c, &d] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (uuids, pages) = paged_uuids(r, 1000).await;
            let missing = produced.uuids.difference(&uuids).count();
            if missing == 0 {
                // At least once: records a read after its last commit are read again by
                // their next owner, so a flow may be stored twice, never not at all.
                assert!(pages.iter().map(Vec::len).sum::<usize>() >= produced.uuids.len());
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{missing} flows missing; log:\n{}",
                r.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    wait_committed(&broker, "scaled", EIGHT, &produced.end, || b.log()).await;
}

/// A rolling restart, as a StatefulSet update does it: each replica in turn is stopped with
/// SIGTERM while flows stream and started again under its pod's name (`kafka.instance_id`,
/// static membership) on its own disk. No partition moves (the group waits for a static member
/// within its session timeout, and cooperative-sticky takes nothing from the others), every
/// flow is in the history, and the duplicates the restarts made are counted: none, since each
/// replica commits what it made durable before it exits and is the one reading on after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_moves_no_partition_and_stores_every_flow_once() {
    const SIX: i32 = 6;
    let broker = Broker::start().await;
    broker.create_topic(TOPIC, SIX).await;
    let s3 = S3::start().await;
    let receiver = Receiver::start().await;
    let am = Alertmanager::start(free_port(), &receiver.url).await;
    let config = |dir: &std::path::Path, name: &str| {
        watching(&broker, &am, "rolling", "300ms", dir, &NAMESPACES)
            .with(
                "kafka",
                &format!("instance_id: {name}\nsession_timeout: 45s"),
            )
            .with(
                "storage",
                &format!(
                    "flows:\n  chunk_flows: 1000\n  memory_flows: 1000\n  object_store: {}",
                    s3.config(dir, name)
                ),
            )
    };
    let names = ["replica-a", "replica-b", "replica-c"];
    let mut replicas: Vec<Service> = names
        .iter()
        .map(|name| {
            let dir = tempfile::tempdir().unwrap();
            Service::spawn(&config(dir.path(), name), dir)
        })
        .collect();
    for r in &replicas {
        r.ready().await;
    }
    holding_all(&replicas.iter().collect::<Vec<_>>(), SIX).await;
    let mut held = Vec::new();
    for r in &replicas {
        held.push(partitions(r).await);
    }

    let producer = broker.producer();
    let mut cluster = TrainingCluster::new(83, now_ns(), 1_000_000);
    let mut produced = Produced::default();
    let mut send = async |n: usize, produced: &mut Produced| {
        for i in 0..n {
            let namespace = NAMESPACES[i % NAMESPACES.len()];
            let flow = moved(cluster.next_flow(), namespace);
            let at = produce(&producer, TOPIC, namespace, &record(&flow)).await;
            produced.note(namespace, at, 1);
            produced.uuids.insert(flow.uuid);
        }
    };
    for (i, name) in names.iter().enumerate() {
        send(600, &mut produced).await;
        let replica = replicas.remove(i);
        let (code, dir) = replica.stop().await;
        assert_eq!(code, Some(0));
        // Its partitions wait for it while it is away; the others read on.
        send(300, &mut produced).await;
        let back = Service::spawn(&config(dir.path(), name), dir);
        back.ready().await;
        replicas.insert(i, back);
        for (r, before) in replicas.iter().zip(&held) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while &partitions(r).await != before {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{before:?} moved; log:\n{}",
                    r.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(
                r.metric("exfilwatch_kafka_revoked_partitions_total").await,
                0,
                "a rebalance took partitions; log:\n{}",
                r.log()
            );
        }
    }
    send(300, &mut produced).await;
    wait_committed(&broker, "rolling", SIX, &produced.end, || replicas[0].log()).await;

    // Every flow once, through any replica (the bucket holds the others').
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (uuids, pages) = loop {
        let (uuids, pages) = paged_uuids(&replicas[1], 1000).await;
        if uuids == produced.uuids {
            break (uuids, pages);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} flows missing",
            produced.uuids.difference(&uuids).count(),
            produced.uuids.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let duplicates = pages.iter().map(Vec::len).sum::<usize>() - uuids.len();
    eprintln!(
        "rolling restart of 3 replicas: {} flows, {duplicates} stored twice",
        uuids.len()
    );
    assert_eq!(duplicates, 0, "flows stored twice by the restarts");
}

/// Flows per namespace, `by` `namespace` from `/flows/top` or `flows` from `/namespaces`.
async fn counts(service: &Service, path: &str) -> BTreeMap<String, u64> {
    let answer = service.ok(path).await;
    let (list, key, count) = match answer.get("groups") {
        Some(groups) => (groups, "key", "count"),
        None => (&answer, "namespace", "flows"),
    };
    list.as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .filter(|g| g[count].as_u64() != Some(0))
        .map(|g| {
            (
                g[key].as_str().unwrap().to_owned(),
                g[count].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Every flow of `namespace` through `/flows` pages of `limit`, by cursor: the UUIDs, and how
/// many flows the pages held.
async fn namespace_pages(
    service: &Service,
    namespace: &str,
    limit: usize,
) -> (BTreeSet<String>, usize) {
    let mut uuids = BTreeSet::new();
    let mut seen = 0;
    let mut cursor = String::new();
    for _ in 0..10_000 {
        let page = service
            .ok(&format!(
                "/api/v1/flows?since=1h&source_namespace={namespace}&limit={limit}{cursor}"
            ))
            .await;
        for flow in page["flows"].as_array().unwrap() {
            assert_eq!(flow["source"]["namespace"], namespace, "{flow}");
            uuids.insert(flow["uuid"].as_str().unwrap().to_owned());
            seen += 1;
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return (uuids, seen),
        }
    }
    panic!("pages never end");
}

/// The scale-out acceptance (issue 41's check): 3 replicas of one group on a 6-partition
/// topic sharing a bucket, `chunk_flows` at its least (1,000: hundreds of files in the table),
/// 300,000 flows over 24 namespaces. Every replica answers `/flows/top?since=1h` and
/// `/namespaces?since=1h` with exact counts and pages a namespace's flows by cursor with none
/// missing or repeated; then one replica is SIGKILLed while 50,000 more flows arrive and
/// comes back (as its StatefulSet restarts it: same name, same disk), and every replica
/// answers the same for all 350,000. DuckDB reads the table and counts what the API counts;
/// flows stored twice (read by the killed replica after its last commit, read again after) are
/// counted, not hidden.
///
/// The broker is Tansu (librdkafka's mock cluster keeps 5 MB a partition: too little here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_answer_exactly_for_350k_flows_across_a_sigkill() {
    const SIX: i32 = 6;
    let spread: Vec<String> = (0..24).map(|i| format!("team-{i:02}")).collect();
    let names: Vec<&str> = spread.iter().map(String::as_str).collect();
    let broker = Broker::start().await;
    broker.create_topic(TOPIC, SIX).await;
    let s3 = S3::start().await;
    let receiver = Receiver::start().await;
    let am = Alertmanager::start(free_port(), &receiver.url).await;
    let replica_in = |dir: tempfile::TempDir, name: &str| {
        let config = watching(&broker, &am, "acceptance", "1s", dir.path(), &names)
            .with(
                "kafka",
                &format!("instance_id: {name}\nsession_timeout: 60s"),
            )
            .with(
                "storage",
                &format!(
                    "flows:\n  chunk_flows: 1000\n  memory_flows: 1000\n  object_store: {}",
                    s3.config(dir.path(), name)
                ),
            );
        Service::spawn(&config, dir)
    };
    let replica = |name: &str| replica_in(tempfile::tempdir().unwrap(), name);
    let (a, b, c) = (
        replica("replica-a"),
        replica("replica-b"),
        replica("replica-c"),
    );
    for r in [&a, &b, &c] {
        r.ready().await;
    }
    holding_all(&[&a, &b, &c], SIX).await;

    // Flows a millisecond apart, ending before now: all within `since=1h`.
    let start = now_ns() - 400 * 1_000_000_000;
    let mut cluster = TrainingCluster::new(97, start, 1_000_000);
    let producer = broker.producer();
    let mut produced = Produced::default();
    let mut batch = async |n: usize, produced: &mut Produced| {
        let mut records = Vec::with_capacity(n);
        for i in 0..n {
            let namespace = names[i % names.len()];
            let flow = moved(cluster.next_flow(), namespace);
            produced.uuids.insert(flow.uuid.clone());
            records.push((namespace.to_owned(), record(&flow)));
        }
        let at = produce_many(&producer, TOPIC, &records).await;
        for ((namespace, _), at) in records.iter().zip(at) {
            produced.note(namespace, at, 1);
        }
    };
    batch(300_000, &mut produced).await;
    // Debug builds read a few thousand flows a second each.
    let bound = Duration::from_secs(600);
    wait_committed_for(&broker, "acceptance", SIX, &produced.end, bound, || a.log()).await;

    let check = async |r: &Service, produced: &Produced, twice: &BTreeMap<String, u64>| {
        let want: BTreeMap<String, u64> = produced
            .flows
            .iter()
            .map(|(ns, n)| (ns.clone(), n + twice.get(ns).copied().unwrap_or(0)))
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let top = counts(r, "/api/v1/flows/top?by=namespace&since=1h&limit=100").await;
            if top == want {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "top {top:?}, want {want:?}; log:\n{}",
                r.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(counts(r, "/api/v1/namespaces?since=1h").await, want);
        // One namespace paged by cursor: every flow, none twice but those stored twice.
        let namespace = names[7];
        let (uuids, seen) = namespace_pages(r, namespace, 1000).await;
        assert_eq!(uuids.len() as u64, produced.flows[namespace]);
        assert_eq!(seen as u64, want[namespace]);
    };
    let none = BTreeMap::new();
    for r in [&a, &b, &c] {
        check(r, &produced, &none).await;
    }

    // a is killed mid-stream and restarted; 50,000 more flows arrive.
    batch(25_000, &mut produced).await;
    let dir = a.kill();
    batch(25_000, &mut produced).await;
    let a = replica_in(dir, "replica-a");
    a.ready().await;
    holding_all(&[&a, &b, &c], SIX).await;
    wait_committed_for(&broker, "acceptance", SIX, &produced.end, bound, || a.log()).await;

    // What DuckDB reads of the table: flows, and flows stored twice, per namespace.
    let read = s3.duckdb(
        r#"
rows = con.sql(f"SELECT src_namespace, count(*), count(DISTINCT (uuid_hi, uuid_lo)) FROM {flows} GROUP BY 1").fetchall()
print(json.dumps({ns: [n, d] for ns, n, d in rows}))
"#,
    );
    let read: BTreeMap<String, (u64, u64)> = serde_json::from_str(&read).unwrap();
    let distinct: BTreeMap<String, u64> = read.iter().map(|(k, v)| (k.clone(), v.1)).collect();
    assert_eq!(
        distinct, produced.flows,
        "DuckDB: each flow produced, in the table"
    );
    let twice: BTreeMap<String, u64> = read
        .iter()
        .filter(|(_, v)| v.0 > v.1)
        .map(|(k, v)| (k.clone(), v.0 - v.1))
        .collect();
    eprintln!(
        "acceptance: {} flows, {} stored twice across the SIGKILL ({twice:?})",
        produced.uuids.len(),
        twice.values().sum::<u64>()
    );
    for r in [&a, &b, &c] {
        check(r, &produced, &twice).await;
    }
}

/// Waits until `replicas` hold all `count` partitions between them, each once; the union.
async fn holding_all(replicas: &[&Service], count: i32) -> BTreeSet<i32> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut held = Vec::new();
        for r in replicas {
            held.push(partitions(r).await);
        }
        let all: BTreeSet<i32> = held.iter().flatten().copied().collect();
        let total: usize = held.iter().map(BTreeSet::len).sum();
        if all.len() == count as usize && total == all.len() && held.iter().all(|h| !h.is_empty()) {
            return all;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "partitions held: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The training job's upload to `fqdn` at `time_ns`, forwarded: what `new_destination`
/// judges.
fn upload_to(cluster: &mut TrainingCluster, fqdn: &str, time_ns: i64) -> Flow {
    let mut flow = cluster
        .exfiltration_attempt()
        .into_iter()
        .find(|f| !f.destination_names.is_empty())
        .unwrap();
    flow.verdict = exfilwatch::proto::flow::Verdict::Forwarded as i32;
    flow.drop_reason = 0;
    flow.drop_reason_desc = 0;
    flow.egress_denied_by.clear();
    flow.destination_names = vec![fqdn.into()];
    flow.time = Some(prost_types::Timestamp {
        seconds: time_ns.div_euclid(1_000_000_000),
        nanos: i32::try_from(time_ns.rem_euclid(1_000_000_000)).unwrap(),
    });
    flow
}

/// `new_destination` alerts in Alertmanager: their destinations.
async fn new_destinations(am: &Alertmanager) -> BTreeSet<String> {
    am.alerts()
        .await
        .iter()
        .filter(|a| a["labels"]["alertname"] == "TrainingPodNewDestination")
        .filter_map(|a| a["labels"]["destination"].as_str().map(str::to_owned))
        .collect()
}

/// A replica taking over a namespace knows the destinations its previous owner learned
/// (uploaded to the bucket with each checkpoint, read at the assignment before its records):
/// a known one stays quiet, a new one alerts at once, without learning the namespace again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_taking_over_a_namespace_knows_what_its_previous_owner_learned() {
    let s3 = S3::start().await;
    let broker = Broker::start().await;
    broker.create_topic(TOPIC, PARTITIONS).await;
    let receiver = Receiver::start().await;
    let am = Alertmanager::start(free_port(), &receiver.url).await;
    let replica = |name: &str| {
        let dir = tempfile::tempdir().unwrap();
        let config = kafka_config(&broker, &am, "handover", "300ms", dir.path()).with(
            "storage",
            &format!("flows:\n  object_store: {}", s3.config(dir.path(), name)),
        );
        // Two seconds of learning (of flow time) instead of a day.
        let rules = dir.path().join("rules/default.yaml");
        let pack = std::fs::read_to_string(&rules).unwrap();
        std::fs::write(&rules, pack.replacen("learning: 1d", "learning: 2s", 1)).unwrap();
        Service::spawn(&config, dir)
    };
    let producer = broker.producer();
    let mut cluster = TrainingCluster::new(81, now_ns(), 1_000_000);
    let t0 = now_ns();
    let second = 1_000_000_000;

    // Two replicas share the partitions; the one holding ai-training's learns three
    // destinations, then alerts a fourth.
    let (a, b) = (replica("replica-a"), replica("replica-b"));
    a.ready().await;
    b.ready().await;
    let held = split(&[&a, &b], &[2, 2]).await;
    let partition = Partitioner::Murmur2
        .partition(b"ai-training", PARTITIONS)
        .unwrap();
    let (owner, heir) = if held[0].contains(&partition) {
        (a, b)
    } else {
        (b, a)
    };
    for (fqdn, at) in [
        ("data-1.example.com", t0),
        ("data-2.example.com", t0),
        ("data-3.example.com", t0 + second),
        ("fresh-4.example.net", t0 + 3 * second),
    ] {
        let flow = upload_to(&mut cluster, fqdn, at);
        produce(&producer, TOPIC, "ai-training", &record(&flow)).await;
    }
    let deadline = tokio::time::Instant::now() + GUARD;
    while new_destinations(&am).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "{}", owner.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        new_destinations(&am).await,
        BTreeSet::from(["fresh-4.example.net".to_owned()])
    );

    // A damaged learned-state object of a third replica: skipped and counted, the rest read.
    object_store::ObjectStoreExt::put(
        &s3.client(),
        &object_store::path::Path::from("state/new_destination/replica-z.json"),
        b"{not json".to_vec().into(),
    )
    .await
    .unwrap();
    // The owner stops; the next flows wait in the topic for the heir, whose first look at
    // the namespace already knows what the owner learned.
    let (code, output) = owner.terminate().await;
    assert_eq!(code, Some(0), "{output}");
    for (fqdn, at) in [
        ("data-1.example.com", t0 + 10 * second),
        ("fresh-5.example.org", t0 + 11 * second),
    ] {
        let flow = upload_to(&mut cluster, fqdn, at);
        produce(&producer, TOPIC, "ai-training", &record(&flow)).await;
    }
    let want = BTreeSet::from([
        "fresh-4.example.net".to_owned(),
        "fresh-5.example.org".to_owned(),
    ]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let got = new_destinations(&am).await;
        if got == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alerted {got:?}; log:\n{}",
            heir.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        heir.metric("exfilwatch_bucket_learned_destinations").await,
        5,
        "the owner's learning start and its four destinations"
    );
    assert!(heir.metric("exfilwatch_bucket_learned_bad_total").await >= 1);
    // The known destination reached a second before the new one raised nothing.
    wait_stored(&heir, &BTreeMap::from([("ai-training".to_owned(), 6)])).await;
    assert_eq!(new_destinations(&am).await, want);
}
