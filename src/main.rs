//! The `exfilwatch` command line: parses arguments, sets up logging and the runtime, runs a
//! command from [`exfilwatch::commands`] and turns its outcome into an exit code.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use exfilwatch::commands::{self, EXIT_CONFIG, Outcome, OutputFormat};
use exfilwatch::config::Config;
use tokio_util::sync::CancellationToken;

/// Catches data exfiltration from Kubernetes AI-training namespaces, from Cilium Hubble flows.
#[derive(Debug, Parser)]
#[command(name = "exfilwatch", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Follow Hubble Relay's flow stream until SIGINT or SIGTERM.
    Run {
        /// Configuration file (YAML).
        #[arg(long, short)]
        config: PathBuf,
        /// How often to log progress.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        progress_every: Duration,
    },
    /// Read `hubble observe -o jsonpb` captures (files, or - for stdin) and summarise them.
    Replay {
        /// Capture files; - reads stdin.
        #[arg(required = true)]
        inputs: Vec<String>,
        /// Configuration file; its hubble.namespaces are the watched namespaces.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Summary format.
        #[arg(long, short, value_enum, default_value = "table")]
        output: OutputFormat,
        /// Deliver the alerts to the configuration's Alertmanagers and webhooks.
        #[arg(long, requires = "config")]
        send: bool,
        /// Evaluate the rules in this directory instead of the configuration's.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Backtest the volume rules against this Prometheus's history too.
        #[arg(long, requires_all = ["from", "to"])]
        prometheus: Option<String>,
        /// Start of the history to backtest, RFC 3339.
        #[arg(long, requires = "prometheus")]
        from: Option<String>,
        /// End of the history to backtest, RFC 3339.
        #[arg(long, requires = "prometheus")]
        to: Option<String>,
    },
    /// Validate the configuration and rules; exit 64 listing every problem.
    Check {
        /// Configuration file (YAML); rules are read from its rules.dir.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the pipeline against a built-in simulated training cluster on loopback.
    Demo {
        /// How long to run.
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        duration: Duration,
        /// Simulated flows per second.
        #[arg(long, default_value_t = 500)]
        rate: u32,
        /// Also send the alerts to this Alertmanager, e.g. http://127.0.0.1:9093.
        #[arg(long)]
        alertmanager: Option<String>,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    exfilwatch::config::parse_duration(text)
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

async fn execute(command: Command, cancel: CancellationToken) -> Outcome {
    let config_error = |e: exfilwatch::config::ConfigError| Outcome {
        exit_code: EXIT_CONFIG,
        output: format!("{e}\n"),
    };
    match command {
        Command::Run {
            config,
            progress_every,
        } => match Config::load(&config) {
            Ok(c) => commands::run(c, progress_every, cancel).await,
            Err(e) => config_error(e),
        },
        Command::Replay {
            inputs,
            config,
            output,
            send,
            rules,
            prometheus,
            from,
            to,
        } => match config.as_deref().map(Config::load).transpose() {
            Ok(c) => {
                let history = match prometheus
                    .map(|url| commands::History::parse(&url, from.as_deref(), to.as_deref()))
                    .transpose()
                {
                    Ok(h) => h,
                    Err(e) => {
                        return Outcome {
                            exit_code: EXIT_CONFIG,
                            output: format!(
                                "{e}
"
                            ),
                        };
                    }
                };
                let options = commands::ReplayOptions {
                    config: c,
                    rules,
                    format: output,
                    send,
                    history,
                };
                commands::replay(&inputs, options, cancel).await
            }
            Err(e) => config_error(e),
        },
        Command::Check { config } => commands::check(&config),
        Command::Demo {
            duration,
            rate,
            alertmanager,
        } => match commands::demo(duration, rate, alertmanager, cancel).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome {
                exit_code: 1,
                output: format!("demo: {e}\n"),
            },
        },
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    exfilwatch::http::install_crypto();
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
        execute(cli.command, cancel).await
    });
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(outcome.output.as_bytes());
    let _ = stdout.flush();
    ExitCode::from(outcome.exit_code)
}
