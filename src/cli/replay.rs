//! `exfilwatch replay`: captures through the rules, as a summary or a backtest.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::text::alerts_table;
use super::{EXIT_CONFIG, EXIT_NO_INPUT, EXIT_SOURCE, EXIT_STORE, Outcome, OutputFormat};
use crate::alert::Alert;
use crate::app::start_alerting;
use crate::config::Config;
use crate::detect::engine::Engine;
use crate::egress::{self, prometheus::Prometheus, sampler::Sampler};
use crate::pipeline::{self, CHANNEL_CAPACITY, Consumers, Summary};
use crate::rules::{self, Rule};
use crate::source::SourceStats;
use crate::source::replay::{ReplayReport, replay_path};
use crate::state::Store;

/// The replay summary in `--output json`.
#[derive(Debug, Serialize)]
struct ReplayJson<'a> {
    files: Vec<FileJson<'a>>,
    bad_lines: u64,
    alerts: &'a [Alert],
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

/// Prometheus history to backtest the volume rules against.
#[derive(Debug, Clone)]
pub struct History {
    pub url: String,
    /// Unix seconds.
    pub from: i64,
    pub to: i64,
}

impl History {
    /// From the command line: a URL and two RFC 3339 times, `from` before `to`.
    pub fn parse(url: &str, from: Option<&str>, to: Option<&str>) -> Result<History, String> {
        let time = |name: &str, text: Option<&str>| {
            let text = text.ok_or_else(|| format!("--{name} is required with --prometheus"))?;
            text.parse::<prost_types::Timestamp>()
                .map(|t| t.seconds)
                .map_err(|_| format!("--{name} {text:?} is not an RFC 3339 time"))
        };
        let (from, to) = (time("from", from)?, time("to", to)?);
        if from >= to {
            return Err(format!("--from must be before --to ({from} >= {to})"));
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "--prometheus {url:?} must start with http:// or https://"
            ));
        }
        Ok(History {
            url: url.to_owned(),
            from,
            to,
        })
    }
}

/// Evaluates the volume rules at every `prometheus.interval` from `history.from` to
/// `history.to`, on the engine's simulated clock. Returns the number of rounds.
async fn backtest(
    history: &History,
    config: &Config,
    rules: &[Arc<Rule>],
    engine: &mut Engine,
) -> Result<usize, String> {
    let p = &config.prometheus;
    let prometheus = Prometheus::new(&history.url, p.timeout, p.auth.clone(), p.tls.as_ref())?;
    let store = Store::in_memory().map_err(|e| e.to_string())?;
    let mut sampler = Sampler::new(prometheus, &p.selector, store).map_err(|e| e.to_string())?;
    let step = i64::try_from(p.interval.as_secs()).unwrap_or(60).max(1);
    let factor = Engine::smallest_spike_factor(rules);
    let start = tokio::time::Instant::now();
    let mut t = history.from;
    let mut rounds = 0;
    while t <= history.to {
        let report = egress::watch::evaluate(&mut sampler, t, factor).await;
        if let Some(e) = &report.error {
            return Err(format!(
                "backtest at {}: {e}",
                crate::common::clock::format_time(t * 1_000_000_000)
            ));
        }
        let now = start + Duration::from_secs(u64::try_from(t - history.from).unwrap_or(0));
        engine.egress(&report, now);
        engine.tick(now);
        rounds += 1;
        t += step;
    }
    Ok(rounds)
}

/// What `replay` reads and does.
#[derive(Debug)]
pub struct ReplayOptions {
    pub config: Option<Config>,
    /// Rules to evaluate instead of the configuration's (or the default pack).
    pub rules: Option<std::path::PathBuf>,
    pub format: OutputFormat,
    pub send: bool,
    pub history: Option<History>,
}

