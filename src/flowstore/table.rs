//! The shared flow history as a Delta Lake table: `<prefix>flows/` in the bucket, its
//! transaction log (`_delta_log/`) the catalog of every replica's segments.
//!
//! A replica adds each segment it uploads in a commit of its own (a conditional PUT of the
//! log's next version: two replicas committing the same version cannot both win, and the
//! loser retries on the next), replacing the file of the same chunk committed at an earlier
//! checkpoint in the same commit. Every file carries its statistics (flows, least and greatest
//! time, source and destination namespace) and its hour as partition values, so a query (ours,
//! DuckDB's, Spark's) picks the files of a time range from the log alone, with no LIST of the
//! data. The log is checkpointed every [`CHECKPOINT_INTERVAL`] commits and its old entries
//! expire with the table's `delta.logRetentionDuration`.
//!
//! Columns are the segment's own (the local parquet files are what is uploaded); their Delta
//! types follow the usual reading of unsigned parquet integers: 32-bit as `long`, 64-bit as
//! `decimal(20,0)` (sequence numbers, UUID halves).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake_core::kernel::{Action, Add, DataType, Remove, StructField};
use deltalake_core::logstore::{LogStoreRef, StorageConfig, default_logstore};
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::{DeltaTable, DeltaTableError};
use object_store::ObjectStore;
use object_store::prefix::PrefixStore;

use super::chunk::{Kind, SCHEMA, UUID_COLUMNS};

/// The table's partition columns: the UTC date and hour of a file's first flow.
pub const PARTITIONS: [&str; 2] = ["date", "hour"];

/// Commits between checkpoints of the log (Delta's usual interval).
pub const CHECKPOINT_INTERVAL: u64 = 100;

/// How long the log keeps entries a checkpoint covers (time travel is not needed: readers
/// start from the newest checkpoint).
const LOG_RETENTION: &str = "interval 1 days";

/// How long a file removed from the table (a checkpoint's file replaced by its whole chunk)
/// stays in the bucket for readers of an older version, before a vacuum may delete it.
const DELETED_FILE_RETENTION: &str = "interval 1 hours";

/// [`DELETED_FILE_RETENTION`] as a duration.
const DELETED_FILE_KEPT: Duration = Duration::from_secs(3_600);

/// Most files one expiry commit removes (the rest go at the next).
const MAX_EXPIRED: usize = 10_000;

/// Commit attempts before a commit fails (each retry reads the versions that won).
const COMMIT_RETRIES: usize = 64;

/// A data file of the table, as its log entry describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Its path within the table, as the log names it.
    pub path: Arc<str>,
    pub replica: Arc<str>,
    pub first_seq: u64,
    pub last_seq: u64,
    pub min_time: i64,
    pub max_time: i64,
    pub rows: u64,
    pub bytes: u64,
    /// Least and greatest source, then destination namespace, when its statistics state them.
    pub namespaces: Option<[(Arc<str>, Arc<str>); 2]>,
}

impl Object {
    /// The log's action removing the file at `now_ms`; `data_change` false when its flows
    /// stay in the table (in a file added by the same commit).
    fn remove(&self, now_ms: i64, data_change: bool) -> Action {
        Action::Remove(Remove {
            path: self.path.to_string(),
            data_change,
            deletion_timestamp: Some(now_ms),
            extended_file_metadata: Some(false),
            size: i64::try_from(self.bytes).ok(),
            ..Remove::default()
        })
    }

    /// Whether the file may hold flows `filter` matches, from its namespaces' ranges.
    pub fn may_match(&self, filter: &super::Filter) -> bool {
        use super::Col;
        self.namespaces.as_ref().is_none_or(|[src, dst]| {
            filter.may_match_ranges(&[
                (Col::SrcNamespace, &src.0, &src.1),
                (Col::DstNamespace, &dst.0, &dst.1),
            ])
        })
    }
}

/// A file to add: where it goes in the table and what its log entry says of it.
#[derive(Debug, Clone)]
pub struct NewFile {
    pub path: String,
    pub date: String,
    pub hour: String,
    pub bytes: u64,
    pub rows: u64,
    pub min_time: i64,
    pub max_time: i64,
    /// Least and greatest source and destination namespace, when short enough to state.
    pub namespaces: Option<[(String, String); 2]>,
}

