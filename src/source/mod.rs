//! Flow sources: each reads flows from somewhere and sends [`Event`]s into a bounded channel.
//!
//! - [`hubble`]: the live stream from Hubble Relay (gRPC `GetFlows`, follow mode), with TLS,
//!   reconnects, resume and de-duplication.
//! - [`kafka`]: Hubble flows from a Kafka topic keyed by namespace, one consumer group for
//!   all replicas; offsets committed once the flows' effects are durable.
//! - [`replay`]: `hubble observe -o jsonpb` captures from a file or stdin.
//!
//! Every source counts what it saw in a shared [`SourceStats`], which the progress log and
//! `/metrics` read.

pub mod hubble;
pub mod kafka;
pub mod replay;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::flow::{Event, LostEventSource};

/// What the source is doing now; `/readyz` is ready while it is `Streaming`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamState {
    Connecting,
    Streaming,
    /// The last attempt failed; the next starts after the backoff delay.
    Retrying {
        error: String,
    },
    Stopped {
        error: Option<String>,
    },
}

/// Why a live source stopped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Hubble(#[from] hubble::HubbleError),
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaSourceError),
}

/// Counters a source keeps; shared with whoever reports on it.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Flows sent downstream, by `Verdict` number (0 unknown .. 7 translated); [`Self::flows`]
    /// sums them (one atomic add a flow, not two).
    pub by_verdict: [AtomicU64; 8],
    /// Re-delivered flows dropped by the de-duplicator.
    pub duplicates: AtomicU64,
    /// Messages or lines that could not be decoded.
    pub bad_messages: AtomicU64,
    /// Events Hubble reported lost, by `LostEventSource` number (0 unknown .. 3 Hubble ring).
    pub lost: [AtomicU64; 4],
    /// Lost-events notices received.
    pub lost_notices: AtomicU64,
    /// Relay node-status notices received.
    pub node_status: AtomicU64,
    /// Attempts to reopen the stream after it failed or ended.
    pub reconnects: AtomicU64,
}

impl SourceStats {
    /// Counts an event about to be sent downstream.
    pub fn record(&self, event: &Event) {
        match event {
            Event::Flow(flow) => {
                let verdict = usize::try_from(flow.verdict as i32).unwrap_or(0).min(7);
                self.by_verdict[verdict].fetch_add(1, Ordering::Relaxed);
            }
            Event::Lost(lost) => {
                self.lost_notices.fetch_add(1, Ordering::Relaxed);
                self.lost[lost_index(lost.source)].fetch_add(lost.count, Ordering::Relaxed);
            }
            Event::NodeStatus(_) => {
                self.node_status.fetch_add(1, Ordering::Relaxed);
            }
            Event::Checkpoint(_) => {}
        }
    }

    /// Flows sent downstream.
    pub fn flows(&self) -> u64 {
        self.by_verdict
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Lost events of one source kind.
    pub fn lost(&self, source: LostEventSource) -> u64 {
        self.lost[lost_index(source)].load(Ordering::Relaxed)
    }

    /// Lost events of all kinds.
    pub fn lost_total(&self) -> u64 {
        self.lost.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

fn lost_index(source: LostEventSource) -> usize {
    usize::try_from(source as i32).unwrap_or(0).min(3)
}
