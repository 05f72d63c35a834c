//! A flow store that shares its history through a bucket (SeaweedFS), asked on another
//! replica: pages hold every flow of every replica once, none skipped and none repeated, when
//! a page must stop at the read budget ([`MAX_SEGMENTS_PER_QUERY`]) with objects left unread
//! that overlap it in time; the policy advisor's connections are the same on every replica.

use std::collections::BTreeSet;
use std::time::Duration;

use exfilwatch::config::{FlowStoreConfig, ObjectStoreConfig};
use exfilwatch::flow::FlowEvent;
use exfilwatch::flow::wire::Decoder;
use exfilwatch::flowstore::{Filter, FlowStore, MAX_SEGMENTS_PER_QUERY, Page, Row};
use exfilwatch::sim::traffic::TrainingCluster;

use crate::support::s3::{ACCESS_KEY, BUCKET, S3, SECRET_KEY};

/// Flows per chunk, and so per object.
const CHUNK: usize = 20;
/// The other replica's objects: more than one page may read.
const OBJECTS: usize = MAX_SEGMENTS_PER_QUERY * 2;

fn store(s3: &S3, dir: &std::path::Path, replica: &str) -> std::sync::Arc<FlowStore> {
    store_keeping(s3, dir, replica, Duration::from_secs(3_650 * 86_400))
}

/// A replica whose table keeps `retention` of flows.
fn store_keeping(
    s3: &S3,
    dir: &std::path::Path,
    replica: &str,
    retention: Duration,
) -> std::sync::Arc<FlowStore> {
    store_with(
        s3,
        dir,
        replica,
        CHUNK,
        Duration::from_secs(3_650 * 86_400),
        retention,
    )
}

/// A replica writing chunks of `chunk` flows, whose disk keeps `local` of flows and its table
/// `retention`.
fn store_with(
    s3: &S3,
    dir: &std::path::Path,
    replica: &str,
    chunk: usize,
    local: Duration,
    retention: Duration,
) -> std::sync::Arc<FlowStore> {
    FlowStore::open(FlowStoreConfig {
        chunk_flows: chunk,
        memory_flows: chunk,
        dir: Some(dir.to_path_buf()),
        retention: local,
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
            retention,
        }),
        ..FlowStoreConfig::default()
    })
    .unwrap()
}

/// Every page of `filter`'s flows on `store`, `size` flows a page, each cursor taken in turn.
fn pages(store: &FlowStore, filter: &Filter, size: usize) -> Vec<Page> {
    let mut pages: Vec<Page> = Vec::new();
    loop {
        assert!(pages.len() < 10_000, "paging never ends");
        let cursor = pages.last().and_then(|p| p.next_cursor.clone());
        let page = store.list(filter, cursor, size).unwrap();
        let last = page.next_cursor.is_none();
        pages.push(page);
        if last {
            return pages;
        }
    }
}

/// `n` flows a millisecond apart from `start_ns`, each with its number as its UUID.
fn flows(n: usize, start_ns: i64) -> Vec<FlowEvent> {
    let mut cluster = TrainingCluster::new(11, start_ns, 1_000);
    let mut decoder = Decoder::default();
    (0..n)
        .map(|i| {
            let mut f = crate::support::received(&mut decoder, cluster.next_flow());
            f.time_ns = start_ns + i as i64 * 1_000_000;
            f.uuid = Some(i as u128 + 1);
            f
        })
        .collect()
}

