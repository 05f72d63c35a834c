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

pub mod bucket;
pub mod chunk;
pub mod connections;
pub mod json;
pub mod query;
pub mod summaries;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use polars::prelude::*;

use chunk::NumberSets;
pub use chunk::{Builder, Chunk, Col, Row};
pub use connections::{Connection, ConnectionKey};
pub use query::{BadParameter, Filter};

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
    #[error(
        "the query needs {segments} segments read back from disk, more than {MAX_SEGMENTS_PER_QUERY} a query may read: narrow since/until"
    )]
    TooBroad { segments: usize },
    #[error("flow store: {0}")]
    Bucket(String),
    #[error("{0}")]
    Range(String),
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

/// A parquet segment, described by its file name.
#[derive(Debug, Clone)]
struct Segment {
    path: PathBuf,
    first_seq: u64,
    last_seq: u64,
    min_time: i64,
    max_time: i64,
    rows: u64,
    bytes: u64,
    /// The strings and addresses its flows hold, kept from when this run wrote it (shared with
    /// the chunk, not copied): a query whose filter names none of them skips the segment
    /// without reading it. Segments of an earlier run have none and are read.
    dictionary: Option<Dictionary>,
}

/// A chunk's dictionary of strings and of addresses, the numbers it holds, and its flows
/// that were not forwarded when they are few.
#[derive(Debug, Clone)]
struct Dictionary {
    texts: Arc<[crate::flow::intern::Sym]>,
    ips: Arc<[Option<std::net::IpAddr>]>,
    numbers: Arc<NumberSets>,
    /// The rows whose verdict is not FORWARDED (drops, errors, audits) as a chunk of their
    /// own (copied: dictionaries of only what they use), when at most [`FlowStore::few`]: a
    /// filter that rules out forwarded flows (`verdict=DROPPED`, what an analyst asks first)
    /// is answered from them without reading the segment.
    unforwarded: Option<Arc<Chunk>>,
}

/// A frame's rows, counted as dictionary entries for the bound on what segments keep.
const ENTRIES_PER_ROW: usize = 8;

impl Dictionary {
    /// Entries held, a word of number sets and an eighth of a kept row counted as one.
    fn entries(&self) -> usize {
        self.texts.len()
            + self.ips.len()
            + self.numbers.words()
            + self.unforwarded.as_ref().map_or(0, |c| {
                c.rows() * ENTRIES_PER_ROW + c.texts.len() + c.ips.len()
            })
    }
}

/// Most dictionary entries kept for segments on disk (about 20 MiB); the oldest segments'
/// go first.
const MAX_DICTIONARY_ENTRIES: usize = 1 << 20;

impl Segment {
    /// Whether the segment may hold flows matching `filter`: false only when its dictionary
    /// is known and lacks what the filter names.
    fn may_match(&self, filter: &Filter) -> bool {
        self.dictionary
            .as_ref()
            .is_none_or(|d| filter.can_match(&d.texts, &d.ips, &d.numbers))
    }
    fn file_name(c: &Chunk) -> String {
        format!(
            "flows_{}_{}_{}_{}_{}.parquet",
            c.first_seq,
            c.last_seq,
            c.min_time,
            c.max_time,
            c.rows()
        )
    }

    fn parse(path: &Path, bytes: u64) -> Option<Segment> {
        let name = path.file_name()?.to_str()?;
        let rest = name.strip_prefix("flows_")?.strip_suffix(".parquet")?;
        let mut parts = rest.split('_');
        let mut next = || parts.next()?.parse::<i64>().ok();
        let (first, last, min, max, rows) = (next()?, next()?, next()?, next()?, next()?);
        Some(Segment {
            path: path.to_path_buf(),
            first_seq: u64::try_from(first).ok()?,
            last_seq: u64::try_from(last).ok()?,
            min_time: min,
            max_time: max,
            rows: u64::try_from(rows).ok()?,
            bytes,
            dictionary: None,
        })
    }
}

/// Where a query reads: a chunk in memory, a segment on disk, or an object in the bucket
/// (with its span once read).
#[derive(Debug, Clone)]
enum Source {
    Memory(Arc<Chunk>),
    Disk(Segment),
    Remote(bucket::Object, Option<Span>),
}

/// A chunk's last sequence number and time range, learnt when an object is first read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    last_seq: u64,
    min_time: i64,
    max_time: i64,
}

impl Source {
    /// False only for a segment whose dictionaries lack what `filter` names; a chunk in
    /// memory is ruled out later, by its predicate.
    fn may_match(&self, filter: &Filter) -> bool {
        match self {
            Source::Memory(_) | Source::Remote(..) => true,
            Source::Disk(s) => s.may_match(filter),
        }
    }

    /// First and last sequence number, least and greatest time. An object not read yet has
    /// the bounds of its hour, and no last sequence number.
    fn span(&self) -> (u64, u64, i64, i64) {
        match self {
            Source::Memory(c) => (c.first_seq, c.last_seq, c.min_time, c.max_time),
            Source::Disk(s) => (s.first_seq, s.last_seq, s.min_time, s.max_time),
            Source::Remote(o, Some(s)) => (o.first_seq, s.last_seq, s.min_time, s.max_time),
            Source::Remote(o, None) => {
                let (min, max) = o.time_bounds();
                (o.first_seq, u64::MAX, min, max)
            }
        }
    }

    /// Whether reading it costs a read from disk or the bucket.
    fn is_stored(&self) -> bool {
        !matches!(self, Source::Memory(_))
    }

    /// Names the chunk for caches of its answers: sequence numbers for this replica's chunks,
    /// the key and size for an object (a checkpoint and the whole chunk share a key).
    fn id(&self) -> (u64, u64) {
        match self {
            Source::Remote(o, _) => {
                let mut h = std::hash::DefaultHasher::new();
                std::hash::Hash::hash(&*o.key, &mut h);
                (std::hash::Hasher::finish(&h), o.bytes)
            }
            _ => {
                let (first, last, _, _) = self.span();
                (first, last)
            }
        }
    }
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
    cache: Mutex<VecDeque<(PathBuf, Arc<Chunk>)>>,
    /// `/flows/top` answers of whole chunks, which never change once sealed.
    tops: Mutex<Lru<TopKey, Arc<Vec<Group>>>>,
    /// Rows of stored chunks that `/flows` filters matched (see [`FlowStore::select`]).
    matches: Mutex<Lru<MatchKey, Option<Arc<Chunk>>>>,
    /// The policy advisor's connections of whole chunks, by chunk and namespace; oldest first.
    connections: Mutex<ConnectionsCache>,
    /// Hourly connection summaries written beside the segments (stores with a directory).
    summaries: Mutex<Option<summaries::Summaries>>,
    /// The bucket segments also go to, and queries read (`storage.flows.object_store`).
    bucket: Option<Arc<bucket::Bucket>>,
    /// Spans of objects read, by key and size.
    spans: Mutex<HashMap<(Arc<str>, u64), Span>>,
    /// Segments whose upload failed, by key: retried at the next checkpoint and write.
    pending: Mutex<BTreeMap<String, PathBuf>>,
    /// What else a checkpoint uploads: the detectors' learned state (see [`Exporter`]).
    exporter: Mutex<Option<Exporter>>,
    /// The version the exporter last uploaded.
    exported: AtomicU64,
    writable: bool,
    pub stats: StoreStats,
}

const SEGMENT_CACHE: usize = 4;

/// Given the version it last uploaded, the new version and its bytes when the state changed
/// since: a checkpoint uploads them after the flows, so the state a replica taking over reads
/// is at least as new as the offsets committed.
pub struct Exporter(pub Box<Export>);

/// See [`Exporter`].
pub type Export = dyn Fn(u64) -> Option<(u64, Vec<u8>)> + Send + Sync;

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exporter")
    }
}

/// Most object spans remembered (about 80 bytes each).
const MAX_SPANS: usize = 1 << 16;

/// How many chunks' connections are kept (a chunk of a namespace holds a few hundred).
const CONNECTIONS_CACHE: usize = 4096;

/// A chunk (first and last sequence number: a chunk that gains rows gets a new key) and a
/// namespace.
type ConnectionsKey = (u64, u64, String);

#[derive(Debug, Default)]
struct ConnectionsCache {
    parts: HashMap<ConnectionsKey, Arc<Vec<Connection>>>,
    order: VecDeque<ConnectionsKey>,
}

/// Most bytes the `/flows/top` answers of whole chunks may hold.
const TOP_CACHE_BYTES: usize = 16 << 20;

/// One chunk's groups for one grouping and one set of conditions.
type TopKey = (u64, u64, GroupBy, String);

/// Most bytes the rows kept for `/flows` pages may hold (see [`FlowStore::select`]).
const MATCH_CACHE_BYTES: usize = 16 << 20;

/// One stored chunk's rows matching one set of conditions, or none.
type MatchKey = (u64, u64, Arc<str>);

/// Answers computed from chunks that never change once sealed, by chunk and question, up to
/// `limit` bytes by their own estimate; the least recently used go first. Holds the
/// `/flows/top` answers of whole chunks (each segment's summary, its groups by every key
/// without conditions, computed as it is written, and what queries with conditions computed:
/// a query over the last hour groups only the flows that arrived since instead of reading
/// every segment back from disk) and the rows of stored chunks that `/flows` filters matched.
/// A chunk is named by its first and last sequence number, which a sealed chunk keeps when
/// it moves to disk.
#[derive(Debug)]
struct Lru<K, V> {
    entries: HashMap<K, (V, usize, u64)>,
    bytes: usize,
    clock: u64,
    limit: usize,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Lru<K, V> {
    fn new(limit: usize) -> Lru<K, V> {
        Lru {
            entries: HashMap::new(),
            bytes: 0,
            clock: 0,
            limit,
        }
    }

    fn get(&mut self, key: &K) -> Option<V> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(key).map(|(value, _, used)| {
            *used = clock;
            value.clone()
        })
    }

    /// Keeps `value` unless `size` is over a quarter of the limit.
    fn put(&mut self, key: K, value: V, size: usize) {
        if size > self.limit / 4 {
            return;
        }
        if self.bytes + size > self.limit {
            self.evict();
        }
        self.clock += 1;
        self.bytes += size;
        if let Some((_, old, _)) = self.entries.insert(key, (value, size, self.clock)) {
            self.bytes -= old;
        }
    }

    /// Drops the entries `gone` names.
    fn forget(&mut self, gone: impl Fn(&K) -> bool) {
        let mut freed = 0;
        self.entries.retain(|key, (_, size, _)| {
            let keep = !gone(key);
            if !keep {
                freed += *size;
            }
            keep
        });
        self.bytes -= freed;
    }

    /// Drops the least recently used entries until a quarter of the limit is free: one pass
    /// over the entries makes room for many more.
    fn evict(&mut self) {
        let keep = self.limit - self.limit / 4;
        let mut by_use: Vec<(u64, usize)> = self
            .entries
            .values()
            .map(|(_, size, used)| (*used, *size))
            .collect();
        by_use.sort_unstable();
        let (mut bytes, mut cutoff) = (self.bytes, 0);
        for (used, size) in by_use {
            if bytes <= keep {
                break;
            }
            bytes -= size;
            cutoff = used;
        }
        self.entries.retain(|_, (_, _, used)| *used > cutoff);
        self.bytes = bytes;
    }
}

/// What a stored chunk holds for a `/flows` filter.
enum Matched {
    /// Every row matching the filter's conditions, the time range aside: few enough to keep.
    Few(Option<Arc<Chunk>>),
    /// Nothing to keep (too many matches, or the chunk could not be read): the page's rows,
    /// as [`FlowStore::select`] answers.
    NotKept(Option<(Arc<Chunk>, DataFrame)>),
}

/// One page of flows, newest first.
#[derive(Debug, Clone)]
pub struct Page {
    pub flows: Vec<json::StoredFlow>,
    /// Pass as `cursor` for the next (older) page; `None` on the last page.
    pub next_cursor: Option<Cursor>,
}

/// Where the next page of flows starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// Flows below this sequence number (a store of its own: `123456`).
    Seq(u64),
    /// Flows after this one, newest first by time, then replica, then sequence number (a
    /// store sharing a bucket: `time.seq.replica`).
    At {
        time_ns: i64,
        seq: u64,
        replica: Arc<str>,
    },
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cursor::Seq(s) => write!(f, "{s}"),
            Cursor::At {
                time_ns,
                seq,
                replica,
            } => write!(f, "{time_ns}.{seq}.{replica}"),
        }
    }
}

impl std::str::FromStr for Cursor {
    /// The `cursor` parameter named, with its value.
    type Err = BadParameter;

    fn from_str(s: &str) -> Result<Cursor, BadParameter> {
        let bad = || BadParameter::new("cursor", s, "not a cursor this API returned");
        let mut parts = s.splitn(3, '.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(seq), None, None) => seq.parse().map(Cursor::Seq).map_err(|_| bad()),
            (Some(time), Some(seq), Some(replica)) => Ok(Cursor::At {
                time_ns: time.parse().map_err(|_| bad())?,
                seq: seq.parse().map_err(|_| bad())?,
                replica: replica.into(),
            }),
            _ => Err(bad()),
        }
    }
}

/// How `/flows/top` groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupBy {
    Destination,
    Source,
    Fqdn,
    Port,
    Namespace,
    Verdict,
}

