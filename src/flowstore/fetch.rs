//! A stored chunk read by columns: a segment on disk, or a file of the table whose column
//! chunks are fetched from the bucket by range as a read names them.
//!
//! A file of the table starts as its footer (one ranged GET of its tail) in a buffer of the
//! file's size; each read fetches the byte ranges of the column chunks it needs, nearby ranges
//! in one request, into their places. Pages of the buffer nothing was fetched into are never
//! written, so they cost no memory, and polars reads the buffer as it would the file. A
//! `/flows/top?by=namespace` reads `seq`, `time` and `src_namespace` of each file: about a
//! quarter of its bytes, the footer included.
//!
//! A read may also leave out row groups: those whose statistics rule its filter out (time,
//! source and destination namespace; a compacted file's groups each hold few namespaces), or
//! that hold none of a page's few matches. Reads after that take the groups left, until
//! [`Stored::all_row_groups`].

use std::collections::HashSet;
use std::io::Cursor;
use std::ops::Range;
use std::path::{Path, PathBuf};

use polars::io::mmap::MmapBytesReader;
use polars::io::parquet::metadata::{FileMetadata, FileMetadataRef};
use polars::prelude::*;

use super::bucket::{Bucket, ObjectKind};
use super::{Col, Filter};

/// Bytes of a file's tail read first: the whole footer of a segment (some 14 KiB for four row
/// groups of 35 columns with their statistics); a larger footer (a compacted file's) takes a
/// second request.
const TAIL: u64 = 16 << 10;

/// Ranges of a file at most this far apart are fetched in one request (the gap is read and
/// thrown away: cheaper than another round trip). Small: a segment's row groups are tens of
/// KiB apart, and a larger gap would read most of a small file.
const COALESCE: u64 = 4 << 10;

/// A parquet file that a query reads some columns of.
pub(super) enum Stored {
    Disk(PathBuf),
    Remote(Fetched),
}

/// A reader of some columns of a [`Stored`] file.
pub(super) type ColumnReader<'a> = ParquetReader<Box<dyn MmapBytesReader + 'a>>;

impl Stored {
    /// What error messages name it by: its path, or its key in the bucket.
    pub(super) fn name(&self) -> &Path {
        match self {
            Stored::Disk(path) => path,
            Stored::Remote(f) => Path::new(&f.key),
        }
    }

    /// The file's column names.
    pub(super) fn names(&mut self) -> Result<Vec<String>, String> {
        let mut reader = self.reader()?;
        let schema = reader.schema().map_err(|e| e.to_string())?;
        Ok(schema.iter_names().map(|n| n.to_string()).collect())
    }

    /// Makes `names` readable: a file of the table fetches their column chunks (those it has
    /// not fetched yet) from the bucket.
    pub(super) fn fetch(
        &mut self,
        bucket: Option<&Bucket>,
        names: &[String],
    ) -> Result<(), String> {
        match (self, bucket) {
            (Stored::Disk(_), _) => Ok(()),
            (Stored::Remote(f), Some(b)) => f.fetch(b, names),
            (Stored::Remote(_), None) => unreachable!("files of the table are read with a bucket"),
        }
    }

    /// Leaves out of the reads after this the row groups of a file of the table whose
    /// statistics rule out every flow `filter` matches: by its namespaces, and by its time
    /// range when `by_time` is set (a group without statistics is kept). Returns how many it
    /// left out. A segment on disk is read whole, its few groups read from the page cache.
    pub(super) fn keep_row_groups(&mut self, filter: &Filter, by_time: bool) -> usize {
        match self {
            Stored::Disk(_) => 0,
            Stored::Remote(f) => f.keep_row_groups(filter, by_time),
        }
    }

    /// Leaves out of the reads after this the row groups that hold none of `rows` (indices,
    /// sorted, among the rows reads take now); returns their indices among the rows left, and
    /// how many groups it left out. A segment on disk keeps every group.
    pub(super) fn keep_rows(&mut self, rows: &[IdxSize]) -> (Vec<IdxSize>, usize) {
        match self {
            Stored::Disk(_) => (rows.to_vec(), 0),
            Stored::Remote(f) => f.keep_rows(rows),
        }
    }

