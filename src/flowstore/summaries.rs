//! Hourly summaries of every namespace's connections, written beside the segments, so the
//! policy advisor reads a week as 168 small files instead of every segment.
//!
//! As each chunk goes to disk its flows are folded into connections per hour (all
//! namespaces) and merged into that hour's open summary. An hour closes once the chunks being
//! written are [`GRACE`] past its end; its summary is written to
//! `connections/hour_<start>_<first seq>_<last seq>.json` and says exactly what it counts: the
//! hour's flows in the chunks from the first to the last sequence number. A flow of the hour
//! that arrives later sits in a later chunk and is read from there. An hour is summarised only
//! when it began after everything stored before this run (restarts never make a partial
//! summary), and a summary goes when a segment it counts is deleted.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::chunk::Chunk;
use super::connections::{self, Connection, ConnectionKey, Fold, HOUR_NS};
use crate::flow::intern::Sym;

/// How far past an hour's end the chunks being written must be before the hour closes.
pub const GRACE_NS: i64 = 10 * 60 * 1_000_000_000;

/// A written hour summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hour {
    pub start_ns: i64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub path: PathBuf,
}

impl Hour {
    fn file_name(start_ns: i64, first_seq: u64, last_seq: u64) -> String {
        format!("hour_{start_ns}_{first_seq}_{last_seq}.json")
    }

    fn parse(path: &Path) -> Option<Hour> {
        let name = path.file_name()?.to_str()?;
        let rest = name.strip_prefix("hour_")?.strip_suffix(".json")?;
        let mut parts = rest.split('_');
        let hour = Hour {
            start_ns: parts.next()?.parse().ok()?,
            first_seq: parts.next()?.parse().ok()?,
            last_seq: parts.next()?.parse().ok()?,
            path: path.to_path_buf(),
        };
        parts.next().is_none().then_some(hour)
    }

    /// True when this summary counts the flow at `time_ns` with sequence number `seq`.
    pub fn counts(&self, time_ns: i64, seq: u64) -> bool {
        time_ns.div_euclid(HOUR_NS) * HOUR_NS == self.start_ns
            && (self.first_seq..=self.last_seq).contains(&seq)
    }
}

/// An hour being summarised.
#[derive(Debug, Default)]
struct Open {
    parts: Vec<Connection>,
    /// How many parts the last merge left: the hour's distinct connections then.
    merged: usize,
    first_seq: u64,
    last_seq: u64,
}

/// The summaries of one store.
#[derive(Debug)]
pub struct Summaries {
    dir: PathBuf,
    /// Hours starting before this are never summarised: stored before this run.
    since_ns: i64,
    open: BTreeMap<i64, Open>,
    /// Written summaries by hour start.
    pub hours: BTreeMap<i64, Hour>,
}

/// One connection as a summary file holds it.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    direction: u32,
    verdict: u32,
    drop_reason: u32,
    src_namespace: String,
    src_labels: String,
    src_identity: u32,
    dst_namespace: String,
    dst_labels: String,
    dst_identity: u32,
    dst_port: u16,
    protocol: u32,
    fqdn: String,
    dns_query: String,
    flows: u64,
    first_ns: i64,
    last_ns: i64,
    pods: Vec<String>,
    policy: String,
    addresses: Vec<(IpAddr, u64)>,
}

impl Stored {
    fn of(c: &Connection) -> Stored {
        let k = &c.key;
        Stored {
            direction: k.direction,
            verdict: k.verdict,
            drop_reason: k.drop_reason,
            src_namespace: k.src_namespace.to_string(),
            src_labels: k.src_labels.to_string(),
            src_identity: k.src_identity,
            dst_namespace: k.dst_namespace.to_string(),
            dst_labels: k.dst_labels.to_string(),
            dst_identity: k.dst_identity,
            dst_port: k.dst_port,
            protocol: k.protocol,
            fqdn: k.fqdn.to_string(),
            dns_query: k.dns_query.to_string(),
            flows: c.flows,
            first_ns: c.first_ns,
            last_ns: c.last_ns,
            pods: c.pods.iter().map(|p| p.to_string()).collect(),
            policy: c.policy.to_string(),
            addresses: c.addresses.clone(),
        }
    }

    fn connection(self) -> Connection {
        Connection {
            key: ConnectionKey {
                direction: self.direction,
                verdict: self.verdict,
                drop_reason: self.drop_reason,
                src_namespace: Sym::from(self.src_namespace),
                src_labels: Sym::from(self.src_labels),
                src_identity: self.src_identity,
                dst_namespace: Sym::from(self.dst_namespace),
                dst_labels: Sym::from(self.dst_labels),
                dst_identity: self.dst_identity,
                dst_port: self.dst_port,
                protocol: self.protocol,
                fqdn: Sym::from(self.fqdn),
                dns_query: Sym::from(self.dns_query),
            },
            flows: self.flows,
            first_ns: self.first_ns,
            last_ns: self.last_ns,
            pods: self.pods.into_iter().map(Sym::from).collect(),
            policy: Sym::from(self.policy),
            addresses: self.addresses,
        }
    }
}