impl GroupBy {
    /// Every grouping, with its name in the API.
    const TABLE: [(GroupBy, &'static str); 6] = [
        (GroupBy::Destination, "destination"),
        (GroupBy::Source, "source"),
        (GroupBy::Fqdn, "fqdn"),
        (GroupBy::Port, "port"),
        (GroupBy::Namespace, "namespace"),
        (GroupBy::Verdict, "verdict"),
    ];

    pub const ALL: [GroupBy; 6] = {
        let mut all = [GroupBy::Destination; 6];
        let mut i = 0;
        while i < 6 {
            all[i] = Self::TABLE[i].0;
            i += 1;
        }
        all
    };

    pub const NAMES: [&'static str; 6] = {
        let mut names = [""; 6];
        let mut i = 0;
        while i < 6 {
            names[i] = Self::TABLE[i].1;
            i += 1;
        }
        names
    };

    pub fn parse(name: &str) -> Option<GroupBy> {
        Self::TABLE
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(by, _)| *by)
    }

    /// The group's key as one `u64` per row: a single-column group-by is many times faster
    /// than grouping by several columns. Codes take [`CODE_BITS`] bits each, ports 16 and
    /// protocols 3; the destination takes the first of FQDN, namespace/pod or address,
    /// tagged in bits 42-43 of the target, as [`crate::flow::destination::label`] does.
    fn key(self) -> Expr {
        let c = |x: Col| col(x.name()).cast(DataType::UInt64);
        let shift = |e: Expr, bits: u32| e * lit(1u64 << bits);
        let port_proto = || shift(c(Col::DstPort), 3) + c(Col::Protocol);
        match self {
            GroupBy::Destination => {
                let target = when(col(Col::Fqdn.name()).neq(lit(0u32)))
                    .then(c(Col::Fqdn) + lit(1u64 << 42))
                    .when(col(Col::DstNamespace.name()).neq(lit(0u32)))
                    .then(shift(c(Col::DstNamespace), CODE_BITS) + c(Col::DstPod) + lit(2u64 << 42))
                    .otherwise(c(Col::DstIp));
                shift(target, 19) + port_proto()
            }
            GroupBy::Source => shift(c(Col::SrcNamespace), CODE_BITS) + c(Col::SrcPod),
            GroupBy::Fqdn => c(Col::Fqdn),
            GroupBy::Port => port_proto(),
            GroupBy::Namespace => c(Col::SrcNamespace),
            GroupBy::Verdict => c(Col::Verdict),
        }
    }

    /// The columns [`GroupBy::key`] reads.
    fn columns(self) -> &'static [Col] {
        match self {
            GroupBy::Destination => &[
                Col::Fqdn,
                Col::DstNamespace,
                Col::DstPod,
                Col::DstIp,
                Col::DstPort,
                Col::Protocol,
            ],
            GroupBy::Source => &[Col::SrcNamespace, Col::SrcPod],
            GroupBy::Fqdn => &[Col::Fqdn],
            GroupBy::Port => &[Col::DstPort, Col::Protocol],
            GroupBy::Namespace => &[Col::SrcNamespace],
            GroupBy::Verdict => &[Col::Verdict],
        }
    }

    /// The codes packed in a [`GroupBy::key`], in the order [`json::group_key`] reads them.
    fn codes(self, key: u64) -> Vec<u32> {
        let mask = |bits: u32| (1u64 << bits) - 1;
        let code = |v: u64| u32::try_from(v).unwrap_or(0);
        match self {
            GroupBy::Destination => {
                let (pp, target) = (key & mask(19), key >> 19);
                let (port, proto) = (code(pp >> 3), code(pp & 7));
                let body = target & mask(42);
                match target >> 42 {
                    1 => vec![code(body), 0, 0, 0, port, proto],
                    2 => vec![
                        0,
                        code(body >> CODE_BITS),
                        code(body & mask(CODE_BITS)),
                        0,
                        port,
                        proto,
                    ],
                    _ => vec![0, 0, 0, code(body), port, proto],
                }
            }
            GroupBy::Source => vec![code(key >> CODE_BITS), code(key & mask(CODE_BITS))],
            GroupBy::Port => vec![code(key >> 3), code(key & 7)],
            GroupBy::Fqdn | GroupBy::Namespace | GroupBy::Verdict => vec![code(key)],
        }
    }
}

/// Most parquet segments one query reads (4 M flows at the default chunk size), so that a
/// request's cost is bounded whatever the retention.
pub const MAX_SEGMENTS_PER_QUERY: usize = 64;

const CODE_BITS: u32 = 21;