#[test]
fn pages_across_replicas_skip_and_repeat_nothing_where_the_read_budget_stops_them() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let s3 = runtime.block_on(S3::start());
    let start = exfilwatch::common::clock::now_ns() - 600 * 1_000_000_000;
    let all = flows(OBJECTS * CHUNK, start);
    // Replica b received the flows out of time order (as partitions from different nodes
    // interleave): each of its chunks holds flows from the whole range, so every object
    // overlaps every page.
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b = store(&s3, dir_b.path(), "b");
    for j in 0..OBJECTS {
        let rows: Vec<Row> = (0..CHUNK)
            .map(|m| Row::new(&all[m * OBJECTS + j]))
            .collect();
        b.append(&rows);
    }
    b.persist().unwrap();
    assert_eq!(b.pending_uploads(), 0);
    drop(b);
    // Replica a holds none of them itself, and pages through the bucket.
    let a = store(&s3, dir_a.path(), "a");
    let mut filter = Filter::default();
    filter.since_ns = Some(start - 1);
    let pages = pages(&a, &filter, 100);
    assert!(pages.len() < 10 * OBJECTS, "paging never ends");
    for p in &pages {
        assert!(
            p.flows.windows(2).all(|w| w[0].time_ns >= w[1].time_ns),
            "a page is newest first"
        );
    }
    let seen: Vec<i64> = pages
        .iter()
        .flat_map(|p| &p.flows)
        .map(|f| f.time_ns)
        .collect();
    let distinct: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), seen.len(), "flows repeated across pages");
    let missing = all
        .iter()
        .filter(|f| !distinct.contains(&f.time_ns))
        .count();
    assert_eq!(missing, 0, "{missing} of {} flows skipped", all.len());
}

/// The bucket's data files, as a listing (not the table) counts them.
fn objects(s3: &S3) -> usize {
    let out = s3.duckdb(&format!(
        r#"print(con.sql("SELECT count(*) FROM glob('s3://{BUCKET}/flows/*/*/*.parquet')").fetchall()[0][0])"#
    ));
    out.trim().parse::<usize>().unwrap()
}

/// Every connection as comparable text: key, flows, addresses.
fn answer(store: &FlowStore, namespace: &str, since: i64, until: i64) -> Vec<String> {
    let mut lines: Vec<String> = store
        .connections(namespace, since, until)
        .unwrap()
        .iter()
        .map(|c| format!("{:?} {} {:?}", c.key, c.flows, c.addresses))
        .collect();
    lines.sort();
    lines
}

#[test]
fn the_advisor_sees_every_replicas_connections_from_any_replica() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let s3 = runtime.block_on(S3::start());
    let start = exfilwatch::common::clock::now_ns() - 600 * 1_000_000_000;
    let all = flows(20 * CHUNK, start);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b = store(&s3, dir_b.path(), "b");
    let rows: Vec<Row> = all.iter().map(Row::new).collect();
    b.append(&rows);
    b.persist().unwrap();
    let namespace = exfilwatch::sim::traffic::TRAINING_NAMESPACE;
    let (since, until) = (start - 1, start + 3_600 * 1_000_000_000);
    let expected = answer(&b, namespace, since, until);
    assert!(expected.len() > 3, "{expected:?}");
    let a = store(&s3, dir_a.path(), "a");
    assert_eq!(answer(&a, namespace, since, until), expected);
}

/// DuckDB (its `delta` extension) reads the bucket as the Delta table it is: from the log,
/// not by listing parquet files, so the files of growing chunks that later files of the same
/// chunks replaced count once. Its counts per namespace are the store's, from any replica.
#[test]
fn duckdb_reads_the_shared_history_as_a_delta_table() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let s3 = runtime.block_on(S3::start());
    let start = exfilwatch::common::clock::now_ns() - 600 * 1_000_000_000;
    let all = flows(3 * 7 * CHUNK + 13, start);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let replicas: Vec<_> = ["a", "b", "c"]
        .iter()
        .zip(&dirs)
        .map(|(name, dir)| store(&s3, dir.path(), name))
        .collect();
    // Each replica takes every third flow, a few at a time with a checkpoint after each: a
    // growing chunk's file goes to the table at every checkpoint, replaced by the next.
    for (i, part) in all.chunks(7).enumerate() {
        let r = &replicas[i % 3];
        r.append(&part.iter().map(Row::new).collect::<Vec<_>>());
        r.checkpoint().unwrap();
    }
    for r in &replicas {
        r.persist().unwrap();
        assert_eq!(r.pending_uploads(), 0);
    }
    let mut want: std::collections::BTreeMap<String, u64> = Default::default();
    for f in &all {
        *want.entry(f.source.namespace.to_string()).or_default() += 1;
    }
    let mut filter = Filter::default();
    filter.since_ns = Some(start - 1);
    for r in &replicas {
        let (groups, total) = r
            .top(&filter, exfilwatch::flowstore::GroupBy::Namespace, 100)
            .unwrap();
        assert_eq!(total as usize, all.len());
        let got: std::collections::BTreeMap<String, u64> =
            groups.into_iter().map(|g| (g.key, g.count)).collect();
        assert_eq!(got, want);
    }
    let counts = s3.duckdb(
        r#"print(json.dumps(dict(con.sql(f"SELECT src_namespace, count(*) FROM {flows} GROUP BY 1").fetchall())))"#,
    );
    let got: std::collections::BTreeMap<String, u64> = serde_json::from_str(&counts).unwrap();
    assert_eq!(got, want, "DuckDB's counts of the table");
}

