//! The columnar form of stored flows.
//!
//! A [`Chunk`] is a polars `DataFrame` of numeric columns plus the chunk's own dictionaries:
//! every string (namespace, pod, workload, node, FQDN, policy) and every IP address is a
//! `u32` code into them. A flow costs about 140 bytes in memory whatever its strings, and a
//! chunk's dictionaries go when the chunk goes, so dropping old flows frees their strings.
//! Code 0 is always the empty string / no address. Each flow's Hubble UUID is kept as two
//! `u64` columns (`uuid_hi`, `uuid_lo`; both 0 when the flow had none), so the flows an
//! alert names can be looked up.
//!
//! On disk a chunk becomes a parquet segment with the strings written out (parquet
//! dictionary-encodes them itself), so segments can be read by any parquet tool; reading one
//! back builds a chunk again.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;

use polars::prelude::*;

mod builder;
mod columns;

pub use builder::{Builder, Dict};
use builder::{dict_bytes, frame_of};
use columns::ADDED;
pub use columns::{COLUMNS, Col, Kind, ROW_INDEX, Row, SCHEMA, UUID_COLUMNS, join_labels};

use crate::common::hash::FastMap;
use crate::flow::intern::{Sym, SymList};
use crate::flow::{Endpoint, FlowEvent};

/// The number columns a filter asks about, each with the set of values a chunk holds.
const NUMBER_SETS: [Col; 6] = [
    Col::Verdict,
    Col::DropReason,
    Col::Direction,
    Col::Protocol,
    Col::SrcPort,
    Col::DstPort,
];

/// The values of a chunk's filtered number columns (verdicts, drop reasons, directions,
/// protocols, ports), one bit each: a filter asking for a value a segment does not hold skips
/// it unread, as its dictionaries do for strings. At most 8 KiB a column (a port's bits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberSets {
    /// One bit set per [`NUMBER_SETS`] column, as long as its greatest value needs.
    bits: [Box<[u64]>; NUMBER_SETS.len()],
}

impl NumberSets {
    pub fn of(chunk: &Chunk) -> Result<NumberSets, PolarsError> {
        let mut bits: [Box<[u64]>; NUMBER_SETS.len()] = Default::default();
        for (set, col) in bits.iter_mut().zip(NUMBER_SETS) {
            let values = chunk.frame.column(col.name())?.u32()?;
            let greatest = values.max().unwrap_or(0) as usize;
            let mut words = vec![0u64; greatest / 64 + 1];
            for v in values.into_no_null_iter() {
                words[v as usize / 64] |= 1 << (v % 64);
            }
            *set = words.into();
        }
        Ok(NumberSets { bits })
    }

    /// False only when `col` is a column with a set and the chunk holds none of `values`.
    pub fn may_hold(&self, col: Col, values: &[u32]) -> bool {
        let Some(i) = NUMBER_SETS.iter().position(|c| *c == col) else {
            return true;
        };
        let words = &self.bits[i];
        values.iter().any(|&v| {
            words
                .get(v as usize / 64)
                .is_some_and(|w| w & (1 << (v % 64)) != 0)
        })
    }

    /// Words held, for the bound on what segments keep in memory.
    pub fn words(&self) -> usize {
        self.bits.iter().map(|b| b.len()).sum()
    }
}

/// Sealed rows: a polars frame of codes and numbers with the dictionaries to read it.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub frame: DataFrame,
    pub texts: Arc<[Sym]>,
    pub ips: Arc<[Option<IpAddr>]>,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The time of the flow with `first_seq`.
    pub first_time: i64,
    pub min_time: i64,
    pub max_time: i64,
}

impl Chunk {
    /// A chunk of `frame`, whose `seq` and `time` columns are without nulls, and its
    /// dictionaries.
    fn with_frame(frame: DataFrame, texts: Arc<[Sym]>, ips: Arc<[Option<IpAddr>]>) -> Chunk {
        let column = |name| frame.column(name).ok().filter(|c| !c.is_empty());
        let seq = column("seq").and_then(|c| c.u64().ok());
        let time = column("time").and_then(|c| c.i64().ok());
        Chunk {
            first_seq: seq.and_then(|s| s.first()).unwrap_or(0),
            last_seq: seq.and_then(|s| s.last()).unwrap_or(0),
            first_time: time.and_then(|t| t.first()).unwrap_or(0),
            min_time: time.and_then(|t| t.min()).unwrap_or(0),
            max_time: time.and_then(|t| t.max()).unwrap_or(0),
            frame,
            texts,
            ips,
        }
    }