/// `exfilwatch replay`: reads captures, evaluates the rules (and, with history, the volume
/// rules at every interval of it), summarises, reports every alert that fired, and with
/// `send` delivers them to the configured Alertmanagers.
pub(super) async fn replay(
    inputs: &[String],
    options: ReplayOptions,
    cancel: CancellationToken,
) -> Outcome {
    let ReplayOptions {
        config,
        rules: rules_dir,
        format,
        send,
        history,
    } = options;
    let config = config.as_ref();
    let rules = match &rules_dir {
        Some(dir) => rules::load_dir(dir).map(|r| r.into_iter().map(Arc::new).collect()),
        None => match config {
            Some(c) => rules::load_dir(&c.rules_dir),
            None => rules::default_pack(),
        }
        .map(|r| r.into_iter().map(Arc::new).collect()),
    };
    let rules: Vec<Arc<Rule>> = match rules {
        Ok(r) => r,
        Err(e) => return Outcome::fail(EXIT_CONFIG, e),
    };
    let defaults = Config::default();
    let config = config.unwrap_or(&defaults);
    if send && config.alertmanager.urls.is_empty() && config.alertmanager.webhooks.is_empty() {
        return Outcome::fail(
            EXIT_CONFIG,
            "--send needs alertmanager.urls or alertmanager.webhooks in the configuration",
        );
    }
    let store = if send {
        Store::open(&config.storage_dir)
    } else {
        Store::in_memory()
    };
    let store = match store {
        Ok(s) => s,
        Err(e) => return Outcome::fail(EXIT_STORE, e),
    };
    let (engine, delivery) = match start_alerting(config, &rules, store, send) {
        Ok(a) => a,
        Err(e) => return Outcome::fail(EXIT_CONFIG, e),
    };
    let tick = Engine::tick_interval(&rules);
    let stats_src = Arc::new(SourceStats::default());
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let consumers = Consumers {
        summary: Summary::new(&config.hubble.namespaces),
        engine: Some(engine),
        ..Default::default()
    };
    let consumer = tokio::spawn(pipeline::consume(rx, consumers, Default::default(), tick));
    let mut reports: Vec<ReplayReport> = Vec::new();
    let mut failed = None;
    for input in inputs {
        match replay_path(input, tx.clone(), stats_src.clone(), cancel.clone()).await {
            Ok(report) => reports.push(report),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let Consumers {
        summary,
        mut engine,
        ..
    } = consumer.await.unwrap_or_default();
    if let Some(e) = failed {
        delivery.finish().await;
        return Outcome::fail(EXIT_NO_INPUT, format!("cannot read {e}"));
    }
    let mut rounds = None;
    if let (Some(history), Some(engine)) = (&history, engine.as_mut()) {
        match backtest(history, config, &rules, engine).await {
            Ok(n) => rounds = Some(n),
            Err(e) => {
                delivery.finish().await;
                return Outcome::fail(EXIT_SOURCE, e);
            }
        }
    }
    // Every alert that fired, including those the backtest saw resolve, with the context it
    // grew to.
    if let Some(engine) = engine.as_mut() {
        engine.flush(tokio::time::Instant::now());
    }
    let mut alerts = crate::alert::saved(&delivery.store).unwrap_or_default();
    alerts.sort_by(|a, b| (&a.rule, &a.labels).cmp(&(&b.rule, &b.labels)));
    if send {
        // Give the sinks time to deliver before they are asked to stop.
        let deadline = tokio::time::Instant::now() + config.alertmanager.timeout * 3;
        while delivery.store.outbox_depth().unwrap_or(0) > 0
            && tokio::time::Instant::now() < deadline
            && !cancel.is_cancelled()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let sent = delivery.stats.sent.load(Ordering::Relaxed);
    let queued = delivery.finish().await;
    let bad_lines: u64 = reports.iter().map(|r| r.bad_lines).sum();
    let output = match format {
        OutputFormat::Table => {
            let mut text = summary.to_table(&[
                ("bad lines", bad_lines),
                ("node status events", summary.node_status),
            ]);
            if let Some(n) = rounds {
                let _ = writeln!(
                    text,
                    "\nbacktest: {n} evaluation round(s) of the volume rules against Prometheus history"
                );
            }
            text.push_str(&alerts_table(&alerts));
            if send {
                let _ = writeln!(
                    text,
                    "sent: {sent} alert state(s) delivered, {queued} still queued for the next run"
                );
            }
            for report in &reports {
                for bad in &report.bad {
                    let _ = write!(text, "\n{}:{}: {}", report.name, bad.line, bad.reason);
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
                alerts: &alerts,
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