/// A replica asked for one namespace reads only the other replicas' files whose statistics in
/// the table's log can hold it: each of replica b's chunks holds one destination namespace's
/// flows, and a question about one namespace downloads that namespace's files alone.
#[test]
fn files_are_chosen_by_the_namespaces_their_statistics_state() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let s3 = runtime.block_on(S3::start());
    let start = exfilwatch::common::clock::now_ns() - 600 * 1_000_000_000;
    let mut all = flows(60 * CHUNK, start);
    all.sort_by(|x, y| x.destination.namespace.cmp(&y.destination.namespace));
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b = store(&s3, dir_b.path(), "b");
    let mut files_of: std::collections::BTreeMap<String, usize> = Default::default();
    for group in all.chunk_by(|x, y| x.destination.namespace == y.destination.namespace) {
        // Whole chunks of one namespace each: the rest of a group is left out.
        for chunk in group.chunks_exact(CHUNK) {
            b.append(&chunk.iter().map(Row::new).collect::<Vec<_>>());
            *files_of
                .entry(chunk[0].destination.namespace.to_string())
                .or_default() += 1;
        }
    }
    b.persist().unwrap();
    assert!(files_of.len() >= 3, "{files_of:?}");
    let a = store(&s3, dir_a.path(), "a");
    let downloads = || {
        a.bucket()
            .unwrap()
            .stats
            .downloads
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // Flows to the world have no destination namespace: their files are in the table, and a
    // filter cannot name them.
    for (namespace, files) in files_of.iter().filter(|(n, _)| !n.is_empty()) {
        let before = downloads();
        let mut filter = Filter::default();
        filter.set("destination_namespace", namespace, 0).unwrap();
        filter.since_ns = Some(start - 1);
        let (_, total) = a
            .top(&filter, exfilwatch::flowstore::GroupBy::Verdict, 10)
            .unwrap();
        assert_eq!(total as usize, files * CHUNK, "{namespace}");
        assert_eq!(downloads() - before, *files as u64, "{namespace}");
    }
}

