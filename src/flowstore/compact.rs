//! Compaction of the flow table: each replica merges its own small files into large ones.
//!
//! A replica adds a file per chunk (and replaces a growing chunk's file at each checkpoint),
//! so a busy cluster leaves many files of at most `chunk_flows` flows. Once this replica's
//! disk no longer holds a file's flows (queries then read them from the table alone), runs of
//! its files that follow each other in sequence numbers within one partition are merged into
//! files of up to [`MERGED_CHUNKS`] chunks, their rows sorted by (source namespace, time) so
//! each row group's statistics name few namespaces, and committed in place of the files they
//! merge (one version: the added file spans their sequence numbers, and a commit
//! removes the replica's files an added file spans; see [`table::Table::commit`]). The
//! merged files keep the name `<replica>-<first>-<last>`, so every reader's exact spans and
//! page cursors hold across a compaction; the removed files are deleted from the bucket by
//! the expiry's vacuum an hour on.
//!
//! A flow stored twice by the replica (records read again after it was killed between making
//! a checkpoint durable and committing its offsets, then restarted under its name) is kept
//! once: rows repeating an earlier row's Hubble UUID are dropped from the merged file. Flows
//! without a UUID are all kept.

use bytes::Bytes;

use super::bucket::{Object, ObjectKind};
use super::table::NewFile;
use super::*;

/// Chunks one merged file holds at most.
pub const MERGED_CHUNKS: u64 = 16;

/// Bytes of files merged into one at most, whatever their rows (well within what a read of
/// the table takes of one file).
const MERGED_BYTES: u64 = 128 << 20;

/// Runs of `files` (one replica's, in any order) to merge: files adjacent in sequence numbers,
/// in one partition, entirely below `floor` (older than what the replica's disk holds), each
/// run of two files or more and at most `max_rows` rows and [`MERGED_BYTES`].
pub(super) fn plan(files: &[Object], floor: u64, max_rows: u64) -> Vec<Vec<Object>> {
    let mut sorted: Vec<&Object> = files.iter().collect();
    sorted.sort_by_key(|o| o.first_seq);
    let partition = |o: &Object| o.path.rsplit_once('/').map(|(dir, _)| dir.to_owned());
    let mut runs = Vec::new();
    let mut run: Vec<Object> = Vec::new();
    // The current run's rows and bytes.
    let (mut rows, mut bytes) = (0, 0);
    let flush = |run: &mut Vec<Object>, runs: &mut Vec<Vec<Object>>| {
        if run.len() >= 2 {
            runs.push(std::mem::take(run));
        } else {
            run.clear();
        }
    };
    for o in sorted {
        if o.last_seq >= floor {
            break;
        }
        let fits = run.last().is_some_and(|last| {
            partition(last) == partition(o)
                && rows + o.rows <= max_rows
                && bytes + o.bytes <= MERGED_BYTES
        });
        if !fits {
            flush(&mut run, &mut runs);
            (rows, bytes) = (0, 0);
        }
        rows += o.rows;
        bytes += o.bytes;
        run.push(o.clone());
    }
    flush(&mut run, &mut runs);
    runs
}

impl FlowStore {
    /// Merges this replica's small files of the table that its disk no longer holds (see the
    /// module's text); the files merged and the files they became. Each run is merged and
    /// committed between two upload rounds, never beside one, so a long compaction delays the
    /// uploads by one run at most.
    pub fn compact_table(&self) -> Result<(usize, usize), StoreError> {
        let Some(b) = &self.bucket else {
            return Ok((0, 0));
        };
        let floor = match self.local_sources()?.last() {
            Some(oldest) => oldest.span().0,
            None => self.lock().next_seq,
        };
        let mine: Vec<Object> = b
            .files()
            .map_err(StoreError::Bucket)?
            .iter()
            .filter(|o| *o.replica == **b.replica())
            .cloned()
            .collect();
        let max_rows = self.config.chunk_flows as u64 * MERGED_CHUNKS;
        let (mut merged, mut written) = (0, 0);
        for run in plan(&mine, floor, max_rows) {
            // The uploader adds files of what the disk holds (above `floor`), the runs are
            // below it: the lock only keeps commits of this replica one at a time.
            let _round = self.uploads.round.lock().unwrap_or_else(|p| p.into_inner());
            let file = self.merge(&run)?;
            b.commit(std::slice::from_ref(&file))
                .map_err(StoreError::Bucket)?;
            b.stats
                .compacted
                .fetch_add(run.len() as u64, Ordering::Relaxed);
            merged += run.len();
            written += 1;
        }
        Ok((merged, written))
    }

