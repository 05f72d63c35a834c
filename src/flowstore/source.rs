//! Where a query reads: the chunks in memory, the segments on disk and the bucket's objects,
//! newest first, each loaded when a query needs it.

use super::*;

/// Where a query reads: a chunk in memory, a segment on disk, or a file of the table.
#[derive(Debug, Clone)]
pub(super) enum Source {
    Memory(Arc<Chunk>),
    Disk(Segment),
    Remote(bucket::Object),
}

impl Source {
    /// False only for a segment whose dictionaries lack what `filter` names, or a file of
    /// the table whose namespaces' ranges (its statistics) hold none it names; a chunk in
    /// memory is ruled out later, by its predicate.
    pub(super) fn may_match(&self, filter: &Filter) -> bool {
        match self {
            Source::Memory(_) => true,
            Source::Disk(s) => s.may_match(filter),
            Source::Remote(o) => o.may_match(filter),
        }
    }

    /// First and last sequence number, least and greatest time (of a table's file, as its
    /// name and statistics in the log state them).
    pub(super) fn span(&self) -> (u64, u64, i64, i64) {
        match self {
            Source::Memory(c) => (c.first_seq, c.last_seq, c.min_time, c.max_time),
            Source::Disk(s) => (s.first_seq, s.last_seq, s.min_time, s.max_time),
            Source::Remote(o) => (o.first_seq, o.last_seq, o.min_time, o.max_time),
        }
    }

    /// Whether it is an object of the bucket.
    pub(super) fn is_remote(&self) -> bool {
        matches!(self, Source::Remote(..))
    }

    /// Whether reading it costs a read from disk or the bucket.
    pub(super) fn is_stored(&self) -> bool {
        !matches!(self, Source::Memory(_))
    }

    /// Names the chunk for caches of its answers: sequence numbers for this replica's chunks,
    /// its path's hash and its size for a file of the table.
    pub(super) fn id(&self) -> (u64, u64) {
        match self {
            Source::Remote(o) => {
                let mut h = std::hash::DefaultHasher::new();
                std::hash::Hash::hash(&*o.path, &mut h);
                (std::hash::Hasher::finish(&h), o.bytes)
            }
            _ => {
                let (first, last, _, _) = self.span();
                (first, last)
            }
        }
    }
}

impl FlowStore {
    /// Everything a query over `filter`'s time may read: this replica's chunks newest first,
    /// then, with a bucket, the table's files of the other replicas and this one's older than
    /// its disk holds, those whose statistics in the table's log overlap the time range.
    pub(super) fn sources(&self, filter: &Filter) -> Result<Vec<Source>, StoreError> {
        let mut out = self.local_sources()?;
        let own_floor = out.last().map_or(self.lock().next_seq, |s| s.span().0);
        let Some(b) = &self.bucket else {
            return Ok(out);
        };
        let files = b.files().map_err(StoreError::Bucket)?;
        // Without `since`, as far back as the bucket's retention.
        let oldest = match (filter.since_ns, &self.config.object_store) {
            (None, Some(o)) => crate::common::clock::now_ns().saturating_sub(span_ns(o.retention)),
            _ => i64::MIN,
        };
        for o in files.iter() {
            if o.replica == *b.replica() && o.first_seq >= own_floor {
                continue;
            }
            if !filter.overlaps(o.min_time, o.max_time) || o.max_time < oldest {
                continue;
            }
            out.push(Source::Remote(o.clone()));
        }
        Ok(out)
    }

    /// This replica's chunks in memory and segments on disk, newest first.
    pub(super) fn local_sources(&self) -> Result<Vec<Source>, StoreError> {
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

    /// `source` to read by columns: a segment on disk or a file of the table not among the
    /// recently read chunks (`None` for a chunk at hand whole: in memory, or read recently).
    pub(super) fn stored(&self, source: &Source) -> Option<Result<Stored, StoreError>> {
        match source {
            Source::Memory(_) => None,
            Source::Disk(s) => self
                .cached(&s.path)
                .is_none()
                .then(|| Ok(Stored::Disk(s.path.clone()))),
            Source::Remote(o) => {
                let b = self.bucket.as_ref()?;
                let key = b.key(&o.path);
                if self.cached(Path::new(&key)).is_some() {
                    return None;
                }
                Some(
                    fetch::Fetched::open(b, key.clone(), o.bytes)
                        .map(Stored::Remote)
                        .map_err(|message| StoreError::Segment { path: key, message }),
                )
            }
        }
    }

    /// The chunk `source` holds; a segment that cannot be read is logged, counted and
    /// skipped, so one damaged file does not hide every other flow.
    pub(super) fn load(&self, source: &Source) -> Option<Arc<Chunk>> {
        let read = match source {
            Source::Memory(c) => return Some(c.clone()),
            Source::Disk(s) => self.read_cached(&s.path, || {
                let file = std::fs::File::open(&s.path).map_err(|e| e.to_string())?;
                ParquetReader::new(file).finish().map_err(|e| e.to_string())
            }),
            Source::Remote(o) => self.read_remote(o),
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
    pub(super) fn skip_unreadable(&self, e: &StoreError) {
        self.stats.segment_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flowstore::testing::*;

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
}
