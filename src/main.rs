//! The `exfilwatch` binary: parses the command line, sets up logging and the runtime, runs a
//! command of [`exfilwatch::cli`] until it finishes or a signal asks it to stop, and exits
//! with its code.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use exfilwatch::cli::{self, Cli};
use tokio_util::sync::CancellationToken;

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
    exfilwatch::common::http::install_crypto();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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
