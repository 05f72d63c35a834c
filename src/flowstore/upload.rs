//! Segments on their way to the table, off the writer thread: the writer writes a segment to
//! disk and queues it here; the uploader thread puts the file in the bucket and commits it to
//! the table, with every other segment queued meanwhile, in one version. A slow or absent
//! bucket delays the shared history and the source's offset commits, never detection: the
//! writer only queues.
//!
//! A checkpoint of the source is reported durable once every segment queued before it is in
//! the table and the detectors' learned state is uploaded; until then the source commits
//! nothing, so a replica that dies meanwhile leaves its flows to be read again by the next.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use super::table::NewFile;
use super::*;

/// A segment on disk waiting to be added to the table.
#[derive(Debug, Clone)]
pub(super) struct Job {
    pub(super) local: PathBuf,
    pub(super) file: NewFile,
    pub(super) first_seq: u64,
    pub(super) last_seq: u64,
}

/// The queue between the writer and the uploader.
#[derive(Debug, Default)]
pub(super) struct Uploads {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// One round at a time: the uploader's, or `persist`'s at shutdown.
    pub(super) round: Mutex<()>,
    durable: Mutex<Option<Arc<tokio::sync::watch::Sender<u64>>>>,
}

#[derive(Debug, Default)]
struct Queue {
    /// By first and last sequence number: a checkpoint's file of a growing chunk and the
    /// chunk's later files share the first.
    jobs: BTreeMap<(u64, u64), (u64, Job)>,
    /// Jobs queued so far.
    tickets: u64,
    /// Checkpoints waiting to be reported durable, with the jobs queued before each.
    marks: VecDeque<(u64, u64)>,
}

/// How often the uploader merges this replica's small files of the table, and sees whether
/// the table's expiry is due and its own to run.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(600);

/// The longest wait between two attempts while the bucket fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Uploads {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a segment written to disk, in place of the files of its chunk queued before
    /// (a growing chunk's at earlier checkpoints: it holds their flows).
    pub(super) fn push(&self, job: Job) {
        let mut q = self.queue();
        q.jobs.retain(|(first, _), _| *first != job.first_seq);
        q.tickets += 1;
        let ticket = q.tickets;
        q.jobs.insert((job.first_seq, job.last_seq), (ticket, job));
        drop(q);
        self.wake.notify_one();
    }

    /// Reports checkpoint `n` durable through `durable` once everything queued so far is in
    /// the table.
    pub(super) fn mark(&self, n: u64, durable: &Arc<tokio::sync::watch::Sender<u64>>) {
        self.durable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| durable.clone());
        let mut q = self.queue();
        let ticket = q.tickets;
        q.marks.push_back((ticket, n));
        drop(q);
        self.wake.notify_one();
    }

    /// Segments queued and not in the table yet.
    pub(super) fn len(&self) -> usize {
        self.queue().jobs.len()
    }

    /// The files of the queued segments (retention keeps them).
    pub(super) fn paths(&self) -> Vec<PathBuf> {
        self.queue()
            .jobs
            .values()
            .map(|(_, j)| j.local.clone())
            .collect()
    }
}

impl FlowStore {
    /// Starts the uploader thread of a store with a bucket; it ends with the store.
    pub(super) fn start_uploader(self: &Arc<FlowStore>) {
        let store: Weak<FlowStore> = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("flow-upload".into())
            .spawn(move || upload_loop(&store));
        if let Err(e) = spawned {
            tracing::error!("flow store: cannot start the uploader: {e}");
        }
    }

    /// Removes the table's files past `object_store.retention` and deletes the ones removed
    /// over an hour before `now_ns`, when this replica owns the table's expiry. The files
    /// removed and deleted.
    pub fn expire_table(&self, now_ns: i64) -> Result<(usize, usize), StoreError> {
        let (Some(b), Some(o)) = (&self.bucket, &self.config.object_store) else {
            return Ok((0, 0));
        };
        if !b.owns_expiry().map_err(StoreError::Bucket)? {
            return Ok((0, 0));
        }
        let cutoff = now_ns.saturating_sub(span_ns(o.retention));
        b.expire(cutoff, now_ns).map_err(StoreError::Bucket)
    }

