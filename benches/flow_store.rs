//! The flow store: ingest rate, bytes per stored flow, and REST query latency over 1 million
//! stored flows.
//!
//! Flows: the simulator's training namespace with its exfiltration attempts, widened to a
//! realistic spread (2,000 source pods, 50,000 external addresses, random ports) so the
//! per-chunk dictionaries hold what a busy cluster gives them; in the simulator's shape and
//! Cilium-shaped (`sim::traffic::cilium_shaped`), ingest and bytes per flow for both.
//!
//! - ingest: `FlowSink::push` (what the pipeline pays per flow) for 1M flows, kept within
//!   100,000 flows of the writer thread, until it has appended all of them; median of 3
//!   fresh stores.
//! - bytes per flow: the store's own accounting of its memory for 1M flows (reserved
//!   capacity included), checked against the growth of the process's resident set while the
//!   first store filled.
//! - query latency: the real axum API on loopback, a reqwest client; 300 requests for each
//!   query over the 1M flows in memory; p50 and p99.
//!
//! - pages over segments on disk: the Cilium-shaped flows again, in a store keeping one
//!   chunk in memory and the rest as parquet segments; `FlowStore::list` (what `/flows`
//!   runs) for a page whose filter matches in most segments but rarely (each page reads
//!   every segment): 50 filters asked once each (a different pod each), then one filter
//!   asked 50 times (from the second page on, the segments' matching rows are kept); and a
//!   filter asked 50 times; p50 and p99, and how many segments a page read column-first,
//!   whole, or took from the rows kept. Filters with `verdict=DROPPED` are answered from the
//!   segments' unforwarded flows; 50 pods asked once each without it read segments
//!   column-first.
//!
//! Run: `cargo bench --bench flow_store`; see the README for the figures.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use exfilwatch::api::{self, metrics::Telemetry};
use exfilwatch::config::ApiConfig;
use exfilwatch::config::FlowStoreConfig;
use exfilwatch::flow::FlowEvent;
use exfilwatch::flow::wire::Decoder;
use exfilwatch::flowstore::{FlowSink, FlowStore};
use exfilwatch::proto::flow::Flow;
use exfilwatch::sim::traffic::TrainingCluster;
use exfilwatch::source::StreamState;
use exfilwatch::state::Store;
use tokio::time::Instant;

const FLOWS: usize = 1_000_000;

/// The two flow shapes: the simulator's (about 600 bytes on the wire) and Cilium-shaped
/// (about 1.25 KB: labels, services, node labels). The store keeps the same columns of both;
/// queries run on the Cilium-shaped store.
const SHAPES: [&str; 2] = ["simulator", "cilium-shaped"];

