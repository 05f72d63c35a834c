//! The store's reads of the shared bucket, and the detectors' learned state exported with the
//! uploads ([`super::upload`]).

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

    /// Segments written to disk and not in the table yet.
    pub fn pending_uploads(&self) -> usize {
        self.uploads.len()
    }

    /// A file of the table, read once.
    pub(super) fn read_remote(&self, o: &bucket::Object) -> Result<Arc<Chunk>, StoreError> {
        let Some(b) = &self.bucket else {
            unreachable!("objects are listed from the bucket")
        };
        let key = b.key(&o.path);
        self.read_cached(&PathBuf::from(&key), || {
            let bytes = b.get(&key, bucket::ObjectKind::Segment)?;
            ParquetReader::new(std::io::Cursor::new(bytes))
                .finish()
                .map_err(|e| e.to_string())
        })
    }
}