impl Summaries {
    /// The summaries under `flows_dir/connections`; hours starting before `stored_until_ns`
    /// (the newest flow stored before this run) are not summarised by this run.
    pub fn open(flows_dir: &Path, stored_until_ns: i64, writable: bool) -> Summaries {
        let dir = flows_dir.join("connections");
        if writable && let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!("flow store: {}: {e}; no hourly summaries", dir.display());
        }
        let mut hours = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if writable && path.extension().is_some_and(|e| e == "tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if let Some(h) = Hour::parse(&path) {
                hours.insert(h.start_ns, h);
            }
        }
        Summaries {
            dir,
            since_ns: stored_until_ns.saturating_add(1),
            open: BTreeMap::new(),
            hours,
        }
    }

    /// Adds a chunk that has just been written to disk, and writes the hours it closes.
    pub fn add(&mut self, chunk: &Chunk) {
        let spec = Fold {
            namespace: None,
            since_ns: i64::MIN,
            until_ns: i64::MAX,
            by_hour: true,
            skip: None,
        };
        let parts = match connections::fold_with(chunk, &spec) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("flow store: no connection summary for a segment: {e}");
                // The hours this chunk touches can no longer be summarised whole.
                self.open.clear();
                self.since_ns = self.since_ns.max(chunk.max_time.saturating_add(1));
                return;
            }
        };
        for (hour, c) in parts {
            if hour < self.since_ns || self.hours.contains_key(&hour) {
                continue;
            }
            let open = self.open.entry(hour).or_insert_with(|| Open {
                first_seq: chunk.first_seq,
                ..Open::default()
            });
            open.last_seq = chunk.last_seq;
            open.parts.push(c);
        }
        // Keep each open hour merged, so it stays within about a quarter more than its
        // distinct connections: merging when the parts grow by a quarter keeps the work per
        // added part constant (a merge of 1.25 n parts for every 0.25 n added).
        for open in self.open.values_mut() {
            if open.parts.len() > open.merged + open.merged / 4 + 64 {
                open.parts = connections::merge(open.parts.iter());
                open.merged = open.parts.len();
            }
        }
        let closing: Vec<i64> = self
            .open
            .keys()
            .copied()
            .filter(|h| h + HOUR_NS + GRACE_NS <= chunk.min_time)
            .collect();
        for hour in closing {
            if let Some(open) = self.open.remove(&hour)
                && let Err(e) = self.write(hour, open)
            {
                tracing::warn!("flow store: hourly summary: {e}");
            }
        }
    }

    fn write(&mut self, start_ns: i64, open: Open) -> std::io::Result<()> {
        // The hour's last chunk is the last one written before it closed.
        let merged = connections::merge(open.parts.iter());
        let stored: Vec<Stored> = merged.iter().map(Stored::of).collect();
        let text = serde_json::to_vec(&stored).map_err(std::io::Error::other)?;
        let path = self
            .dir
            .join(Hour::file_name(start_ns, open.first_seq, open.last_seq));
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        self.hours.insert(
            start_ns,
            Hour {
                start_ns,
                first_seq: open.first_seq,
                last_seq: open.last_seq,
                path,
            },
        );
        Ok(())
    }

    /// Forgets the summaries that count flows of segments that are gone (sequence numbers
    /// below `oldest_seq`), deleting their files when `delete`.
    pub fn prune(&mut self, oldest_seq: u64, delete: bool) {
        let gone: Vec<i64> = self
            .hours
            .values()
            .filter(|h| h.first_seq < oldest_seq)
            .map(|h| h.start_ns)
            .collect();
        for start in gone {
            if let Some(h) = self.hours.remove(&start)
                && delete
            {
                let _ = std::fs::remove_file(&h.path);
            }
        }
    }
}

/// Reads one hour summary: its connections of `namespace`.
pub fn read(hour: &Hour, namespace: &str) -> Result<Arc<Vec<Connection>>, String> {
    let text = std::fs::read(&hour.path).map_err(|e| format!("{}: {e}", hour.path.display()))?;
    let stored: Vec<Stored> =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", hour.path.display()))?;
    Ok(Arc::new(
        stored
            .into_iter()
            .map(Stored::connection)
            .filter(|c| connections::local_namespace(&c.key) == namespace)
            .collect(),
    ))
}