/// The table's retention by the format's own operations: files past it are removed from the
/// table by a commit (readers stop counting them at once) and deleted from the bucket by a
/// vacuum an hour later; the replica that runs it is the least name among those writing.
#[test]
fn files_past_the_retention_leave_the_table_then_the_bucket() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let s3 = runtime.block_on(S3::start());
    let day = 86_400 * 1_000_000_000i64;
    let now = exfilwatch::common::clock::now_ns();
    let old = flows(5 * CHUNK, now - 3 * day);
    let recent = flows(3 * CHUNK, now - 600 * 1_000_000_000);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let keep = Duration::from_secs(86_400);
    let b = store_keeping(&s3, dir_b.path(), "b", keep);
    for part in [&old, &recent] {
        b.append(&part.iter().map(Row::new).collect::<Vec<_>>());
    }
    b.persist().unwrap();
    let a = store_keeping(&s3, dir_a.path(), "a", keep);
    let bucket = |s: &FlowStore| s.bucket().unwrap().clone();
    // Only b writes: b runs the expiry, a does not.
    assert!(bucket(&b).owns_expiry().unwrap());
    assert!(!bucket(&a).owns_expiry().unwrap());
    assert_eq!(a.expire_table(now).unwrap(), (0, 0));
    let (removed, deleted) = b.expire_table(now).unwrap();
    assert_eq!(
        (removed, deleted),
        (5, 0),
        "removed now, deleted an hour later"
    );
    let count = || {
        let out = s3.duckdb(r#"print(con.sql(f"SELECT count(*) FROM {flows}").fetchall()[0][0])"#);
        out.trim().parse::<usize>().unwrap()
    };
    assert_eq!(count(), recent.len());
    let mut all_time = Filter::default();
    all_time.since_ns = Some(now - 4 * day);
    // a's view of the table is read again after 5 s.
    std::thread::sleep(Duration::from_millis(5_200));
    let (_, total) = a
        .top(&all_time, exfilwatch::flowstore::GroupBy::Verdict, 10)
        .unwrap();
    assert_eq!(total as usize, recent.len());
    let before = objects(&s3);
    // An hour on, the vacuum deletes the removed files from the bucket.
    let (removed, deleted) = b.expire_table(now + 2 * 3_600 * 1_000_000_000).unwrap();
    assert_eq!((removed, deleted), (0, 5));
    assert_eq!(count(), recent.len());
    assert_eq!(
        objects(&s3),
        before - 5,
        "the removed files are gone from the bucket"
    );
    // Once a writes too, the least name runs it.
    a.append(&recent.iter().map(Row::new).collect::<Vec<_>>());
    a.persist().unwrap();
    std::thread::sleep(Duration::from_millis(5_200));
    assert!(bucket(&b).files().is_ok());
    assert!(bucket(&a).owns_expiry().unwrap());
    assert!(!bucket(&b).owns_expiry().unwrap());
}

