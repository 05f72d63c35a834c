//! The commands behind the CLI: `run`, `replay`, `check` and `demo`.
//!
//! Each takes its inputs, runs to completion or until the cancellation token fires, and
//! returns an [`Outcome`] that `main` turns into an exit code and output.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, HubbleConfig};
use crate::flow::Event;
use crate::pipeline::{self, CHANNEL_CAPACITY, Summary, destination_label};
use crate::sim::observer::SimObserver;
use crate::sim::traffic::{TRAINING_NAMESPACE, TrainingCluster};
use crate::source::SourceStats;
use crate::source::hubble::{HubbleError, HubbleSource};
use crate::source::replay::{ReplayReport, replay_path};

/// Exit code for a configuration or usage error (BSD `EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;
/// Exit code for an input file that cannot be read (BSD `EX_NOINPUT`).
pub const EXIT_NO_INPUT: u8 = 66;
/// Exit code when the flow source stopped for a reason retrying cannot fix.
pub const EXIT_SOURCE: u8 = 69;

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

/// The replay summary in `--output json`.
#[derive(Debug, Serialize)]
struct ReplayJson<'a> {
    files: Vec<FileJson<'a>>,
    bad_lines: u64,
    #[serde(flatten)]
    summary: &'a Summary,
}

#[derive(Debug, Serialize)]
struct FileJson<'a> {
    name: &'a str,
    lines: u64,
    bad_lines: u64,
    bad: Vec<String>,
}

/// Reads and validates the configuration, or the defaults when no file is given.
pub fn load_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::default()),
    }
}

/// `exfilwatch check`: validates the configuration and that every rule file parses.
pub fn check(config_path: &Path) -> Outcome {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                exit_code: EXIT_CONFIG,
                output: format!("{e}\n"),
            };
        }
    };
    let mut problems = Vec::new();
    let mut rule_files = 0;
    match std::fs::read_dir(&config.rules_dir) {
        Err(e) => problems.push(format!("rules.dir {}: {e}", config.rules_dir.display())),
        Ok(entries) => {
            let mut paths: Vec<_> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            paths.sort();
            for path in paths {
                rule_files += 1;
                let parsed = std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|text| crate::config::parse_yaml::<serde_yaml_ng::Value>(&text));
                if let Err(e) = parsed {
                    problems.push(format!("{}:{e}", path.display()));
                }
            }
        }
    }
    if problems.is_empty() {
        let output = format!(
            "{}: ok (hubble {} watching {:?}; {} rule file(s) in {})\n",
            config_path.display(),
            config.hubble.address,
            config.hubble.namespaces,
            rule_files,
            config.rules_dir.display()
        );
        Outcome {
            exit_code: 0,
            output,
        }
    } else {
        let output = format!("{} problem(s):\n{}\n", problems.len(), problems.join("\n"));
        Outcome {
            exit_code: EXIT_CONFIG,
            output,
        }
    }
}

/// Logs each policy-denied flow leaving a watched namespace as it arrives.
fn log_denials(summary: &Summary, event: &Event) {
    if let Event::Flow(flow) = event
        && summary.is_watched_denial(flow)
    {
        let policies: Vec<String> = flow
            .egress_denied_by
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        tracing::warn!(
            verdict = flow.verdict.as_str_name(),
            reason = flow.drop_reason_name(),
            node = %flow.node,
            denied_by = ?policies,
            "policy-denied egress: {}/{} -> {}",
            flow.source.namespace,
            flow.source.pod,
            destination_label(flow)
        );
    }
}

