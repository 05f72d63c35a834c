//! Replays `hubble observe -o jsonpb` captures from a file or stdin.
//!
//! Each line is decoded with [`crate::flow::json`]; a line that cannot be decoded is reported
//! with `file:line` and the reason, counted, and skipped, so one corrupt line never ends a
//! replay. Blank lines are ignored.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::SourceStats;
use crate::flow::Event;
use crate::flow::json::JsonDecoder;

/// Longest line read; a longer one is a bad line, skipped without being held in memory.
pub const MAX_LINE_BYTES: u64 = 16 * 1024 * 1024;

/// How many bad lines are kept (with their reasons) for the report; the rest are counted.
pub const BAD_LINES_KEPT: usize = 100;

/// A line that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: u64,
    pub reason: String,
}

/// What a replay read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub name: String,
    pub lines: u64,
    pub bad_lines: u64,
    /// The first [`BAD_LINES_KEPT`] bad lines.
    pub bad: Vec<BadLine>,
}

/// Reads `path` ("-" for stdin) and sends its events to `tx`.
pub async fn replay_path(
    path: &str,
    tx: mpsc::Sender<Event>,
    stats: Arc<SourceStats>,
    cancel: CancellationToken,
) -> std::io::Result<ReplayReport> {
    if path == "-" {
        replay(
            BufReader::new(tokio::io::stdin()),
            "<stdin>",
            tx,
            stats,
            cancel,
        )
        .await
    } else {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))?;
        replay(
            BufReader::with_capacity(256 * 1024, file),
            path,
            tx,
            stats,
            cancel,
        )
        .await
    }
}

/// Reads jsonpb lines from `reader` (named `name` in messages) and sends their events.
pub async fn replay<R: AsyncBufRead + Unpin>(
    mut reader: R,
    name: &str,
    tx: mpsc::Sender<Event>,
    stats: Arc<SourceStats>,
    cancel: CancellationToken,
) -> std::io::Result<ReplayReport> {
    let mut decoder = JsonDecoder::default();
    let mut report = ReplayReport {
        name: name.to_owned(),
        ..Default::default()
    };
    let mut buf = Vec::with_capacity(4096);
    while !cancel.is_cancelled() {
        buf.clear();
        if (&mut reader)
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut buf)
            .await?
            == 0
        {
            break;
        }
        report.lines += 1;
        let too_long = buf.len() as u64 > MAX_LINE_BYTES;
        if too_long {
            // Skip the rest of the line without holding it.
            while buf.last() != Some(&b'\n') {
                buf.clear();
                if (&mut reader)
                    .take(64 * 1024)
                    .read_until(b'\n', &mut buf)
                    .await?
                    == 0
                {
                    break;
                }
            }
        }
        let decoded = match std::str::from_utf8(&buf) {
            _ if too_long => Err(format!("line longer than {MAX_LINE_BYTES} bytes")),
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => decoder.decode_line(text.trim()).map_err(|e| e.to_string()),
            Err(e) => Err(format!("invalid UTF-8 at byte {}", e.valid_up_to())),
        };
        match decoded {
            Ok(event) => {
                stats.record(&event);
                if tx.send(event).await.is_err() {
                    break;
                }
            }
            Err(reason) => {
                stats.bad_messages.fetch_add(1, Ordering::Relaxed);
                report.bad_lines += 1;
                tracing::warn!("{name}:{}: skipped: {reason}", report.lines);
                if report.bad.len() < BAD_LINES_KEPT {
                    report.bad.push(BadLine {
                        line: report.lines,
                        reason,
                    });
                }
            }
        }
    }
    Ok(report)
}