    /// Reads `run`'s files, puts them in the bucket as one, and states it for the table.
    fn merge(&self, run: &[Object]) -> Result<NewFile, StoreError> {
        let b = self.bucket.as_ref().expect("compaction runs with a bucket");
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            unreachable!("runs hold two files or more")
        };
        let mut frame: Option<DataFrame> = None;
        for o in run {
            let bytes = b
                .get(&b.key(&o.path), ObjectKind::Segment)
                .map_err(StoreError::Bucket)?;
            let part = ParquetReader::new(std::io::Cursor::new(bytes))
                .finish()
                .map_err(|e| StoreError::Segment {
                    path: o.path.to_string(),
                    message: e.to_string(),
                })?;
            match &mut frame {
                None => frame = Some(part),
                Some(f) => {
                    f.vstack_mut_owned(part)?;
                }
            }
        }
        let Some(mut frame) = frame else {
            unreachable!("runs hold two files or more")
        };
        frame.rechunk_mut();
        let frame = first_of_each_uuid(&frame)?;
        let removed = run.iter().map(|o| o.rows).sum::<u64>() - frame.height() as u64;
        b.stats.duplicates.fetch_add(removed, Ordering::Relaxed);
        // Sorted by source namespace, then time: each row group holds few namespaces, and
        // its statistics let a query naming one leave the others unread.
        let frame = frame.sort(
            [Col::SrcNamespace.name(), "time"],
            SortMultipleOptions::default().with_maintain_order(true),
        )?;
        let chunk = Chunk::from_parquet_frame(&frame).map_err(|message| StoreError::Segment {
            path: first.path.to_string(),
            message,
        })?;
        let mut out = Vec::new();
        let bytes = segment::encode(&chunk, row_group(self.config.chunk_flows), &mut out)?;
        let (dir, _) = first.path.rsplit_once('/').unwrap_or_default();
        let path = format!(
            "{dir}/{}-{}-{}.parquet",
            first.replica, first.first_seq, last.last_seq
        );
        let partition = |key: &str| {
            dir.split('/')
                .find_map(|p| p.strip_prefix(key))
                .unwrap_or_default()
                .to_owned()
        };
        b.put(&b.key(&path), Bytes::from(out))
            .map_err(StoreError::Bucket)?;
        Ok(NewFile {
            date: partition("date="),
            hour: partition("hour="),
            path,
            bytes,
            rows: chunk.rows() as u64,
            min_time: chunk.min_time,
            max_time: chunk.max_time,
            namespaces: segment::namespace_ranges(&chunk),
        })
    }
}

/// `frame`'s rows but those repeating an earlier row's UUID (rows without one all stay).
fn first_of_each_uuid(frame: &DataFrame) -> PolarsResult<DataFrame> {
    let half = |name: &str| -> PolarsResult<Option<UInt64Chunked>> {
        match frame.column(name) {
            Ok(c) => Ok(Some(c.u64()?.clone())),
            Err(_) => Ok(None),
        }
    };
    let (Some(hi), Some(lo)) = (half(chunk::UUID_COLUMNS[0])?, half(chunk::UUID_COLUMNS[1])?)
    else {
        return Ok(frame.clone());
    };
    let mut seen = std::collections::HashSet::with_capacity(frame.height());
    let keep: BooleanChunked = hi
        .iter()
        .zip(lo.iter())
        .map(|uuid| match uuid {
            (None | Some(0), None | Some(0)) => true,
            (hi, lo) => seen.insert((hi.unwrap_or(0), lo.unwrap_or(0))),
        })
        .collect();
    if keep.all() {
        return Ok(frame.clone());
    }
    frame.filter(&keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(hour: u32, first_seq: u64, last_seq: u64) -> Object {
        Object {
            path: format!("date=2026-12-07/hour={hour:02}/r-{first_seq}-{last_seq}.parquet").into(),
            replica: "r".into(),
            first_seq,
            last_seq,
            min_time: 0,
            max_time: 0,
            rows: last_seq - first_seq + 1,
            bytes: 1_000,
            namespaces: None,
        }
    }

    fn spans(runs: &[Vec<Object>]) -> Vec<Vec<(u64, u64)>> {
        runs.iter()
            .map(|r| r.iter().map(|o| (o.first_seq, o.last_seq)).collect())
            .collect()
    }

    #[test]
    fn a_uuid_stored_twice_is_kept_once_and_flows_without_one_all() {
        let frame = df!(
            "seq" => [1u64, 2, 3, 4, 5, 6],
            "uuid_hi" => [Some(7u64), None, Some(7), Some(7), None, Some(0)],
            "uuid_lo" => [Some(1u64), None, Some(1), Some(2), None, Some(0)],
        )
        .unwrap();
        let kept = first_of_each_uuid(&frame).unwrap();
        let seqs: Vec<u64> = kept
            .column("seq")
            .unwrap()
            .u64()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert_eq!(seqs, [1, 2, 4, 5, 6]);
    }

    #[test]
    fn runs_are_adjacent_files_of_one_partition_below_the_disks_floor() {
        let files = [
            file(10, 2_001, 3_000),
            file(10, 1, 1_000),
            file(10, 1_001, 2_000),
            // Another hour breaks the run.
            file(11, 3_001, 4_000),
            file(10, 4_001, 5_000),
            file(10, 5_001, 6_000),
            // Alone in its run.
            file(12, 6_001, 7_000),
            file(13, 7_001, 8_000),
            file(13, 8_001, 9_000),
            // The disk still holds these: never merged.
            file(13, 9_001, 10_000),
            file(13, 10_001, 11_000),
        ];
        let runs = plan(&files, 9_001, 16_000);
        assert_eq!(
            spans(&runs),
            [
                vec![(1, 1_000), (1_001, 2_000), (2_001, 3_000)],
                vec![(4_001, 5_000), (5_001, 6_000)],
                vec![(7_001, 8_000), (8_001, 9_000)],
            ]
        );
        // At most `max_rows` a run: three files of 1,000 make a run of two and one left.
        assert_eq!(
            spans(&plan(&files[..3], 9_001, 2_500)),
            [vec![(1, 1_000), (1_001, 2_000)]]
        );
    }
}