    pub fn rows(&self) -> usize {
        self.frame.height()
    }

    /// Bytes the chunk holds in memory: its values, and each column's structures (about
    /// 400 bytes: a chunk of a few rows holds some 16 KB whatever its rows).
    pub fn bytes(&self) -> usize {
        self.frame.estimated_size()
            + self.frame.width() * 400
            + dict_bytes(&self.texts)
            + self.ips.len() * 40
    }

    /// Rows of this chunk (`frame`, filtered from its own) as a chunk of their own, with
    /// dictionaries of only the strings and addresses they use.
    pub fn subset(&self, frame: DataFrame) -> Result<Chunk, String> {
        let rows = Chunk {
            frame,
            texts: self.texts.clone(),
            ips: self.ips.clone(),
            ..*self
        };
        Chunk::from_parquet_frame(&rows.to_parquet_frame().map_err(|e| e.to_string())?)
    }

    /// The chunk with strings and addresses written out: what a parquet segment holds.
    pub fn to_parquet_frame(&self) -> Result<DataFrame, PolarsError> {
        self.written().rows(0, self.rows())
    }

    /// The chunk's dictionaries as string columns, from which its rows are written out a
    /// stretch at a time ([`Written::rows`]).
    pub fn written(&self) -> Written<'_> {
        Written {
            chunk: self,
            texts: StringChunked::from_iter_values(
                PlSmallStr::EMPTY,
                self.texts.iter().map(|s| &**s),
            ),
            ips: StringChunked::from_iter_values(
                PlSmallStr::EMPTY,
                self.ips
                    .iter()
                    .map(|ip| ip.map_or_else(String::new, |ip| ip.to_string())),
            ),
        }
    }

    /// A chunk from a frame read from a parquet segment, checking every column. Columns
    /// added since a segment was written (UUIDs, DNS) read as empty.
    pub fn from_parquet_frame(frame: &DataFrame) -> Result<Chunk, String> {
        let (seq, time) = seq_and_time(frame)?;
        let height = frame.height();
        let mut uuid: [Vec<u64>; 2] = Default::default();
        for (half, name) in uuid.iter_mut().zip(UUID_COLUMNS) {
            *half = match frame.column(name) {
                Err(_) => vec![0; height],
                Ok(c) => c
                    .u64()
                    .map_err(|e| format!("column {name}: {e}"))?
                    .iter()
                    .map(|v| v.unwrap_or(0))
                    .collect(),
            };
        }
        let mut texts: Dict<Sym> = Dict::default();
        let mut ips: Dict<Option<IpAddr>> = Dict::default();
        let mut columns = Vec::with_capacity(COLUMNS);
        for col in Col::ALL {
            columns.push(decode(frame, col, &mut texts, &mut ips)?);
        }
        let frame = frame_of(
            seq.into_no_null_iter().collect(),
            time.into_no_null_iter().collect(),
            uuid,
            columns,
        )
        .map_err(|e| e.to_string())?;
        Ok(Chunk::with_frame(
            frame,
            texts.values.into(),
            ips.values.into(),
        ))
    }

    /// Only `cols` of a frame read from a segment, coded against dictionaries of their own,
    /// beside `seq`, `time`, the row index when the frame has one ([`ROW_INDEX`]) and the
    /// UUID columns when `uuids` is set, as they are: what a filter is evaluated on before the
    /// rest of a segment is read. The chunk has no other columns; those added since the segment
    /// was written read as empty, as in [`Chunk::from_parquet_frame`].
    pub fn partial_from_parquet_frame(
        frame: &DataFrame,
        cols: &[Col],
        uuids: bool,
    ) -> Result<Chunk, String> {
        // Checked when read: the chunk's bounds are read from them.
        if frame.schema().contains("seq") || frame.schema().contains("time") {
            seq_and_time(frame)?;
        }
        let mut texts: Dict<Sym> = Dict::default();
        let mut ips: Dict<Option<IpAddr>> = Dict::default();
        let mut out: Vec<Column> = ["seq", "time", ROW_INDEX]
            .into_iter()
            .chain(UUID_COLUMNS.into_iter().filter(|_| uuids))
            .filter_map(|name| frame.column(name).ok().cloned())
            .collect();
        for col in cols {
            let values = decode(frame, *col, &mut texts, &mut ips)?;
            out.push(UInt32Chunked::from_vec(col.name().into(), values).into_column());
        }
        for name in UUID_COLUMNS.into_iter().filter(|_| uuids) {
            if !frame.schema().contains(name) {
                let zeros = vec![0u64; frame.height()];
                out.push(UInt64Chunked::from_vec(name.into(), zeros).into_column());
            }
        }
        let frame = DataFrame::new(frame.height(), out).map_err(|e| e.to_string())?;
        Ok(Chunk::with_frame(
            frame,
            texts.values.into(),
            ips.values.into(),
        ))
    }
}

