//! The shared bucket: flow segments as parquet in S3-compatible object storage.
//!
//! With `storage.flows.object_store`, every segment a replica writes also goes to
//! `<prefix>flows/date=YYYY-MM-DD/hour=HH/<replica>-<first_seq>.parquet`, the hour being its
//! first flow's (UTC). A chunk holds flows within [`MAX_SPAN_NS`] of its first, so a query's
//! time range names the hours to list. The checkpoint of a chunk still growing goes to the
//! same key as the whole chunk later does, which replaces it. Columns are plain (the
//! segment's own; see docs/scale-out.md): DuckDB, Spark, Trino and pyarrow read them with
//! hive partitioning.
//!
//! The store's methods block: they run on the writer thread and on the API's blocking pool,
//! driving requests on the bucket's own small runtime.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{
    Certificate, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};

use crate::config::ObjectStoreConfig;

const HOUR_NS: i64 = 3_600 * 1_000_000_000;

/// How far from its first flow a chunk's flows may lie (either way) in a store with a bucket:
/// a flow further away starts a new chunk.
pub const MAX_SPAN_NS: i64 = HOUR_NS;

/// How long an hour's listing is reused: other replicas' uploads show within this.
const LISTING_TTL: Duration = Duration::from_secs(5);

/// Most hours a query may list.
pub const MAX_HOURS: i64 = 24 * 31;

/// An object in the bucket: one replica's segment (or its checkpoint of a growing chunk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: Arc<str>,
    pub replica: Arc<str>,
    pub first_seq: u64,
    /// The start of its hour partition, in nanoseconds since the epoch.
    pub hour_ns: i64,
    pub bytes: u64,
}

impl Object {
    /// The times its flows may have, from its hour alone.
    pub fn time_bounds(&self) -> (i64, i64) {
        (
            self.hour_ns - MAX_SPAN_NS,
            self.hour_ns + HOUR_NS + MAX_SPAN_NS - 1,
        )
    }
}

