//! Soak: `exfilwatch run` fed by a Hubble server on loopback at a fixed rate for a bounded
//! time while the REST API is queried, with a new exfiltration attempt every second whose
//! alert goes to a webhook receiver in the test. Records throughput, flows lost, alert latency
//! and the service's resident set over time, and asserts that nothing is lost and memory
//! levels off.
//!
//! Opt-in (it takes minutes and wants the release build): `scripts/soak.sh`, or
//! `EXFILWATCH_SOAK_RATE=50000 EXFILWATCH_SOAK_SECONDS=60 cargo test --release --test
//! integration soak -- --ignored --nocapture`.

use std::collections::HashMap;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use exfilwatch::proto::flow::Flow;
use exfilwatch::sim::traffic::TrainingCluster;
use tokio::time::Instant;

use crate::support::relay;
use crate::support::service::{RunConfig, Service};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The flow store's disk bound in the soak's configuration.
const DISK_MIB: u64 = 256;

/// A size field of `/proc/<pid>/status` in MiB: `VmRSS` the resident set, `RssFile` its part
/// that maps files (the binary, the segments queries read).
fn status_mib(pid: u32, field: &str) -> u64 {
    exfilwatch::common::heap::status_bytes(&pid.to_string(), field).unwrap_or(0) >> 20
}

/// One second of the soak, in MiB: the service's resident set, its split into anonymous,
/// file-mapped and shared memory, and what holds it (the allocator's allocated and resident
/// bytes; the store's caches of segments, top answers and matches).
struct Second {
    at: u64,
    rss: u64,
    split: [u64; 3],
    heap: [u64; 5],
}

fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Distinct flows the load generator cycles through.
const POOL: usize = 8192;

