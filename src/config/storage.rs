//! `storage:`: where state and flows are kept, and the flow store's bounds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::Validator;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStorage {
    pub(super) dir: Option<PathBuf>,
    pub(super) flows: RawFlows,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawFlows {
    memory_flows: Option<usize>,
    memory_bytes: Option<String>,
    chunk_flows: Option<usize>,
    disk: Option<bool>,
    retention: Option<String>,
    disk_bytes: Option<String>,
    flush_interval: Option<String>,
    object_store: Option<RawObjectStore>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawObjectStore {
    endpoint: Option<String>,
    bucket: Option<String>,
    prefix: Option<String>,
    region: Option<String>,
    replica: Option<String>,
    access_key_file: Option<PathBuf>,
    secret_key_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    allow_http: Option<bool>,
    retention: Option<String>,
}

/// Most flows a chunk may hold: with 8 text columns its dictionary then stays below 2^20 + 2
/// entries, so every code fits in 21 bits of a packed group key.
pub const MAX_CHUNK_FLOWS: usize = 131_072;

/// Flow store settings (`storage.flows` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowStoreConfig {
    /// Most flows kept in memory.
    pub memory_flows: usize,
    /// Most bytes the in-memory flows may take.
    pub memory_bytes: usize,
    /// Flows per chunk (and per parquet segment).
    pub chunk_flows: usize,
    /// Where segments go; `None` keeps memory only (older flows are dropped).
    pub dir: Option<PathBuf>,
    /// Segments older than this are deleted.
    pub retention: Duration,
    /// Most bytes the segments may take on disk.
    pub disk_bytes: u64,
    /// How long a flow may wait in the pending batch before it is queryable.
    pub flush_interval: Duration,
    /// An S3-compatible bucket the segments also go to, shared by every replica.
    pub object_store: Option<ObjectStoreConfig>,
}

/// `storage.flows.object_store`: the bucket the flow history is shared in.
#[derive(Clone, PartialEq, Eq)]
pub struct ObjectStoreConfig {
    /// `https://host:port` of the S3 API.
    pub endpoint: String,
    pub bucket: String,
    /// Keys start with this (empty, or ending in `/`), then `flows/date=.../hour=.../`.
    pub prefix: String,
    pub region: String,
    /// This replica's name in object keys: the setting, else `$HOSTNAME` (the pod's name).
    pub replica: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// PEM certificates to trust besides the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// Whether an `http://` endpoint is allowed (a test server, a sidecar on loopback).
    pub allow_http: bool,
    /// How long the flow table keeps flows (its expiry removes older files, its vacuum
    /// deletes them), and how far back queries look when they name no `since`.
    pub retention: Duration,
}

impl std::fmt::Debug for ObjectStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreConfig")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("replica", &self.replica)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("allow_http", &self.allow_http)
            .field("retention", &self.retention)
            .finish()
    }
}

impl Default for FlowStoreConfig {
    fn default() -> Self {
        FlowStoreConfig {
            memory_flows: 2_000_000,
            memory_bytes: 256 << 20,
            chunk_flows: 65_536,
            dir: None,
            retention: Duration::from_secs(7 * 86_400),
            disk_bytes: 10 << 30,
            flush_interval: Duration::from_millis(500),
            object_store: None,
        }
    }
}

impl RawFlows {
    pub(super) fn validate(&self, storage_dir: &Path, v: &mut Validator<'_>) -> FlowStoreConfig {
        let d = FlowStoreConfig::default();
        let memory_bytes = v.size(
            "storage.flows.memory_bytes",
            self.memory_bytes.as_deref(),
            d.memory_bytes as u64,
        );
        let config = FlowStoreConfig {
            memory_flows: self.memory_flows.unwrap_or(d.memory_flows),
            memory_bytes: usize::try_from(memory_bytes).unwrap_or(usize::MAX),
            chunk_flows: self.chunk_flows.unwrap_or(d.chunk_flows),
            dir: self.disk.unwrap_or(true).then(|| storage_dir.join("flows")),
            retention: v.duration(
                "storage.flows.retention",
                self.retention.as_deref(),
                d.retention,
            ),
            disk_bytes: v.size(
                "storage.flows.disk_bytes",
                self.disk_bytes.as_deref(),
                d.disk_bytes,
            ),
            flush_interval: v.duration(
                "storage.flows.flush_interval",
                self.flush_interval.as_deref(),
                d.flush_interval,
            ),
            object_store: None,
        };
        if !(1_000..=MAX_CHUNK_FLOWS).contains(&config.chunk_flows) {
            v.push(
                "storage.flows.chunk_flows",
                format!("{} is outside 1000-{MAX_CHUNK_FLOWS}", config.chunk_flows),
            );
        }
        if config.memory_flows < config.chunk_flows || config.memory_bytes < 1 << 20 {
            v.push(
                "storage.flows.memory_flows",
                format!(
                    "memory_flows {} must be at least chunk_flows {} and memory_bytes {} at least 1MiB",
                    config.memory_flows, config.chunk_flows, config.memory_bytes
                ),
            );
        }
        if config.flush_interval.is_zero() || config.retention.is_zero() {
            v.push(
                "storage.flows",
                "retention and flush_interval must be above zero",
            );
        }
        let object_store = self.object_store.as_ref().map(|o| o.validate(&config, v));
        FlowStoreConfig {
            object_store,
            ..config
        }
    }
}

