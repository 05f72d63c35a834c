//! The flow store: every received flow, kept so SREs can ask about them hours later.
//!
//! Hubble Relay remembers minutes of flows; exfilwatch keeps them in a bounded columnar store
//! on polars. The pipeline hands each flow to a [`FlowSink`] (an allocation-free push into a
//! pending batch); a writer thread moves batches into the store off the per-flow path. Recent
//! flows stay in memory as [`Chunk`]s, bounded by count and bytes; older chunks roll into
//! zstd parquet segments under `storage.dir/flows`, deleted by age and total size. Every flow
//! gets a sequence number that survives restarts; pages of results are cut by it, so a cursor
//! neither skips nor repeats flows while new ones arrive.
//!
//! Queries ([`FlowStore::list`], [`FlowStore::top`]) block: the API runs them in
//! `spawn_blocking` (polars' collect must not run on an async worker).
//!
//! This file is the store's face: open, append, seal, the memory bounds, checkpoint and
//! persist. Its rooms: `sink` (the writer thread), `segment` (files and retention), `source`
//! (what a query reads), `cache` (answers of sealed chunks), `select` (one chunk's rows for a
//! page), `list` (pages and cursors), `top` (groups), `connections` (the advisor's folds),
//! `remote` (the bucket's uploads and reads), with `chunk`, `query`, `json`, `bucket` and
//! `summaries` below them.

pub mod bucket;
mod cache;
pub mod chunk;
mod compact;
pub mod connections;
mod fetch;
pub mod json;
mod list;
pub mod query;
mod remote;
mod segment;
mod select;
mod sink;
mod source;
pub mod summaries;
pub mod table;
mod testing;
mod top;
mod upload;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use polars::prelude::*;

use chunk::NumberSets;
pub use chunk::{Builder, Chunk, Col, Row};
pub use connections::{Connection, ConnectionKey};
pub use query::{BadParameter, Filter};

pub use list::{Cursor, MAX_SEGMENTS_PER_QUERY, Page};
pub use remote::{Export, Exporter};
pub use sink::FlowSink;
pub use top::{Group, GroupBy};

use cache::{
    Answers, CONNECTIONS_CACHE, ConnectionsKey, MATCH_CACHE_BYTES, MatchKey, SEGMENT_CACHE,
    TOP_CACHE_BYTES, TopKey,
};
use fetch::Stored;
use segment::{Dictionary, Segment};
use source::Source;

use crate::common::clock::span_ns;
use crate::config::{FlowStoreConfig, MAX_CHUNK_FLOWS};
use crate::flow::FlowEvent;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("flow store: {0}")]
    Polars(#[from] PolarsError),
    #[error("flow store {path}: {message}")]
    Segment { path: String, message: String },
    #[error("flow store: {0}")]
    Bucket(String),
    #[error("cursor {0}: not a cursor this store returned")]
    Cursor(String),
    #[error("flow store {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Counters and sizes, for `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub appended: AtomicU64,
    /// Flows the sink refused because the writer fell behind.
    pub dropped: AtomicU64,
    /// Flows removed from memory without a segment to go to, or by retention.
    pub expired: AtomicU64,
    pub segment_errors: AtomicU64,
    pub memory_flows: AtomicU64,
    pub memory_bytes: AtomicU64,
    pub disk_flows: AtomicU64,
    pub disk_bytes: AtomicU64,
    pub segments: AtomicU64,
    /// `/flows/top` chunk answers served from the cache instead of grouping the chunk again.
    pub top_cache_hits: AtomicU64,
    /// Segments and objects read whole by queries.
    pub segment_reads: AtomicU64,
    /// Segments read column-first: by `/flows` ([`FlowStore::select`]) and `/flows/top`.
    pub segment_filtered_reads: AtomicU64,
    /// Stored chunks a `/flows` page took from the rows kept of an earlier page.
    pub match_cache_hits: AtomicU64,
    /// Segments a `/flows` page ruling out forwarded flows answered from the segment's
    /// other flows, kept in memory since it was written.
    pub unforwarded_hits: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    builder: Builder,
    /// Oldest first.
    sealed: VecDeque<Arc<Chunk>>,
    /// Oldest first.
    segments: VecDeque<Segment>,
    next_seq: u64,
    /// The builder's rows as a chunk, kept while no row is added.
    snapshot: Option<Arc<Chunk>>,
    /// The file a checkpoint wrote the builder's rows to (its first sequence number): they
    /// are still in memory, and the file only lets them survive a crash. Replaced by the next
    /// checkpoint, deleted when the chunk they grow into is written as a whole.
    partial: Option<(u64, PathBuf)>,
    leaving: Leaving,
}