/// What an SRE asks during an incident: filtered pages of flows and the top destinations,
/// over the last minute and the last hour. The first two are asked again and again (a
/// refreshed view); the third and fourth are new each time, so no answer of an earlier ask
/// serves them: `{n}` a port no flow uses (each segment's number sets rule it out), `{e}` a
/// client port every segment holds but no dropped flow has (every segment is read).
const QUERIES: [&str; 6] = [
    "/api/v1/flows?source_namespace=ai-training&verdict=DROPPED&limit=100",
    "/api/v1/flows?fqdn=example.net&limit=100",
    "/api/v1/flows?verdict=DROPPED&destination_port={n}&limit=100",
    "/api/v1/flows?verdict=DROPPED&source_port={e}&limit=100",
    "/api/v1/flows/top?by=destination&since=1m",
    "/api/v1/flows/top?by=destination&since=1h",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: minutes long; run scripts/soak.sh"]
async fn soak() {
    exfilwatch::common::http::install_crypto();
    let rate = env("EXFILWATCH_SOAK_RATE", 50_000);
    let seconds = env("EXFILWATCH_SOAK_SECONDS", 60);
    let relay = relay(None).await;

    // The webhook receiver: when each alert's destination first arrived.
    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let hook = {
        let arrivals = arrivals.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let arrivals = arrivals.clone();
                async move {
                    let now = Instant::now();
                    let mut seen = arrivals.lock().unwrap();
                    for a in body["alerts"].as_array().into_iter().flatten() {
                        if let Some(d) = a["labels"]["destination"].as_str() {
                            seen.entry(d.to_owned()).or_insert(now);
                        }
                    }
                    "ok"
                }
            }),
        )
    };
    let hook_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = hook_listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(hook_listener, hook).await });

    let config = RunConfig::new(relay.addr)
        .with(
            "alertmanager",
            // One alert a second for the whole soak, each timed: none folds into a roll-up.
            &format!("webhooks: [\"http://{hook_addr}/hook\"]\nmax_firing: 100000"),
        )
        .with(
            "storage",
            &format!(
                "flows:\n  memory_flows: 600000\n  memory_bytes: 64MiB\n  disk_bytes: {DISK_MIB}MiB"
            ),
        );
    let service = Service::spawn(&config, tempfile::tempdir().unwrap());
    service.ready().await;
    let pid = service.pid();
    let (base, client) = (service.base.clone(), service.client.clone());

    let mut cluster = TrainingCluster::new(
        99,
        exfilwatch::common::clock::now_ns(),
        1_000_000_000 / rate as i64,
    );
    // Flows as a real cluster reports them (about 1.25 KB) unless the simulator's are asked.
    // Shaping a flow costs the load generator more than exfilwatch pays to read it, so the
    // traffic cycles through shaped flows made beforehand, each sent with a fresh time and UUID.
    let shape = std::env::var("EXFILWATCH_SOAK_SHAPE").unwrap_or_else(|_| "cilium-shaped".into());
    let shaped = |f| {
        if shape == "simulator" {
            f
        } else {
            exfilwatch::sim::traffic::cilium_shaped(f)
        }
    };
    let mut pool: Vec<Flow> = (0..POOL).map(|_| shaped(cluster.next_flow())).collect();
    // Client ports of the pool's flows: in every segment (the traffic cycles through the
    // pool), almost never on a dropped flow (drops come from the attempts, ports of their own).
    let client_ports: Vec<u32> = pool
        .iter()
        .filter_map(|f| match f.l4.as_ref()?.protocol.as_ref()? {
            exfilwatch::proto::flow::layer4::Protocol::Tcp(t) => Some(t.source_port),
            exfilwatch::proto::flow::layer4::Protocol::Udp(u) => Some(u.source_port),
            _ => None,
        })
        .collect();
    assert!(client_ports.len() > 1_000, "the pool has client ports");

    // Queries while the flows stream: their latencies, per path.
    let querying = {
        let client = client.clone();
        let base = base.clone();
        tokio::spawn(async move {
            let mut ms: Vec<Vec<f64>> = vec![Vec::new(); QUERIES.len()];
            let end = Instant::now() + Duration::from_secs(seconds);
            let paths = QUERIES;
            let mut i = 0;
            while Instant::now() < end {
                let started = Instant::now();
                // {n}: a port no flow uses; {e}: a client port most segments hold, seldom
                // on a dropped flow. Both new at every ask.
                let path = paths[i % paths.len()]
                    .replace("{n}", &(20_000 + i).to_string())
                    .replace("{e}", &client_ports[i % client_ports.len()].to_string());
                let r = client.get(format!("{base}{path}")).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await.unwrap();
                ms[i % paths.len()].push(started.elapsed().as_secs_f64() * 1000.0);
                i += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            ms
        })
    };

    let mut rng = fastrand::Rng::with_seed(7);
    let step_ns = 1_000_000_000 / rate as i64;
    let mut now_ns = exfilwatch::common::clock::now_ns();
    let mut stamp = |f: &mut Flow| {
        now_ns += step_ns;
        f.time = Some(prost_types::Timestamp {
            seconds: now_ns.div_euclid(1_000_000_000),
            nanos: now_ns.rem_euclid(1_000_000_000) as i32,
        });
        f.uuid = exfilwatch::flow::format_uuid(rng.u128(..));
    };
    let started = Instant::now();
    let per_tick = rate / 100;
    let mut pushed = 0u64;
    let mut pushed_at: HashMap<String, Instant> = HashMap::new();
    let mut series: Vec<Second> = Vec::new();
    let mut store: Vec<(u64, u64, u64, u64)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        for _ in 0..per_tick {
            // Re-stamped in place: cloning a Cilium-shaped flow costs the generator more than
            // encoding it.
            let f = &mut pool[pushed as usize % POOL];
            stamp(f);
            relay.sim.push_flow_ref(f);
            pushed += 1;
        }
        n += 1;
        if n.is_multiple_of(100) {
            // A new destination every 100 ticks (a second while the generator keeps up): a
            // new alert to time; the resident set, by seconds since the start.
            let (k, second) = (n / 100, started.elapsed().as_secs());
            let destination = format!("exfil-{k}.example.net");
            for mut f in cluster.exfiltration_attempt() {
                if !f.destination_names.is_empty() {
                    f.destination_names = vec![destination.clone()];
                }
                let mut f = shaped(f);
                stamp(&mut f);
                relay.sim.push_flow(f);
                pushed += 1;
            }
            pushed_at.insert(destination, Instant::now());
            // What holds it, each second: the allocator's count, and the store's query
            // caches; every ten seconds the store's size beside it.
            let m = service.text("/metrics").await;
            let heap = [
                "exfilwatch_heap_allocated_bytes",
                "exfilwatch_heap_resident_bytes",
                "exfilwatch_store_cache_bytes{cache=\"segments\"}",
                "exfilwatch_store_cache_bytes{cache=\"top\"}",
                "exfilwatch_store_cache_bytes{cache=\"matches\"}",
            ]
            .map(|name| metric_sum(&m, name) >> 20);
            series.push(Second {
                at: second,
                rss: status_mib(pid, "VmRSS"),
                split: ["RssAnon", "RssFile", "RssShmem"].map(|f| status_mib(pid, f)),
                heap,
            });
            if (n / 100).is_multiple_of(10) {
                store.push((
                    second,
                    metric_sum(&m, "exfilwatch_store_segments"),
                    metric_sum(&m, "exfilwatch_store_memory_bytes") >> 20,
                    metric_sum(&m, "exfilwatch_store_disk_bytes") >> 20,
                ));
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Let the service catch up, then read its counters.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = service.text("/metrics").await;
    let received = metric_sum(&metrics, "exfilwatch_flows_received_total");
    let lost = metric_sum(&metrics, "exfilwatch_lost_events_total");
    let stored = metric_sum(&metrics, "exfilwatch_store_flows_appended_total");
    let store_dropped = metric_sum(&metrics, "exfilwatch_store_flows_dropped_total");
    let mut query_ms = querying.await.unwrap();
    for ms in &mut query_ms {
        ms.sort_by(f64::total_cmp);
    }
    let arrivals = arrivals.lock().unwrap().clone();
    let mut alert_ms: Vec<f64> = pushed_at
        .iter()
        .filter_map(|(d, at)| Some(arrivals.get(d)?.duration_since(*at).as_secs_f64() * 1000.0))
        .collect();
    alert_ms.sort_by(f64::total_cmp);
    drop(service);

    eprintln!("soak: {rate} {shape} flows/s offered for {seconds} s");
    eprintln!(
        "  pushed {pushed} flows ({:.0}/s), received {received}, lost events {lost}, stored {stored}, store dropped {store_dropped}",
        pushed as f64 / elapsed
    );
    eprintln!(
        "  alerts: {} of {} new destinations alerted; latency p50 {:.1} ms, p99 {:.1} ms",
        alert_ms.len(),
        pushed_at.len(),
        percentile(&alert_ms, 0.5),
        percentile(&alert_ms, 0.99)
    );
    for (path, ms) in QUERIES.iter().zip(&query_ms) {
        eprintln!(
            "  API during the soak: {path}: {} queries, p50 {:.1} ms, p99 {:.1} ms",
            ms.len(),
            percentile(ms, 0.5),
            percentile(ms, 0.99)
        );
    }
    eprintln!(
        "  RSS MiB by second: {}",
        series
            .iter()
            .filter(|s| s.at % 10 == 0 || s.at == 1)
            .map(|s| format!("{}s:{}", s.at, s.rss))
            .collect::<Vec<_>>()
            .join(" ")
    );
    eprintln!(
        "  store by second (segments, MiB in memory, MiB on disk): {}",
        store
            .iter()
            .map(|(s, n, m, d)| format!("{s}s:{n}/{m}/{d}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    eprintln!(
        "  heap by second (MiB: allocated/resident by the allocator; the store's caches of segments/top/matches; files mapped): {}",
        series
            .iter()
            .filter(|s| s.at % 10 == 0)
            .map(|s| {
                let [a, r, c, t, m] = s.heap;
                format!("{}s:{a}/{r};{c}/{t}/{m};{}", s.at, s.split[1])
            })
            .collect::<Vec<_>>()
            .join(" ")
    );
    assert_eq!(received, pushed, "every flow offered was received");
    assert_eq!(lost, 0);
    assert_eq!(stored, received, "every flow received was stored");
    assert_eq!(
        alert_ms.len(),
        pushed_at.len(),
        "every attempt alerted: {:?}",
        arrivals.keys().collect::<Vec<_>>()
    );
    // Memory levels off once the store reaches its bounds: 64 MiB in memory within seconds,
    // the disk bound (whose segments' dictionaries and summaries stay in memory) after about
    // 280 s at 50,000 flows/s. From then on the resident set stays within 10 % of where it
    // settled. A run too short to fill the disk is judged on its second half.
    let filled = store
        .iter()
        .find(|(_, _, _, disk)| *disk >= DISK_MIB * 95 / 100)
        .map(|(second, ..)| *second);
    let last = series.last().map_or(0, |s| s.at);
    let warm = filled.unwrap_or(60).min(last / 2);
    let after: Vec<&Second> = series.iter().filter(|s| s.at >= warm).collect();
    let low = after.iter().map(|s| s.rss).min().unwrap_or(0);
    let peak = after.iter().map(|s| s.rss).max().unwrap_or(0);
    // The lowest and highest seconds, with their neighbours, split: what moved.
    for (what, value) in [("lowest", low), ("highest", peak)] {
        if let Some(i) = after.iter().position(|s| s.rss == value) {
            let around = after[i.saturating_sub(2)..(i + 3).min(after.len())]
                .iter()
                .map(|s| {
                    let [a, f, sh] = s.split;
                    format!("{}s:{}={a}+{f}+{sh} (allocator {})", s.at, s.rss, s.heap[1])
                })
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!(
                "  RSS {what} at second {}, with its neighbours (MiB = anonymous + file + shared; the allocator's resident MiB): {around}",
                after[i].at
            );
        }
    }
    eprintln!(
        "  RSS from {warm} s ({}): {low} to {peak} MiB ({:+.1} %)",
        filled.map_or(
            "the store's disk bound not reached".to_owned(),
            |s| format!("the store reached its disk bound at {s} s")
        ),
        (peak as f64 / low.max(1) as f64 - 1.0) * 100.0
    );
    assert!(
        peak as f64 <= low as f64 * 1.10,
        "RSS rose from {low} to {peak} MiB after the store filled"
    );
}