/// Compaction: a replica's small files, once its disk no longer holds them, become one file
/// of the table (their flows in it in order, a flow stored twice once), read alike by the API
/// and by DuckDB; a second compaction finds nothing to do, and the vacuum deletes the merged
/// files an hour on.
#[test]
fn a_replicas_small_files_merge_into_one_once_its_disk_no_longer_holds_them() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let s3 = runtime.block_on(S3::start());
    let hour = 3_600 * 1_000_000_000i64;
    let now = exfilwatch::common::clock::now_ns();
    // Ten chunks within one hour two days ago, then two recent ones.
    let old_start = (now - 48 * hour).div_euclid(hour) * hour + 600 * 1_000_000_000;
    let mut old = flows(10 * CHUNK, old_start);
    // Read again after a restart: the same flow (its UUID) stored twice, in another file.
    let twice = 5 * CHUNK + 3;
    old[twice].uuid = old[3].uuid;
    // From five namespaces in turn, so a merged file sorted by namespace has row groups of
    // one namespace each.
    let mut names = exfilwatch::flow::intern::Interner::with_capacity(8);
    let teams: Vec<_> = (0..5).map(|t| names.intern(&format!("team-{t}"))).collect();
    for (i, f) in old.iter_mut().enumerate() {
        std::sync::Arc::make_mut(&mut f.source.endpoint).namespace = teams[i % 5].clone();
    }
    let mut recent = flows(2 * CHUNK, now - 600 * 1_000_000_000);
    for (i, f) in recent.iter_mut().enumerate() {
        f.uuid = Some((10 * CHUNK + i) as u128 + 1);
    }
    let dir = tempfile::tempdir().unwrap();
    let day = Duration::from_secs(86_400);
    let b = store_with(&s3, dir.path(), "b", CHUNK, day, 10 * 365 * day);
    for part in [&old, &recent] {
        b.append(&part.iter().map(Row::new).collect::<Vec<_>>());
        b.persist().unwrap();
    }
    let bucket = b.bucket().unwrap().clone();
    assert_eq!(bucket.files().unwrap().len(), 12);
    let on_disk = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "parquet")
        })
        .count();
    assert_eq!(on_disk, 2, "the disk keeps a day: the recent chunks");
    let counted = || {
        s3.duckdb(
            r#"print(con.sql(f"SELECT count(*), count(DISTINCT (uuid_hi, uuid_lo)) FROM {flows}").fetchall()[0])"#,
        )
        .trim()
        .to_owned()
    };
    assert_eq!(counted(), "(240, 239)");

    assert_eq!(b.compact_table().unwrap(), (10, 1));
    std::thread::sleep(Duration::from_millis(5_200));
    let files = bucket.files().unwrap();
    assert_eq!(files.len(), 3, "{files:?}");
    // The flow stored twice is in it once; its name spans every file's sequence numbers.
    let merged = files
        .iter()
        .find(|o| o.rows == 10 * CHUNK as u64 - 1)
        .unwrap_or_else(|| panic!("{files:?}"));
    assert_eq!(
        (merged.first_seq, merged.last_seq),
        (
            files.iter().map(|o| o.first_seq).min().unwrap(),
            merged.first_seq + 10 * CHUNK as u64 - 1
        )
    );
    assert!(merged.path.contains("/b-"), "{merged:?}");

    // Every flow once, newest first, by the API's pages and by DuckDB.
    let mut filter = Filter::default();
    filter.since_ns = Some(old_start - hour);
    let seen: Vec<i64> = pages(&b, &filter, 37)
        .iter()
        .flat_map(|p| &p.flows)
        .map(|f| f.time_ns)
        .collect();
    let want: Vec<i64> = old
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != twice)
        .map(|(_, f)| f)
        .chain(&recent)
        .rev()
        .map(|f| f.time_ns)
        .collect();
    assert_eq!(seen, want);
    assert_eq!(counted(), "(239, 239)");

    // The merged file's rows are sorted by source namespace: a replica with an empty disk
    // pages the rarest namespace's flows reading only the row groups that can hold it.
    let mut by_namespace: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for (_, f) in old.iter().enumerate().filter(|(i, _)| *i != twice) {
        by_namespace
            .entry(f.source.namespace.to_string())
            .or_default()
            .push(f.time_ns);
    }
    for f in &recent {
        by_namespace
            .entry(f.source.namespace.to_string())
            .or_default()
            .push(f.time_ns);
    }
    assert!(by_namespace.len() >= 5, "{:?}", by_namespace.keys());
    let (namespace, mut times) = by_namespace
        .into_iter()
        .filter(|(n, _)| !n.is_empty())
        .min_by_key(|(_, t)| t.len())
        .unwrap();
    times.sort_unstable_by(|x, y| y.cmp(x));
    let dir_a = tempfile::tempdir().unwrap();
    let a = store_with(&s3, dir_a.path(), "a", CHUNK, day, 10 * 365 * day);
    let mut one = filter.clone();
    one.set("source_namespace", &namespace, 0).unwrap();
    let got: Vec<i64> = pages(&a, &one, 7)
        .iter()
        .flat_map(|p| &p.flows)
        .map(|f| f.time_ns)
        .collect();
    assert_eq!(got, times, "{namespace}");
    let skipped = a
        .bucket()
        .unwrap()
        .stats
        .row_groups_skipped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        skipped > 0,
        "no row group of the merged file was left unread"
    );

    assert_eq!(b.compact_table().unwrap(), (0, 0), "nothing left to merge");
    assert_eq!(objects(&s3), 13);
    let (removed, deleted) = b.expire_table(now + 2 * hour).unwrap();
    assert_eq!((removed, deleted), (0, 10));
    assert_eq!(objects(&s3), 3);
    let stats = &b.bucket().unwrap().stats;
    assert_eq!(
        stats.compacted.load(std::sync::atomic::Ordering::Relaxed),
        10
    );
    assert_eq!(
        stats.duplicates.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// Queries read a file of the table by columns: its footer, then the column chunks the
/// filter and the grouping name, fetched by range. The answers are those of the flows
/// written; the bytes read are a small part of the table's.
#[test]
fn queries_fetch_only_the_columns_they_read_from_the_tables_files() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let s3 = runtime.block_on(S3::start());
    let start = exfilwatch::common::clock::now_ns() - 600 * 1_000_000_000;
    let (chunk, files) = (10_000, 6);
    let mut all = flows(chunk * files, start);
    // A pod only the first row group (a quarter chunk) of the third file holds.
    let probe = exfilwatch::flow::intern::Interner::with_capacity(4).intern("probe-7");
    for f in all[2 * chunk..2 * chunk + chunk / 4].iter_mut().step_by(50) {
        std::sync::Arc::make_mut(&mut f.source.endpoint).pod = probe.clone();
    }
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let forever = Duration::from_secs(3_650 * 86_400);
    let b = store_with(&s3, dir_b.path(), "b", chunk, forever, forever);
    for part in all.chunks(chunk) {
        b.append(&part.iter().map(Row::new).collect::<Vec<_>>());
    }
    b.persist().unwrap();
    drop(b);
    let a = store_with(&s3, dir_a.path(), "a", chunk, forever, forever);
    let bucket = a.bucket().unwrap().clone();
    let table: u64 = bucket.files().unwrap().iter().map(|o| o.bytes).sum();
    assert_eq!(bucket.files().unwrap().len(), files);
    let read = || {
        bucket
            .stats
            .download_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut since = Filter::default();
    since.since_ns = Some(start - 1);

    // Flows by source namespace: `seq`, `time` and `src_namespace` of each file.
    let mut expected: std::collections::BTreeMap<String, u64> = Default::default();
    for f in &all {
        *expected.entry(f.source.namespace.to_string()).or_default() += 1;
    }
    let (groups, total) = a
        .top(&since, exfilwatch::flowstore::GroupBy::Namespace, 100)
        .unwrap();
    let got: std::collections::BTreeMap<String, u64> =
        groups.into_iter().map(|g| (g.key, g.count)).collect();
    assert_eq!(total as usize, all.len());
    assert_eq!(got, expected);
    let top_bytes = read();
    assert!(
        top_bytes * 2 < table,
        "a grouping by namespace read {top_bytes} of the table's {table} bytes"
    );

    // A time range that cuts a file leaves its row groups outside the range unread: two
    // replicas of their own (nothing cached) group the same files from the middle of the
    // third file and from its start.
    let from = |since: i64, replica: &str| {
        let dir = tempfile::tempdir().unwrap();
        let c = store_with(&s3, dir.path(), replica, chunk, forever, forever);
        let mut f = Filter::default();
        f.since_ns = Some(since);
        let (_, total) = c
            .top(&f, exfilwatch::flowstore::GroupBy::Namespace, 100)
            .unwrap();
        let expected = all.iter().filter(|x| x.time_ns >= since).count();
        assert_eq!(total as usize, expected, "flows since {since}");
        let stats = &c.bucket().unwrap().stats;
        let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
        (load(&stats.download_bytes), load(&stats.row_groups_skipped))
    };
    let (whole, none_skipped) = from(all[2 * chunk].time_ns, "c");
    let (cut, skipped) = from(all[2 * chunk + chunk / 2].time_ns, "d");
    // Row groups of a quarter chunk: the file's first two end before the middle.
    assert_eq!((none_skipped, skipped), (0, 2));
    assert!(
        cut < whole,
        "{cut} bytes from the middle, {whole} from the start"
    );

    // A pod's flows, paged: the pod columns of every file, then every column of the row
    // group that holds its few flows (kept as the file's matches, for the pages after).
    let mut filter = since.clone();
    filter.set("source_pod", "probe-7", 0).unwrap();
    let mut want: Vec<u128> = all
        .iter()
        .filter(|f| f.source.pod == probe)
        .filter_map(|f| f.uuid)
        .collect();
    want.sort_unstable();
    assert_eq!(want.len(), chunk / 4 / 50);
    let skipped_before = bucket
        .stats
        .row_groups_skipped
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut seen: Vec<_> = pages(&a, &filter, 100)
        .iter()
        .flat_map(|p| &p.flows)
        .map(|f| f.uuid)
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, want, "the pod's flows, each once");
    // Few: read with every column from the one row group that holds them.
    let skipped = bucket
        .stats
        .row_groups_skipped
        .load(std::sync::atomic::Ordering::Relaxed)
        - skipped_before;
    assert_eq!(skipped, 3, "the file's other row groups left unread");
    let page_bytes = read() - top_bytes;
    assert!(
        page_bytes * 2 < table,
        "a pod's pages read {page_bytes} of the table's {table} bytes"
    );
    eprintln!("table {table} bytes; top read {top_bytes}; pod pages read {page_bytes}");
}