    /// Makes every row group of the file readable again after [`Stored::keep_row_groups`].
    pub(super) fn all_row_groups(&mut self) {
        if let Stored::Remote(f) = self {
            f.metadata = f.full.clone();
        }
    }

    /// A reader of the file, its footer parsed once. Only the columns [`Stored::fetch`] made
    /// readable may be read from a file of the table.
    pub(super) fn reader(&self) -> Result<ColumnReader<'_>, String> {
        match self {
            Stored::Disk(path) => {
                let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
                Ok(ParquetReader::new(Box::new(file)))
            }
            Stored::Remote(f) => {
                let mut reader: ColumnReader<'_> =
                    ParquetReader::new(Box::new(Cursor::new(&f.buf[..])));
                reader.set_metadata(f.metadata.clone());
                Ok(reader)
            }
        }
    }
}

/// A file of the table, its footer and the column chunks fetched so far in a buffer of its
/// size.
pub(super) struct Fetched {
    key: String,
    buf: Vec<u8>,
    /// The file's footer as read.
    full: FileMetadataRef,
    /// The row groups reads take: all, or those [`Stored::keep_row_groups`] left.
    metadata: FileMetadataRef,
    /// Where each column chunk in `buf` starts in the file.
    fetched: HashSet<u64>,
}

