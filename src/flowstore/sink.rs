//! The pipeline's side of the store: [`FlowSink`] pushes a flow into a pending batch without
//! allocating or waiting, and a writer thread moves the batches into the store.

use super::*;

/// Hands flows to the store without waiting: the pipeline's side of the writer thread.
#[derive(Debug, Clone)]
pub struct FlowSink {
    shared: Arc<Shared>,
    /// Wait for the writer when it is [`MAX_PENDING`] rows behind, instead of dropping.
    lossless: bool,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) pending: Mutex<Pending>,
    pub(super) wake: Condvar,
    /// Signalled when the writer takes the pending rows.
    pub(super) taken: Condvar,
    pub(super) stop: AtomicBool,
    pub(super) store: Arc<FlowStore>,
    /// The last checkpoint whose flows are durable (on disk, and in the table when the store
    /// has a bucket).
    pub(super) durable: Arc<tokio::sync::watch::Sender<u64>>,
}

/// Rows waiting for the writer, and the checkpoint behind the last of them.
///
/// The rows wait in blocks of [`BATCH`]: a backlog takes more blocks, and once it drains
/// they are freed but for [`SPARE_BLOCKS`], so the queue does not keep the room a backlog
/// grew it to (one vector would, or would be re-grown by doubling after each backlog).
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Full blocks but the last.
    pub(super) blocks: VecDeque<Vec<Row>>,
    /// Emptied blocks, for the next rows.
    pub(super) spare: Vec<Vec<Row>>,
    pub(super) checkpoint: Option<u64>,
}

impl Pending {
    pub(super) fn push(&mut self, row: Row) {
        match self.blocks.back_mut() {
            Some(block) if block.len() < BATCH => block.push(row),
            _ => {
                let mut block = self
                    .spare
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(BATCH));
                block.push(row);
                self.blocks.push_back(block);
            }
        }
    }

    /// Rows waiting.
    pub(super) fn len(&self) -> usize {
        self.blocks
            .back()
            .map_or(0, |last| (self.blocks.len() - 1) * BATCH + last.len())
    }

    /// Takes the blocks waiting into `taken`, giving back the emptied blocks `taken` held.
    pub(super) fn take(&mut self, taken: &mut VecDeque<Vec<Row>>) {
        for block in taken.drain(..) {
            if self.spare.len() < SPARE_BLOCKS {
                self.spare.push(block);
            }
        }
        std::mem::swap(&mut self.blocks, taken);
    }

    /// Rows the queue has room for without allocating.
    #[cfg(test)]
    pub(super) fn room(&self) -> usize {
        self.blocks
            .iter()
            .chain(&self.spare)
            .map(Vec::capacity)
            .sum()
    }
}

/// Rows that wake the writer early, and the rows of a block of the queue.
pub(super) const BATCH: usize = 4096;
/// Emptied blocks the queue keeps (each about 800 KB): enough for the writer's usual round.
pub(super) const SPARE_BLOCKS: usize = 4;
/// Most rows waiting for the writer; beyond it flows are counted as dropped.
pub(super) const MAX_PENDING: usize = 262_144;

impl FlowSink {
    /// Starts the writer thread for `store`.
    pub fn start(store: Arc<FlowStore>) -> (FlowSink, std::thread::JoinHandle<()>) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            taken: Condvar::new(),
            stop: AtomicBool::new(false),
            store,
            durable: Arc::new(tokio::sync::watch::Sender::new(0)),
        });
        let writer = shared.clone();
        let handle = std::thread::Builder::new()
            .name("flow-store".into())
            .spawn(move || write_loop(&writer))
            .unwrap_or_else(|e| panic!("cannot start the flow store thread: {e}"));
        (
            FlowSink {
                shared,
                lossless: false,
            },
            handle,
        )
    }

    /// A sink that makes the pipeline wait while the writer is [`MAX_PENDING`] rows behind,
    /// for a source that can wait too (Kafka keeps the records) and whose offsets must not
    /// pass flows the store dropped. The default drops them and counts them: Hubble cannot
    /// wait.
    pub fn lossless(self) -> FlowSink {
        FlowSink {
            lossless: true,
            ..self
        }
    }

    pub fn store(&self) -> &Arc<FlowStore> {
        &self.shared.store
    }

    /// Queues one flow.
    pub fn push(&self, flow: &FlowEvent) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while self.lossless && pending.len() >= MAX_PENDING {
            pending = self
                .shared
                .taken
                .wait(pending)
                .unwrap_or_else(|p| p.into_inner());
        }
        if pending.len() >= MAX_PENDING {
            drop(pending);
            self.shared
                .store
                .stats
                .dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.push(Row::new(flow));
        if pending.len() == BATCH {
            self.shared.wake.notify_one();
        }
    }

    /// Marks checkpoint `n` behind the flows queued so far: once they are all on disk (see
    /// [`FlowStore::checkpoint`]), [`FlowSink::durable`] reports `n`. A store without a
    /// directory reports it once they are stored.
    pub fn checkpoint(&self, n: u64) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pending.checkpoint = Some(n);
        self.shared.wake.notify_one();
    }

    /// The last checkpoint whose flows are durable.
    pub fn durable(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.durable.subscribe()
    }

    /// Stops the writer after it stored everything queued.
    pub fn close(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

pub(super) fn write_loop(shared: &Shared) {
    let interval = shared.store.config.flush_interval;
    let mut taken: VecDeque<Vec<Row>> = VecDeque::new();
    loop {
        let (stopping, checkpoint) = {
            let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.len() < BATCH
                && pending.checkpoint.is_none()
                && !shared.stop.load(Ordering::Acquire)
            {
                pending = shared
                    .wake
                    .wait_timeout(pending, interval)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            pending.take(&mut taken);
            shared.taken.notify_all();
            (
                shared.stop.load(Ordering::Acquire),
                pending.checkpoint.take(),
            )
        };
        let nothing_taken = taken.is_empty();
        for block in &mut taken {
            shared.store.append(block);
            block.clear();
        }
        if let Some(n) = checkpoint {
            // Not durable, not reported: the source commits nothing, and the next checkpoint
            // tries again.
            match shared.store.checkpoint() {
                Ok(()) => shared.store.mark_durable(n, &shared.durable),
                Err(e) => {
                    shared
                        .store
                        .stats
                        .segment_errors
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!("flow store: checkpoint {n}: {e}");
                }
            }
        }
        if stopping && nothing_taken {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flowstore::testing::*;

    #[test]
    fn the_writers_queue_gives_back_the_room_of_a_backlog() {
        let row = Row::new(&flows(1)[0]);
        let mut pending = Pending::default();
        let mut taken = VecDeque::new();
        // A backlog the writer takes at once, then rounds of a few thousand rows.
        for round in [MAX_PENDING, 5_000, 3_000, 9_000] {
            for _ in 0..round {
                pending.push(row.clone());
            }
            assert_eq!(pending.len(), round);
            pending.take(&mut taken);
            assert_eq!(taken.iter().map(Vec::len).sum::<usize>(), round);
            assert!(taken.iter().all(|b| b.len() <= BATCH));
            taken.iter_mut().for_each(Vec::clear);
        }
        pending.take(&mut taken);
        let room = pending.room();
        assert!(
            room <= SPARE_BLOCKS * BATCH,
            "{room} rows of room kept after the backlog"
        );
    }
}