impl NewFile {
    /// The Delta statistics of the file, as JSON.
    fn stats(&self) -> String {
        let mut min = serde_json::Map::new();
        let mut max = serde_json::Map::new();
        let mut nulls = serde_json::Map::new();
        min.insert("time".into(), self.min_time.into());
        max.insert("time".into(), self.max_time.into());
        nulls.insert("time".into(), 0.into());
        if let Some([src, dst]) = &self.namespaces {
            for (name, (lo, hi)) in [("src_namespace", src), ("dst_namespace", dst)] {
                min.insert(name.into(), lo.as_str().into());
                max.insert(name.into(), hi.as_str().into());
                nulls.insert(name.into(), 0.into());
            }
        }
        serde_json::json!({
            "numRecords": self.rows,
            "minValues": min,
            "maxValues": max,
            "nullCount": nulls,
        })
        .to_string()
    }

    fn partition_values(&self) -> std::collections::HashMap<String, Option<String>> {
        [
            ("date".to_string(), Some(self.date.clone())),
            ("hour".to_string(), Some(self.hour.clone())),
        ]
        .into()
    }

    fn add(&self, now_ms: i64) -> Add {
        Add {
            path: self.path.clone(),
            partition_values: self.partition_values(),
            size: i64::try_from(self.bytes).unwrap_or(i64::MAX),
            modification_time: now_ms,
            data_change: true,
            stats: Some(self.stats()),
            ..Add::default()
        }
    }
}

/// The replica, first and last sequence number a data file's name states
/// (`<replica>-<first>-<last>.parquet`), `None` for a name of another form.
pub fn parse_name(path: &str) -> Option<(&str, u64, u64)> {
    let name = path.rsplit('/').next()?.strip_suffix(".parquet")?;
    let (rest, last) = name.rsplit_once('-')?;
    let (replica, first) = rest.rsplit_once('-')?;
    // Replica names go into page cursors and links as they are.
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_.".contains(&b);
    if replica.is_empty() || !replica.bytes().all(plain) {
        return None;
    }
    Some((replica, first.parse().ok()?, last.parse().ok()?))
}

/// The table's columns: the segment's, then the partition columns.
fn columns() -> Result<Vec<StructField>, String> {
    let wide = DataType::decimal(20, 0).map_err(|e| e.to_string())?;
    let mut out = vec![
        StructField::new("seq", wide.clone(), false),
        StructField::new("time", DataType::LONG, false),
    ];
    for name in UUID_COLUMNS {
        out.push(StructField::new(name, wide.clone(), true));
    }
    for (name, kind) in SCHEMA {
        let t = match kind {
            Kind::Number => DataType::LONG,
            Kind::Text | Kind::Ip => DataType::STRING,
        };
        out.push(StructField::new(name, t, true));
    }
    for name in PARTITIONS {
        out.push(StructField::new(name, DataType::STRING, false));
    }
    Ok(out)
}

/// The table: its log store, and the newest state read of it.
pub struct Table {
    log_store: LogStoreRef,
    state: Mutex<State>,
    /// `s3://<bucket>/<prefix>flows`.
    location: String,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("location", &self.location)
            .finish()
    }
}

#[derive(Default)]
struct State {
    table: Option<DeltaTable>,
    /// The table's files as of `version`.
    files: Arc<Vec<Object>>,
    version: Option<u64>,
}

fn error(what: &str, e: DeltaTableError) -> String {
    format!("table: {what}: {e}")
}

