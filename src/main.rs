//! The `exfilwatch` binary: parses the command line, sets up logging and the runtime, runs a
//! command of [`exfilwatch::cli`] until it finishes or a signal asks it to stop, and exits
//! with its code.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::Parser;
use exfilwatch::cli::{self, Cli};
use exfilwatch::config::LogFormat;
use tokio_util::sync::CancellationToken;

/// jemalloc, one arena, giving pages freed by queries and segment writes back to the system
/// after about 30 s unused, a few at a time as the service allocates (`.cargo/config.toml`;
/// glibc's malloc keeps them: docs/reliability.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's count of the heap, for `/metrics`.
#[cfg(feature = "jemalloc")]
fn jemalloc_heap() -> Option<exfilwatch::common::heap::Heap> {
    use tikv_jemalloc_ctl::{epoch, stats};
    // The statistics are refreshed when the epoch moves.
    epoch::advance().ok()?;
    Some(exfilwatch::common::heap::Heap {
        allocated: stats::allocated::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
    })
}

/// Logs to stderr at `RUST_LOG`'s levels (by default info, without the Delta library's
/// own lines: every read of the table's log and every retried commit, which exfilwatch reports
/// itself when they fail), as `format` says. Text is coloured only when stderr is a terminal,
/// so files and `kubectl logs` carry no escape codes.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,buoyant_kernel=off,deltalake_core=off")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Control characters in any field (attacker text from flows and requests) escaped.
        LogFormat::Text => builder
            .fmt_fields(exfilwatch::common::text::log_fields())
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Cancels `token` on the first SIGINT or SIGTERM.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                },
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down: stopping sources, draining the pipeline");
        token.cancel();
    });
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(feature = "jemalloc")]
    exfilwatch::common::heap::install(jemalloc_heap);
    exfilwatch::common::http::install_crypto();
    init_logging(cli.log_format());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let cancel = CancellationToken::new();
        cancel_on_signal(cancel.clone());
        cli::execute(cli.command, cancel).await
    });
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(outcome.output.as_bytes());
    let _ = stdout.flush();
    ExitCode::from(outcome.exit_code)
}
