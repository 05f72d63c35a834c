//! The store's traffic with the shared bucket: segments uploaded (and retried until they
//! land), the detectors' learned state exported at checkpoints, objects read back.

use super::*;

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
pub(super) const MAX_SPANS: usize = 1 << 16;

impl FlowStore {
    /// Has every checkpoint upload the detectors' learned state when it changed.
    pub fn export_with(&self, exporter: Exporter) {
        *self.exporter.lock().unwrap_or_else(|p| p.into_inner()) = Some(exporter);
    }

    /// Uploads the exporter's state when it changed.
    pub(super) fn export(&self) -> Result<(), StoreError> {
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

    pub(super) fn pending_lock(&self) -> MutexGuard<'_, BTreeMap<String, PathBuf>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Uploads again the segments whose upload failed; an error when one still fails. A
    /// segment deleted meanwhile (its checkpoint replaced, or past the disk bound) is
    /// forgotten: a newer upload covers it, or the bound dropped it.
    pub(super) fn upload_pending(&self) -> Result<(), StoreError> {
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

    /// An object of the bucket, read once (its span remembered for the next queries).
    pub(super) fn read_remote(&self, o: &bucket::Object) -> Result<Arc<Chunk>, StoreError> {
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
}