/// The columns of the chunk that last left memory (its segment written, or its flows
/// expired), freed as the builder fills the room the chunk left, a few at a time, not all at
/// once. Freeing a whole chunk (9.4 MB of Cilium-shaped flows) at once made the live heap a
/// sawtooth that deep, and the allocator gave back its freed pages to the system at some
/// lows only to take them again a second later: the resident set's dips
/// (docs/reliability.md). Queries no longer see these columns; what they hold stays within
/// the builder's room, which the bound counts as full.
#[derive(Debug, Default)]
struct Leaving {
    columns: Vec<Column>,
    /// Bytes of all the chunk's columns.
    of: usize,
}

impl Leaving {
    /// Holds `chunk`'s columns, freeing what it held before.
    fn hold(&mut self, chunk: &Chunk) {
        self.columns = chunk.frame.columns().to_vec();
        self.of = self.held();
    }

    /// Bytes of the columns still held.
    fn held(&self) -> usize {
        self.columns.iter().map(Self::bytes).sum()
    }

    /// Frees columns, the last first, until they hold at most the share `left` (0 to 1) of
    /// the chunk's bytes.
    fn keep(&mut self, left: f64) {
        let allowed = (self.of as f64 * left.clamp(0.0, 1.0)) as usize;
        let mut held = self.held();
        while held > allowed
            && let Some(column) = self.columns.pop()
        {
            held = held.saturating_sub(Self::bytes(&column));
        }
    }

    fn bytes(column: &Column) -> usize {
        column.as_materialized_series().estimated_size()
    }
}

/// The store. Appends come from one writer; queries from any thread.
#[derive(Debug)]
pub struct FlowStore {
    config: FlowStoreConfig,
    inner: Mutex<Inner>,
    /// Recently read segments, newest use last.
    cache: Answers<PathBuf, Arc<Chunk>>,
    /// `/flows/top` answers of whole chunks, which never change once sealed.
    tops: Answers<TopKey, Arc<Vec<Group>>>,
    /// Rows of stored chunks that `/flows` filters matched (see [`FlowStore::select`]).
    matches: Answers<MatchKey, Option<Arc<Chunk>>>,
    /// The policy advisor's connections of whole chunks, by chunk and namespace; oldest first.
    connections: Answers<ConnectionsKey, Arc<Vec<Connection>>>,
    /// Hourly connection summaries written beside the segments (stores with a directory).
    summaries: Mutex<Option<summaries::Summaries>>,
    /// The bucket segments also go to, and queries read (`storage.flows.object_store`).
    bucket: Option<Arc<bucket::Bucket>>,
    /// Segments on their way to the table.
    uploads: upload::Uploads,
    /// What else a checkpoint uploads: the detectors' learned state (see [`Exporter`]).
    exporter: Mutex<Option<Exporter>>,
    /// The version the exporter last uploaded.
    exported: AtomicU64,
    writable: bool,
    pub stats: StoreStats,
}

/// Rows per parquet row group in a segment, and per block the open chunk is frozen in: a
/// quarter chunk (16,384 flows by default). A segment is written a group at a time, so a
/// write holds one group's strings and encoded pages beside the chunk, not the whole
/// chunk's; reading a stretch of rows decodes only the groups it touches. Each group has
/// dictionaries of its own: writing 65,536 Cilium-shaped flows holds 9 MB at its peak instead
/// of 27 MB in one group, and the segment takes some 17 % more disk
/// (`tests/segment_memory.rs`; docs/reliability.md). A query's snapshot of the open chunk
/// shares its full groups ([`Builder`]).
fn row_group(chunk_flows: usize) -> usize {
    (chunk_flows / 4).max(1)
}

impl FlowStore {
    /// Opens the store, finding the segments a previous run left under `config.dir`.
    pub fn open(config: FlowStoreConfig) -> Result<Arc<FlowStore>, StoreError> {
        FlowStore::open_with(config, true)
    }