fn flows(shape: &str) -> Vec<FlowEvent> {
    let mut cluster = TrainingCluster::new(
        11,
        exfilwatch::common::clock::now_ns() - 3_600_000_000_000,
        3_000_000,
    );
    let mut rng = fastrand::Rng::with_seed(5);
    let mut decoder = Decoder::default();
    let mut out = Vec::with_capacity(FLOWS);
    let mut flow = |f: Flow, rng: &mut fastrand::Rng| {
        let mut f = f;
        if let Some(src) = &mut f.source
            && !src.pod_name.is_empty()
        {
            src.pod_name = format!("{}-{}", src.pod_name, rng.u32(0..2_000));
        }
        if rng.u8(0..5) == 0
            && let Some(ip) = &mut f.ip
        {
            let n = rng.u32(0..50_000);
            ip.destination = format!("198.18.{}.{}", n / 256, n % 256);
        }
        if shape == "cilium-shaped" {
            f = exfilwatch::sim::traffic::cilium_shaped(f);
        }
        exfilwatch::sim::received(&mut decoder, f).expect("the simulator's flows decode")
    };
    while out.len() < FLOWS {
        if out.len() % 200 == 199 {
            for f in cluster.exfiltration_attempt() {
                out.push(flow(f, &mut rng));
            }
        } else {
            out.push(flow(cluster.next_flow(), &mut rng));
        }
    }
    out.truncate(FLOWS);
    out
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

fn config() -> FlowStoreConfig {
    FlowStoreConfig {
        memory_flows: 4_000_000,
        memory_bytes: 4 << 30,
        flush_interval: Duration::from_millis(20),
        ..FlowStoreConfig::default()
    }
}

/// Pushes every flow through a sink and waits for the writer; returns the store and seconds.
fn ingest(flows: &[FlowEvent]) -> (Arc<FlowStore>, f64) {
    let store = FlowStore::in_memory(config());
    let (sink, writer) = FlowSink::start(store.clone());
    let started = Instant::now();
    let stats = &store.stats;
    for (i, f) in flows.iter().enumerate() {
        sink.push(f);
        // The sink drops flows rather than make the pipeline wait; to measure what the writer
        // sustains, stay within 100,000 flows of it.
        if i % 10_000 == 0 {
            while stats.appended.load(Ordering::Relaxed) + 100_000 < i as u64 {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }
    while stats.appended.load(Ordering::Relaxed) + stats.dropped.load(Ordering::Relaxed)
        < flows.len() as u64
    {
        std::thread::sleep(Duration::from_micros(200));
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(
        store.stats.dropped.load(Ordering::Relaxed),
        0,
        "flows dropped"
    );
    sink.close();
    writer.join().unwrap();
    (store, seconds)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    exfilwatch::common::http::install_crypto();
    if std::env::args().any(|a| a == "disk") {
        // `cargo bench --bench flow_store -- disk`: the pages over segments only.
        on_disk(&flows("cilium-shaped"));
        return;
    }
    let mut stored = None;
    for shape in SHAPES {
        println!("generating {FLOWS} {shape} flows ...");
        let flows = flows(shape);
        let before = rss_bytes();
        let (store, _) = ingest(&flows);
        let after = rss_bytes();
        let accounted = store.stats.memory_bytes.load(Ordering::Relaxed);
        println!(
            "{shape}: bytes per stored flow: {:.1} by the store's accounting, {:.1} by resident-set growth",
            accounted as f64 / FLOWS as f64,
            after.saturating_sub(before) as f64 / FLOWS as f64
        );
        let mut rates = Vec::new();
        for _ in 0..3 {
            let (_, seconds) = ingest(&flows);
            rates.push(FLOWS as f64 / seconds);
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "{shape}: ingest into the store: median {:.0} flows/s (runs: {})",
            rates[1],
            rates
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        stored = Some(store);
    }
    let store = stored.unwrap();
    on_disk(&flows("cilium-shaped"));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let api_config = ApiConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            external_url: String::new(),
            ..ApiConfig::default()
        };
        let alerts = Store::in_memory().unwrap();
        let telemetry = Arc::new(Telemetry {
            source: Default::default(),
            delivery: Default::default(),
            store: alerts.clone(),
            egress: None,
            flows: Some(store.clone()),
            query_latency: api::metrics::query_histogram(),
            bad_requests: Default::default(),
            http: Default::default(),
            denied: Default::default(),
            reload: None,
            kafka: None,
        });
        let (_tx, stream) = tokio::sync::watch::channel(StreamState::Streaming);
        let mut state = api::prepare(&api_config, telemetry, stream, None).unwrap();
        // An alert for the console's alert page: the denied flows of the training namespace.
        let alert = exfilwatch::alert::Alert {
            fingerprint: "0123456789abcdef".into(),
            rule: "TrainingPodUnexpectedEgress".into(),
            labels: [
                ("alertname", "TrainingPodUnexpectedEgress"),
                ("namespace", "ai-training"),
                ("severity", "critical"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            annotations: Default::default(),
            context: Default::default(),
            status: exfilwatch::alert::Status::Firing,
            starts_at_ns: 1,
            ends_at_ns: i64::MAX / 2,
            generator_url: String::new(),
            query: "source_namespace=ai-training&verdict=DROPPED&since=2025-01-01T00:00:00Z".into(),
        };
        exfilwatch::alert::save(&alerts, &alert, &[]).unwrap();
        state.flows = Some(store);
        state.alerts = Some(alerts);
        state.watched = vec!["ai-training".into()];
        let listener = api::bind(&api_config).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(api::serve(listener, state, api_config, stop.clone()));
        let client = reqwest::Client::new();
        println!("query latency over {FLOWS} stored flows (300 requests each):");
        for path in [
            "/api/v1/flows?source_namespace=ai-training&verdict=DROPPED&limit=100",
            "/api/v1/flows?destination_port=443&fqdn=amazonaws.com&limit=100",
            "/api/v1/flows?cidr=198.18.0.0%2F16&pod=llm-pretrain-worker-2&limit=1000",
            "/api/v1/flows?destination_port=5432&verdict=DROPPED&limit=1000",
            "/api/v1/flows/top?by=destination&verdict=DROPPED",
            "/api/v1/flows/top?by=destination",
            "/api/v1/flows/top?by=source&since=30m",
            "/ui/",
            "/ui/alerts/0123456789abcdef",
            "/ui/namespaces",
            "/ui/flows?verdict=DROPPED&since=2025-01-01T00:00:00Z",
        ] {
            let mut ms = Vec::with_capacity(300);
            for i in 0..310 {
                let started = Instant::now();
                let r = client.get(format!("{base}{path}")).send().await.unwrap();
                assert_eq!(r.status(), 200, "{path}");
                let body = r.bytes().await.unwrap();
                assert!(body.len() > 20, "{path}");
                if i >= 10 {
                    ms.push(started.elapsed().as_secs_f64() * 1000.0);
                }
            }
            ms.sort_by(f64::total_cmp);
            let weight = if path.starts_with("/ui/") {
                let page = client.get(format!("{base}{path}")).send().await.unwrap();
                let css = client
                    .get(format!("{base}/ui/console.css"))
                    .send()
                    .await
                    .unwrap();
                let bytes = page.bytes().await.unwrap().len() + css.bytes().await.unwrap().len();
                format!(", {:.1} KB with its stylesheet", bytes as f64 / 1000.0)
            } else {
                String::new()
            };
            println!(
                "  {path}: p50 {:.1} ms, p99 {:.1} ms{weight}",
                percentile(&ms, 0.5),
                percentile(&ms, 0.99)
            );
        }
        stop.cancel();
    });
}

/// `/flows` pages over parquet segments: the filtered columns are read first, the rest of a
/// segment only around its matches.
fn on_disk(flows: &[FlowEvent]) {
    let dir = tempfile::tempdir().unwrap();
    let store = FlowStore::open(FlowStoreConfig {
        memory_flows: 65_536,
        memory_bytes: 1 << 30,
        disk_bytes: 4 << 30,
        dir: Some(dir.path().into()),
        retention: Duration::from_secs(7 * 86_400),
        ..FlowStoreConfig::default()
    })
    .unwrap();
    let (sink, writer) = FlowSink::start(store.clone());
    let sink = sink.lossless();
    for f in flows {
        sink.push(f);
    }
    sink.close();
    writer.join().unwrap();
    let segments = store.stats.segments.load(Ordering::Relaxed);
    // Pods with a 4-digit suffix: their names are no other pod's prefix.
    let denied = flows
        .iter()
        .find(|f| f.verdict == exfilwatch::flow::Verdict::Dropped)
        .unwrap();
    let stem = denied.source.pod.to_string();
    let stem = stem.rsplit_once('-').unwrap().0.to_owned();
    let pods: Vec<String> = (1234..1284).map(|n| format!("{stem}-{n}")).collect();
    let rare = flows
        .iter()
        .filter(|f| {
            f.verdict == exfilwatch::flow::Verdict::Dropped && f.source.pod.starts_with(&pods[0])
        })
        .count();
    println!(
        "pages over {} flows on disk in {segments} segments (one chunk of 65,536 in memory), 50 pages each:",
        flows.len() - 65_536
    );
    let filter = |params: &[(&str, &str)]| {
        let mut filter = exfilwatch::flowstore::Filter::default();
        for (k, v) in params {
            filter.set(k, v, 0).unwrap();
        }
        filter
    };
    let by_pod = |pod: &str| filter(&[("source_pod", pod), ("verdict", "DROPPED")]);
    let namespace = filter(&[("source_namespace", "ai-training"), ("verdict", "DROPPED")]);
    // First asked: a different pod each page, so no page finds the rows an earlier one kept.
    let first: Vec<_> = pods.iter().map(|p| by_pod(p)).collect();
    let again: Vec<_> = (0..50).map(|_| by_pod(&pods[0])).collect();
    // Any verdict: no segment's unforwarded flows answer, so each segment is read column-first
    // and the rest of its columns taken around the pod's flows, spread over all of it.
    let any_verdict: Vec<_> = pods.iter().map(|p| filter(&[("source_pod", p)])).collect();
    let cases = [
        (
            format!(
                "source_pod={{one of 50 pods}}&verdict=DROPPED (about {rare} flows each), each pod first asked"
            ),
            first,
        ),
        (
            "source_pod={one of 50 pods}, any verdict, each pod first asked".to_owned(),
            any_verdict,
        ),
        (
            format!(
                "source_pod={}&verdict=DROPPED ({rare} flows), asked again",
                pods[0]
            ),
            again,
        ),
        (
            "source_namespace=ai-training&verdict=DROPPED, first asked then again".to_owned(),
            vec![namespace; 50],
        ),
    ];
    for (name, filters) in cases {
        let stats = &store.stats;
        let reads = || {
            (
                stats.segment_filtered_reads.load(Ordering::Relaxed),
                stats.segment_reads.load(Ordering::Relaxed),
                stats.match_cache_hits.load(Ordering::Relaxed),
            )
        };
        let before = reads();
        let mut ms = Vec::with_capacity(50);
        let mut rows = 0;
        for filter in &filters {
            let started = Instant::now();
            let page = store.list(filter, None, 100).unwrap();
            ms.push(started.elapsed().as_secs_f64() * 1000.0);
            rows = page.flows.len();
        }
        let after = reads();
        let first_ms = ms[0];
        ms.sort_by(f64::total_cmp);
        let n = filters.len() as f64;
        println!(
            "  {name}, limit=100: {rows} rows; first page {first_ms:.1} ms, p50 {:.1} ms, p99 {:.1} ms; per page {:.1} segments read column-first, {:.1} whole, {:.1} from kept rows",
            percentile(&ms, 0.5),
            percentile(&ms, 0.99),
            (after.0 - before.0) as f64 / n,
            (after.1 - before.1) as f64 / n,
            (after.2 - before.2) as f64 / n,
        );
    }
}