    /// Puts every queued segment in the bucket and commits them to the table in one version,
    /// then uploads the learned state and reports the checkpoints this covers. On an error,
    /// nothing queued is dropped: the next round tries again.
    pub(super) fn upload_round(&self) -> Result<(), StoreError> {
        let Some(b) = &self.bucket else {
            return Ok(());
        };
        let _round = self.uploads.round.lock().unwrap_or_else(|p| p.into_inner());
        let (taken, upto) = {
            let q = self.uploads.queue();
            let taken: Vec<((u64, u64), Job)> =
                q.jobs.iter().map(|(k, (_, j))| (*k, j.clone())).collect();
            (taken, q.tickets)
        };
        if !taken.is_empty() {
            // One job per chunk (a newer file of a chunk replaces its queued one), oldest
            // chunk first.
            let mut added: Vec<NewFile> = Vec::with_capacity(taken.len());
            for (_, job) in &taken {
                let bytes = match std::fs::read(&job.local) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        // Retention keeps queued segments, and a checkpoint's file is deleted
                        // only once a newer file of its chunk is queued: a file gone is lost.
                        self.stats.segment_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            "flow store: {} never reached the bucket: {e}",
                            job.local.display()
                        );
                        continue;
                    }
                };
                b.put(&b.key(&job.file.path), bytes.into())
                    .map_err(StoreError::Bucket)?;
                added.push(job.file.clone());
            }
            if !added.is_empty() {
                b.commit(&added).map_err(StoreError::Bucket)?;
            }
            let mut q = self.uploads.queue();
            for (key, _) in &taken {
                // The same file queued again meanwhile (a chunk sealed with no flow since
                // its checkpoint's file) stays for the next round.
                if q.jobs.get(key).is_some_and(|(t, _)| *t <= upto) {
                    q.jobs.remove(key);
                }
            }
        }
        let durable = {
            let q = self.uploads.queue();
            q.marks
                .iter()
                .take_while(|(ticket, _)| *ticket <= upto)
                .map(|(_, n)| *n)
                .max()
        };
        let Some(n) = durable else {
            return Ok(());
        };
        self.export()?;
        self.uploads
            .queue()
            .marks
            .retain(|(ticket, _)| *ticket > upto);
        if let Some(tx) = self
            .uploads
            .durable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            tx.send_replace(n);
        }
        Ok(())
    }
}

fn upload_loop(store: &Weak<FlowStore>) {
    let mut backoff = Duration::from_millis(250);
    let mut expiry = tokio::time::Instant::now();
    loop {
        let Some(s) = store.upgrade() else {
            return;
        };
        if expiry.elapsed() >= EXPIRY_INTERVAL {
            expiry = tokio::time::Instant::now();
            match s.compact_table() {
                Ok((0, _)) => {}
                Ok((merged, written)) => {
                    tracing::info!("flow table: {merged} files merged into {written}");
                }
                Err(e) => tracing::warn!("{e}; the compaction runs again later"),
            }
            match s.expire_table(crate::common::clock::now_ns()) {
                Ok((0, 0)) => {}
                Ok((removed, deleted)) => tracing::info!(
                    "flow table: {removed} files past the retention removed, {deleted} deleted"
                ),
                Err(e) => tracing::warn!("{e}; the expiry runs again later"),
            }
        }
        {
            let q = s.uploads.queue();
            if q.jobs.is_empty() && q.marks.is_empty() {
                // Woken by a job or a mark; the timeout notices the store's end.
                let _ = s.uploads.wake.wait_timeout(q, Duration::from_secs(1));
                continue;
            }
        }
        match s.upload_round() {
            Ok(()) => backoff = Duration::from_millis(250),
            Err(e) => {
                tracing::warn!("{e}; tried again in {} ms", backoff.as_millis());
                drop(s);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(first_seq: u64, last_seq: u64) -> Job {
        Job {
            local: PathBuf::from(format!("flows_{first_seq}_{last_seq}.parquet")),
            file: NewFile {
                path: format!("date=2026-12-07/hour=19/r-{first_seq}-{last_seq}.parquet"),
                date: "2026-12-07".into(),
                hour: "19".into(),
                bytes: 1,
                rows: last_seq - first_seq + 1,
                min_time: 0,
                max_time: 0,
                namespaces: None,
            },
            first_seq,
            last_seq,
        }
    }

    #[test]
    fn a_chunks_newer_file_replaces_its_queued_one() {
        let uploads = Uploads::default();
        uploads.push(job(1, 300));
        uploads.push(job(1, 600));
        assert_eq!(uploads.len(), 1);
        uploads.push(job(1, 1_000));
        uploads.push(job(1_001, 1_200));
        assert_eq!(
            uploads.paths(),
            [
                PathBuf::from("flows_1_1000.parquet"),
                PathBuf::from("flows_1001_1200.parquet")
            ]
        );
        // A checkpoint waits for the jobs queued before it, not those after.
        let durable = Arc::new(tokio::sync::watch::Sender::new(0));
        uploads.mark(7, &durable);
        uploads.push(job(1_001, 1_400));
        let q = uploads.queue();
        assert_eq!(q.marks, [(4, 7)]);
        assert_eq!(q.tickets, 5);
    }
}