    /// Opens the segments under `config.dir` to query them only: nothing is created, removed
    /// or expired, so a running service's directory can be read beside it.
    pub fn open_read_only(config: FlowStoreConfig) -> Result<Arc<FlowStore>, StoreError> {
        FlowStore::open_with(config, false)
    }

    fn open_with(config: FlowStoreConfig, writable: bool) -> Result<Arc<FlowStore>, StoreError> {
        let config = FlowStoreConfig {
            chunk_flows: config.chunk_flows.clamp(1, MAX_CHUNK_FLOWS),
            ..config
        };
        let mut segments = Vec::new();
        if let Some(dir) = &config.dir {
            let io = |source| StoreError::Io {
                path: dir.display().to_string(),
                source,
            };
            if writable {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            for entry in std::fs::read_dir(dir).map_err(io)? {
                let entry = entry.map_err(io)?;
                let path = entry.path();
                if path.is_dir() {
                    continue;
                }
                if path.extension().is_some_and(|e| e == "tmp") {
                    if !writable {
                        continue;
                    }
                    // A segment whose write did not finish; its flows were still in memory.
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
                match Segment::parse(&path, bytes) {
                    Some(s) => segments.push(s),
                    None => tracing::warn!(
                        "flow store: ignoring {}: not a segment name",
                        path.display()
                    ),
                }
            }
        }
        // A checkpoint's file of a chunk still growing is superseded by the next checkpoint's
        // and by the whole chunk's segment; one left behind by a crash is dropped here.
        segments.sort_by_key(|s| (s.first_seq, std::cmp::Reverse(s.last_seq)));
        let mut kept: Vec<Segment> = Vec::with_capacity(segments.len());
        for s in segments {
            if kept.last().is_some_and(|k| s.last_seq <= k.last_seq) {
                if writable {
                    let _ = std::fs::remove_file(&s.path);
                }
                continue;
            }
            kept.push(s);
        }
        let segments = kept;
        let mut next_seq = segments.last().map_or(1, |s| s.last_seq + 1);
        let bucket = match &config.object_store {
            Some(o) => Some(Arc::new(
                bucket::Bucket::connect(o).map_err(StoreError::Bucket)?,
            )),
            None => None,
        };
        if bucket.is_some() {
            // Keys are replica and first sequence number: starting from the clock's
            // microseconds, a replica name used again with an empty disk never reuses one
            // (no replica stores a million flows a second).
            let micros = crate::common::clock::now_ns() / 1_000;
            next_seq = next_seq.max(u64::try_from(micros).unwrap_or(0));
        }
        let stored_until = segments
            .iter()
            .map(|s| s.max_time)
            .max()
            .unwrap_or(i64::MIN);
        let summaries = config
            .dir
            .as_ref()
            .map(|dir| summaries::Summaries::open(dir, stored_until, writable));
        let store = Arc::new(FlowStore {
            inner: Mutex::new(Inner {
                builder: Builder::new(config.chunk_flows, row_group(config.chunk_flows)),
                sealed: VecDeque::new(),
                segments: segments.into(),
                next_seq,
                snapshot: None,
                partial: None,
                leaving: Leaving::default(),
            }),
            config,
            cache: Answers::new(SEGMENT_CACHE, SEGMENT_CACHE as usize),
            tops: Answers::new(TOP_CACHE_BYTES, 16_384),
            matches: Answers::new(MATCH_CACHE_BYTES, 4_096),
            connections: Answers::new(CONNECTIONS_CACHE, CONNECTIONS_CACHE as usize),
            summaries: Mutex::new(summaries),
            bucket,
            uploads: upload::Uploads::default(),
            exporter: Mutex::default(),
            exported: AtomicU64::new(u64::MAX),
            writable,
            stats: StoreStats::default(),
        });
        if writable {
            store.retain(crate::common::clock::now_ns());
            if store.bucket.is_some() {
                store.start_uploader();
            }
        } else {
            store.prune_summaries();
        }
        store.update_sizes(&store.lock());
        Ok(store)
    }

    /// A memory-only store (tests, replay).
    pub fn in_memory(config: FlowStoreConfig) -> Arc<FlowStore> {
        let config = FlowStoreConfig {
            dir: None,
            ..config
        };
        match FlowStore::open(config) {
            Ok(s) => s,
            Err(_) => unreachable!("a memory-only store touches no file"),
        }
    }

    pub fn config(&self) -> &FlowStoreConfig {
        &self.config
    }

    /// The shared bucket, when the store has one.
    pub fn bucket(&self) -> Option<&Arc<bucket::Bucket>> {
        self.bucket.as_ref()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds flows; seals full chunks and moves the oldest out of memory when over a bound.
    pub fn append(&self, rows: &[Row]) {
        let mut inner = self.lock();
        let bounded = self.bucket.is_some();
        for row in rows {
            if bounded
                && let Some(first) = inner.builder.first_time()
                && (row.time_ns - first).abs() > bucket::MAX_SPAN_NS
            {
                Self::seal(&mut inner);
            }
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.builder.push(seq, row);
            if inner.builder.len() >= self.config.chunk_flows {
                Self::seal(&mut inner);
            }
        }
        inner.snapshot = None;
        let filled = inner.builder.len() as f64 / self.config.chunk_flows as f64;
        inner.leaving.keep(1.0 - filled);
        self.stats
            .appended
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        drop(inner);
        self.enforce_bounds();
    }

    /// Seals the builder's rows as a chunk. The chunk that left memory for the builder's
    /// room is freed by then, whatever the size of the batch that filled it.
    fn seal(inner: &mut Inner) {
        inner.leaving.keep(0.0);
        match inner.builder.seal() {
            Ok(chunk) => inner.sealed.push_back(Arc::new(chunk)),
            Err(e) => tracing::error!("flow store: sealing a chunk: {e}"),
        }
    }

    fn memory(inner: &Inner) -> (usize, usize) {
        let rows = inner.builder.len() + inner.sealed.iter().map(|c| c.rows()).sum::<usize>();
        let bytes = inner.builder.bytes() + inner.sealed.iter().map(|c| c.bytes()).sum::<usize>();
        (rows, bytes)
    }

    fn update_sizes(&self, inner: &Inner) {
        let (rows, bytes) = Self::memory(inner);
        let s = &self.stats;
        s.memory_flows.store(rows as u64, Ordering::Relaxed);
        s.memory_bytes.store(bytes as u64, Ordering::Relaxed);
        s.segments
            .store(inner.segments.len() as u64, Ordering::Relaxed);
        s.disk_flows.store(
            inner.segments.iter().map(|x| x.rows).sum(),
            Ordering::Relaxed,
        );
        s.disk_bytes.store(
            inner.segments.iter().map(|x| x.bytes).sum(),
            Ordering::Relaxed,
        );
    }

    /// Moves the oldest chunks out while memory is over its bounds. The chunk stays
    /// queryable in memory until its segment is on disk.
    fn enforce_bounds(&self) {
        loop {
            let oldest = {
                let inner = self.lock();
                let (rows, bytes) = Self::memory(&inner);
                if rows <= self.config.memory_flows && bytes <= self.config.memory_bytes {
                    self.update_sizes(&inner);
                    return;
                }
                match inner.sealed.front() {
                    Some(c) => c.clone(),
                    None => {
                        self.update_sizes(&inner);
                        return;
                    }
                }
            };
            let segment = self.config.dir.as_ref().map(|dir| self.write(dir, &oldest));
            let wrote = matches!(segment, Some(Ok(_)));
            if wrote {
                self.summarise(&oldest);
                if let Some(s) = self.summaries_lock().as_mut() {
                    s.add(&oldest);
                }
            }
            let mut inner = self.lock();
            inner.sealed.pop_front();
            inner.leaving.hold(&oldest);
            match segment {
                Some(Ok(s)) => Self::push_segment(&mut inner, s),
                Some(Err(e)) => {
                    self.stats.segment_errors.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .expired
                        .fetch_add(oldest.rows() as u64, Ordering::Relaxed);
                    tracing::error!("{e}; {} flows dropped from the store", oldest.rows());
                }
                None => {
                    self.stats
                        .expired
                        .fetch_add(oldest.rows() as u64, Ordering::Relaxed);
                }
            }
            drop(inner);
            if wrote {
                self.retain(crate::common::clock::now_ns());
            }
        }
    }

    fn summaries_lock(&self) -> MutexGuard<'_, Option<summaries::Summaries>> {
        self.summaries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes every flow still in memory to segments, at shutdown, so a restart keeps them.
    pub fn persist(&self) -> Result<(), StoreError> {
        let Some(dir) = self.config.dir.clone() else {
            return Ok(());
        };
        {
            let mut inner = self.lock();
            if !inner.builder.is_empty() {
                let chunk = inner.builder.seal()?;
                inner.sealed.push_back(Arc::new(chunk));
                inner.snapshot = None;
            }
        }
        self.write_sealed(&dir)?;
        self.upload_round()?;
        self.export()
    }

    /// Makes every flow stored so far durable, for a source's checkpoint: sealed chunks go to
    /// disk as segments, and the chunk still growing is written to a checkpoint file (which
    /// the next checkpoint replaces), so segments keep their size however often checkpoints
    /// come. Called by the store's one writer; queries go on meanwhile.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let Some(dir) = self.config.dir.clone() else {
            return Ok(());
        };
        self.write_sealed(&dir)?;
        let (snapshot, old) = {
            let mut inner = self.lock();
            if inner.builder.is_empty() {
                return Ok(());
            }
            let snapshot = Self::builder_snapshot(&mut inner)?;
            let written = dir.join(Segment::file_name(&snapshot));
            if inner.partial.as_ref().is_some_and(|(_, p)| *p == written) {
                // Nothing arrived since the last checkpoint.
                return Ok(());
            }
            (snapshot, inner.partial.clone())
        };
        let segment = self.write(&dir, &snapshot)?;
        if let Some((_, old)) = old.filter(|(_, p)| *p != segment.path) {
            let _ = std::fs::remove_file(old);
        }
        self.lock().partial = Some((snapshot.first_seq, segment.path));
        Ok(())
    }

    /// Reports checkpoint `n` through `durable` once its flows are durable: now, for a store
    /// without a bucket (after [`FlowStore::checkpoint`]), or once the uploader committed
    /// them to the table.
    pub fn mark_durable(&self, n: u64, durable: &Arc<tokio::sync::watch::Sender<u64>>) {
        if self.bucket.is_some() {
            self.uploads.mark(n, durable);
        } else {
            durable.send_replace(n);
        }
    }

    /// Moves every sealed chunk to disk, oldest first.
    fn write_sealed(&self, dir: &Path) -> Result<(), StoreError> {
        let mut wrote = false;
        loop {
            let Some(chunk) = self.lock().sealed.front().cloned() else {
                break;
            };
            let segment = self.write(dir, &chunk)?;
            wrote = true;
            self.summarise(&chunk);
            if let Some(s) = self.summaries_lock().as_mut() {
                s.add(&chunk);
            }
            let mut inner = self.lock();
            inner.sealed.pop_front();
            Self::push_segment(&mut inner, segment);
            self.update_sizes(&inner);
        }
        if wrote {
            self.retain(crate::common::clock::now_ns());
        }
        Ok(())
    }

    /// The builder's rows as a chunk, made once per change of the builder.
    fn builder_snapshot(inner: &mut Inner) -> Result<Arc<Chunk>, StoreError> {
        if let Some(s) = &inner.snapshot {
            return Ok(s.clone());
        }
        let s = Arc::new(inner.builder.snapshot()?);
        inner.snapshot = Some(s.clone());
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flowstore::testing::*;

    #[test]
    fn checkpoints_make_every_flow_durable_without_small_segments() {
        let dir = tempfile::tempdir().unwrap();
        let config = small(Some(dir.path().to_path_buf()));
        let all = flows(2_600);
        let store = FlowStore::open(config.clone()).unwrap();
        let rows: Vec<Row> = all.iter().map(Row::new).collect();
        // 300 flows at a time, a checkpoint after each: one file for the growing chunk, which
        // the next checkpoint replaces, and whole segments for the sealed chunks.
        for batch in rows.chunks(300) {
            store.append(batch);
            store.checkpoint().unwrap();
        }
        let files = parquet_files(dir.path());
        assert_eq!(
            files.len(),
            3,
            "two 1000-flow segments and one checkpoint: {files:?}"
        );
        assert!(
            files.iter().any(|f| f.starts_with("flows_2001_2600_")),
            "{files:?}"
        );
        // Every checkpointed flow survives a crash (the store dropped without persist), once.
        drop(store);
        let reopened = FlowStore::open(config.clone()).unwrap();
        let page = reopened.list(&Filter::default(), None, 10_000).unwrap();
        assert_eq!(page.flows.len(), 2_600);
        assert_eq!(reopened.lock().next_seq, 2_601);

        // A crash between writing a checkpoint and deleting the one it replaces, or the chunk's
        // segment and its checkpoint: the superseded file is dropped at the next open.
        let stale = dir.path().join(files[2].replacen("_2600_", "_2300_", 1));
        std::fs::copy(dir.path().join(&files[2]), &stale).unwrap();
        let reopened = FlowStore::open(config).unwrap();
        assert!(!stale.exists());
        assert_eq!(parquet_files(dir.path()), files);
        let page = reopened.list(&Filter::default(), None, 10_000).unwrap();
        assert_eq!(page.flows.len(), 2_600);
    }

    #[test]
    fn memory_stays_within_its_bounds_and_segments_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let flows = flows(10_000);
        let store = filled(small(Some(dir.path().into())), &flows);
        let s = &store.stats;
        assert!(s.memory_flows.load(Ordering::Relaxed) <= 3_000);
        assert_eq!(
            s.memory_flows.load(Ordering::Relaxed) + s.disk_flows.load(Ordering::Relaxed),
            10_000
        );
        store.persist().unwrap();
        drop(store);
        // A segment whose write a crash interrupted.
        let torn = dir.path().join("flows_10001_11000_0_0_1000.tmp");
        std::fs::write(&torn, b"PAR1 half a segment").unwrap();
        let reopened = FlowStore::open(small(Some(dir.path().into()))).unwrap();
        assert!(!torn.exists(), "an unfinished segment is removed");
        assert_eq!(reopened.stats.disk_flows.load(Ordering::Relaxed), 10_000);
        let all = all_pages(&reopened, &Filter::default(), 4_000);
        assert_eq!(all, (1..=10_000).rev().collect::<Vec<u64>>());
        reopened.append(&[Row::new(&flows[0])]);
        let newest = reopened.list(&Filter::default(), None, 1).unwrap();
        assert_eq!(newest.flows[0].seq, 10_001, "sequence numbers continue");

        // Memory only: the bound holds by dropping the oldest flows.
        let bytes = FlowStore::in_memory(FlowStoreConfig {
            memory_bytes: 600_000,
            chunk_flows: 1_000,
            ..FlowStoreConfig::default()
        });
        for batch in flows.chunks(500) {
            bytes.append(&batch.iter().map(Row::new).collect::<Vec<_>>());
            assert!(bytes.stats.memory_bytes.load(Ordering::Relaxed) <= 600_000);
        }
        assert!(bytes.stats.expired.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn a_chunk_that_left_memory_is_freed_as_the_builder_fills_its_room() {
        let dir = tempfile::tempdir().unwrap();
        let store = FlowStore::open(FlowStoreConfig {
            memory_flows: 1_000,
            ..small(Some(dir.path().into()))
        })
        .unwrap();
        let rows: Vec<Row> = flows(3_000).iter().map(Row::new).collect();
        let leaving = |store: &FlowStore| {
            let inner = store.lock();
            (inner.leaving.columns.len(), inner.leaving.held())
        };
        // A full chunk, then the flow that sends it to disk: all its columns wait.
        store.append(&rows[..1_001]);
        assert_eq!(store.stats.segments.load(Ordering::Relaxed), 1);
        let (columns, all) = leaving(&store);
        assert!(
            columns > 20 && all > 1_000 * 100,
            "{columns} columns of {all} bytes held"
        );
        // Half the builder filled: half the bytes are freed, to within a column or two.
        store.append(&rows[1_001..1_500]);
        let (_, half) = leaving(&store);
        assert!(
            half <= all / 2 && half + all / 16 > all / 2,
            "{half} of {all} bytes held"
        );
        // A batch that fills the builder frees the rest, though it leaves the new builder
        // as empty as the first.
        store.append(&rows[1_500..2_000]);
        assert_eq!(leaving(&store), (0, 0));
        assert_eq!(store.stats.segments.load(Ordering::Relaxed), 1);
        // The next flow sends that chunk to disk in turn.
        store.append(&rows[2_000..2_001]);
        assert_eq!(store.stats.segments.load(Ordering::Relaxed), 2);
        assert_eq!(leaving(&store), (columns, all));
    }
}