/// A replica name or bucket may hold these: they go into object keys and page cursors as
/// they are.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl RawObjectStore {
    fn validate(&self, flows: &FlowStoreConfig, v: &mut Validator<'_>) -> ObjectStoreConfig {
        const KEY: &str = "storage.flows.object_store";
        if flows.dir.is_none() {
            v.push(
                KEY,
                "needs storage.flows.disk (segments are written locally before they are uploaded)",
            );
        }
        let endpoint = self.endpoint.clone().unwrap_or_default();
        let allow_http = self.allow_http.unwrap_or(false);
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            v.push(
                format!("{KEY}.endpoint"),
                format!("{endpoint:?}: an https:// URL of the S3 API is required"),
            );
        } else if endpoint.starts_with("http://") && !allow_http {
            v.push(
                format!("{KEY}.endpoint"),
                format!("{endpoint:?} is plain http: use https, or set allow_http: true"),
            );
        }
        let bucket = self.bucket.clone().unwrap_or_default();
        if !is_name(&bucket) {
            v.push(
                format!("{KEY}.bucket"),
                format!("{bucket:?}: a bucket name is required"),
            );
        }
        let mut prefix = self.prefix.clone().unwrap_or_default();
        let prefix_ok = !prefix.starts_with('/')
            && prefix
                .split('/')
                .filter(|p| !p.is_empty())
                .all(|p| is_name(p) && p != "." && p != "..");
        if !prefix_ok {
            v.push(
                format!("{KEY}.prefix"),
                format!("{prefix:?}: path segments of letters, digits, '-', '_' and '.'"),
            );
        }
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        let replica = self
            .replica
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_default();
        if !is_name(&replica) {
            v.push(
                format!("{KEY}.replica"),
                format!(
                    "{replica:?}: set it, or $HOSTNAME, to a name of letters, digits, '-', '_' and '.' (at most 128)"
                ),
            );
        }
        let secret = |v: &mut Validator<'_>, field: &str, file: &Option<PathBuf>, env: &str| {
            let text = match file {
                Some(p) => {
                    String::from_utf8(v.read_file(&format!("{KEY}.{field}"), p)).unwrap_or_default()
                }
                None => std::env::var(env).unwrap_or_default(),
            };
            let text = text.trim().to_owned();
            if text.is_empty() {
                v.push(
                    format!("{KEY}.{field}"),
                    format!("is required: a file holding it, or ${env}"),
                );
            }
            text
        };
        let access_key_id = secret(
            v,
            "access_key_file",
            &self.access_key_file,
            "AWS_ACCESS_KEY_ID",
        );
        let secret_access_key = secret(
            v,
            "secret_key_file",
            &self.secret_key_file,
            "AWS_SECRET_ACCESS_KEY",
        );
        let ca_pem = self
            .ca_file
            .as_ref()
            .map(|p| v.read_file(&format!("{KEY}.ca_file"), p));
        ObjectStoreConfig {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            bucket,
            prefix,
            region: self.region.clone().unwrap_or_else(|| "us-east-1".into()),
            replica,
            access_key_id,
            secret_access_key,
            ca_pem,
            allow_http,
            retention: v.duration(
                &format!("{KEY}.retention"),
                self.retention.as_deref(),
                flows.retention,
            ),
        }
    }
}
