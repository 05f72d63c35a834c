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
        config
    }
}