/// One group of `/flows/top`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub key: String,
    pub count: u64,
    pub first_ns: i64,
    pub last_ns: i64,
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
            cache: Mutex::new(VecDeque::new()),
            tops: Mutex::new(Lru::new(TOP_CACHE_BYTES)),
            matches: Mutex::new(Lru::new(MATCH_CACHE_BYTES)),
            connections: Mutex::default(),
            summaries: Mutex::new(summaries),
            bucket,
            spans: Mutex::default(),
            pending: Mutex::default(),
            exporter: Mutex::default(),
            exported: AtomicU64::new(u64::MAX),
            writable,
            stats: StoreStats::default(),
        });
        if writable {
            store.retain(crate::common::clock::now_ns());
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

    /// Bytes the query caches hold by their own estimates: decoded segments, `/flows/top`
    /// groups and `/flows` matches, by name.
    pub fn cache_bytes(&self) -> [(&'static str, u64); 3] {
        let segments = self
            .cache_lock()
            .iter()
            .map(|(_, chunk)| chunk.bytes())
            .sum::<usize>();
        [
            ("segments", segments as u64),
            ("top", self.tops_lock().bytes as u64),
            ("matches", self.matches_lock().bytes as u64),
        ]
    }

    /// The shared bucket, when the store has one.
    pub fn bucket(&self) -> Option<&Arc<bucket::Bucket>> {
        self.bucket.as_ref()
    }

    /// Has every checkpoint upload the detectors' learned state when it changed.
    pub fn export_with(&self, exporter: Exporter) {
        *self.exporter.lock().unwrap_or_else(|p| p.into_inner()) = Some(exporter);
    }

    /// Uploads the exporter's state when it changed.
    fn export(&self) -> Result<(), StoreError> {
        let Some(b) = &self.bucket else {
            return Ok(());
        };
        let exporter = self.exporter.lock().unwrap_or_else(|p| p.into_inner());
        let Some(export) = exporter.as_ref() else {
            return Ok(());
        };
        if let Some((version, bytes)) = (export.0)(self.exported.load(Ordering::Relaxed)) {
            b.put_learned(bytes.into()).map_err(StoreError::Bucket)?;
            self.exported.store(version, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Segments written to disk whose upload to the bucket has not succeeded yet.
    pub fn pending_uploads(&self) -> usize {
        self.pending_lock().len()
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

    /// Writes a chunk as a segment: to a temporary name, synced, then renamed.
    fn write(&self, dir: &Path, chunk: &Chunk) -> Result<Segment, StoreError> {
        let path = dir.join(Segment::file_name(chunk));
        let tmp = path.with_extension("tmp");
        let io = |source| StoreError::Io {
            path: tmp.display().to_string(),
            source,
        };
        let numbers = NumberSets::of(chunk)?;
        let forwarded = lit(crate::flow::Verdict::Forwarded as u32);
        let unforwarded = chunk
            .frame
            .clone()
            .lazy()
            .filter(col(Col::Verdict.name()).neq(forwarded))
            .collect()?;
        let unforwarded = if unforwarded.height() <= self.few() {
            let fail = |message| StoreError::Segment {
                path: path.display().to_string(),
                message,
            };
            Some(Arc::new(chunk.subset(unforwarded).map_err(fail)?))
        } else {
            None
        };
        // A row group at a time, its columns encoded one after another, straight to the
        // file: what a write holds beside the chunk is one group's strings and pages.
        let file = std::fs::File::create(&tmp).map_err(io)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
        let encoded = (|| {
            let written = chunk.written();
            let mut writer = ParquetWriter::new(&mut out)
                .with_compression(ParquetCompression::Zstd(None))
                .set_parallel(false)
                .batched(written.rows(0, 0)?.schema())?;
            let group = row_group(self.config.chunk_flows);
            for start in (0..chunk.rows()).step_by(group) {
                writer.write_batch(&written.rows(start, group)?)?;
            }
            writer.finish()
        })();
        let bytes = match encoded {
            Ok(bytes) => bytes,
            Err(e) => {
                drop(out);
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
        };
        let synced = out
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)
            .and_then(|file| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = synced {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        if let Some(b) = &self.bucket {
            // Uploaded from the file just written (still in the page cache), with any upload
            // that failed before; one that fails now stays pending for the next checkpoint.
            let key = b.key(chunk.first_time, chunk.first_seq);
            self.pending_lock().insert(key, path.clone());
            if let Err(e) = self.upload_pending() {
                tracing::warn!("{e}; retried at the next checkpoint");
            }
        }
        Ok(Segment {
            path,
            first_seq: chunk.first_seq,
            last_seq: chunk.last_seq,
            min_time: chunk.min_time,
            max_time: chunk.max_time,
            rows: chunk.rows() as u64,
            bytes,
            dictionary: Some(Dictionary {
                texts: chunk.texts.clone(),
                ips: chunk.ips.clone(),
                numbers: Arc::new(numbers),
                unforwarded,
            }),
        })
    }

    /// Deletes segments past the retention age, then the oldest while over the size bound.
    fn retain(&self, now_ns: i64) {
        let cutoff = now_ns.saturating_sub(span_ns(self.config.retention));
        let pending: Vec<PathBuf> = self.pending_lock().values().cloned().collect();
        let mut inner = self.lock();
        let mut total: u64 = inner.segments.iter().map(|s| s.bytes).sum();
        let mut deleted: Vec<Segment> = Vec::new();
        while let Some(oldest) = inner.segments.front() {
            if oldest.max_time >= cutoff && total <= self.config.disk_bytes {
                break;
            }
            if pending.contains(&oldest.path) {
                // Not in the bucket yet: kept until its upload succeeds.
                break;
            }
            total -= oldest.bytes;
            if let Err(e) = std::fs::remove_file(&oldest.path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::error!("flow store: deleting {}: {e}", oldest.path.display());
                self.stats.segment_errors.fetch_add(1, Ordering::Relaxed);
            }
            self.stats.expired.fetch_add(oldest.rows, Ordering::Relaxed);
            deleted.extend(inner.segments.pop_front());
        }
        self.update_sizes(&inner);
        drop(inner);
        self.prune_summaries();
        self.forget_cached(&deleted);
    }

    /// Drops what the query caches hold of deleted segments: no query asks for them again,
    /// and until the caches fill, nothing else would make them go.
    fn forget_cached(&self, deleted: &[Segment]) {
        if deleted.is_empty() {
            return;
        }
        let gone = |first: u64, last: u64| {
            deleted
                .iter()
                .any(|s| s.first_seq == first && s.last_seq == last)
        };
        self.tops_lock().forget(|k| gone(k.0, k.1));
        self.matches_lock().forget(|k| gone(k.0, k.1));
        self.cache_lock()
            .retain(|(path, _)| !deleted.iter().any(|s| &s.path == path));
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        connections.order.retain(|k| !gone(k.0, k.1));
        connections.parts.retain(|k, _| !gone(k.0, k.1));
    }

    /// Forgets (and, when writable, deletes) the hourly summaries that count flows of
    /// segments no longer stored.
    fn prune_summaries(&self) {
        let oldest = {
            let inner = self.lock();
            inner
                .segments
                .front()
                .map_or(inner.next_seq, |s| s.first_seq)
        };
        if let Some(s) = self.summaries_lock().as_mut() {
            s.prune(oldest, self.writable);
        }
    }

    fn pending_lock(&self) -> MutexGuard<'_, BTreeMap<String, PathBuf>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Uploads again the segments whose upload failed; an error when one still fails. A
    /// segment deleted meanwhile (its checkpoint replaced, or past the disk bound) is
    /// forgotten: a newer upload covers it, or the bound dropped it.
    fn upload_pending(&self) -> Result<(), StoreError> {
        let Some(b) = &self.bucket else {
            return Ok(());
        };
        let mut pending = self.pending_lock();
        let mut first_error = None;
        pending.retain(|key, path| match std::fs::read(&*path) {
            Ok(bytes) => match b.put(key, bytes.into()) {
                Ok(()) => false,
                Err(e) => {
                    first_error.get_or_insert(e);
                    true
                }
            },
            Err(e) => {
                // Retention keeps pending segments, and a checkpoint's file is replaced only
                // by a newer one under the same key: a file gone is a file lost.
                self.stats.segment_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "flow store: {key} never reached the bucket: {}: {e}",
                    path.display()
                );
                false
            }
        });
        match first_error {
            Some(e) => Err(StoreError::Bucket(e)),
            None => Ok(()),
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
        self.upload_pending()?;
        self.export()
    }

    /// Makes every flow stored so far durable, for a source's checkpoint: sealed chunks go to
    /// disk as segments, and the chunk still growing is written to a checkpoint file (which
    /// the next checkpoint replaces), so segments keep their size however often checkpoints
    /// come. Called by the store's one writer; queries go on meanwhile.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.checkpoint_flows()?;
        self.export()
    }

    fn checkpoint_flows(&self) -> Result<(), StoreError> {
        let Some(dir) = self.config.dir.clone() else {
            return Ok(());
        };
        self.write_sealed(&dir)?;
        let (snapshot, old) = {
            let mut inner = self.lock();
            if inner.builder.is_empty() {
                drop(inner);
                return self.upload_pending();
            }
            let snapshot = Self::builder_snapshot(&mut inner)?;
            let written = dir.join(Segment::file_name(&snapshot));
            if inner.partial.as_ref().is_some_and(|(_, p)| *p == written) {
                // Nothing arrived since the last checkpoint: only failed uploads are left.
                drop(inner);
                return self.upload_pending();
            }
            (snapshot, inner.partial.clone())
        };
        let segment = self.write(&dir, &snapshot)?;
        if let Some((_, old)) = old.filter(|(_, p)| *p != segment.path) {
            let _ = std::fs::remove_file(old);
        }
        self.lock().partial = Some((snapshot.first_seq, segment.path));
        self.upload_pending()
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

    /// Adds a written segment; only the newest segments keep their dictionaries in memory. A
    /// checkpoint's file of the same chunk is no longer needed.
    fn push_segment(inner: &mut Inner, segment: Segment) {
        if let Some((first, path)) = &inner.partial
            && (segment.first_seq..=segment.last_seq).contains(first)
        {
            if *path != segment.path {
                let _ = std::fs::remove_file(path);
            }
            inner.partial = None;
        }
        inner.segments.push_back(segment);
        let mut kept = 0;
        for s in inner.segments.iter_mut().rev() {
            kept += s.dictionary.as_ref().map_or(0, Dictionary::entries);
            if kept > MAX_DICTIONARY_ENTRIES {
                s.dictionary = None;
            }
        }
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

    /// Everything a query over `filter`'s time may read, newest first. With a bucket, this
    /// replica's flows come from memory and its disk, as without, and the bucket adds the
    /// other replicas' objects and this one's older than its disk holds.
    fn sources(&self, filter: &Filter) -> Result<Vec<Source>, StoreError> {
        let mut out = self.local_sources()?;
        let own_floor = out.last().map_or(self.lock().next_seq, |s| s.span().0);
        let Some(b) = &self.bucket else {
            return Ok(out);
        };
        let now = crate::common::clock::now_ns();
        let retention = self
            .config
            .object_store
            .as_ref()
            .map_or(self.config.retention, |o| o.retention);
        // Without `since`, the bucket's retention, within what one query may list.
        let widest = (bucket::MAX_HOURS - 24) * 3_600 * 1_000_000_000;
        let since = filter.since_ns.unwrap_or_else(|| {
            let back = span_ns(retention);
            now.saturating_sub(back.min(widest))
        });
        let until = filter
            .until_ns
            .unwrap_or(now.saturating_add(bucket::MAX_SPAN_NS));
        let hours = bucket::hours(since, until).map_err(StoreError::Range)?;
        let objects = b.objects(hours).map_err(StoreError::Bucket)?;
        let spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        for o in objects {
            if o.replica == *b.replica() && o.first_seq >= own_floor {
                continue;
            }
            let span = spans.get(&(o.key.clone(), o.bytes)).copied();
            out.push(Source::Remote(o, span));
        }
        Ok(out)
    }

    /// This replica's chunks in memory and segments on disk, newest first.
    fn local_sources(&self) -> Result<Vec<Source>, StoreError> {
        let mut inner = self.lock();
        let mut out = Vec::with_capacity(inner.sealed.len() + inner.segments.len() + 1);
        if !inner.builder.is_empty() {
            let snapshot = Self::builder_snapshot(&mut inner)?;
            out.push(Source::Memory(snapshot));
        }
        out.extend(inner.sealed.iter().rev().cloned().map(Source::Memory));
        out.extend(inner.segments.iter().rev().cloned().map(Source::Disk));
        Ok(out)
    }

    /// The chunk `source` holds; a segment that cannot be read is logged, counted and
    /// skipped, so one damaged file does not hide every other flow.
    fn load(&self, source: &Source) -> Option<Arc<Chunk>> {
        let read = match source {
            Source::Memory(c) => return Some(c.clone()),
            Source::Disk(s) => self.read_cached(&s.path, || {
                let file = std::fs::File::open(&s.path).map_err(|e| e.to_string())?;
                ParquetReader::new(file).finish().map_err(|e| e.to_string())
            }),
            Source::Remote(o, _) => self.read_remote(o),
        };
        match read {
            Ok(c) => Some(c),
            Err(e) => {
                self.skip_unreadable(&e);
                None
            }
        }
    }

    /// Counts and logs a chunk a query could not read, which it then skips.
    fn skip_unreadable(&self, e: &StoreError) {
        self.stats.segment_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!("{e}");
    }

    /// An object of the bucket, read once (its span remembered for the next queries).
    fn read_remote(&self, o: &bucket::Object) -> Result<Arc<Chunk>, StoreError> {
        let Some(b) = &self.bucket else {
            unreachable!("objects are listed from the bucket")
        };
        let name = PathBuf::from(format!("{}#{}", o.key, o.bytes));
        let chunk = self.read_cached(&name, || {
            let bytes = b.get(&o.key, bucket::ObjectKind::Segment)?;
            ParquetReader::new(std::io::Cursor::new(bytes))
                .finish()
                .map_err(|e| e.to_string())
        })?;
        let mut spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        if spans.len() >= MAX_SPANS {
            spans.clear();
        }
        spans.insert(
            (o.key.clone(), o.bytes),
            Span {
                last_seq: chunk.last_seq,
                min_time: chunk.min_time,
                max_time: chunk.max_time,
            },
        );
        Ok(chunk)
    }

    /// A segment's chunk if it is among the recently read ones.
    fn cached(&self, name: &Path) -> Option<Arc<Chunk>> {
        let cache = self.cache_lock();
        cache
            .iter()
            .find(|(p, _)| p == name)
            .map(|(_, c)| c.clone())
    }

    /// A segment's chunk from the cache of recently read ones, else from `read`.
    fn read_cached(
        &self,
        name: &Path,
        read: impl FnOnce() -> Result<DataFrame, String>,
    ) -> Result<Arc<Chunk>, StoreError> {
        let mut cache = self.cache_lock();
        if let Some(i) = cache.iter().position(|(p, _)| p == name) {
            let hit = cache.remove(i).unwrap_or_else(|| unreachable!());
            let chunk = hit.1.clone();
            cache.push_back(hit);
            return Ok(chunk);
        }
        drop(cache);
        let fail = |message: String| StoreError::Segment {
            path: name.display().to_string(),
            message,
        };
        let frame = read().map_err(fail)?;
        self.stats.segment_reads.fetch_add(1, Ordering::Relaxed);
        let chunk = Arc::new(Chunk::from_parquet_frame(&frame).map_err(fail)?);
        let mut cache = self.cache_lock();
        cache.push_back((name.to_path_buf(), chunk.clone()));
        if cache.len() > SEGMENT_CACHE {
            cache.pop_front();
        }
        Ok(chunk)
    }

    /// The rows of `source` matching `filter` and `also`, as `pick` orders and cuts them,
    /// with the chunk they read from; `None` when none matches or the source cannot be read
    /// (logged and counted, as [`FlowStore::load`] does).
    ///
    /// A stored chunk's rows matching the filter's conditions (its time range aside) are
    /// kept when they are few, at most a sixteenth of a chunk ([`MATCH_CACHE_BYTES`] for
    /// all): the next page with the same conditions (an SRE's refresh, the next page, another
    /// time range) takes them instead of reading the segment again. A segment on disk that
    /// is not among the recently read ones is read column-first: the filter's columns, then
    /// every column of the rows from the first to the last match only. Most segments a
    /// selective page looks at hold no or few matches, and reading a whole segment (every
    /// string of every column into dictionaries) costs many times more. `conditions` is
    /// `filter.conditions_key()`, made once for all the chunks a query visits.
    fn select(
        &self,
        source: &Source,
        filter: &Filter,
        conditions: &Arc<str>,
        also: Option<Expr>,
        pick: &dyn Fn(LazyFrame) -> LazyFrame,
    ) -> Result<Option<(Arc<Chunk>, DataFrame)>, StoreError> {
        if let Source::Memory(chunk) = source {
            let Some(predicate) = both(filter.predicate(chunk), also) else {
                return Ok(None);
            };
            let found = pick(chunk.frame.clone().lazy().filter(predicate)).collect()?;
            return Ok(Some((chunk.clone(), found)));
        }
        let (first, last) = source.id();
        let key = (first, last, conditions.clone());
        let kept = self.matches_lock().get(&key);
        let rows = match kept {
            Some(rows) => {
                self.stats.match_cache_hits.fetch_add(1, Ordering::Relaxed);
                rows
            }
            None => match self.matches(source, filter, also.clone(), pick)? {
                Matched::Few(rows) => {
                    // The key's text is shared by every chunk's entry for the same query.
                    let size = 96 + rows.as_ref().map_or(0, |c| c.bytes());
                    self.matches_lock().put(key, rows.clone(), size);
                    rows
                }
                Matched::NotKept(found) => return Ok(found),
            },
        };
        let Some(rows) = rows else {
            return Ok(None);
        };
        let predicate = in_time(filter, also);
        let found = pick(rows.frame.clone().lazy().filter(predicate)).collect()?;
        Ok(Some((rows, found)))
    }

    fn matches_lock(&self) -> MutexGuard<'_, Lru<MatchKey, Option<Arc<Chunk>>>> {
        self.matches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most rows of a stored chunk kept for one set of conditions.
    fn few(&self) -> usize {
        self.config.chunk_flows / 16
    }

    /// How many columns of a span of `rows` a column-first read decodes at once to take a
    /// filter's matches from it: as many cells as four columns of a whole chunk hold (4 of a
    /// segment of 65,536 rows, all 32 of a span of 8,192).
    fn columns_at_once(&self, rows: usize) -> usize {
        (self.config.chunk_flows * 4 / rows.max(1)).max(1)
    }

    /// A stored chunk's rows matching `filter`'s conditions when they are few, else what
    /// [`FlowStore::select`] answers.
    fn matches(
        &self,
        source: &Source,
        filter: &Filter,
        also: Option<Expr>,
        pick: &dyn Fn(LazyFrame) -> LazyFrame,
    ) -> Result<Matched, StoreError> {
        // A filter ruling out forwarded flows needs only a segment's others, when kept.
        let unforwarded = match source {
            Source::Disk(s)
                if filter.rules_out(Col::Verdict, crate::flow::Verdict::Forwarded as u32) =>
            {
                s.dictionary.as_ref().and_then(|d| d.unforwarded.clone())
            }
            _ => None,
        };
        if unforwarded.is_none()
            && let Source::Disk(s) = source
            && self.cached(&s.path).is_none()
        {
            return match self.select_columns_first(s, filter, also, pick) {
                Ok(matched) => Ok(matched),
                Err(message) => {
                    let path = s.path.display().to_string();
                    self.skip_unreadable(&StoreError::Segment { path, message });
                    Ok(Matched::NotKept(None))
                }
            };
        }
        let chunk = match unforwarded {
            Some(rows) => {
                self.stats.unforwarded_hits.fetch_add(1, Ordering::Relaxed);
                rows
            }
            None => match self.load(source) {
                Some(chunk) => chunk,
                None => return Ok(Matched::NotKept(None)),
            },
        };
        let Some(conditions) = filter.conditions_only().predicate(&chunk) else {
            return Ok(Matched::Few(None));
        };
        let rows = chunk.frame.clone().lazy().filter(conditions).collect()?;
        if rows.height() == 0 {
            return Ok(Matched::Few(None));
        }
        if rows.height() <= self.few() {
            let fail = |message: String| StoreError::Segment {
                path: format!("{source:?}"),
                message,
            };
            return Ok(Matched::Few(Some(Arc::new(
                chunk.subset(rows).map_err(fail)?,
            ))));
        }
        let predicate = in_time(filter, also);
        let found = pick(rows.lazy().filter(predicate)).collect()?;
        Ok(Matched::NotKept(Some((chunk, found))))
    }

    /// [`FlowStore::matches`] on a segment, reading the filter's columns first.
    fn select_columns_first(
        &self,
        segment: &Segment,
        filter: &Filter,
        also: Option<Expr>,
        pick: &dyn Fn(LazyFrame) -> LazyFrame,
    ) -> Result<Matched, String> {
        let text = |e: PolarsError| e.to_string();
        let open = || std::fs::File::open(&segment.path).map_err(|e| e.to_string());
        let cols = filter.columns();
        let uuids = filter.reads_uuids();
        let narrow = self.read_narrow(segment, &cols, uuids, true)?;
        // With the segment's dictionaries at hand, polars compares the strings themselves
        // against the values the filter accepts; else they are coded first, as a whole read
        // codes them.
        let conditions = filter.conditions_only();
        let (frame, predicate) = match &segment.dictionary {
            Some(d) => (narrow, conditions.predicate_on_strings(&d.texts, &d.ips)),
            None => {
                let partial = Chunk::partial_from_parquet_frame(&narrow, &cols, uuids)?;
                let predicate = conditions.predicate(&partial);
                (partial.frame, predicate)
            }
        };
        let Some(predicate) = predicate else {
            return Ok(Matched::Few(None));
        };
        let hits = frame.lazy().filter(predicate).collect().map_err(text)?;
        // Few matches are all read, to be kept; of many, only those the page takes.
        let few = hits.height() <= self.few();
        let hits = if few {
            hits
        } else {
            let predicate = in_time(filter, also);
            pick(hits.lazy().filter(predicate))
                .collect()
                .map_err(text)?
        };
        let mut rows: Vec<IdxSize> = hits
            .column(chunk::ROW_INDEX)
            .and_then(|c| c.idx().cloned())
            .map_err(text)?
            .into_no_null_iter()
            .collect();
        rows.sort_unstable();
        let (Some(&first), Some(&last)) = (rows.first(), rows.last()) else {
            return Ok(if few {
                Matched::Few(None)
            } else {
                Matched::NotKept(None)
            });
        };
        // The rows from the first match to the last, a few columns at a time, each narrowed
        // to the matches as soon as it is read: matches spread over a segment would otherwise
        // decode the whole of it, every column at once, to keep a handful of rows.
        let span = (last - first) as usize + 1;
        let at = IdxCa::from_vec(
            chunk::ROW_INDEX.into(),
            rows.iter().map(|r| r - first).collect(),
        );
        // The file's footer is parsed once, for every group.
        let mut reader = ParquetReader::new(open()?);
        let names: Vec<String> = reader
            .schema()
            .map_err(text)?
            .iter_names()
            .map(|n| n.to_string())
            .collect();
        let metadata = reader.get_metadata().map_err(text)?.clone();
        let mut columns = Vec::with_capacity(names.len());
        for group in names.chunks(self.columns_at_once(span)) {
            let mut reader = ParquetReader::new(open()?);
            reader.set_metadata(metadata.clone());
            let part = reader
                .with_columns(Some(group.to_vec()))
                .with_slice(Some((first as usize, span)))
                .finish()
                .map_err(text)?;
            columns.extend(part.take(&at).map_err(text)?.into_columns());
        }
        let taken = DataFrame::new(rows.len(), columns).map_err(text)?;
        let chunk = Arc::new(Chunk::from_parquet_frame(&taken)?);
        if few {
            return Ok(Matched::Few(Some(chunk)));
        }
        let found = pick(chunk.frame.clone().lazy()).collect().map_err(text)?;
        Ok(Matched::NotKept(Some((chunk, found))))
    }

    /// Flows matching `filter`, newest first, older than `cursor` when given. At most
    /// [`MAX_SEGMENTS_PER_QUERY`] segments are read: a page cut short there holds fewer than
    /// `limit` flows and a cursor to go on from.
    pub fn list(
        &self,
        filter: &Filter,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        if self.bucket.is_some() {
            return self.list_shared(filter, cursor, limit);
        }
        let cursor = match cursor {
            None => None,
            Some(Cursor::Seq(s)) => Some(s),
            Some(c) => return Err(StoreError::Cursor(c.to_string())),
        };
        let mut flows: Vec<json::StoredFlow> = Vec::with_capacity(limit.min(1024) + 1);
        let conditions: Arc<str> = filter.conditions_key().into();
        let mut segments_read = 0;
        // Where a page cut short by the segment budget stopped: every flow from here up to
        // the cursor has been looked at.
        let mut stopped_at = None;
        for source in self.sources(filter)? {
            if flows.len() > limit {
                break;
            }
            let (first_seq, _, min_time, max_time) = source.span();
            if cursor.is_some_and(|c| first_seq >= c) || !filter.overlaps(min_time, max_time) {
                continue;
            }
            if !source.may_match(filter) {
                continue;
            }
            if source.is_stored() {
                if segments_read == MAX_SEGMENTS_PER_QUERY {
                    let next = source.span().1 + 1;
                    stopped_at = Some(cursor.map_or(next, |c| c.min(next)));
                    break;
                }
                segments_read += 1;
            }
            let want = u32::try_from(limit + 1 - flows.len()).unwrap_or(u32::MAX) as IdxSize;
            let also = cursor.map(|c| col("seq").lt(lit(c)));
            let Some((chunk, found)) =
                self.select(&source, filter, &conditions, also, &|rows| rows.tail(want))?
            else {
                continue;
            };
            let mut rows = json::StoredFlow::read(&chunk, &found)?;
            rows.reverse();
            flows.extend(rows);
        }
        let next_cursor = if flows.len() > limit {
            flows.truncate(limit);
            flows.last().map(|f| f.seq)
        } else {
            stopped_at
        };
        Ok(Page {
            flows,
            next_cursor: next_cursor.map(Cursor::Seq),
        })
    }

    /// [`FlowStore::list`] over this replica's flows and the bucket's: sources overlap in
    /// time (replicas write side by side), so each gives its newest matching flows past the
    /// cursor and the page keeps the newest of all, by time, replica and sequence number.
    /// Sources are visited newest possible flow first, until none can hold a flow newer than
    /// the page's oldest.
    fn list_shared(
        &self,
        filter: &Filter,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let own = match &self.bucket {
            Some(b) => b.replica().clone(),
            None => unreachable!("called with a bucket"),
        };
        let cursor = match cursor {
            None => None,
            Some(Cursor::At {
                time_ns,
                seq,
                replica,
            }) => Some((time_ns, replica, seq)),
            Some(c) => return Err(StoreError::Cursor(c.to_string())),
        };
        let mut sources = self.sources(filter)?;
        let conditions: Arc<str> = filter.conditions_key().into();
        sources.sort_by_key(|s| std::cmp::Reverse(s.span().3));
        // Newest first: (time, replica, seq, flow).
        let mut found: Vec<(i64, Arc<str>, u64, json::StoredFlow)> = Vec::new();
        let mut read = 0;
        let mut stopped_at = None;
        for source in sources {
            let (_, _, min_time, max_time) = source.span();
            if !filter.overlaps(min_time, max_time)
                || cursor.as_ref().is_some_and(|c| min_time > c.0)
                || !source.may_match(filter)
            {
                continue;
            }
            if found.len() > limit && found[limit].0 > max_time {
                break;
            }
            if source.is_stored() {
                // The budget ends a page only when it holds a flow no unread source can
                // follow, so the next page starts further on.
                if read >= MAX_SEGMENTS_PER_QUERY && found.first().is_some_and(|f| f.0 > max_time) {
                    stopped_at = Some(max_time);
                    break;
                }
                read += 1;
            }
            let replica: Arc<str> = match &source {
                Source::Remote(o, _) => o.replica.clone(),
                _ => own.clone(),
            };
            let also = cursor.as_ref().map(|(time, r, seq)| {
                let time_col = || col("time");
                match replica.cmp(r) {
                    std::cmp::Ordering::Less => time_col().lt_eq(lit(*time)),
                    std::cmp::Ordering::Equal => time_col()
                        .lt(lit(*time))
                        .or(time_col().eq(lit(*time)).and(col("seq").lt(lit(*seq)))),
                    std::cmp::Ordering::Greater => time_col().lt(lit(*time)),
                }
            });
            let want = u32::try_from(limit + 1).unwrap_or(u32::MAX) as IdxSize;
            let newest = |rows: LazyFrame| {
                rows.sort(
                    ["time", "seq"],
                    SortMultipleOptions::default().with_order_descending(true),
                )
                .limit(want)
            };
            let Some((chunk, rows)) = self.select(&source, filter, &conditions, also, &newest)?
            else {
                continue;
            };
            for f in json::StoredFlow::read(&chunk, &rows)? {
                found.push((f.time_ns, replica.clone(), f.seq, f));
            }
            found.sort_by(|a, b| (b.0, &b.1, b.2).cmp(&(a.0, &a.1, a.2)));
            found.truncate(limit + 1);
        }
        let next_cursor = if found.len() > limit {
            found.truncate(limit);
            found.last().map(|(time_ns, replica, seq, _)| Cursor::At {
                time_ns: *time_ns,
                seq: *seq,
                replica: replica.clone(),
            })
        } else if let Some(t) = stopped_at {
            // Flows at `t` or older may be in sources not read: they start the next page.
            found.retain(|f| f.0 > t);
            Some(Cursor::At {
                time_ns: t + 1,
                seq: 0,
                replica: "".into(),
            })
        } else {
            None
        };
        Ok(Page {
            flows: found.into_iter().map(|f| f.3).collect(),
            next_cursor,
        })
    }

    /// Matching flows grouped by `by`: the `limit` biggest groups, and the total count.
    pub fn top(
        &self,
        filter: &Filter,
        by: GroupBy,
        limit: usize,
    ) -> Result<(Vec<Group>, u64), StoreError> {
        let mut groups: HashMap<String, Group> = HashMap::new();
        let mut total = 0u64;
        // Which chunks have their answer already; the rest are grouped, within the budget of
        // segments read from disk.
        let conditions = filter.conditions_key();
        let mut plan = Vec::new();
        let mut to_read = 0;
        for source in self.sources(filter)? {
            let (_, _, min_time, max_time) = source.span();
            if !filter.overlaps(min_time, max_time) {
                continue;
            }
            if !source.may_match(filter) {
                continue;
            }
            // A chunk wholly inside the time range answers the same for the same conditions.
            let (id, version) = source.id();
            let key = filter
                .covers(min_time, max_time)
                .then(|| (id, version, by, conditions.clone()));
            let cached = key.as_ref().and_then(|k| self.tops_lock().get(k));
            if cached.is_none() && source.is_stored() {
                to_read += 1;
            }
            plan.push((source, key, cached));
        }
        if to_read > MAX_SEGMENTS_PER_QUERY {
            return Err(StoreError::TooBroad { segments: to_read });
        }
        for (source, key, cached) in plan {
            let parts = match cached {
                Some(parts) => {
                    self.stats.top_cache_hits.fetch_add(1, Ordering::Relaxed);
                    parts
                }
                None => {
                    let Some(parts) = self.chunk_top(&source, filter, by)? else {
                        continue;
                    };
                    let parts = Arc::new(parts);
                    if let Some(key) = key {
                        self.keep_top(key, parts.clone());
                    }
                    parts
                }
            };
            for part in parts.iter() {
                total += part.count;
                match groups.get_mut(&part.key) {
                    Some(g) => {
                        g.count += part.count;
                        g.first_ns = g.first_ns.min(part.first_ns);
                        g.last_ns = g.last_ns.max(part.last_ns);
                    }
                    None => {
                        groups.insert(part.key.clone(), part.clone());
                    }
                }
            }
        }
        let mut groups: Vec<Group> = groups.into_values().collect();
        groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        groups.truncate(limit);
        Ok((groups, total))
    }

    /// The connections of `namespace` in `[since_ns, until_ns)`: its flows folded by local
    /// endpoint, peer, port and verdict (see [`connections`]). Reads every chunk in the range,
    /// without the segment budget of `/flows`: an operator's question over days, not a
    /// dashboard's. Parts of chunks wholly inside the range are cached.
    pub fn connections(
        &self,
        namespace: &str,
        since_ns: i64,
        until_ns: i64,
    ) -> Result<Vec<Connection>, StoreError> {
        let lock = || self.connections.lock().unwrap_or_else(|p| p.into_inner());
        let remember = |key: ConnectionsKey, part: &Arc<Vec<Connection>>| {
            let mut cache = lock();
            if cache.parts.insert(key.clone(), part.clone()).is_none() {
                cache.order.push_back(key);
            }
            if cache.order.len() > CONNECTIONS_CACHE
                && let Some(oldest) = cache.order.pop_front()
            {
                cache.parts.remove(&oldest);
            }
        };
        // Whole hours inside the range that have a summary.
        let hours: BTreeMap<i64, summaries::Hour> = self
            .summaries_lock()
            .as_ref()
            .map(|s| {
                s.hours
                    .range(since_ns..)
                    .take_while(|(start, _)| **start + connections::HOUR_NS <= until_ns)
                    .map(|(k, v)| (*k, v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut parts = Vec::new();
        let mut summarised: Vec<&summaries::Hour> = Vec::new();
        for hour in hours.values() {
            let key = (
                hour.first_seq,
                hour.last_seq,
                format!("{namespace}@{}", hour.start_ns),
            );
            let cached = lock().parts.get(&key).cloned();
            let part = match cached {
                Some(p) => p,
                None => match summaries::read(hour, namespace) {
                    Ok(p) => {
                        remember(key, &p);
                        p
                    }
                    Err(e) => {
                        // Unreadable: its flows are read from the segments instead.
                        tracing::warn!("flow store: hourly summary: {e}");
                        continue;
                    }
                },
            };
            summarised.push(hour);
            parts.push(part);
        }
        let counted = |t: i64, seq: u64| summarised.iter().any(|h| h.counts(t, seq));
        for source in self.local_sources()? {
            let (first_seq, last_seq, min_time, max_time) = source.span();
            if max_time < since_ns || min_time >= until_ns {
                continue;
            }
            // Hours of this source that summaries count; all of them: nothing to read.
            let touched: Vec<&&summaries::Hour> = summarised
                .iter()
                .filter(|h| h.start_ns + connections::HOUR_NS > min_time && h.start_ns <= max_time)
                .collect();
            let first_hour = min_time.div_euclid(connections::HOUR_NS);
            let last_hour = max_time.div_euclid(connections::HOUR_NS);
            let all_counted = touched.len() as i64 == last_hour - first_hour + 1
                && touched
                    .iter()
                    .all(|h| h.first_seq <= first_seq && last_seq <= h.last_seq);
            if all_counted {
                continue;
            }
            let whole = since_ns <= min_time && max_time < until_ns && touched.is_empty();
            let key = (first_seq, last_seq, namespace.to_owned());
            let cached = whole.then(|| lock().parts.get(&key).cloned()).flatten();
            let part = match cached {
                Some(part) => part,
                None => {
                    let Some(chunk) = self.load(&source) else {
                        continue;
                    };
                    let spec = connections::Fold {
                        namespace: Some(namespace),
                        since_ns,
                        until_ns,
                        by_hour: false,
                        skip: (!touched.is_empty())
                            .then_some(&counted as &dyn Fn(i64, u64) -> bool),
                    };
                    let part: Vec<Connection> = connections::fold_with(&chunk, &spec)?
                        .into_iter()
                        .map(|(_, c)| c)
                        .collect();
                    let part = Arc::new(part);
                    if whole {
                        remember(key, &part);
                    }
                    part
                }
            };
            parts.push(part);
        }
        Ok(connections::merge(parts.iter().flat_map(|p| p.iter())))
    }

    /// The summary of a chunk going to disk: its groups by every key with no condition, so
    /// `/flows/top` over a time range answers from them instead of reading the segment back.
    fn summarise(&self, chunk: &Arc<Chunk>) {
        let all = Filter::default();
        let source = Source::Memory(chunk.clone());
        for by in GroupBy::ALL {
            match self.chunk_top(&source, &all, by) {
                Ok(Some(parts)) => {
                    let key = (chunk.first_seq, chunk.last_seq, by, all.conditions_key());
                    self.keep_top(key, Arc::new(parts));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("flow store: no summary for a segment: {e}"),
            }
        }
    }

    fn keep_top(&self, key: TopKey, groups: Arc<Vec<Group>>) {
        let size = key.3.len() + 64 + groups.iter().map(|g| g.key.len() + 48).sum::<usize>();
        self.tops_lock().put(key, groups, size);
    }

    fn cache_lock(&self) -> MutexGuard<'_, VecDeque<(PathBuf, Arc<Chunk>)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tops_lock(&self) -> MutexGuard<'_, Lru<TopKey, Arc<Vec<Group>>>> {
        self.tops.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One chunk's matching flows grouped by `by`; `None` when the chunk cannot be read or
    /// holds nothing that can match.
    fn chunk_top(
        &self,
        source: &Source,
        filter: &Filter,
        by: GroupBy,
    ) -> Result<Option<Vec<Group>>, StoreError> {
        let chunk = match source {
            // A segment not among the recently read ones: only the columns the filter and
            // the grouping read (a `/flows/top` over the last minute meets a new segment at
            // its start at every ask; reading it whole would cost many times more and push a
            // segment a page may want out of the cache).
            Source::Disk(s) if self.cached(&s.path).is_none() => {
                match self.read_columns(s, filter, by) {
                    Ok(chunk) => Arc::new(chunk),
                    Err(message) => {
                        let path = s.path.display().to_string();
                        self.skip_unreadable(&StoreError::Segment { path, message });
                        return Ok(None);
                    }
                }
            }
            _ => match self.load(source) {
                Some(chunk) => chunk,
                None => return Ok(None),
            },
        };
        let Some(mut predicate) = filter.predicate(&chunk) else {
            return Ok(None);
        };
        if by == GroupBy::Fqdn {
            predicate = predicate.and(col(Col::Fqdn.name()).neq(lit(0u32)));
        }
        let found = chunk
            .frame
            .clone()
            .lazy()
            .filter(predicate)
            .group_by([by.key().alias("key")])
            .agg([
                len().alias("count"),
                col("time").min().alias("first"),
                col("time").max().alias("last"),
            ])
            .collect()?;
        let counts = found.column("count")?.idx()?;
        let firsts = found.column("first")?.i64()?;
        let lasts = found.column("last")?.i64()?;
        let keys = found.column("key")?.u64()?;
        let mut parts = Vec::with_capacity(found.height());
        for i in 0..found.height() {
            let codes = by.codes(keys.get(i).unwrap_or(0));
            parts.push(Group {
                key: json::group_key(&chunk, by, &codes),
                count: u64::from(counts.get(i).unwrap_or(0)),
                first_ns: firsts.get(i).unwrap_or(0),
                last_ns: lasts.get(i).unwrap_or(0),
            });
        }
        Ok(Some(parts))
    }

    /// The columns of `segment` that `filter` and `by` read, as a chunk of their own.
    fn read_columns(
        &self,
        segment: &Segment,
        filter: &Filter,
        by: GroupBy,
    ) -> Result<Chunk, String> {
        let mut cols = filter.columns();
        for c in by.columns() {
            if !cols.contains(c) {
                cols.push(*c);
            }
        }
        let uuids = filter.reads_uuids();
        let frame = self.read_narrow(segment, &cols, uuids, false)?;
        Chunk::partial_from_parquet_frame(&frame, &cols, uuids)
    }

    /// A column-first read of `segment`: `seq`, `time`, `cols`, the UUID columns when `uuids`
    /// is set, and each row's index in the segment when `row_index` is. Columns added since
    /// the segment was written are left out, and read as empty
    /// ([`Chunk::partial_from_parquet_frame`]).
    fn read_narrow(
        &self,
        segment: &Segment,
        cols: &[Col],
        uuids: bool,
        row_index: bool,
    ) -> Result<DataFrame, String> {
        let text = |e: PolarsError| e.to_string();
        let file = std::fs::File::open(&segment.path).map_err(|e| e.to_string())?;
        let mut reader = ParquetReader::new(file);
        let schema = reader.schema().map_err(text)?;
        let names: Vec<String> = ["seq", "time"]
            .into_iter()
            .chain(cols.iter().map(|c| c.name()))
            .chain(chunk::UUID_COLUMNS.into_iter().filter(|_| uuids))
            .filter(|n| schema.contains(n))
            .map(str::to_owned)
            .collect();
        let frame = reader
            .with_columns(Some(names))
            .with_row_index(row_index.then(|| RowIndex {
                name: chunk::ROW_INDEX.into(),
                offset: 0,
            }))
            .finish()
            .map_err(text)?;
        self.stats
            .segment_filtered_reads
            .fetch_add(1, Ordering::Relaxed);
        Ok(frame)
    }
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

/// `filter`'s time range and a further condition, both to hold: what rows already matching
/// its other conditions are picked by.
fn in_time(filter: &Filter, also: Option<Expr>) -> Expr {
    match also {
        Some(also) => filter.time_predicate().and(also),
        None => filter.time_predicate(),
    }
}

/// A filter's predicate (`None`: nothing can match) and a further condition, both to hold.
fn both(predicate: Option<Expr>, also: Option<Expr>) -> Option<Expr> {
    let predicate = predicate?;
    Some(match also {
        Some(also) => predicate.and(also),
        None => predicate,
    })
}

/// Hands flows to the store without waiting: the pipeline's side of the writer thread.
#[derive(Debug, Clone)]
pub struct FlowSink {
    shared: Arc<Shared>,
    /// Wait for the writer when it is [`MAX_PENDING`] rows behind, instead of dropping.
    lossless: bool,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Signalled when the writer takes the pending rows.
    taken: Condvar,
    stop: AtomicBool,
    store: Arc<FlowStore>,
    /// The last checkpoint whose flows are on disk.
    durable: tokio::sync::watch::Sender<u64>,
}

/// Rows waiting for the writer, and the checkpoint behind the last of them.
///
/// The rows wait in blocks of [`BATCH`]: a backlog takes more blocks, and once it drains
/// they are freed but for [`SPARE_BLOCKS`], so the queue does not keep the room a backlog
/// grew it to (one vector would, or would be re-grown by doubling after each backlog).
#[derive(Debug, Default)]
struct Pending {
    /// Full blocks but the last.
    blocks: VecDeque<Vec<Row>>,
    /// Emptied blocks, for the next rows.
    spare: Vec<Vec<Row>>,
    checkpoint: Option<u64>,
}

impl Pending {
    fn push(&mut self, row: Row) {
        match self.blocks.back_mut() {
            Some(block) if block.len() < BATCH => block.push(row),
            _ => {
                let mut block = self
                    .spare
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(BATCH));
                block.push(row);
                self.blocks.push_back(block);
            }
        }
    }

    /// Rows waiting.
    fn len(&self) -> usize {
        self.blocks
            .back()
            .map_or(0, |last| (self.blocks.len() - 1) * BATCH + last.len())
    }

    /// Takes the blocks waiting into `taken`, giving back the emptied blocks `taken` held.
    fn take(&mut self, taken: &mut VecDeque<Vec<Row>>) {
        for block in taken.drain(..) {
            if self.spare.len() < SPARE_BLOCKS {
                self.spare.push(block);
            }
        }
        std::mem::swap(&mut self.blocks, taken);
    }

    /// Rows the queue has room for without allocating.
    #[cfg(test)]
    fn room(&self) -> usize {
        self.blocks
            .iter()
            .chain(&self.spare)
            .map(Vec::capacity)
            .sum()
    }
}

/// Rows that wake the writer early, and the rows of a block of the queue.
const BATCH: usize = 4096;
/// Emptied blocks the queue keeps (each about 800 KB): enough for the writer's usual round.
const SPARE_BLOCKS: usize = 4;
/// Most rows waiting for the writer; beyond it flows are counted as dropped.
const MAX_PENDING: usize = 262_144;

impl FlowSink {
    /// Starts the writer thread for `store`.
    pub fn start(store: Arc<FlowStore>) -> (FlowSink, std::thread::JoinHandle<()>) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            taken: Condvar::new(),
            stop: AtomicBool::new(false),
            store,
            durable: tokio::sync::watch::Sender::new(0),
        });
        let writer = shared.clone();
        let handle = std::thread::Builder::new()
            .name("flow-store".into())
            .spawn(move || write_loop(&writer))
            .unwrap_or_else(|e| panic!("cannot start the flow store thread: {e}"));
        (
            FlowSink {
                shared,
                lossless: false,
            },
            handle,
        )
    }

    /// A sink that makes the pipeline wait while the writer is [`MAX_PENDING`] rows behind,
    /// for a source that can wait too (Kafka keeps the records) and whose offsets must not
    /// pass flows the store dropped. The default drops them and counts them: Hubble cannot
    /// wait.
    pub fn lossless(self) -> FlowSink {
        FlowSink {
            lossless: true,
            ..self
        }
    }

    pub fn store(&self) -> &Arc<FlowStore> {
        &self.shared.store
    }

    /// Queues one flow.
    pub fn push(&self, flow: &FlowEvent) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while self.lossless && pending.len() >= MAX_PENDING {
            pending = self
                .shared
                .taken
                .wait(pending)
                .unwrap_or_else(|p| p.into_inner());
        }
        if pending.len() >= MAX_PENDING {
            drop(pending);
            self.shared
                .store
                .stats
                .dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.push(Row::new(flow));
        if pending.len() == BATCH {
            self.shared.wake.notify_one();
        }
    }

    /// Marks checkpoint `n` behind the flows queued so far: once they are all on disk (see
    /// [`FlowStore::checkpoint`]), [`FlowSink::durable`] reports `n`. A store without a
    /// directory reports it once they are stored.
    pub fn checkpoint(&self, n: u64) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pending.checkpoint = Some(n);
        self.shared.wake.notify_one();
    }

    /// The last checkpoint whose flows are durable.
    pub fn durable(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.durable.subscribe()
    }

    /// Stops the writer after it stored everything queued.
    pub fn close(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

fn write_loop(shared: &Shared) {
    let interval = shared.store.config.flush_interval;
    let mut taken: VecDeque<Vec<Row>> = VecDeque::new();
    loop {
        let (stopping, checkpoint) = {
            let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.len() < BATCH
                && pending.checkpoint.is_none()
                && !shared.stop.load(Ordering::Acquire)
            {
                pending = shared
                    .wake
                    .wait_timeout(pending, interval)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            pending.take(&mut taken);
            shared.taken.notify_all();
            (
                shared.stop.load(Ordering::Acquire),
                pending.checkpoint.take(),
            )
        };
        let nothing_taken = taken.is_empty();
        for block in &mut taken {
            shared.store.append(block);
            block.clear();
        }
        if let Some(n) = checkpoint {
            // Not durable, not reported: the source commits nothing, and the next checkpoint
            // tries again.
            match shared.store.checkpoint() {
                Ok(()) => {
                    shared.durable.send_replace(n);
                }
                Err(e) => {
                    shared
                        .store
                        .stats
                        .segment_errors
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!("flow store: checkpoint {n}: {e}");
                }
            }
        }
        if stopping && nothing_taken {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::detect::testing::flow_event;
    use crate::flow::destination::label as destination_label;
    use crate::flow::json::JsonDecoder;
    use crate::flow::wire::Decoder;
    use crate::flow::{Event, Verdict};
    use crate::sim::traffic::TrainingCluster;

    #[test]
    fn the_writers_queue_gives_back_the_room_of_a_backlog() {
        let row = Row::new(&flows(1)[0]);
        let mut pending = Pending::default();
        let mut taken = VecDeque::new();
        // A backlog the writer takes at once, then rounds of a few thousand rows.
        for round in [MAX_PENDING, 5_000, 3_000, 9_000] {
            for _ in 0..round {
                pending.push(row.clone());
            }
            assert_eq!(pending.len(), round);
            pending.take(&mut taken);
            assert_eq!(taken.iter().map(Vec::len).sum::<usize>(), round);
            assert!(taken.iter().all(|b| b.len() <= BATCH));
            taken.iter_mut().for_each(Vec::clear);
        }
        pending.take(&mut taken);
        let room = pending.room();
        assert!(
            room <= SPARE_BLOCKS * BATCH,
            "{room} rows of room kept after the backlog"
        );
    }

    /// `n` simulated flows with an exfiltration attempt every 50th.
    fn flows(n: usize) -> Vec<FlowEvent> {
        flows_attacked_every(n, 50)
    }

    /// `n` flows of the simulator, an exfiltration attempt (denied) in place of every
    /// `every`th.
    fn flows_attacked_every(n: usize, every: usize) -> Vec<FlowEvent> {
        let mut cluster = TrainingCluster::new(7, 1_767_225_600_000_000_000, 1_000_000);
        let mut decoder = Decoder::default();
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if out.len() % every == every - 1 {
                for f in cluster.exfiltration_attempt() {
                    out.push(flow_event(&mut decoder, f));
                }
            } else {
                out.push(flow_event(&mut decoder, cluster.next_flow()));
            }
        }
        out.truncate(n);
        out
    }

    fn small(dir: Option<PathBuf>) -> FlowStoreConfig {
        FlowStoreConfig {
            memory_flows: 3_000,
            chunk_flows: 1_000,
            dir,
            // The simulated flows are from January 2026.
            retention: Duration::from_secs(3_650 * 86_400),
            ..FlowStoreConfig::default()
        }
    }

    fn filled(config: FlowStoreConfig, flows: &[FlowEvent]) -> Arc<FlowStore> {
        let store = FlowStore::open(config).unwrap();
        let rows: Vec<Row> = flows.iter().map(Row::new).collect();
        for batch in rows.chunks(777) {
            store.append(batch);
        }
        store
    }

    /// Every namespace's connections as comparable text: key, flows, addresses.
    fn answer(store: &FlowStore, namespace: &str, since: i64, until: i64) -> Vec<String> {
        store
            .connections(namespace, since, until)
            .unwrap()
            .iter()
            .map(|c| format!("{:?} {} {:?}", c.key, c.flows, c.addresses))
            .collect()
    }

    fn parquet_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".parquet"))
            .collect();
        names.sort();
        names
    }

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
    fn hourly_summaries_answer_as_the_segments_do_and_count_late_flows_once() {
        const HOUR: i64 = connections::HOUR_NS;
        let dir = tempfile::tempdir().unwrap();
        let start = 1_767_225_600_000_000_000; // on the hour
        // 8 hours of flows, one every 4 s, then a late flow of hour 2 after everything.
        let mut cluster = TrainingCluster::new(3, start, 4_000_000_000);
        let mut decoder = Decoder::default();
        let mut events: Vec<FlowEvent> = (0..7_200)
            .map(|_| flow_event(&mut decoder, cluster.next_flow()))
            .collect();
        cluster.set_now_ns(start + 2 * HOUR + 60_000_000_000);
        let late: Vec<FlowEvent> = cluster
            .exfiltration_attempt()
            .into_iter()
            .map(|f| flow_event(&mut decoder, f))
            .collect();
        events.extend(late.iter().cloned());
        let config = FlowStoreConfig {
            memory_flows: 1_000,
            ..small(Some(dir.path().to_path_buf()))
        };
        let store = filled(config.clone(), &events);
        store.persist().unwrap();
        let hours = store.summaries_lock().as_ref().unwrap().hours.len();
        assert!(hours >= 6, "{hours} hours summarised");

        // The same answers from the segments alone (a copy without the summaries).
        let plain = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, plain.path().join(path.file_name().unwrap())).unwrap();
            }
        }
        let reference = FlowStore::open_read_only(FlowStoreConfig {
            dir: Some(plain.path().to_path_buf()),
            ..config.clone()
        })
        .unwrap();
        assert!(
            reference
                .summaries_lock()
                .as_ref()
                .unwrap()
                .hours
                .is_empty()
        );
        for (since, until) in [
            (start, start + 9 * HOUR),
            (start + HOUR, start + 4 * HOUR),
            (start + HOUR + 1, start + 4 * HOUR - 1),
            (start + 2 * HOUR, start + 3 * HOUR),
        ] {
            let with = answer(&store, "ai-training", since, until);
            assert_eq!(
                with,
                answer(&reference, "ai-training", since, until),
                "{since}..{until}"
            );
            assert!(!with.is_empty());
        }
        // The late denied attempts are in hour 2 (read from their own segment), once.
        let denied: u64 = store
            .connections("ai-training", start + 2 * HOUR, start + 3 * HOUR)
            .unwrap()
            .iter()
            .filter(|c| c.key.verdict == Verdict::Dropped as u32)
            .map(|c| c.flows)
            .sum();
        assert_eq!(denied, late.len() as u64);

        // A new run keeps the summaries and answers the same; deleting segments deletes the
        // summaries that count them.
        drop(store);
        let again = FlowStore::open(config).unwrap();
        assert_eq!(again.summaries_lock().as_ref().unwrap().hours.len(), hours);
        assert_eq!(
            answer(&again, "ai-training", start, start + 9 * HOUR),
            answer(&reference, "ai-training", start, start + 9 * HOUR)
        );
        // The answer really comes from the summaries: emptying hour 3's empties that hour.
        let hour3 = again.summaries_lock().as_ref().unwrap().hours[&(start + 3 * HOUR)].clone();
        std::fs::write(&hour3.path, "[]").unwrap();
        let reread = FlowStore::open_read_only(again.config().clone()).unwrap();
        assert!(answer(&reread, "ai-training", start + 3 * HOUR, start + 4 * HOUR).is_empty());
        assert_eq!(
            answer(&reread, "ai-training", start + 4 * HOUR, start + 5 * HOUR),
            answer(
                &reference,
                "ai-training",
                start + 4 * HOUR,
                start + 5 * HOUR
            )
        );
        again.retain(i64::MAX);
        assert!(again.summaries_lock().as_ref().unwrap().hours.is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path().join("connections"))
                .unwrap()
                .count(),
            0
        );
    }

    fn filter(params: &[(&str, &str)]) -> Filter {
        let mut f = Filter::default();
        for (k, v) in params {
            assert!(f.set(k, v, 0).unwrap(), "{k} is a filter");
        }
        f
    }

    /// Every page of a filtered listing, as sequence numbers.
    fn all_pages(store: &FlowStore, f: &Filter, limit: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        let mut cursor = None;
        loop {
            let page = store.list(f, cursor, limit).unwrap();
            assert!(page.flows.len() <= limit);
            seqs.extend(page.flows.iter().map(|x| x.seq));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return seqs,
            }
        }
    }

    fn expected(flows: &[FlowEvent], keep: impl Fn(&FlowEvent) -> bool) -> Vec<u64> {
        let mut seqs: Vec<u64> = (1u64..)
            .zip(flows)
            .filter(|(_, f)| keep(f))
            .map(|(s, _)| s)
            .collect();
        seqs.reverse();
        seqs
    }

    #[test]
    fn filters_select_what_a_plain_scan_selects_across_memory_and_segments() {
        let dir = tempfile::tempdir().unwrap();
        let flows = flows(8_000);
        let store = filled(small(Some(dir.path().into())), &flows);
        assert!(
            store.stats.segments.load(Ordering::Relaxed) >= 5,
            "flows rolled to disk"
        );
        let ns = |f: &FlowEvent| f.source.namespace.to_string();
        // Three flows by UUID: one in memory, two in segments.
        let wanted: Vec<u128> = [7, 4_000, 7_999]
            .iter()
            .map(|&i: &usize| flows[i].uuid.unwrap())
            .collect();
        let picked = wanted
            .iter()
            .map(|u| crate::flow::format_uuid(*u))
            .collect::<Vec<_>>()
            .join(",");
        type Keep = Box<dyn Fn(&FlowEvent) -> bool>;
        let cases: Vec<(Vec<(&str, &str)>, Keep)> = vec![
            (vec![], Box::new(|_| true)),
            (
                vec![("verdict", "DROPPED")],
                Box::new(|f| f.verdict == Verdict::Dropped),
            ),
            (
                vec![("source_namespace", "ai-training"), ("port", "29500")],
                Box::new(move |f| {
                    ns(f) == "ai-training"
                        && (f.source.port == 29500 || f.destination.port == 29500)
                }),
            ),
            (
                vec![("fqdn", "AmazonAws.com")],
                Box::new(|f| {
                    f.destination_names
                        .first()
                        .is_some_and(|n| n.ends_with(".amazonaws.com"))
                        || f.dns.as_ref().is_some_and(|d| {
                            d.query.trim_end_matches('.').ends_with(".amazonaws.com")
                        })
                }),
            ),
            (
                vec![("destination_cidr", "10.0.0.0/16"), ("protocol", "tcp")],
                Box::new(|f| {
                    f.destination
                        .ip
                        .is_some_and(|ip| ip.to_string().starts_with("10.0."))
                        && f.protocol == crate::flow::L4Protocol::Tcp
                }),
            ),
            (
                vec![("pod", "llm-"), ("drop_reason", "POLICY_DENIED,181")],
                Box::new(|f| {
                    (f.source.pod.starts_with("llm-") || f.destination.pod.starts_with("llm-"))
                        && [133, 181].contains(&f.drop_reason)
                }),
            ),
            (
                vec![("destination_ip", crate::sim::traffic::EXFIL_IP)],
                Box::new(|f| {
                    f.destination.ip.map(|i| i.to_string()).as_deref()
                        == Some(crate::sim::traffic::EXFIL_IP)
                }),
            ),
            (
                vec![("namespace", "no-such-namespace")],
                Box::new(|_| false),
            ),
            (
                vec![("uuid", &picked)],
                Box::new(move |f| wanted.contains(&f.uuid.unwrap())),
            ),
        ];
        for (params, keep) in cases {
            let want = expected(&flows, keep);
            let got = all_pages(&store, &filter(&params), 997);
            assert_eq!(got.len(), want.len(), "{params:?}");
            assert_eq!(got, want, "{params:?}");
        }
        // A time window.
        let (since, until) = (flows[1000].time_ns, flows[6000].time_ns);
        let mut f = Filter::default();
        f.since_ns = Some(since);
        f.until_ns = Some(until);
        let want = expected(&flows, |x| x.time_ns >= since && x.time_ns < until);
        assert_eq!(all_pages(&store, &f, 2_500), want);
        f.set("verdict", "DROPPED", 0).unwrap();
        assert!(all_pages(&store, &f, 100).len() < want.len());
    }

    #[test]
    fn a_segment_holding_none_of_a_filters_numbers_is_skipped_unread() {
        let dir = tempfile::tempdir().unwrap();
        let mut flows = flows(8_000);
        // Values a single segment holds (1,000 flows each).
        flows[2_500].destination.port = 7_777;
        flows[5_500].source.port = 7_777;
        flows[3_500].drop_reason = 181;
        let store = filled(small(Some(dir.path().into())), &flows);
        let segments: Vec<Segment> = store.lock().segments.iter().cloned().collect();
        assert!(segments.len() >= 5, "flows rolled to disk");
        type Holds = Box<dyn Fn(&FlowEvent) -> bool>;
        type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<Holds>);
        let port =
            |p: u16| -> Holds { Box::new(move |f| f.source.port == p || f.destination.port == p) };
        let cases: Vec<Case> = vec![
            (
                vec![("destination_port", "7777")],
                vec![Box::new(|f| f.destination.port == 7_777)],
            ),
            (
                vec![("source_port", "7777")],
                vec![Box::new(|f| f.source.port == 7_777)],
            ),
            (vec![("port", "7777")], vec![port(7_777)]),
            (vec![("port", "1")], vec![port(1)]),
            (
                vec![("verdict", "DROPPED"), ("destination_port", "7777")],
                vec![
                    Box::new(|f| f.verdict == Verdict::Dropped),
                    Box::new(|f| f.destination.port == 7_777),
                ],
            ),
            (
                vec![("drop_reason", "181")],
                vec![Box::new(|f| f.drop_reason == 181)],
            ),
            (
                vec![("drop_reason", "POLICY_DENIED,181"), ("protocol", "udp")],
                vec![
                    Box::new(|f| [133, 181].contains(&f.drop_reason)),
                    Box::new(|f| f.protocol == crate::flow::L4Protocol::Udp),
                ],
            ),
            (
                vec![("direction", "ingress"), ("port", "5432")],
                vec![
                    Box::new(|f| f.direction == crate::flow::TrafficDirection::Ingress),
                    port(5_432),
                ],
            ),
        ];
        let (mut skipped, mut kept) = (0, 0);
        for (params, conditions) in &cases {
            let f = filter(params);
            for s in &segments {
                let held = &flows[s.first_seq as usize - 1..s.last_seq as usize];
                // Read unless a condition holds for none of its flows.
                let want = conditions.iter().all(|c| held.iter().any(c));
                assert_eq!(s.may_match(&f), want, "{params:?} {}", s.first_seq);
                if want { kept += 1 } else { skipped += 1 }
            }
            let want = expected(&flows, |x| conditions.iter().all(|c| c(x)));
            assert_eq!(all_pages(&store, &f, 100), want, "{params:?}");
        }
        assert!(skipped > 0 && kept > 0, "{skipped} skipped, {kept} kept");
        // A port no flow uses: no segment is read.
        let st = &store.stats;
        let reads = || {
            st.segment_reads.load(Ordering::Relaxed)
                + st.segment_filtered_reads.load(Ordering::Relaxed)
        };
        let before = reads();
        let page = store
            .list(&filter(&[("destination_port", "2")]), None, 100)
            .unwrap();
        assert!(page.flows.is_empty());
        assert_eq!(reads(), before);
    }

    #[test]
    fn a_segment_grouped_column_first_counts_what_the_whole_segment_counts() {
        let dir = tempfile::tempdir().unwrap();
        let flows = flows_attacked_every(8_000, 150);
        let store = filled(small(Some(dir.path().into())), &flows);
        let segments = store.lock().segments.clone();
        assert!(segments.len() >= 5, "flows rolled to disk");
        // A time that cuts a segment: rows on both sides of it.
        let since = flows[2_500].time_ns;
        let cases = [
            (vec![], None),
            (vec![], Some(since)),
            (vec![("verdict", "DROPPED")], None),
            (
                vec![("source_namespace", "ai-training"), ("port", "29500")],
                None,
            ),
            (vec![("destination_cidr", "10.0.0.0/16")], Some(since)),
            (
                vec![("pod", "llm-"), ("drop_reason", "POLICY_DENIED,181")],
                None,
            ),
        ];
        let st = &store.stats;
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let sorted = |mut g: Vec<Group>| {
            g.sort_by(|a, b| a.key.cmp(&b.key));
            g.into_iter()
                .map(|g| format!("{} {} {} {}", g.key, g.count, g.first_ns, g.last_ns))
                .collect::<Vec<_>>()
        };
        let mut counted = 0;
        for (params, since) in &cases {
            let mut f = filter(params);
            f.since_ns = *since;
            for by in GroupBy::ALL {
                for s in &segments {
                    let source = Source::Disk(s.clone());
                    store.cache.lock().unwrap().clear();
                    let (whole_reads, filtered) =
                        (count(&st.segment_reads), count(&st.segment_filtered_reads));
                    let first = store.chunk_top(&source, &f, by).unwrap();
                    assert_eq!(count(&st.segment_reads), whole_reads, "no whole read");
                    assert_eq!(count(&st.segment_filtered_reads), filtered + 1);
                    // The same from the whole segment, once it is among the recently read.
                    store.load(&source).unwrap();
                    let whole = store.chunk_top(&source, &f, by).unwrap();
                    assert_eq!(count(&st.segment_filtered_reads), filtered + 1);
                    let at = format!("{params:?} since {since:?} by {by:?} in {s:?}");
                    let (first, whole) = (first.map(sorted), whole.map(sorted));
                    assert_eq!(first, whole, "{at}");
                    counted += first.map_or(0, |g| g.len());
                }
            }
        }
        assert!(counted > 100, "the cases group flows: {counted}");
    }

    #[test]
    fn a_segment_read_column_first_selects_what_a_whole_read_selects() {
        let dir = tempfile::tempdir().unwrap();
        // Few enough denied flows that segments keep them (at most a sixteenth).
        let flows = flows_attacked_every(8_000, 150);
        let store = filled(small(Some(dir.path().into())), &flows);
        let segments = store.lock().segments.clone();
        assert!(segments.len() >= 5, "flows rolled to disk");
        let uuids = [10, 3_500, 3_501]
            .iter()
            .map(|&i: &usize| crate::flow::format_uuid(flows[i].uuid.unwrap()))
            .collect::<Vec<_>>()
            .join(",");
        let since = flows[2_500].time_ns.to_string();
        let cases: Vec<Vec<(&str, &str)>> = vec![
            vec![],
            vec![("verdict", "DROPPED")],
            vec![("source_namespace", "ai-training"), ("port", "29500")],
            vec![("fqdn", "amazonaws.com")],
            vec![("destination_cidr", "10.0.0.0/16"), ("protocol", "tcp")],
            vec![("pod", "llm-"), ("drop_reason", "POLICY_DENIED,181")],
            vec![("destination_ip", crate::sim::traffic::EXFIL_IP)],
            vec![("namespace", "no-such-namespace")],
            vec![("uuid", &uuids)],
        ];
        let newest = |rows: LazyFrame| rows.tail(40);
        let mut kinds = [0, 0];
        let lines = |found: Option<(Arc<Chunk>, DataFrame)>| -> Vec<String> {
            found.map_or_else(Vec::new, |(chunk, rows)| {
                json::StoredFlow::read(&chunk, &rows)
                    .unwrap()
                    .iter()
                    .map(|f| format!("{} {}", f.seq, f.to_jsonpb_line()))
                    .collect()
            })
        };
        // What the rows of the whole segment give.
        let oracle = |s: &Segment, f: &Filter, also: Option<Expr>| {
            let chunk = store.load(&Source::Disk(s.clone())).unwrap();
            let predicate = both(f.predicate(&chunk), also)?;
            let found = newest(chunk.frame.clone().lazy().filter(predicate));
            Some((chunk, found.collect().unwrap()))
        };
        let st = &store.stats;
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (mut matched, mut unforwarded_reads) = (0, 0);
        for params in &cases {
            let mut f = filter(params);
            // Segments of this run answer a filter ruling out forwarded flows from the others,
            // kept, or compare strings through their dictionaries; an earlier run's (none
            // kept) code them first.
            let unkept = segments.iter().map(|s| Segment {
                dictionary: s.dictionary.clone().map(|d| Dictionary {
                    unforwarded: None,
                    ..d
                }),
                ..s.clone()
            });
            let without = segments.iter().map(|s| Segment {
                dictionary: None,
                ..s.clone()
            });
            let variants: Vec<Segment> = segments
                .iter()
                .cloned()
                .chain(unkept)
                .chain(without)
                .collect();
            for s in &variants {
                let unforwarded = s
                    .dictionary
                    .as_ref()
                    .is_some_and(|d| d.unforwarded.is_some())
                    && f.rules_out(Col::Verdict, crate::flow::Verdict::Forwarded as u32);
                let middle = (s.first_seq + s.last_seq) / 2;
                let source = Source::Disk(s.clone());
                for also in [None, Some(col("seq").lt(lit(middle)))] {
                    for since in [None, Some(since.parse::<i64>().unwrap())] {
                        f.since_ns = since;
                        let read = || {
                            let conditions = f.conditions_key().into();
                            store
                                .select(&source, &f, &conditions, also.clone(), &newest)
                                .unwrap()
                        };
                        store.cache.lock().unwrap().clear();
                        *store.matches_lock() = Lru::new(MATCH_CACHE_BYTES);
                        let filtered = count(&st.segment_filtered_reads);
                        let from_unforwarded = count(&st.unforwarded_hits);
                        let first = lines(read());
                        let read_once = count(&st.segment_filtered_reads);
                        assert_eq!(read_once, filtered + u64::from(!unforwarded));
                        assert_eq!(
                            count(&st.unforwarded_hits),
                            from_unforwarded + u64::from(unforwarded)
                        );
                        unforwarded_reads += usize::from(unforwarded);
                        // Again: from the rows kept when they are few.
                        let hits = count(&st.match_cache_hits);
                        let again = lines(read());
                        let kept = count(&st.match_cache_hits) > hits;
                        assert_eq!(kept, count(&st.segment_filtered_reads) == read_once);
                        // From the whole segment, once it is among the recently read.
                        let whole = lines(oracle(s, &f, also.clone()));
                        *store.matches_lock() = Lru::new(MATCH_CACHE_BYTES);
                        let from_whole = lines(read());
                        let at = format!("{params:?} since {since:?} in {s:?}");
                        assert_eq!(first, whole, "{at}");
                        assert_eq!(again, whole, "again, {at}");
                        assert_eq!(from_whole, whole, "from the whole segment, {at}");
                        kinds[usize::from(kept)] += 1;
                        matched += first.len();
                    }
                }
            }
        }
        // Both kinds: rows kept (few matches) and not (many).
        assert!(kinds[0] > 0 && kinds[1] > 0, "{kinds:?}");
        assert!(matched > 1_000, "the cases match flows: {matched}");
        assert!(
            unforwarded_reads > 0,
            "segments answered from their unforwarded flows"
        );
        assert!(st.segment_filtered_reads.load(Ordering::Relaxed) > 0);
        assert!(st.segment_reads.load(Ordering::Relaxed) > 0);
        // A listing reads the segments not cached column-first.
        store.cache.lock().unwrap().clear();
        let (whole, filtered) = (
            st.segment_reads.load(Ordering::Relaxed),
            st.segment_filtered_reads.load(Ordering::Relaxed),
        );
        let rare = filter(&[("destination_ip", crate::sim::traffic::EXFIL_IP)]);
        let page = store.list(&rare, None, 5_000).unwrap();
        assert!(!page.flows.is_empty());
        assert_eq!(st.segment_reads.load(Ordering::Relaxed), whole);
        assert!(st.segment_filtered_reads.load(Ordering::Relaxed) > filtered);
        // The same page again reads no segment: each one's few matches were kept.
        let (filtered, hits) = (
            count(&st.segment_filtered_reads),
            count(&st.match_cache_hits),
        );
        let again = store.list(&rare, None, 5_000).unwrap();
        let seqs = |p: &Page| p.flows.iter().map(|f| f.seq).collect::<Vec<_>>();
        assert_eq!(seqs(&again), seqs(&page));
        assert_eq!(count(&st.segment_filtered_reads), filtered);
        assert_eq!(count(&st.match_cache_hits), hits + segments.len() as u64);
    }

    #[test]
    fn the_caches_forget_deleted_segments() {
        let flows = flows(20_000);
        // A disk bound of about three segments.
        let probe = tempfile::tempdir().unwrap();
        let sized = filled(small(Some(probe.path().into())), &flows[..5_000]);
        let st = &sized.stats;
        let segment = st.disk_bytes.load(Ordering::Relaxed) / st.segments.load(Ordering::Relaxed);
        let dir = tempfile::tempdir().unwrap();
        let store = filled(
            FlowStoreConfig {
                disk_bytes: segment * 7 / 2,
                ..small(Some(dir.path().into()))
            },
            &flows[..5_000],
        );
        // Pages whose few matches are kept, segment by segment; groups kept as segments
        // are written.
        let rare = filter(&[("destination_ip", crate::sim::traffic::EXFIL_IP)]);
        store.list(&rare, None, 5_000).unwrap();
        store
            .connections(crate::sim::traffic::TRAINING_NAMESPACE, 0, i64::MAX)
            .unwrap();
        let connections = |store: &FlowStore| -> Vec<(u64, u64)> {
            let cache = store.connections.lock().unwrap();
            cache.order.iter().map(|k| (k.0, k.1)).collect()
        };
        let kept = |store: &FlowStore| {
            let mut keys: Vec<(u64, u64)> = store
                .matches_lock()
                .entries
                .keys()
                .map(|k| (k.0, k.1))
                .collect();
            keys.extend(store.tops_lock().entries.keys().map(|k| (k.0, k.1)));
            keys
        };
        let before = kept(&store);
        let connections_before = connections(&store);
        assert!(!before.is_empty());
        let rows: Vec<Row> = flows[5_000..].iter().map(Row::new).collect();
        store.append(&rows);
        let live: Vec<(u64, u64)> = store
            .lock()
            .segments
            .iter()
            .map(|s| (s.first_seq, s.last_seq))
            .collect();
        assert!(
            before.iter().any(|k| !live.contains(k)),
            "segments with cached answers were deleted"
        );
        let after = kept(&store);
        assert!(
            after.iter().all(|k| live.contains(k)),
            "cached: {after:?}; stored: {live:?}"
        );
        let deleted: Vec<&(u64, u64)> = before.iter().filter(|k| !live.contains(k)).collect();
        assert!(connections_before.iter().any(|k| deleted.contains(&k)));
        let left = connections(&store);
        assert!(
            left.iter().all(|k| !deleted.contains(&k)),
            "connections kept of deleted segments: {left:?}"
        );
        // The pages' segments are all gone, and so is what was kept of them.
        let [_, (_, top), (_, matches)] = store.cache_bytes();
        assert!(top > 0 && matches == 0, "{top}, {matches}");
    }

    #[test]
    fn answer_caches_drop_the_least_recently_used_and_stay_within_their_bound() {
        let mut lru: Lru<u32, u32> = Lru::new(1_000);
        for k in 0..10 {
            lru.put(k, k, 100);
        }
        assert_eq!(lru.bytes, 1_000);
        assert_eq!(lru.get(&0), Some(0), "0 is now the most recently used");
        // Over the bound: the least recently used go until a quarter is free.
        lru.put(10, 10, 100);
        assert_eq!(lru.bytes, 800);
        assert_eq!(lru.bytes, lru.entries.values().map(|e| e.1).sum::<usize>());
        for gone in 1..4 {
            assert_eq!(lru.get(&gone), None, "{gone}");
        }
        for kept in [0, 4, 9, 10] {
            assert_eq!(lru.get(&kept), Some(kept));
        }
        // An answer over a quarter of the bound is not kept.
        lru.put(11, 11, 300);
        assert_eq!(lru.get(&11), None);
        assert_eq!(lru.bytes, 800);
    }

    #[test]
    fn pages_neither_skip_nor_repeat_while_flows_arrive() {
        let flows = flows(6_000);
        let store = FlowStore::in_memory(FlowStoreConfig {
            chunk_flows: 700,
            ..FlowStoreConfig::default()
        });
        let rows: Vec<Row> = flows.iter().map(Row::new).collect();
        store.append(&rows[..3_000]);
        let f = Filter::default();
        let first = store.list(&f, None, 250).unwrap();
        let mut seen: Vec<u64> = first.flows.iter().map(|x| x.seq).collect();
        let mut cursor = first.next_cursor;
        let mut next = 3_000;
        while let Some(c) = cursor {
            if next < rows.len() {
                store.append(&rows[next..next + 150]);
                next += 150;
            }
            let page = store.list(&f, Some(c), 250).unwrap();
            seen.extend(page.flows.iter().map(|x| x.seq));
            cursor = page.next_cursor;
        }
        assert_eq!(seen, (1..=3_000).rev().collect::<Vec<u64>>());
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

    #[test]
    fn retention_deletes_old_and_oversized_segments() {
        let dir = tempfile::tempdir().unwrap();
        let flows = flows(6_000);
        let store = filled(small(Some(dir.path().into())), &flows);
        store.persist().unwrap();
        let files = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().is_file())
                .count()
        };
        assert_eq!(files(), 6);
        // The simulated flows are from 2026-01-01: a day's retention keeps none.
        let aged = FlowStore::open(FlowStoreConfig {
            retention: Duration::from_secs(86_400),
            ..small(Some(dir.path().into()))
        })
        .unwrap();
        assert_eq!(files(), 0);
        assert_eq!(aged.stats.expired.load(Ordering::Relaxed), 6_000);
    }

    #[test]
    fn a_damaged_segment_is_reported_and_the_rest_still_answers() {
        let dir = tempfile::tempdir().unwrap();
        let flows = flows(5_000);
        let store = filled(small(Some(dir.path().into())), &flows);
        store.persist().unwrap();
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .collect();
        names.sort();
        std::fs::write(&names[0], b"not parquet").unwrap();
        let reopened = FlowStore::open(small(Some(dir.path().into()))).unwrap();
        let got = all_pages(&reopened, &Filter::default(), 5_000);
        assert_eq!(got.len(), 4_000);
        assert!(reopened.stats.segment_errors.load(Ordering::Relaxed) >= 1);
    }

    #[test]
    fn ndjson_lines_decode_back_to_the_same_flow() {
        let flows = flows(600);
        let store = filled(small(None), &flows);
        let page = store.list(&Filter::default(), None, 600).unwrap();
        let mut decoder = JsonDecoder::default();
        for stored in &page.flows {
            let original = &flows[(stored.seq - 1) as usize];
            let line = stored.to_jsonpb_line();
            let Event::Flow(back) = decoder.decode_line(&line).unwrap() else {
                panic!("{line}")
            };
            assert_eq!(back.time_ns, original.time_ns, "{line}");
            assert_eq!(back.verdict, original.verdict, "{line}");
            assert_eq!(back.drop_reason, original.drop_reason, "{line}");
            assert_eq!(back.direction, original.direction, "{line}");
            assert_eq!(back.protocol, original.protocol, "{line}");
            assert_eq!(back.node, original.node, "{line}");
            for (b, o) in [
                (&back.source, &original.source),
                (&back.destination, &original.destination),
            ] {
                assert_eq!(
                    (&b.namespace, &b.pod, b.ip, b.port, b.identity),
                    (&o.namespace, &o.pod, o.ip, o.port, o.identity),
                    "{line}"
                );
            }
            assert_eq!(
                back.destination_names.first(),
                original.destination_names.first(),
                "{line}"
            );
            assert_eq!(
                back.egress_denied_by.first().map(|p| &p.name),
                original.egress_denied_by.first().map(|p| &p.name),
                "{line}"
            );
        }
    }

    #[test]
    fn top_groups_count_what_they_cover() {
        let dir = tempfile::tempdir().unwrap();
        let flows = flows(7_000);
        let store = filled(small(Some(dir.path().into())), &flows);
        let f = filter(&[("verdict", "DROPPED")]);
        let (groups, total) = store.top(&f, GroupBy::Destination, 1_000).unwrap();
        let mut want: HashMap<String, u64> = HashMap::new();
        for flow in flows.iter().filter(|x| x.verdict == Verdict::Dropped) {
            *want.entry(destination_label(flow)).or_default() += 1;
        }
        assert_eq!(total, want.values().sum::<u64>());
        let got: HashMap<String, u64> = groups.iter().map(|g| (g.key.clone(), g.count)).collect();
        assert_eq!(got, want);
        assert!(groups.windows(2).all(|w| w[0].count >= w[1].count));
        let (verdicts, all) = store.top(&Filter::default(), GroupBy::Verdict, 10).unwrap();
        assert_eq!(all, 7_000);
        assert!(verdicts.iter().any(|g| g.key == "DROPPED"));
        let (one, _) = store.top(&Filter::default(), GroupBy::Source, 1).unwrap();
        assert_eq!(one.len(), 1);
        assert!(one[0].first_ns <= one[0].last_ns);
    }

    #[test]
    fn top_answers_of_whole_chunks_are_reused_and_stay_exact() {
        let dir = tempfile::tempdir().unwrap();
        let flows = flows(12_000);
        let (older, newer) = flows.split_at(9_500);
        let store = filled(small(Some(dir.path().into())), older);
        let hits = || store.stats.top_cache_hits.load(Ordering::Relaxed);
        let want = |since: i64, upto: usize| {
            let mut want: HashMap<String, u64> = HashMap::new();
            for f in flows[..upto].iter().filter(|f| f.time_ns >= since) {
                *want.entry(destination_label(f)).or_default() += 1;
            }
            want
        };
        let got = |f: &Filter| -> HashMap<String, u64> {
            let (groups, _) = store.top(f, GroupBy::Destination, 100_000).unwrap();
            groups.into_iter().map(|g| (g.key, g.count)).collect()
        };
        // 9,500 flows in chunks of 1,000, at most 3,000 in memory: the rest in segments, each
        // summarised as it was written.
        let segments = store.stats.segments.load(Ordering::Relaxed);
        assert!(segments >= 6, "{segments} segments");
        // A range starting inside a chunk: that chunk is grouped anew each time; the
        // segments wholly inside answer from their summaries, and the sealed chunks in memory
        // from the cache the second time.
        let mut recent = Filter::default();
        let since = flows[2_500].time_ns;
        recent.since_ns = Some(since);
        assert_eq!(got(&recent), want(since, 9_500));
        assert_eq!(
            hits(),
            segments - 3,
            "the segments after the third from their summaries"
        );
        assert_eq!(got(&recent), want(since, 9_500));
        let reused = hits();
        assert!(
            reused > 2 * (segments - 3),
            "segments and sealed chunks reused, {reused} were"
        );
        // Flows that arrive afterwards are counted: the growing chunk is never reused as is.
        let rows: Vec<Row> = newer.iter().map(Row::new).collect();
        store.append(&rows);
        assert_eq!(got(&recent), want(since, 12_000));
        assert!(hits() > reused);
        // Other conditions are other answers.
        let dropped = filter(&[("verdict", "DROPPED")]);
        let (groups, total) = store.top(&dropped, GroupBy::Destination, 100_000).unwrap();
        assert_eq!(
            total as usize,
            flows
                .iter()
                .filter(|f| f.verdict == Verdict::Dropped)
                .count()
        );
        assert!(groups.iter().all(|g| g.count > 0));
    }

    #[test]
    fn a_query_reads_a_bounded_number_of_segments() {
        let dir = tempfile::tempdir().unwrap();
        let n = (MAX_SEGMENTS_PER_QUERY + 20) * 1_000 + 3_000;
        let flows = flows(n);
        let store = filled(small(Some(dir.path().into())), &flows);
        assert_eq!(
            store.stats.segments.load(Ordering::Relaxed) as usize,
            MAX_SEGMENTS_PER_QUERY + 20
        );
        // A filter nothing matches, its values in every segment (DNS is never dropped): the
        // first page stops at the budget with a cursor, the next one reads the rest.
        let none = filter(&[("verdict", "DROPPED"), ("destination_port", "53")]);
        let first = store.list(&none, None, 10).unwrap();
        assert!(first.flows.is_empty());
        let cursor = first.next_cursor.expect("a cursor to go on from");
        assert_eq!(
            cursor,
            Cursor::Seq(20 * 1_000 + 1),
            "64 segments and memory were read"
        );
        let second = store.list(&none, Some(cursor), 10).unwrap();
        assert!(second.flows.is_empty());
        assert_eq!(second.next_cursor, None);
        // A filter naming a pod no segment of this run holds skips them all unread: one
        // page, no budget reached, nothing to go on from; grouping by it is not refused.
        let absent = filter(&[("pod", "nobody-here"), ("destination_port", "53")]);
        let page = store.list(&absent, None, 10).unwrap();
        assert!(page.flows.is_empty());
        assert_eq!(page.next_cursor, None);
        assert_eq!(store.top(&absent, GroupBy::Verdict, 5).unwrap().1, 0);
        // Every flow is still reachable, page by page.
        assert_eq!(all_pages(&store, &Filter::default(), 5_000).len(), n);
        // Grouping with a condition over more segments than the budget is refused; a
        // narrower range is not, nor grouping by time alone, which the segments' summaries
        // answer without reading them.
        let forwarded = filter(&[("verdict", "FORWARDED")]);
        let err = store.top(&forwarded, GroupBy::Verdict, 5).unwrap_err();
        assert!(
            matches!(err, StoreError::TooBroad { segments } if segments == MAX_SEGMENTS_PER_QUERY + 20)
        );
        let (_, total) = store.top(&Filter::default(), GroupBy::Verdict, 5).unwrap();
        assert_eq!(total as usize, n);
        let mut recent = Filter::default();
        let since = flows[n - 10_000].time_ns;
        recent.since_ns = Some(since);
        let (_, total) = store.top(&recent, GroupBy::Verdict, 5).unwrap();
        assert_eq!(
            total as usize,
            flows.iter().filter(|f| f.time_ns >= since).count()
        );
    }

    #[test]
    fn an_unwritable_segment_dir_is_counted_and_the_store_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let segments = dir.path().join("flows");
        let flows = flows(9_000);
        let store = FlowStore::open(small(Some(segments.clone()))).unwrap();
        // The directory disappears and a file takes its place: every write now fails.
        std::fs::remove_dir_all(&segments).unwrap();
        std::fs::write(&segments, b"not a directory").unwrap();
        let rows: Vec<Row> = flows.iter().map(Row::new).collect();
        store.append(&rows[..6_000]);
        assert_eq!(store.stats.segment_errors.load(Ordering::Relaxed), 3);
        assert_eq!(store.stats.expired.load(Ordering::Relaxed), 3_000);
        assert!(store.stats.memory_flows.load(Ordering::Relaxed) <= 3_000);
        assert_eq!(all_pages(&store, &Filter::default(), 1_000).len(), 3_000);
        // Writable again: segments are written and read as before, no partial file is left.
        std::fs::remove_file(&segments).unwrap();
        std::fs::create_dir(&segments).unwrap();
        store.append(&rows[6_000..]);
        assert_eq!(store.stats.segments.load(Ordering::Relaxed), 3);
        assert_eq!(all_pages(&store, &Filter::default(), 1_000).len(), 6_000);
        let names: Vec<_> = std::fs::read_dir(&segments)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| n.ends_with(".parquet")), "{names:?}");
    }

    #[test]
    fn packed_group_keys_keep_the_largest_codes_apart() {
        let max = (1u32 << CODE_BITS) - 1;
        let rows: [[u32; 7]; 4] = [
            // fqdn, dst ns, dst pod, dst ip, dst port, protocol, src ns / src pod
            [max, max, max, max, 65_535, 5, max],
            [0, max, max - 1, max, 65_535, 1, 1],
            [0, 0, max, max, 0, 0, 0],
            [1, 0, 0, 0, 443, 1, 0],
        ];
        let column = |i: usize, c: Col| {
            UInt32Chunked::from_vec(c.name().into(), rows.iter().map(|r| r[i]).collect())
                .into_column()
        };
        let frame = DataFrame::new(
            rows.len(),
            vec![
                column(0, Col::Fqdn),
                column(1, Col::DstNamespace),
                column(2, Col::DstPod),
                column(3, Col::DstIp),
                column(4, Col::DstPort),
                column(5, Col::Protocol),
                column(6, Col::SrcNamespace),
                column(6, Col::SrcPod),
            ],
        )
        .unwrap();
        let keys = |by: GroupBy| -> Vec<u64> {
            let out = frame
                .clone()
                .lazy()
                .select([by.key().alias("key")])
                .collect()
                .unwrap();
            out.column("key")
                .unwrap()
                .u64()
                .unwrap()
                .into_no_null_iter()
                .collect()
        };
        let dest: Vec<Vec<u32>> = keys(GroupBy::Destination)
            .into_iter()
            .map(|k| GroupBy::Destination.codes(k))
            .collect();
        assert_eq!(dest[0], vec![max, 0, 0, 0, 65_535, 5], "the FQDN wins");
        assert_eq!(
            dest[1],
            vec![0, max, max - 1, 0, 65_535, 1],
            "then namespace/pod"
        );
        assert_eq!(dest[2], vec![0, 0, 0, max, 0, 0], "then the address");
        assert_eq!(dest[3], vec![1, 0, 0, 0, 443, 1]);
        let src: Vec<Vec<u32>> = keys(GroupBy::Source)
            .into_iter()
            .map(|k| GroupBy::Source.codes(k))
            .collect();
        assert_eq!(src[0], vec![max, max]);
        assert_eq!(src[1], vec![1, 1]);
        let ports: Vec<Vec<u32>> = keys(GroupBy::Port)
            .into_iter()
            .map(|k| GroupBy::Port.codes(k))
            .collect();
        assert_eq!(ports[0], vec![65_535, 5]);
    }

    #[test]
    fn cursors_print_and_parse_back() {
        for c in [
            Cursor::Seq(42),
            Cursor::At {
                time_ns: 1_796_047_199_999_000_000,
                seq: 7,
                replica: "exfilwatch-7d9f.x2k".into(),
            },
            Cursor::At {
                time_ns: -1,
                seq: 0,
                replica: "".into(),
            },
        ] {
            assert_eq!(c.to_string().parse::<Cursor>(), Ok(c.clone()));
        }
        for bad in ["", "x", "1.2", "1.x.r", "-1"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
        let store = FlowStore::in_memory(small(None));
        let at = "1.2.r".parse().unwrap();
        assert!(matches!(
            store.list(&Filter::default(), Some(at), 10),
            Err(StoreError::Cursor(_))
        ));
    }

    #[test]
    fn bad_parameters_name_themselves() {
        let mut f = Filter::default();
        for (k, v) in [
            ("verdict", "MAYBE"),
            ("port", "70000"),
            ("cidr", "10.0.0.0/33"),
            ("ip", "10.0.0"),
            ("since", "yesterday"),
            ("since", "9999999999d"),
            ("until", "3651d"),
            ("pod", ""),
            ("protocol", "QUIC"),
        ] {
            let e = f.set(k, v, 0).unwrap_err();
            assert_eq!(e.parameter, k);
            assert!(e.to_string().contains(v), "{e}");
        }
        assert!(!f.set("colour", "blue", 0).unwrap());
        assert_eq!(
            query::parse_time("since", "2h", 10_000_000_000_000).unwrap(),
            10_000_000_000_000 - 7_200_000_000_000
        );
        let r = filter(&[
            ("since", "2026-01-02T00:00:00Z"),
            ("until", "2026-01-01T00:00:00Z"),
        ]);
        assert_eq!(r.check_range().unwrap_err().parameter, "until");
    }
}