/// A chunk being written out as a parquet segment: its dictionaries as string columns.
#[derive(Debug)]
pub struct Written<'a> {
    chunk: &'a Chunk,
    texts: StringChunked,
    ips: StringChunked,
}

impl Written<'_> {
    /// Rows `start..start + len` (fewer at the chunk's end) with strings and addresses
    /// written out. Each coded column gathers from a dictionary: the rows are views into the
    /// dictionary's bytes, so a string is not copied once per row, and a segment written a
    /// row group at a time holds one group's views at once, not the whole chunk's (16 bytes
    /// per row and string column: 15 MB for a 65,536-flow chunk).
    pub fn rows(&self, start: usize, len: usize) -> Result<DataFrame, PolarsError> {
        let frame = self.chunk.frame.slice(start as i64, len);
        let mut cols: Vec<Column> = Vec::with_capacity(COLUMNS + 4);
        for name in ["seq", "time", UUID_COLUMNS[0], UUID_COLUMNS[1]] {
            cols.push(frame.column(name)?.clone());
        }
        for col in Col::ALL {
            let codes = frame.column(col.name())?.u32()?;
            let column = match col.kind() {
                Kind::Number => codes.clone().into_column(),
                Kind::Text => self
                    .texts
                    .take(codes)?
                    .with_name(col.name().into())
                    .into_column(),
                Kind::Ip => self
                    .ips
                    .take(codes)?
                    .with_name(col.name().into())
                    .into_column(),
            };
            cols.push(column);
        }
        DataFrame::new(frame.height(), cols)
    }
}

/// The sequence numbers and times of a frame read from a segment, both without nulls.
fn seq_and_time(frame: &DataFrame) -> Result<(UInt64Chunked, Int64Chunked), String> {
    let seq = frame
        .column("seq")
        .and_then(|c| c.u64().cloned())
        .map_err(|e| format!("column seq: {e}"))?;
    let time = frame
        .column("time")
        .and_then(|c| c.i64().cloned())
        .map_err(|e| format!("column time: {e}"))?;
    if seq.null_count() > 0 || time.null_count() > 0 {
        return Err("column seq or time holds nulls".into());
    }
    Ok((seq, time))
}

