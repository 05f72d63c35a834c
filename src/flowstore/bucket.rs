//! The shared bucket: the flow table ([`super::table`]) and the replicas' learned state in
//! S3-compatible object storage.
//!
//! With `storage.flows.object_store`, every segment a replica writes is also added to the
//! Delta table under `<prefix>flows/`, as
//! `date=YYYY-MM-DD/hour=HH/<replica>-<first_seq>-<last_seq>.parquet`, the hour being its
//! first flow's (UTC). A chunk holds flows within [`MAX_SPAN_NS`] of its first.
//!
//! The store's methods block: they run on the uploader thread and on the API's blocking
//! pool, driving requests on the bucket's own small runtime.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{
    Certificate, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};

use super::table::{self, NewFile, Table};
use crate::config::ObjectStoreConfig;

const HOUR_NS: i64 = 3_600 * 1_000_000_000;

/// How far from its first flow a chunk's flows may lie (either way) in a store with a bucket:
/// a flow further away starts a new chunk.
pub const MAX_SPAN_NS: i64 = HOUR_NS;

pub use super::table::Object;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct BucketStats {
    pub uploads: AtomicU64,
    pub upload_bytes: AtomicU64,
    pub errors: AtomicU64,
    pub downloads: AtomicU64,
    pub download_bytes: AtomicU64,
    /// Row groups of the table's files a query left unread, their times outside its range.
    pub row_groups_skipped: AtomicU64,
    /// Reads of the table's log for versions committed since the last.
    pub lists: AtomicU64,
    /// Versions this replica committed to the table.
    pub commits: AtomicU64,
    /// Files this replica removed from the table past the retention, and deleted from the
    /// bucket after (vacuum).
    pub expired: AtomicU64,
    pub vacuumed: AtomicU64,
    /// Files of this replica merged into larger ones (see `compact`), and the flows stored
    /// twice that merging dropped.
    pub compacted: AtomicU64,
    pub duplicates: AtomicU64,
    /// Known destinations the other replicas learned, as last read.
    pub learned: AtomicU64,
    /// Other replicas' learned-state objects that could not be decoded, at each read.
    pub learned_bad: AtomicU64,
}

/// What an object of the bucket holds, which bounds its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A parquet segment of flows: at most `storage.flows.chunk_flows` (131,072) flows, a few
    /// to a few tens of MiB.
    Segment,
    /// A replica's learned destinations, as JSON.
    Learned,
}

impl ObjectKind {
    /// The most bytes read of an object of this kind.
    pub const fn max_bytes(self) -> u64 {
        match self {
            ObjectKind::Segment => 256 << 20,
            ObjectKind::Learned => 64 << 20,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ObjectKind::Segment => "segment",
            ObjectKind::Learned => "learned-state object",
        }
    }
}

/// A connection to the bucket.
#[derive(Debug)]
pub struct Bucket {
    s3: Arc<AmazonS3>,
    prefix: String,
    replica: Arc<str>,
    runtime: Option<tokio::runtime::Runtime>,
    table: Table,
    /// When the table's log was last read.
    refreshed: Mutex<Option<tokio::time::Instant>>,
    pub stats: BucketStats,
}