impl Fetched {
    /// Reads the footer of the file at `key`, `size` bytes long as the table's log states.
    pub(super) fn open(bucket: &Bucket, key: String, size: u64) -> Result<Fetched, String> {
        let max = ObjectKind::Segment.max_bytes();
        if size > max {
            return Err(format!(
                "{size} bytes, more than the {max} a segment may hold: not read"
            ));
        }
        let len = usize::try_from(size).map_err(|e| e.to_string())?;
        if len < 12 {
            return Err(format!("{size} bytes: too short for parquet"));
        }
        // Zeroed by the allocator's fresh pages: untouched, they are never made resident.
        let mut buf = vec![0u8; len];
        let tail = size.saturating_sub(TAIL)..size;
        let got = bucket.get_ranges(&key, std::slice::from_ref(&tail))?;
        place(&mut buf, std::slice::from_ref(&tail), &got)?;
        let footer = u64::from(u32::from_le_bytes([
            buf[len - 8],
            buf[len - 7],
            buf[len - 6],
            buf[len - 5],
        ]));
        if &buf[len - 4..] != b"PAR1" || footer + 8 > size {
            return Err("not a parquet file (no footer at its end)".into());
        }
        let start = size - 8 - footer;
        if start < tail.start {
            let rest = start..tail.start;
            let got = bucket.get_ranges(&key, std::slice::from_ref(&rest))?;
            place(&mut buf, &[rest], &got)?;
        }
        let metadata = ParquetReader::new(Cursor::new(&buf[..]))
            .get_metadata()
            .map_err(|e| e.to_string())?
            .clone();
        bucket
            .stats
            .downloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Fetched {
            key,
            buf,
            full: metadata.clone(),
            metadata,
            fetched: HashSet::new(),
        })
    }

    /// See [`Stored::keep_row_groups`].
    fn keep_row_groups(&mut self, filter: &Filter, by_time: bool) -> usize {
        let md = &self.metadata;
        let keep: Vec<bool> = md
            .row_groups
            .iter()
            .map(|group| {
                let stats = |name: &str| {
                    group
                        .columns_under_root_iter(name)
                        .and_then(|mut c| c.next())
                        .and_then(|c| c.statistics(&md.footer_buf))
                        .and_then(Result::ok)
                };
                if by_time {
                    let time = stats("time");
                    let range = time
                        .as_ref()
                        .and_then(|s| s.as_int64())
                        .and_then(|s| Some((s.min_value?, s.max_value?)));
                    if range.is_some_and(|(least, greatest)| !filter.overlaps(least, greatest)) {
                        return false;
                    }
                }
                let mut ranges: Vec<(Col, String, String)> = Vec::with_capacity(2);
                for col in [Col::SrcNamespace, Col::DstNamespace] {
                    let text = stats(col.name());
                    let range = text.as_ref().and_then(|s| s.as_binary()).and_then(|s| {
                        let least = std::str::from_utf8(s.min_value.as_deref()?).ok()?;
                        let greatest = std::str::from_utf8(s.max_value.as_deref()?).ok()?;
                        Some((col, least.to_owned(), greatest.to_owned()))
                    });
                    ranges.extend(range);
                }
                let ranges: Vec<(Col, &str, &str)> = ranges
                    .iter()
                    .map(|(c, least, greatest)| (*c, least.as_str(), greatest.as_str()))
                    .collect();
                filter.may_match_ranges(&ranges)
            })
            .collect();
        let dropped = keep.iter().filter(|k| !**k).count();
        if dropped > 0 {
            self.metadata = pruned(&self.metadata, &keep);
        }
        dropped
    }

    /// See [`Stored::keep_rows`].
    fn keep_rows(&mut self, rows: &[IdxSize]) -> (Vec<IdxSize>, usize) {
        let groups = &self.metadata.row_groups;
        // Each group's first row, among the rows read now and among those left.
        let mut starts = Vec::with_capacity(groups.len());
        let mut at = 0u64;
        for g in groups {
            starts.push(at);
            at += g.num_rows() as u64;
        }
        let group_of = |row: IdxSize| starts.partition_point(|&s| s <= u64::from(row)) - 1;
        let mut keep = vec![false; groups.len()];
        for &r in rows {
            keep[group_of(r)] = true;
        }
        let mut left = vec![0u64; groups.len()];
        let mut at = 0u64;
        for (i, g) in groups.iter().enumerate().filter(|(i, _)| keep[*i]) {
            left[i] = at;
            at += g.num_rows() as u64;
        }
        let out = rows
            .iter()
            .map(|&r| {
                let g = group_of(r);
                (u64::from(r) - starts[g] + left[g]) as IdxSize
            })
            .collect();
        self.metadata = pruned(&self.metadata, &keep);
        (out, keep.iter().filter(|k| !**k).count())
    }

    /// Fetches the chunks of `names` in every row group kept, those not fetched before.
    fn fetch(&mut self, bucket: &Bucket, names: &[String]) -> Result<(), String> {
        let size = self.buf.len() as u64;
        let mut ranges: Vec<Range<u64>> = Vec::new();
        for group in &self.metadata.row_groups {
            for name in names {
                for column in group.columns_under_root_iter(name).into_iter().flatten() {
                    let r = column.byte_range();
                    if self.fetched.contains(&r.start) {
                        continue;
                    }
                    if r.start > r.end || r.end > size {
                        return Err(format!(
                            "column {name}: bytes {}..{} outside the file's {size}",
                            r.start, r.end
                        ));
                    }
                    ranges.push(r);
                }
            }
        }
        if ranges.is_empty() {
            return Ok(());
        }
        ranges.sort_by_key(|r| r.start);
        let got = bucket.get_ranges_coalesced(&self.key, &ranges, COALESCE)?;
        place(&mut self.buf, &ranges, &got)?;
        self.fetched.extend(ranges.iter().map(|r| r.start));
        Ok(())
    }
}

/// `md` with the row groups `keep` marks only.
fn pruned(md: &FileMetadataRef, keep: &[bool]) -> FileMetadataRef {
    let mut out: FileMetadata = (**md).clone();
    let mut marks = keep.iter();
    out.row_groups
        .retain(|_| marks.next().copied().unwrap_or(true));
    out.num_rows = out.row_groups.iter().map(|g| g.num_rows()).sum();
    out.max_row_group_height = out
        .row_groups
        .iter()
        .map(|g| g.num_rows())
        .max()
        .unwrap_or(0);
    std::sync::Arc::new(out)
}

/// Copies fetched ranges into their places in `buf`.
fn place(buf: &mut [u8], ranges: &[Range<u64>], got: &[bytes::Bytes]) -> Result<(), String> {
    for (r, bytes) in ranges.iter().zip(got) {
        let (start, end) = (r.start as usize, r.end as usize);
        if bytes.len() != end - start {
            return Err(format!(
                "bytes {start}..{end}: the bucket answered {} bytes",
                bytes.len()
            ));
        }
        buf[start..end].copy_from_slice(bytes);
    }
    Ok(())
}