/// `exfilwatch replay`: reads captures and summarises them.
pub async fn replay(
    inputs: &[String],
    config: &Config,
    format: OutputFormat,
    cancel: CancellationToken,
) -> Outcome {
    let stats = Arc::new(SourceStats::default());
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let consumer = tokio::spawn(pipeline::consume(
        rx,
        Summary::new(&config.hubble.namespaces),
        |_, _| {},
    ));
    let mut reports: Vec<ReplayReport> = Vec::new();
    let mut failed = None;
    for input in inputs {
        match replay_path(input, tx.clone(), stats.clone(), cancel.clone()).await {
            Ok(report) => reports.push(report),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let summary = consumer.await.unwrap_or_default();
    if let Some(e) = failed {
        return Outcome {
            exit_code: EXIT_NO_INPUT,
            output: format!("cannot read {e}\n"),
        };
    }
    let bad_lines: u64 = reports.iter().map(|r| r.bad_lines).sum();
    let output = match format {
        OutputFormat::Table => {
            let mut text = summary.to_table(&[
                ("bad lines", bad_lines),
                ("node status events", summary.node_status),
            ]);
            for report in &reports {
                for bad in &report.bad {
                    text.push_str(&format!("\n{}:{}: {}", report.name, bad.line, bad.reason));
                }
            }
            text.push('\n');
            text
        }
        OutputFormat::Json => {
            let json = ReplayJson {
                files: reports
                    .iter()
                    .map(|r| FileJson {
                        name: &r.name,
                        lines: r.lines,
                        bad_lines: r.bad_lines,
                        bad: r
                            .bad
                            .iter()
                            .map(|b| format!("{}:{}: {}", r.name, b.line, b.reason))
                            .collect(),
                    })
                    .collect(),
                bad_lines,
                summary: &summary,
            };
            serde_json::to_string_pretty(&json).unwrap_or_default() + "\n"
        }
    };
    Outcome {
        exit_code: 0,
        output,
    }
}

/// `exfilwatch run`: follows Hubble Relay until cancelled, logging a summary every `every`.
pub async fn run(hubble: HubbleConfig, every: Duration, cancel: CancellationToken) -> Outcome {
    let stats = Arc::new(SourceStats::default());
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let watched = hubble.namespaces.clone();
    let source = HubbleSource::new(hubble, stats.clone());
    let source_task = tokio::spawn(source.run(tx, cancel.clone()));
    let mut last_log = tokio::time::Instant::now();
    let summary = pipeline::consume(rx, Summary::new(&watched), |summary, event| {
        log_denials(summary, event);
        if last_log.elapsed() >= every {
            last_log = tokio::time::Instant::now();
            tracing::info!(
                flows = summary.flows,
                lost = stats.lost_total(),
                duplicates = stats.duplicates.load(Ordering::Relaxed),
                reconnects = stats.reconnects.load(Ordering::Relaxed),
                "pipeline: progress"
            );
        }
    })
    .await;
    let result = source_task.await.unwrap_or(Ok(()));
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
        ("node status events", summary.node_status),
    ];
    let output = summary.to_table(&extra);
    match result {
        Ok(()) => Outcome {
            exit_code: 0,
            output,
        },
        Err(e @ HubbleError::Address { .. }) => Outcome {
            exit_code: EXIT_CONFIG,
            output: format!("{e}\n"),
        },
        Err(e) => Outcome {
            exit_code: EXIT_SOURCE,
            output: format!("{output}\nerror: {e}\n"),
        },
    }
}

/// `exfilwatch demo`: a simulated training namespace behind a Hubble-compatible server on
/// loopback, an exfiltration attempt a third of the way in, and the real `run` pipeline
/// following it for `duration`.
pub async fn demo(
    duration: Duration,
    flows_per_second: u32,
    cancel: CancellationToken,
) -> std::io::Result<Outcome> {
    let sim = SimObserver::default();
    let server_stop = CancellationToken::new();
    let addr = sim.clone().spawn_local(None, server_stop.clone()).await?;
    tracing::info!(%addr, "demo: simulated Hubble Relay serving an '{TRAINING_NAMESPACE}' namespace");

    let start_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let rate = flows_per_second.max(1);
    let step = Duration::from_secs(1) / rate;
    let traffic_stop = cancel.child_token();
    let generator = {
        let sim = sim.clone();
        let stop = traffic_stop.clone();
        tokio::spawn(async move {
            let mut cluster =
                TrainingCluster::new(7, start_ns, i64::try_from(step.as_nanos()).unwrap_or(1));
            let attack_at = tokio::time::Instant::now() + duration / 3;
            let mut attacked = false;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let per_tick = (rate / 10).max(1);
            while !stop.is_cancelled() {
                tick.tick().await;
                for _ in 0..per_tick {
                    sim.push_flow(cluster.next_flow());
                }
                if !attacked && tokio::time::Instant::now() >= attack_at {
                    attacked = true;
                    tracing::info!(
                        "demo: a compromised trainer tries the production database and an unknown host"
                    );
                    for flow in cluster.exfiltration_attempt() {
                        sim.push_flow(flow);
                    }
                }
            }
        })
    };

    let hubble = HubbleConfig {
        address: format!("http://{addr}"),
        namespaces: vec![TRAINING_NAMESPACE.into()],
        ..HubbleConfig::default()
    };
    let run_cancel = cancel.child_token();
    let timer = {
        let run_cancel = run_cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            run_cancel.cancel();
        })
    };
    let outcome = run(hubble, Duration::from_secs(5), run_cancel).await;
    traffic_stop.cancel();
    timer.abort();
    let _ = generator.await;
    server_stop.cancel();
    Ok(outcome)
}