impl Drop for Bucket {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which an async context forbids.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The start of the hour `time_ns` falls in.
pub fn hour_of(time_ns: i64) -> i64 {
    time_ns.div_euclid(HOUR_NS) * HOUR_NS
}

impl Bucket {
    /// A client for the configured bucket; nothing is sent until it is used.
    pub fn connect(config: &ObjectStoreConfig) -> Result<Bucket, String> {
        crate::common::http::install_crypto();
        let mut options = ClientOptions::new()
            .with_allow_http(config.allow_http)
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(60));
        if let Some(pem) = &config.ca_pem {
            for cert in Certificate::from_pem_bundle(pem).map_err(|e| format!("ca_file: {e}"))? {
                options = options.with_root_certificate(cert);
            }
        }
        let s3 = AmazonS3Builder::new()
            .with_endpoint(&config.endpoint)
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(&config.secret_access_key)
            .with_virtual_hosted_style_request(false)
            .with_client_options(options)
            // A few quick retries, then the error: a checkpoint that cannot upload fails within
            // seconds (its offsets wait for the next one) instead of holding the writer for
            // the crate's default of three minutes.
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(15),
                ..RetryConfig::default()
            })
            .build()
            .map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("exfilwatch-bucket")
            .enable_all()
            .build()
            .map_err(|e| format!("starting the bucket's runtime: {e}"))?;
        let s3 = Arc::new(s3);
        let table = Table::new(s3.clone(), &config.bucket, &config.prefix)?;
        Ok(Bucket {
            s3,
            prefix: config.prefix.clone(),
            replica: config.replica.as_str().into(),
            runtime: Some(runtime),
            table,
            refreshed: Mutex::default(),
            stats: BucketStats::default(),
        })
    }

    /// This replica's name in keys.
    pub fn replica(&self) -> &Arc<str> {
        &self.replica
    }

    fn block_on<T>(&self, f: impl Future<Output = T>) -> T {
        match &self.runtime {
            Some(rt) => rt.block_on(f),
            None => unreachable!("the runtime lives until the bucket is dropped"),
        }
    }

    /// The path in the table of this replica's chunk holding sequence numbers
    /// `first_seq..=last_seq`, its first flow at `first_time_ns`, and its partition values.
    pub fn path(
        &self,
        first_time_ns: i64,
        first_seq: u64,
        last_seq: u64,
    ) -> (String, String, String) {
        let t = crate::common::clock::format_time(hour_of(first_time_ns));
        let date = t.get(..10).unwrap_or_default().to_string();
        let hour = t.get(11..13).unwrap_or_default().to_string();
        let path = format!(
            "date={date}/hour={hour}/{}-{first_seq}-{last_seq}.parquet",
            self.replica
        );
        (path, date, hour)
    }

    /// The key of a path of the table.
    pub fn key(&self, path: &str) -> String {
        format!("{}flows/{path}", self.prefix)
    }

    fn counted<T>(&self, what: &str, key: &str, r: object_store::Result<T>) -> Result<T, String> {
        r.map_err(|e| {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            format!("bucket: {what} {key}: {e}")
        })
    }

    /// Uploads an object whole (segments are a few MiB: one request).
    pub fn put(&self, key: &str, bytes: Bytes) -> Result<(), String> {
        let len = bytes.len() as u64;
        let r = self.block_on(self.s3.put(&Key::from(key), PutPayload::from_bytes(bytes)));
        self.counted("uploading", key, r)?;
        self.stats.uploads.fetch_add(1, Ordering::Relaxed);
        self.stats.upload_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Reads an object whole, once its size is known to be within what a `kind` may hold:
    /// another writer of the bucket (or whoever holds its credentials) must not make a
    /// replica read gigabytes into memory.
    pub fn get(&self, key: &str, kind: ObjectKind) -> Result<Bytes, String> {
        let max = kind.max_bytes();
        let r = self.block_on(async {
            let got = self.s3.get(&Key::from(key)).await?;
            if got.meta.size > max {
                // Dropped unread: the rest of the body is never fetched.
                return Ok(Err(got.meta.size));
            }
            got.bytes().await.map(Ok)
        });
        match self.counted("reading", key, r)? {
            Ok(bytes) => {
                self.stats.downloads.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .download_bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(bytes)
            }
            Err(size) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                Err(format!(
                    "bucket: reading {key}: {size} bytes, more than the {max} a {} may hold: not read",
                    kind.name()
                ))
            }
        }
    }

    /// The bytes of `ranges` of the object at `key`, one request each.
    pub fn get_ranges(&self, key: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>, String> {
        self.get_ranges_coalesced(key, ranges, 0)
    }

    /// The bytes of `ranges` (sorted) of the object at `key`; ranges at most `gap` bytes apart
    /// are fetched in one request, up to ten requests at once.
    pub fn get_ranges_coalesced(
        &self,
        key: &str,
        ranges: &[Range<u64>],
        gap: u64,
    ) -> Result<Vec<Bytes>, String> {
        let location = Key::from(key);
        // What crosses the network: the merged ranges, gaps included.
        let fetched = AtomicU64::new(0);
        let r = self.block_on(object_store::coalesce_ranges(
            ranges,
            |range| {
                fetched.fetch_add(range.end - range.start, Ordering::Relaxed);
                self.s3.get_range(&location, range)
            },
            gap,
        ));
        let got = self.counted("reading", key, r)?;
        self.stats
            .download_bytes
            .fetch_add(fetched.into_inner(), Ordering::Relaxed);
        Ok(got)
    }

    fn learned_prefix(&self) -> String {
        format!("{}state/new_destination/", self.prefix)
    }

    /// Uploads this replica's learned destinations (`state/new_destination/<replica>.json`),
    /// which a replica taking over its namespaces reads.
    pub fn put_learned(&self, bytes: Bytes) -> Result<(), String> {
        let key = format!("{}{}.json", self.learned_prefix(), self.replica);
        self.put(&key, bytes)
    }

    /// The learned destinations every other replica uploaded, by replica.
    pub fn learned(&self) -> Result<Vec<(Arc<str>, Bytes)>, String> {
        let prefix = self.learned_prefix();
        let r = self.block_on(
            self.s3
                .list_with_delimiter(Some(&Key::from(prefix.as_str()))),
        );
        let listed = self.counted("listing", &prefix, r)?;
        let mut out = Vec::new();
        for m in &listed.objects {
            let key = m.location.as_ref();
            let Some(replica) = key.rsplit('/').next().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if replica == &*self.replica {
                continue;
            }
            out.push((replica.into(), self.get(key, ObjectKind::Learned)?));
        }
        Ok(out)
    }

    /// Lists the prefix once, so a wrong endpoint, bucket or credential stops the start with
    /// the store's own message, then reads the table (creating it when the bucket has none).
    pub async fn check(self: &Arc<Bucket>) -> Result<(), String> {
        let bucket = self.clone();
        let prefix = Key::from(format!("{}flows", self.prefix));
        let task = match &self.runtime {
            Some(rt) => rt.spawn(async move {
                if let Err(e) = bucket.s3.list_with_delimiter(Some(&prefix)).await {
                    return Err(format!("listing {}: {e}", bucket.prefix));
                }
                bucket.table.open().await
            }),
            None => unreachable!("the runtime lives until the bucket is dropped"),
        };
        match task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                Err(format!("bucket: {e}"))
            }
            Err(e) => Err(format!("bucket: listing: {e}")),
        }
    }

    /// The table's files, its log read again when last read more than [`table::REFRESH`]
    /// ago (other replicas' commits show within that).
    pub fn files(&self) -> Result<Arc<Vec<Object>>, String> {
        let now = tokio::time::Instant::now();
        let stale = self
            .refreshed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|at| now.duration_since(at) >= table::REFRESH);
        if stale {
            let r = self.block_on(self.table.refresh());
            if let Err(e) = r {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                return Err(format!("bucket: {e}"));
            }
            self.stats.lists.fetch_add(1, Ordering::Relaxed);
            *self.refreshed.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
        }
        Ok(self.table.files())
    }

    /// Removes the table's files older than `cutoff_ns` and deletes those removed long enough
    /// before `now_ns` (see [`Table::expire`]).
    pub fn expire(&self, cutoff_ns: i64, now_ns: i64) -> Result<(usize, usize), String> {
        match self.block_on(self.table.expire(cutoff_ns, now_ns)) {
            Ok((removed, deleted)) => {
                self.stats
                    .expired
                    .fetch_add(removed as u64, Ordering::Relaxed);
                self.stats
                    .vacuumed
                    .fetch_add(deleted as u64, Ordering::Relaxed);
                Ok((removed, deleted))
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                Err(format!("bucket: {e}"))
            }
        }
    }

    /// Whether this replica runs the table's expiry: the least replica name among those whose
    /// files hold flows of the table's last hour, as the log states them (no replica's clock
    /// decides). Every replica reads the same log, so one of the writing replicas owns it;
    /// when it stops writing, the next does.
    pub fn owns_expiry(&self) -> Result<bool, String> {
        let files = self.files()?;
        let newest = files.iter().map(|o| o.max_time).max().unwrap_or(i64::MIN);
        let recent = newest.saturating_sub(HOUR_NS);
        let owner = files
            .iter()
            .filter(|o| o.max_time >= recent)
            .map(|o| &o.replica)
            .min();
        Ok(owner == Some(&self.replica))
    }

    /// Commits `added` and the removal of `removed` to the table in one version.
    pub fn commit(&self, added: &[NewFile]) -> Result<u64, String> {
        let r = self.block_on(self.table.commit(added));
        match r {
            Ok(v) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                Ok(v)
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                Err(format!("bucket: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(prefix: &str) -> Bucket {
        Bucket::connect(&ObjectStoreConfig {
            endpoint: "http://127.0.0.1:9".into(),
            bucket: "flows".into(),
            prefix: prefix.into(),
            region: "us-east-1".into(),
            replica: "exfilwatch-7d9f-x2k".into(),
            access_key_id: "id".into(),
            secret_access_key: "secret".into(),
            ca_pem: None,
            allow_http: true,
            retention: Duration::from_secs(86_400),
        })
        .unwrap()
    }

    #[test]
    fn paths_are_hive_partitions_of_the_first_flows_hour() {
        let b = bucket("prod/");
        // 2026-11-30T13:59:59.999Z
        let t = 1_796_047_199_999_000_000;
        let (path, date, hour) = b.path(t, 65_537, 70_000);
        assert_eq!(
            path,
            "date=2026-11-30/hour=13/exfilwatch-7d9f-x2k-65537-70000.parquet"
        );
        assert_eq!((date.as_str(), hour.as_str()), ("2026-11-30", "13"));
        assert_eq!(
            b.key(&b.path(t + 1_000_000, 1, 1).0),
            "prod/flows/date=2026-11-30/hour=14/exfilwatch-7d9f-x2k-1-1.parquet"
        );
        assert_eq!(hour_of(t), 1_796_043_600_000_000_000);
    }
}
