//! `exfilwatch run`: the service, until SIGINT or SIGTERM; then a summary of what it saw.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::text::alerts_table;
use super::{EXIT_CONFIG, EXIT_SOURCE, EXIT_STORE, Outcome};
use crate::app::{self, StartError};
use crate::config::Config;
use crate::rules::{self, Rule};
use crate::source::SourceError;
use crate::source::hubble::HubbleError;
use crate::state::Store;

/// `exfilwatch run`: follows Hubble Relay and raises alerts until cancelled.
pub(super) async fn run(
    config: Config,
    path: PathBuf,
    every: Duration,
    cancel: CancellationToken,
) -> Outcome {
    let rules: Vec<Arc<Rule>> = match rules::load_dir(&config.rules_dir) {
        Ok(r) => r.into_iter().map(Arc::new).collect(),
        Err(e) => return Outcome::fail(EXIT_CONFIG, e),
    };
    let store = match Store::open(&config.storage_dir) {
        Ok(s) => s,
        Err(e) => return Outcome::fail(EXIT_STORE, e),
    };
    follow(&config, Some(path), &rules, store, every, cancel).await
}

/// Runs the service over an opened state store and reports how it ended; with `path`, the
/// configuration's file, rules are reloaded while it runs.
pub(super) async fn follow(
    config: &Config,
    path: Option<PathBuf>,
    rules: &[Arc<Rule>],
    store: Store,
    every: Duration,
    cancel: CancellationToken,
) -> Outcome {
    let finished = match app::run(config, path, rules, store, every, cancel).await {
        Ok(f) => f,
        Err(e @ StartError::Config(_)) => return Outcome::fail(EXIT_CONFIG, e),
        Err(e @ StartError::Storage(_)) => return Outcome::fail(EXIT_STORE, e),
    };
    let stats = &finished.source;
    let extra = [
        (
            "duplicates dropped",
            stats.duplicates.load(Ordering::Relaxed),
        ),
        ("reconnects", stats.reconnects.load(Ordering::Relaxed)),
        (
            "undecodable messages",
            stats.bad_messages.load(Ordering::Relaxed),
        ),
        ("node status events", finished.summary.node_status),
        ("alert states delivered", finished.delivered),
        ("alert states queued", finished.queued),
    ];
    let mut output = finished.summary.to_table(&extra);
    output.push_str(&alerts_table(&finished.alerts));
    match finished.source_result {
        Ok(()) => Outcome {
            exit_code: 0,
            output,
        },
        Err(e @ SourceError::Hubble(HubbleError::Address { .. })) => Outcome::fail(EXIT_CONFIG, e),
        Err(e) => Outcome {
            exit_code: EXIT_SOURCE,
            output: format!("{output}\nerror: {e}\n"),
        },
    }
}