impl Table {
    /// The table under `<prefix>flows/` of the bucket `store` reaches; nothing is read yet.
    pub fn new(store: Arc<dyn ObjectStore>, bucket: &str, prefix: &str) -> Result<Table, String> {
        let root = format!("{prefix}flows");
        let location = url::Url::parse(&format!("s3://{bucket}/{root}"))
            .map_err(|e| format!("table location s3://{bucket}/{root}: {e}"))?;
        let prefixed: Arc<dyn ObjectStore> = Arc::new(PrefixStore::new(store.clone(), root));
        let log_store = default_logstore(prefixed, store, &location, &StorageConfig::default());
        Ok(Table {
            log_store,
            state: Mutex::default(),
            location: location.to_string(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the table's newest version, creating the table when there is none yet (a
    /// replica that loses that race reads the winner's).
    pub async fn open(&self) -> Result<(), String> {
        let mut table = DeltaTable::new(self.log_store.clone());
        if table.load().await.is_err() {
            let created = CreateBuilder::new()
                .with_log_store(self.log_store.clone())
                .with_table_name("flows")
                .with_comment("exfilwatch flow history")
                .with_columns(columns()?)
                .with_partition_columns(PARTITIONS)
                .with_configuration_property(
                    deltalake_core::TableProperty::LogRetentionDuration,
                    Some(LOG_RETENTION),
                )
                .with_configuration_property(
                    deltalake_core::TableProperty::DeletedFileRetentionDuration,
                    Some(DELETED_FILE_RETENTION),
                )
                .with_configuration_property(
                    deltalake_core::TableProperty::CheckpointInterval,
                    Some(CHECKPOINT_INTERVAL.to_string()),
                )
                .with_save_mode(SaveMode::Ignore)
                .await;
            table = match created {
                Ok(t) => t,
                Err(_) => {
                    let mut t = DeltaTable::new(self.log_store.clone());
                    t.load().await.map_err(|e| error("reading", e))?;
                    t
                }
            };
        }
        self.install(table);
        Ok(())
    }

    /// Keeps `table`'s state as the newest read, with its files; a state no newer than the
    /// one kept is dropped (its files are not listed again).
    fn install(&self, table: DeltaTable) {
        let version = table.version();
        let newer = |state: &State| state.version.is_none_or(|v| version.is_some_and(|n| n > v));
        if !newer(&self.lock()) {
            return;
        }
        let files = Arc::new(self.files_of(&table));
        let mut state = self.lock();
        if !newer(&state) {
            return;
        }
        state.files = files;
        state.version = version;
        state.table = Some(table);
    }

    /// The data files of `table`'s state. A file whose name or statistics are not the ones
    /// exfilwatch writes is left out (another writer's), as the log states no span for it.
    fn files_of(&self, table: &DeltaTable) -> Vec<Object> {
        let Ok(snapshot) = table.snapshot() else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(snapshot.log_data().num_files());
        for view in snapshot.log_data().iter() {
            let path = view.path();
            let Some((replica, first_seq, last_seq)) = parse_name(&path) else {
                continue;
            };
            let Some(stats) = view.stats().as_deref().and_then(Stats::parse) else {
                continue;
            };
            out.push(Object {
                path: path.as_ref().into(),
                replica: replica.into(),
                first_seq,
                last_seq,
                min_time: stats.min_time,
                max_time: stats.max_time,
                rows: stats.rows,
                bytes: u64::try_from(view.size()).unwrap_or(0),
                namespaces: stats.namespaces,
            });
        }
        out
    }

    /// Reads the versions committed since the state last read.
    pub async fn refresh(&self) -> Result<(), String> {
        let current = self.lock().table.clone();
        let Some(mut table) = current else {
            return self.open().await;
        };
        table
            .update_incremental(None)
            .await
            .map_err(|e| error("reading", e))?;
        self.install(table);
        Ok(())
    }

    /// The files of the newest state read.
    pub fn files(&self) -> Arc<Vec<Object>> {
        self.lock().files.clone()
    }

    /// Commits `added` files in one version, removing the files whose flows they hold (a
    /// replica's files whose sequence numbers an added file of the same replica spans: a
    /// growing chunk's earlier files, whether this process or an earlier one added them);
    /// the new version. The state is read again at the next commit or query.
    pub async fn commit(&self, added: &[NewFile]) -> Result<u64, String> {
        // From the newest version: a commit from an old one would retry once for every
        // version the other replicas committed since.
        self.refresh().await?;
        let Some(table) = self.lock().table.clone() else {
            return Err("table: not opened".into());
        };
        let now_ms = crate::common::clock::now_ns() / 1_000_000;
        let mut actions: Vec<Action> = added.iter().map(|f| Action::Add(f.add(now_ms))).collect();
        let spans: Vec<(&str, u64, u64)> =
            added.iter().filter_map(|f| parse_name(&f.path)).collect();
        let covered = |o: &Object| {
            spans.iter().any(|&(replica, first, last)| {
                *o.replica == *replica
                    && (first..=last).contains(&o.first_seq)
                    && (first..=last).contains(&o.last_seq)
                    && !added.iter().any(|f| *f.path == *o.path)
            })
        };
        for o in self.files().iter().filter(|o| covered(o)) {
            // Its flows are all in a file added in the same version: no data changes by the
            // removal (so it conflicts with no other replica's commit).
            actions.push(o.remove(now_ms, false));
        }
        let snapshot = table.snapshot().map_err(|e| error("reading", e))?;
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(PARTITIONS.map(String::from).to_vec()),
            predicate: None,
        };
        let done =
            CommitBuilder::from(CommitProperties::default().with_max_retries(COMMIT_RETRIES))
                .with_actions(actions)
                .build(Some(snapshot), self.log_store.clone(), operation)
                .await
                .map_err(|e| error("committing", e))?;
        // The state after the commit is not taken from it: a commit that retried past other
        // replicas' versions states its own actions only.
        Ok(done.version())
    }
}

/// The time a vacuum of the table takes as now.
#[derive(Debug)]
struct At(i64);

impl deltalake_core::operations::vacuum::Clock for At {
    fn current_timestamp_millis(&self) -> i64 {
        self.0
    }
}

/// What a file's statistics in the log say of it (the ones [`NewFile`] writes).
#[derive(Debug, PartialEq, Eq)]
struct Stats {
    rows: u64,
    min_time: i64,
    max_time: i64,
    namespaces: Option<[(Arc<str>, Arc<str>); 2]>,
}

impl Stats {
    /// `None` without rows and times, which every file exfilwatch adds states.
    fn parse(stats: &str) -> Option<Stats> {
        let v: serde_json::Value = serde_json::from_str(stats).ok()?;
        let (min, max) = (v.get("minValues")?, v.get("maxValues")?);
        let range = |name: &str| -> Option<(Arc<str>, Arc<str>)> {
            Some((
                min.get(name)?.as_str()?.into(),
                max.get(name)?.as_str()?.into(),
            ))
        };
        Some(Stats {
            rows: v.get("numRecords")?.as_u64()?,
            min_time: min.get("time")?.as_i64()?,
            max_time: max.get("time")?.as_i64()?,
            namespaces: range("src_namespace")
                .zip(range("dst_namespace"))
                .map(|(s, d)| [s, d]),
        })
    }
}

impl Table {
    /// Removes from the table, in one commit, the files whose flows are all older than
    /// `cutoff_ns`, then deletes from the bucket the files removed from the table more than
    /// [`DELETED_FILE_RETENTION`] before `now_ns` (Delta's vacuum, from the log's removals:
    /// no LIST of the data). The files removed and deleted.
    pub async fn expire(&self, cutoff_ns: i64, now_ns: i64) -> Result<(usize, usize), String> {
        self.refresh().await?;
        let Some(table) = self.lock().table.clone() else {
            return Err("table: not opened".into());
        };
        let now_ms = now_ns / 1_000_000;
        let expired: Vec<Action> = self
            .files()
            .iter()
            .filter(|o| o.max_time < cutoff_ns)
            .take(MAX_EXPIRED)
            .map(|o| o.remove(now_ms, true))
            .collect();
        let removed = expired.len();
        if removed > 0 {
            let snapshot = table.snapshot().map_err(|e| error("reading", e))?;
            let operation = DeltaOperation::Delete {
                predicate: Some(format!("time < {cutoff_ns}")),
            };
            CommitBuilder::from(CommitProperties::default().with_max_retries(COMMIT_RETRIES))
                .with_actions(expired)
                .build(Some(snapshot), self.log_store.clone(), operation)
                .await
                .map_err(|e| error("expiring", e))?;
            self.refresh().await?;
        }
        let Some(table) = self.lock().table.clone() else {
            return Err("table: not opened".into());
        };
        let kept = chrono::Duration::from_std(DELETED_FILE_KEPT).unwrap_or_default();
        let (_, metrics) = table
            .vacuum()
            .with_retention_period(kept)
            .with_clock(Arc::new(At(now_ms)))
            .await
            .map_err(|e| error("vacuuming", e))?;
        Ok((removed, metrics.files_deleted.len()))
    }
}

/// How long a refreshed state is reused before the log is read again.
pub const REFRESH: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_state_replica_and_sequence_numbers() {
        assert_eq!(
            parse_name("date=2026-12-07/hour=18/exfilwatch-1-x2k-17-40.parquet"),
            Some(("exfilwatch-1-x2k", 17, 40))
        );
        assert_eq!(
            parse_name("date=2026-12-07/hour=18/part-0001.parquet"),
            None
        );
        assert_eq!(parse_name("a/<b>-1-2.parquet"), None);
        assert_eq!(parse_name("a/r-1-2.json"), None);
    }

    #[test]
    fn statistics_state_time_and_namespaces() {
        let f = NewFile {
            path: "date=2026-12-07/hour=18/r-1-2.parquet".into(),
            date: "2026-12-07".into(),
            hour: "18".into(),
            bytes: 10,
            rows: 2,
            min_time: 5,
            max_time: 9,
            namespaces: Some([("a".into(), "b".into()), ("c".into(), "d".into())]),
        };
        let stats = f.stats();
        assert_eq!(
            Stats::parse(&stats),
            Some(Stats {
                rows: 2,
                min_time: 5,
                max_time: 9,
                namespaces: Some([("a".into(), "b".into()), ("c".into(), "d".into())]),
            })
        );
        let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
        assert_eq!(v["minValues"]["dst_namespace"], "c");
        assert_eq!(v["maxValues"]["src_namespace"], "b");
        // Without namespaces (one too long to state), the times still bound the file.
        let plain = NewFile {
            namespaces: None,
            ..f
        };
        assert_eq!(Stats::parse(&plain.stats()).unwrap().namespaces, None);
        let columns = columns().unwrap();
        assert_eq!(columns.len(), 4 + SCHEMA.len() + PARTITIONS.len());
    }
}
