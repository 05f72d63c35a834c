//! The shared flow table at cluster scale: a Delta table of 5,000 files and 50 million flows
//! in an S3-compatible server (SeaweedFS on 127.0.0.1), asked by a replica that holds none of
//! them on its disk, before and after compaction.
//!
//! - The table: one replica writes 50 M flows spread over the last 24 hours as files of
//!   10,000 flows (`chunk_flows`), 100 files a commit; its disk keeps none of them.
//! - The queries, through the store's own calls (what the API's handlers run):
//!   `/flows/top?by=namespace&since=24h` (`FlowStore::top`), one namespace's destinations
//!   over the same day (`by=destination&source_namespace=`, one of 24), and one pod's flows
//!   over 7 days, a page of 100 (`FlowStore::list` with `source_pod`, the rarest pod). Each asked `RUNS`
//!   times cold, of a replica just opened with an empty disk (nothing cached), then warm, of
//!   the same replica again. For each: p50 and p99 of the cold wall time, the warm p50, the
//!   bytes read from the bucket by a cold query, and how far the process's resident set rose
//!   during it (`VmHWM` after resetting it, less the resident set before).
//! - Objects: the table's files and the bucket's parquet objects, before compaction, after
//!   it, and after the vacuum deletes the merged files.
//!
//! Sizes: `EXFILWATCH_BENCH_FILES` (5000), `EXFILWATCH_BENCH_FILE_FLOWS` (10000),
//! `EXFILWATCH_BENCH_RUNS` (5). Needs SeaweedFS (`scripts/setup.sh` installs it).
//!
//! Run: `cargo bench --bench shared_table`; see docs/scale-out.md for the figures.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use exfilwatch::config::{FlowStoreConfig, ObjectStoreConfig};
use exfilwatch::flow::FlowEvent;
use exfilwatch::flow::wire::Decoder;
use exfilwatch::flowstore::{Filter, FlowStore, GroupBy, Row};
use exfilwatch::sim::traffic::TrainingCluster;
use tokio::time::Instant;

mod support {
    pub const GUARD: std::time::Duration = std::time::Duration::from_secs(30);

    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// DuckDB is the tests' reader; the benchmark does not call it.
    pub fn python(_script: &str) -> String {
        unreachable!("the benchmark reads the table through exfilwatch only")
    }

    #[allow(dead_code)]
    #[path = "../../tests/integration/support/s3.rs"]
    pub mod s3;
}

use support::s3::{ACCESS_KEY, BUCKET, S3, SECRET_KEY};

const HOUR_NS: i64 = 3_600 * 1_000_000_000;

fn size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn store(
    s3: &S3,
    dir: &std::path::Path,
    replica: &str,
    chunk: usize,
    disk_bytes: u64,
) -> Arc<FlowStore> {
    FlowStore::open(FlowStoreConfig {
        chunk_flows: chunk,
        memory_flows: chunk,
        dir: Some(dir.to_path_buf()),
        retention: Duration::from_secs(3_650 * 86_400),
        disk_bytes,
        object_store: Some(ObjectStoreConfig {
            endpoint: s3.endpoint.clone(),
            bucket: BUCKET.into(),
            prefix: String::new(),
            region: "us-east-1".into(),
            replica: replica.into(),
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            ca_pem: None,
            allow_http: true,
            retention: Duration::from_secs(30 * 86_400),
        }),
        ..FlowStoreConfig::default()
    })
    .unwrap()
}

/// The simulator's flows with a realistic spread: 24 source namespaces, 2,000 source pods,
/// 50,000 external addresses.
fn base_flows(n: usize) -> Vec<FlowEvent> {
    let mut cluster = TrainingCluster::new(11, 0, 1_000_000);
    let mut rng = fastrand::Rng::with_seed(5);
    let mut decoder = Decoder::default();
    (0..n)
        .map(|i| {
            let mut f = if i % 200 == 199 {
                cluster.exfiltration_attempt().remove(0)
            } else {
                cluster.next_flow()
            };
            if let Some(src) = &mut f.source
                && !src.pod_name.is_empty()
            {
                src.pod_name = format!("{}-{}", src.pod_name, rng.u32(0..2_000));
                src.namespace = format!("team-{:02}", rng.u32(0..24));
            }
            if rng.u8(0..5) == 0
                && let Some(ip) = &mut f.ip
            {
                let n = rng.u32(0..50_000);
                ip.destination = format!("198.18.{}.{}", n / 256, n % 256);
            }
            exfilwatch::sim::received(&mut decoder, f).expect("the simulator's flows decode")
        })
        .collect()
}

fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What one query cost: wall time, bytes read from the bucket, and how far the resident
/// set rose above where it was.
struct Cost {
    time: Duration,
    bytes: u64,
    rise: u64,
}

fn cost(store: &FlowStore, query: impl FnOnce()) -> Cost {
    let bucket = store.bucket().unwrap();
    // Resets VmHWM to the current resident set.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_kb("VmRSS:") * 1024;
    let read = bucket.stats.download_bytes.load(Ordering::Relaxed);
    let t = Instant::now();
    query();
    Cost {
        time: t.elapsed(),
        bytes: bucket.stats.download_bytes.load(Ordering::Relaxed) - read,
        rise: (status_kb("VmHWM:") * 1024).saturating_sub(before),
    }
}

/// p50 and p99 of `costs`' times, and the greatest bytes and rise.
fn summary(costs: &[Cost]) -> (Duration, Duration, u64, u64) {
    let mut times: Vec<Duration> = costs.iter().map(|c| c.time).collect();
    times.sort();
    let p = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    (
        p(0.5),
        p(0.99),
        costs.iter().map(|c| c.bytes).max().unwrap_or(0),
        costs.iter().map(|c| c.rise).max().unwrap_or(0),
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn main() {
    let files = size("EXFILWATCH_BENCH_FILES", 5_000);
    let per_file = size("EXFILWATCH_BENCH_FILE_FLOWS", 10_000);
    let runs = size("EXFILWATCH_BENCH_RUNS", 5);
    let total = files * per_file;
    exfilwatch::common::http::install_crypto();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let s3 = runtime.block_on(S3::start());
    let now = exfilwatch::common::clock::now_ns();
    let start = now - 24 * HOUR_NS + 60 * 1_000_000_000;
    let step = (24 * HOUR_NS - 120 * 1_000_000_000) / total as i64;

    // The table: one writer, its disk keeping nothing once uploaded.
    let base = base_flows(total.min(1_000_000));
    let rarest = {
        let mut counts = std::collections::HashMap::<&str, usize>::new();
        for f in &base {
            *counts.entry(&f.source.pod).or_default() += 1;
        }
        counts
            .into_iter()
            .filter(|(p, _)| !p.is_empty())
            .min_by_key(|&(p, n)| (n, p))
            .map(|(p, _)| p.to_owned())
            .unwrap()
    };
    // One namespace's flows in the table (the base flows repeat).
    let namespace = "team-07";
    let in_namespace = (0..total)
        .filter(|i| &*base[i % base.len()].source.namespace == namespace)
        .count();
    let writer_dir = tempfile::tempdir().unwrap();
    let writer = store(&s3, writer_dir.path(), "writer", per_file, 1);
    let t = Instant::now();
    let mut batch: Vec<FlowEvent> = Vec::with_capacity(per_file);
    for i in 0..total {
        let mut f = base[i % base.len()].clone();
        f.time_ns = start + i as i64 * step;
        f.uuid = Some(i as u128 + 1);
        batch.push(f);
        if batch.len() == per_file {
            writer.append(&batch.iter().map(Row::new).collect::<Vec<_>>());
            batch.clear();
            if (i + 1) % (per_file * 100) == 0 {
                writer.persist().unwrap();
            }
        }
    }
    writer.append(&batch.iter().map(Row::new).collect::<Vec<_>>());
    writer.persist().unwrap();
    let filled = t.elapsed();
    let wb = writer.bucket().unwrap().clone();
    // A replica compacts its files every 10 minutes: the writer is closed once the table is
    // written, so that no compaction runs beside the queries, and opened again (a replica
    // restarted under its name) only to compact and to expire.
    drop(writer);
    let reopened = || store(&s3, writer_dir.path(), "writer", per_file, 1);
    println!(
        "table: {total} flows in {} files, {} uploaded, written in {:.1} s",
        wb.files().unwrap().len(),
        mib(wb.stats.upload_bytes.load(Ordering::Relaxed)),
        filled.as_secs_f64()
    );

    let objects = || -> usize {
        use tokio_stream::StreamExt;
        let client = s3.client();
        runtime.block_on(async {
            let mut listed = object_store::ObjectStore::list(&client, Some(&"flows".into()));
            let mut n = 0;
            while let Some(meta) = listed.next().await {
                n += usize::from(meta.unwrap().location.as_ref().ends_with(".parquet"));
            }
            n
        })
    };

    // Each query asked cold, of a replica just started with an empty disk (a fresh store:
    // nothing cached), `runs` times; then once more of the same replica (warm: its caches of
    // each file's answers).
    let ask = |query: &dyn Fn(&FlowStore)| {
        let mut cold = Vec::with_capacity(runs);
        let mut warm = Vec::with_capacity(runs);
        for _ in 0..runs {
            let dir = tempfile::tempdir().unwrap();
            let asker = store(&s3, dir.path(), "asker", per_file, 1 << 30);
            cold.push(cost(&asker, || query(&asker)));
            warm.push(cost(&asker, || query(&asker)));
        }
        (summary(&cold), summary(&warm))
    };
    let row = |label: &str, name: &str, query: &dyn Fn(&FlowStore)| {
        let ((p50, p99, bytes, rise), (warm50, _, _, _)) = ask(query);
        println!(
            "| {label} | {name} | {:.2} s | {:.2} s | {:.3} s | {} | {} |",
            p50.as_secs_f64(),
            p99.as_secs_f64(),
            warm50.as_secs_f64(),
            mib(bytes),
            mib(rise)
        );
    };
    let mut day = Filter::default();
    day.set("since", "24h", now).unwrap();
    let mut pod = Filter::default();
    pod.set("since", "7d", now).unwrap();
    pod.set("source_pod", &rarest, now).unwrap();
    let top = |s: &FlowStore| {
        let (_, counted) = s.top(&day, GroupBy::Namespace, 100).unwrap();
        assert_eq!(counted as usize, total);
    };
    let mut team = day.clone();
    team.set("source_namespace", namespace, now).unwrap();
    let destinations = |s: &FlowStore| {
        let (_, counted) = s.top(&team, GroupBy::Destination, 100).unwrap();
        assert_eq!(counted as usize, in_namespace);
    };
    let page = |s: &FlowStore| {
        let page = s.list(&pod, None, 100).unwrap();
        assert!(!page.flows.is_empty());
    };
    let queries = |label: &str| {
        row(label, "`/flows/top?by=namespace&since=24h`", &top);
        row(
            label,
            "`/flows/top?by=destination&source_namespace=team-07&since=24h`",
            &destinations,
        );
        row(label, "a pod's flows, 7 days, a page of 100", &page);
    };
    let before = (wb.files().unwrap().len(), objects());
    println!("rarest pod: {rarest}");
    println!(
        "| table | query | cold p50 | cold p99 | warm p50 | read from the bucket | resident set rise |"
    );
    println!("|---|---|---|---|---|---|---|");
    queries(&format!("{} files", before.0));

    let t = Instant::now();
    let (merged, written) = reopened().compact_table().unwrap();
    let compacted = t.elapsed();
    // The log is read again after 5 s.
    std::thread::sleep(Duration::from_millis(5_200));
    let after = (wb.files().unwrap().len(), objects());
    queries(&format!("{} files (compacted)", after.0));
    let (_, deleted) = reopened().expire_table(now + 2 * HOUR_NS).unwrap();
    println!(
        "compaction: {merged} files merged into {written} in {:.1} s; table files {} -> {}; bucket objects {} -> {} (before the vacuum) -> {} (the vacuum deleted {deleted})",
        compacted.as_secs_f64(),
        before.0,
        after.0,
        before.1,
        after.1,
        objects(),
    );
}