/// An hour's objects, and when they were listed.
type Listing = (tokio::time::Instant, Arc<Vec<Object>>);

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct BucketStats {
    pub uploads: AtomicU64,
    pub upload_bytes: AtomicU64,
    pub errors: AtomicU64,
    pub downloads: AtomicU64,
    pub lists: AtomicU64,
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
    s3: AmazonS3,
    prefix: String,
    replica: Arc<str>,
    runtime: Option<tokio::runtime::Runtime>,
    listings: Mutex<HashMap<i64, Listing>>,
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

/// The first and last hour whose objects may hold flows of `[since_ns, until_ns)`; an error
/// when they are more than one query may list.
pub fn hours(since_ns: i64, until_ns: i64) -> Result<(i64, i64), String> {
    let first = hour_of(since_ns) - MAX_SPAN_NS;
    let last = hour_of(until_ns.saturating_sub(1)) + MAX_SPAN_NS;
    if (last - first) / HOUR_NS > MAX_HOURS {
        return Err(format!(
            "a query of the bucket may cover at most {} days: narrow since/until",
            MAX_HOURS / 24 - 1
        ));
    }
    Ok((first, last))
}

impl Bucket {
    /// A client for the configured bucket; nothing is sent until it is used.
    pub fn connect(config: &ObjectStoreConfig) -> Result<Bucket, String> {
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
        Ok(Bucket {
            s3,
            prefix: config.prefix.clone(),
            replica: config.replica.as_str().into(),
            runtime: Some(runtime),
            listings: Mutex::default(),
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

    fn hour_prefix(&self, hour_ns: i64) -> String {
        let t = crate::common::clock::format_time(hour_ns);
        format!(
            "{}flows/date={}/hour={}/",
            self.prefix,
            t.get(..10).unwrap_or_default(),
            t.get(11..13).unwrap_or_default()
        )
    }

    /// The key of this replica's chunk that starts with sequence number `first_seq` at
    /// `first_time_ns`.
    pub fn key(&self, first_time_ns: i64, first_seq: u64) -> String {
        format!(
            "{}{}-{first_seq}.parquet",
            self.hour_prefix(hour_of(first_time_ns)),
            self.replica
        )
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
    /// the store's own message.
    pub async fn check(self: &Arc<Bucket>) -> Result<(), String> {
        let bucket = self.clone();
        let prefix = Key::from(format!("{}flows", self.prefix));
        let task = match &self.runtime {
            Some(rt) => rt.spawn(async move { bucket.s3.list_with_delimiter(Some(&prefix)).await }),
            None => unreachable!("the runtime lives until the bucket is dropped"),
        };
        match task.await {
            Ok(r) => self.counted("listing", &self.prefix, r).map(drop),
            Err(e) => Err(format!("bucket: listing: {e}")),
        }
    }

    /// Every object of the hour starting at `hour_ns`, listed at most once per
    /// [`LISTING_TTL`].
    fn list(&self, hour_ns: i64) -> Result<Arc<Vec<Object>>, String> {
        let now = tokio::time::Instant::now();
        {
            let listings = self.listings.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, objects)) = listings.get(&hour_ns)
                && now.duration_since(*at) < LISTING_TTL
            {
                return Ok(objects.clone());
            }
        }
        let prefix = self.hour_prefix(hour_ns);
        let r = self.block_on(
            self.s3
                .list_with_delimiter(Some(&Key::from(prefix.as_str()))),
        );
        let listed = self.counted("listing", &prefix, r)?;
        self.stats.lists.fetch_add(1, Ordering::Relaxed);
        let mut objects: Vec<Object> = listed
            .objects
            .iter()
            .filter_map(|m| {
                let key = m.location.as_ref();
                let name = key.rsplit('/').next()?.strip_suffix(".parquet")?;
                let (replica, seq) = name.rsplit_once('-')?;
                // Replica names go into page cursors and links as they are.
                let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_.".contains(&b);
                if replica.is_empty() || !replica.bytes().all(plain) {
                    return None;
                }
                Some(Object {
                    key: key.into(),
                    replica: replica.into(),
                    first_seq: seq.parse().ok()?,
                    hour_ns,
                    bytes: m.size,
                })
            })
            .collect();
        objects.sort_by(|a, b| (&a.replica, a.first_seq).cmp(&(&b.replica, b.first_seq)));
        let objects = Arc::new(objects);
        let mut listings = self.listings.lock().unwrap_or_else(|p| p.into_inner());
        listings.retain(|_, (at, _)| now.duration_since(*at) < LISTING_TTL);
        listings.insert(hour_ns, (now, objects.clone()));
        Ok(objects)
    }

    /// The objects of `hours` (from [`hours`]), newest hour first.
    pub fn objects(&self, (first, mut last): (i64, i64)) -> Result<Vec<Object>, String> {
        let mut out = Vec::new();
        while last >= first {
            out.extend(self.list(last)?.iter().rev().cloned());
            last -= HOUR_NS;
        }
        Ok(out)
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
    fn keys_are_hive_partitions_of_the_first_flows_hour() {
        let b = bucket("prod/");
        // 2026-11-30T13:59:59.999Z
        let t = 1_796_047_199_999_000_000;
        assert_eq!(
            b.key(t, 65_537),
            "prod/flows/date=2026-11-30/hour=13/exfilwatch-7d9f-x2k-65537.parquet"
        );
        assert_eq!(
            b.key(t + 1_000_000, 1),
            "prod/flows/date=2026-11-30/hour=14/exfilwatch-7d9f-x2k-1.parquet"
        );
        assert_eq!(hour_of(t), 1_796_043_600_000_000_000);
    }

    #[test]
    fn an_object_bounds_its_flows_by_its_hour() {
        let o = Object {
            key: "k".into(),
            replica: "r".into(),
            first_seq: 1,
            hour_ns: 10 * HOUR_NS,
            bytes: 1,
        };
        assert_eq!(o.time_bounds(), (9 * HOUR_NS, 12 * HOUR_NS - 1));
        // A query of [10:30, 11:00) lists the hours from 09:00 to 11:00, and no more than
        // 31 days of them.
        let (h, m) = (HOUR_NS, HOUR_NS / 60);
        assert_eq!(hours(10 * h + 30 * m, 11 * h), Ok((9 * h, 11 * h)));
        assert!(hours(0, 40 * 24 * h).is_err());
    }
}