/// One column of a frame read from a segment, as codes into `texts` or `ips` (numbers as
/// they are). A column added since the segment was written reads as zeros.
fn decode(
    frame: &DataFrame,
    col: Col,
    texts: &mut Dict<Sym>,
    ips: &mut Dict<Option<IpAddr>>,
) -> Result<Vec<u32>, String> {
    let height = frame.height();
    let column = match frame.column(col.name()) {
        Ok(c) => c,
        Err(_) if ADDED.contains(&col) => return Ok(vec![0; height]),
        Err(e) => return Err(format!("column {}: {e}", col.name())),
    };
    Ok(match col.kind() {
        Kind::Number => column
            .u32()
            .map_err(|e| format!("column {}: {e}", col.name()))?
            .iter()
            .map(|v| v.unwrap_or(0))
            .collect(),
        Kind::Text | Kind::Ip => {
            let strings = column
                .str()
                .map_err(|e| format!("column {}: {e}", col.name()))?;
            // Each distinct string is interned or parsed once: the column's strings repeat.
            let mut seen: FastMap<&str, u32> = FastMap::default();
            let mut last: Option<(&str, u32)> = None;
            let mut out = Vec::with_capacity(strings.len());
            for s in strings.iter() {
                let s = s.unwrap_or("");
                let code = match last {
                    Some((prev, code)) if prev == s => code,
                    _ => match seen.get(s) {
                        Some(&code) => code,
                        None => {
                            let code = match col.kind() {
                                Kind::Text => texts.code(&Sym::from(s)),
                                _ if s.is_empty() => 0,
                                _ => {
                                    let ip: IpAddr = s.parse().map_err(|_| {
                                        format!("column {}: invalid address {s:?}", col.name())
                                    })?;
                                    ips.code(&Some(ip))
                                }
                            };
                            seen.insert(s, code);
                            code
                        }
                    },
                };
                last = Some((s, code));
                out.push(code);
            }
            out
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::traffic::TrainingCluster;

    fn chunk(n: usize) -> Chunk {
        let mut cluster = TrainingCluster::new(3, 1_700_000_000_000_000_000, 1_000_000);
        let mut decoder = crate::flow::wire::Decoder::default();
        let mut builder = Builder::new(n, n / 4);
        for seq in 0..n {
            let flow = crate::sim::received(&mut decoder, cluster.next_flow()).unwrap();
            builder.push(seq as u64 + 1, &Row::new(&flow));
        }
        builder.seal().unwrap()
    }

    #[test]
    fn a_segment_keeps_uuids_and_dns_queries() {
        let chunk = chunk(500);
        let back = Chunk::from_parquet_frame(&chunk.to_parquet_frame().unwrap()).unwrap();
        // Numbers read back as written; texts are re-coded, so they are compared as text.
        for name in UUID_COLUMNS.into_iter().chain(["l7", "dns_rcode"]) {
            assert!(
                back.frame
                    .column(name)
                    .unwrap()
                    .equals(chunk.frame.column(name).unwrap()),
                "{name}"
            );
        }
        let hi = back.frame.column("uuid_hi").unwrap().u64().unwrap().clone();
        assert_eq!(hi.null_count(), 0);
        assert!(
            hi.into_no_null_iter().all(|v| v != 0),
            "every flow had a UUID"
        );
        let queries = back
            .frame
            .column("dns_query")
            .unwrap()
            .u32()
            .unwrap()
            .clone();
        assert!(
            queries
                .into_no_null_iter()
                .any(|c| !back.texts[c as usize].is_empty()),
            "DNS records keep their query"
        );
    }

    #[test]
    fn a_segment_written_before_uuids_and_dns_reads_with_them_empty() {
        let chunk = chunk(100);
        let mut old = chunk.to_parquet_frame().unwrap();
        for name in ["uuid_hi", "uuid_lo", "dns_query", "l7", "dns_rcode"] {
            old = old.drop(name).unwrap();
        }
        let back = Chunk::from_parquet_frame(&old).unwrap();
        assert_eq!(back.rows(), 100);
        let lo = back.frame.column("uuid_lo").unwrap().u64().unwrap().clone();
        assert!(lo.into_no_null_iter().all(|v| v == 0));
        // Read column-first as well: the filter's columns the segment lacks are empty too.
        let partial =
            Chunk::partial_from_parquet_frame(&old, &[Col::DnsQuery, Col::Verdict], true).unwrap();
        assert_eq!(partial.frame.width(), 6, "{:?}", partial.frame.schema());
        for name in ["dns_query", "uuid_hi", "uuid_lo"] {
            let c = partial.frame.column(name).unwrap();
            assert_eq!(c.n_unique().unwrap(), 1, "{name}");
        }
        let verdicts = |c: &Chunk| -> Vec<u32> {
            let v = c.frame.column("verdict").unwrap().u32().unwrap().clone();
            v.into_no_null_iter().collect()
        };
        assert_eq!(verdicts(&partial), verdicts(&back));
        // A column it should have had is still an error.
        let broken = chunk.to_parquet_frame().unwrap().drop("verdict").unwrap();
        let e = Chunk::from_parquet_frame(&broken).unwrap_err();
        assert!(e.contains("verdict"), "{e}");
    }

    /// A builder of 4,000-flow chunks frozen 1,000 rows at a time, with 3,500 rows, and the
    /// flows to fill it.
    fn open_chunk() -> (Builder, Vec<Row>) {
        let mut cluster = TrainingCluster::new(5, 1_700_000_000_000_000_000, 1_000_000);
        let mut decoder = crate::flow::wire::Decoder::default();
        let rows: Vec<Row> = std::iter::repeat_with(|| {
            crate::sim::received(&mut decoder, cluster.next_flow()).map(|f| Row::new(&f))
        })
        .flatten()
        .take(4_000)
        .collect();
        let mut builder = Builder::new(4_000, 1_000);
        for (seq, row) in rows[..3_500].iter().enumerate() {
            builder.push(seq as u64 + 1, row);
        }
        (builder, rows)
    }

    #[test]
    fn a_snapshot_of_the_open_chunk_reads_as_the_chunk_it_seals() {
        let (mut builder, rows) = open_chunk();
        let snapshot = builder.snapshot().unwrap();
        assert_eq!(snapshot.rows(), 3_500);
        for (seq, row) in rows.iter().enumerate().skip(3_500) {
            builder.push(seq as u64 + 1, row);
        }
        let sealed = builder.seal().unwrap();
        assert!(builder.is_empty());
        assert_eq!(sealed.rows(), 4_000);
        // The snapshot shares the three full blocks; the sealed chunk is one array a column.
        let arrays = |c: &Chunk| {
            let time = c.frame.column("time").unwrap().i64().unwrap();
            time.chunk_lengths().collect::<Vec<_>>()
        };
        assert_eq!(arrays(&snapshot), [1_000, 1_000, 1_000, 500]);
        assert_eq!(arrays(&sealed), [4_000]);
        assert!(snapshot.frame.equals(&sealed.frame.slice(0, 3_500)));
        assert_eq!(sealed.texts[..snapshot.texts.len()], snapshot.texts[..]);
        assert_eq!(
            (snapshot.first_seq, snapshot.last_seq, sealed.last_seq),
            (1, 3_500, 4_000)
        );
        assert_eq!(snapshot.first_time, sealed.first_time);
        assert!(snapshot.max_time <= sealed.max_time && snapshot.min_time == sealed.min_time);
        // Connections folded a block at a time are those of the rows as one array.
        let mut whole = snapshot.clone();
        whole.frame.rechunk_mut();
        let fold = |c: &Chunk| {
            let spec = crate::flowstore::connections::Fold {
                namespace: None,
                since_ns: i64::MIN,
                until_ns: i64::MAX,
                by_hour: true,
                skip: None,
            };
            let mut folded = crate::flowstore::connections::fold_with(c, &spec).unwrap();
            folded.sort_by(|a, b| a.1.key.cmp(&b.1.key));
            folded
        };
        let (blocks, one) = (fold(&snapshot), fold(&whole));
        let flows: u64 = blocks.iter().map(|(_, c)| c.flows).sum();
        assert!(flows > 2_000, "{flows} flows folded");
        assert_eq!(blocks, one);
    }

    #[test]
    #[cfg(feature = "jemalloc")]
    fn a_snapshot_copies_only_the_open_block() {
        let (builder, _) = open_chunk();
        drop(builder.snapshot().unwrap());
        let (snapshot, held) = held_by(|| builder.snapshot().unwrap());
        // 3,500 rows of 144 bytes' values: 504,000 bytes copied whole; the open block's
        // 500 rows are 72,000.
        assert_eq!(snapshot.rows(), 3_500);
        assert!(
            held < 200_000,
            "a snapshot of 3,500 rows holds {held} bytes"
        );
    }

    /// Bytes allocated on this thread while `make` runs and still held after it returns,
    /// with what it made.
    #[cfg(feature = "jemalloc")]
    fn held_by<T>(make: impl FnOnce() -> T) -> (T, u64) {
        use tikv_jemalloc_ctl::thread::{allocatedp, deallocatedp};
        let (allocated, deallocated) = (allocatedp::read().unwrap(), deallocatedp::read().unwrap());
        let before = allocated.get() - deallocated.get();
        let made = make();
        (made, allocated.get() - deallocated.get() - before)
    }

    #[test]
    #[cfg(feature = "jemalloc")]
    fn a_small_chunk_estimates_what_it_holds() {
        // The caches of matches and groups keep many small chunks and bound them by
        // this estimate: per-column structures weigh as much as a few rows' values.
        let whole = chunk(2_000);
        // Polars sets up what it keeps for the process at its first uses.
        for rows in [0, 10] {
            drop(whole.subset(whole.frame.slice(0, rows)).unwrap());
        }
        for rows in [0, 1, 10, 100, 1_000] {
            let (part, held) = held_by(|| whole.subset(whole.frame.slice(0, rows)).unwrap());
            let estimate = part.bytes() as u64;
            assert!(
                held / 2 <= estimate && estimate <= held * 2,
                "{rows} rows: holds {held} bytes, estimated {estimate}"
            );
        }
    }
}
