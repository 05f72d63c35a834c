//! The command line: `run`, `replay`, `check`, `demo` and `policy`, one file each, the exit codes and
//! the text they print.
//!
//! Each command takes its inputs, runs to completion or until the cancellation token fires,
//! and returns an [`Outcome`] that `main` turns into an exit code and output.

mod check;
mod demo;
mod policy;
mod replay;
mod run;
mod text;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use replay::{History, ReplayOptions};

use crate::common::units::parse_duration;
use crate::config::{Config, LogFormat};

/// Exit code for a configuration, rule or usage error (BSD `EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;
/// Exit code for an input file that cannot be read (BSD `EX_NOINPUT`).
pub const EXIT_NO_INPUT: u8 = 66;
/// Exit code when the flow source stopped for a reason retrying cannot fix.
pub const EXIT_SOURCE: u8 = 69;
/// Exit code when the state store cannot be opened (BSD `EX_CANTCREAT`).
pub const EXIT_STORE: u8 = 73;

/// Output format of summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// What a command produced.
#[derive(Debug)]
pub struct Outcome {
    pub exit_code: u8,
    /// Printed on stdout.
    pub output: String,
}

impl Outcome {
    fn fail(exit_code: u8, message: impl std::fmt::Display) -> Outcome {
        Outcome {
            exit_code,
            output: format!("{message}\n"),
        }
    }
}

/// Catches data exfiltration from Kubernetes AI-training namespaces, from Cilium Hubble flows.
#[derive(Debug, Parser)]
#[command(name = "exfilwatch", version = crate::common::version::LONG)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr: text (coloured only on a terminal) or json (one object per
    /// line); overrides the configuration's log.format.
    #[arg(long, global = true, value_parser = parse_log_format)]
    pub log_format: Option<LogFormat>,
}

impl Cli {
    /// The log format: the flag's, else the configuration's (when the command reads one and
    /// it loads; its problems are reported by the command), else text.
    pub fn log_format(&self) -> LogFormat {
        let configured = || {
            let path = match &self.command {
                Command::Run { config, .. } | Command::Check { config } => Some(config),
                Command::Replay { config, .. } => config.as_ref(),
                Command::Demo { .. } => None,
                Command::Policy { action } => match action {
                    PolicyAction::Suggest { query, .. } | PolicyAction::Check { query, .. } => {
                        query.from.config.as_ref()
                    }
                },
            }?;
            Config::load(path).ok().map(|c| c.log)
        };
        self.log_format.or_else(configured).unwrap_or_default()
    }
}

fn parse_log_format(text: &str) -> Result<LogFormat, String> {
    LogFormat::parse(text).ok_or_else(|| format!("{text:?} is not text or json"))
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// The policy advisor: suggest policies from the flow history, check candidates against it.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
}

/// Where the policy advisor reads flows from: a configuration's store, or a running service.
#[derive(Debug, clap::Args)]
pub struct PolicySource {
    /// Configuration file: its flow store (opened read-only) and its rules (segmentation).
    #[arg(long, short, required_unless_present = "api", conflicts_with = "api")]
    pub config: Option<PathBuf>,
    /// A running exfilwatch's API instead, e.g. https://exfilwatch.security:8080.
    #[arg(long)]
    pub api: Option<String>,
    /// File holding the API's bearer token (else EXFILWATCH_TOKEN).
    #[arg(long, requires = "api")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) the API's TLS certificate is checked against.
    #[arg(long, requires = "api")]
    pub ca_file: Option<PathBuf>,
}

/// What both policy subcommands ask about.
#[derive(Debug, clap::Args)]
pub struct PolicyQuery {
    #[command(flatten)]
    pub from: PolicySource,
    #[arg(long, short)]
    pub namespace: String,
    /// How far back to read flows.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    pub since: Duration,
    /// table: the YAML (suggest; left-out destinations as comments) or a report (check);
    /// json: the whole answer.
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: OutputFormat,
}

/// The policy advisor's subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyAction {
    /// Least-privilege policies for a namespace from its stored flows, as YAML for kubectl.
    Suggest {
        #[command(flatten)]
        query: PolicyQuery,
        /// Policy kind to write: cilium (CiliumNetworkPolicy) or kubernetes (NetworkPolicy).
        #[arg(long, default_value = "cilium", value_parser = parse_flavor)]
        flavor: crate::policy::Flavor,
    },
    /// What candidate policies would have done to a namespace's stored flows; exits 1 when
    /// they would drop traffic that flowed.
    Check {
        /// Policy files (YAML; other kinds of documents in them are skipped).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        query: PolicyQuery,
    },
}

fn parse_flavor(text: &str) -> Result<crate::policy::Flavor, String> {
    crate::policy::Flavor::parse(text)
        .ok_or_else(|| format!("{text:?} is not cilium or kubernetes"))
}

/// Runs `command` until it finishes or `cancel` fires.
pub async fn execute(command: Command, cancel: CancellationToken) -> Outcome {
    let config_error = |e: crate::config::ConfigError| Outcome::fail(EXIT_CONFIG, e);
    match command {
        Command::Run {
            config,
            progress_every,
        } => match Config::load(&config) {
            Ok(c) => run::run(c, config, progress_every, cancel).await,
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
                    .map(|url| History::parse(&url, from.as_deref(), to.as_deref()))
                    .transpose()
                {
                    Ok(h) => h,
                    Err(e) => return Outcome::fail(EXIT_CONFIG, e),
                };
                let options = ReplayOptions {
                    config: c,
                    rules,
                    format: output,
                    send,
                    history,
                };
                replay::replay(&inputs, options, cancel).await
            }
            Err(e) => config_error(e),
        },
        Command::Check { config } => check::check(&config),
        Command::Demo {
            duration,
            rate,
            alertmanager,
        } => match demo::demo(duration, rate, alertmanager, cancel).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::fail(1, format!("demo: {e}")),
        },
        Command::Policy { action } => policy::run(action).await,
    }
}
