//! Segments: a sealed chunk written as a zstd parquet file under `storage.dir/flows`, named by
//! its sequence numbers and times, with the dictionaries that let a query skip it unread; and
//! retention, which deletes them by age and total size.

use super::*;

/// A parquet segment, described by its file name.
#[derive(Debug, Clone)]
pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) first_seq: u64,
    pub(super) last_seq: u64,
    pub(super) min_time: i64,
    pub(super) max_time: i64,
    pub(super) rows: u64,
    pub(super) bytes: u64,
    /// The strings and addresses its flows hold, kept from when this run wrote it (shared with
    /// the chunk, not copied): a query whose filter names none of them skips the segment
    /// without reading it. Segments of an earlier run have none and are read.
    pub(super) dictionary: Option<Dictionary>,
}

/// A chunk's dictionary of strings and of addresses, the numbers it holds, and its flows
/// that were not forwarded when they are few.
#[derive(Debug, Clone)]
pub(super) struct Dictionary {
    pub(super) texts: Arc<[crate::flow::intern::Sym]>,
    pub(super) ips: Arc<[Option<std::net::IpAddr>]>,
    pub(super) numbers: Arc<NumberSets>,
    /// The rows whose verdict is not FORWARDED (drops, errors, audits) as a chunk of their
    /// own (copied: dictionaries of only what they use), when at most [`FlowStore::few`]: a
    /// filter that rules out forwarded flows (`verdict=DROPPED`, what an analyst asks first)
    /// is answered from them without reading the segment.
    pub(super) unforwarded: Option<Arc<Chunk>>,
}

/// A frame's rows, counted as dictionary entries for the bound on what segments keep.
pub(super) const ENTRIES_PER_ROW: usize = 8;

impl Dictionary {
    /// Entries held, a word of number sets and an eighth of a kept row counted as one.
    pub(super) fn entries(&self) -> usize {
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
pub(super) const MAX_DICTIONARY_ENTRIES: usize = 1 << 20;

impl Segment {
    /// Whether the segment may hold flows matching `filter`: false only when its dictionary
    /// is known and lacks what the filter names.
    pub(super) fn may_match(&self, filter: &Filter) -> bool {
        self.dictionary
            .as_ref()
            .is_none_or(|d| filter.can_match(&d.texts, &d.ips, &d.numbers))
    }
    pub(super) fn file_name(c: &Chunk) -> String {
        format!(
            "flows_{}_{}_{}_{}_{}.parquet",
            c.first_seq,
            c.last_seq,
            c.min_time,
            c.max_time,
            c.rows()
        )
    }

    pub(super) fn parse(path: &Path, bytes: u64) -> Option<Segment> {
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

impl FlowStore {
    /// Writes a chunk as a segment: to a temporary name, synced, then renamed.
    pub(super) fn write(&self, dir: &Path, chunk: &Chunk) -> Result<Segment, StoreError> {
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
        let bytes = match encode(chunk, row_group(self.config.chunk_flows), &mut out) {
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
            // Queued for the uploader, which adds the file to the table off this thread.
            let (table_path, date, hour) =
                b.path(chunk.first_time, chunk.first_seq, chunk.last_seq);
            self.uploads.push(super::upload::Job {
                local: path.clone(),
                file: super::table::NewFile {
                    path: table_path,
                    date,
                    hour,
                    bytes,
                    rows: chunk.rows() as u64,
                    min_time: chunk.min_time,
                    max_time: chunk.max_time,
                    namespaces: namespace_ranges(chunk),
                },
                first_seq: chunk.first_seq,
                last_seq: chunk.last_seq,
            });
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
    pub(super) fn retain(&self, now_ns: i64) {
        let cutoff = now_ns.saturating_sub(span_ns(self.config.retention));
        let pending: Vec<PathBuf> = self.uploads.paths();
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

    /// Forgets (and, when writable, deletes) the hourly summaries that count flows of
    /// segments no longer stored.
    pub(super) fn prune_summaries(&self) {
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

    /// Adds a written segment; only the newest segments keep their dictionaries in memory. A
    /// checkpoint's file of the same chunk is no longer needed.
    pub(super) fn push_segment(inner: &mut Inner, segment: Segment) {
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
}

/// Encodes `chunk` as parquet into `out`, `group` rows at a time, its columns one after
/// another: what this holds beside the chunk is one group's strings and pages. The bytes.
pub(super) fn encode(
    chunk: &Chunk,
    group: usize,
    out: &mut impl std::io::Write,
) -> PolarsResult<u64> {
    let written = chunk.written();
    let mut writer = ParquetWriter::new(out)
        .with_compression(ParquetCompression::Zstd(None))
        .set_parallel(false)
        .batched(written.rows(0, 0)?.schema())?;
    for start in (0..chunk.rows()).step_by(group.max(1)) {
        writer.write_batch(&written.rows(start, group)?)?;
    }
    writer.finish()
}

/// The longest namespace a file's statistics state: a longer one leaves them out (readers then
/// cannot skip the file by namespace, which is safe).
const MAX_STATED: usize = 253;

/// The least and greatest source and destination namespace of `chunk`'s flows.
pub(super) fn namespace_ranges(chunk: &Chunk) -> Option<[(String, String); 2]> {
    let range = |col: Col| -> Option<(String, String)> {
        let codes = chunk
            .frame
            .column(col.name())
            .ok()?
            .u32()
            .ok()?
            .unique()
            .ok()?;
        let mut lo: Option<&str> = None;
        let mut hi: Option<&str> = None;
        for code in codes.into_no_null_iter() {
            let text: &str = chunk.texts.get(code as usize)?;
            if text.len() > MAX_STATED {
                return None;
            }
            lo = Some(lo.map_or(text, |l| l.min(text)));
            hi = Some(hi.map_or(text, |h| h.max(text)));
        }
        Some((lo?.to_string(), hi?.to_string()))
    };
    Some([range(Col::SrcNamespace)?, range(Col::DstNamespace)?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flowstore::testing::*;
    use std::time::Duration;

    use crate::flow::Verdict;

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
}
