//! The commands behind the CLI: `run`, `replay`, `check` and `demo`.
//!
//! Each takes its inputs, runs to completion or until the cancellation token fires, and
//! returns an [`Outcome`] that `main` turns into an exit code and output. Shutdown goes in
//! order: the source stops, the pipeline drains into the engine, the engine's last state
//! changes are committed, the sinks flush what they can, and the rest stays in the outbox.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::alert::Alert;
use crate::alert::manager::{LifecycleConfig, Manager};
use crate::alert::sink::{self, DeliveryStats};
use crate::api::{self, egress::EgressApi, metrics::Telemetry};
use crate::config::Config;
use crate::detect::engine::Engine;
use crate::detect::rules::{self, Rule};
use crate::egress::{self, prometheus::Prometheus, sampler::Sampler, watch::EgressReport};
use crate::flow::Event;
use crate::flows::{FlowSink, FlowStore};
use crate::pipeline::{self, CHANNEL_CAPACITY, Summary, destination_label};
use crate::sim::observer::SimObserver;
use crate::sim::prometheus::EgressModel;
use crate::sim::traffic::{TRAINING_NAMESPACE, TrainingCluster};
use crate::source::SourceStats;
use crate::source::hubble::{HubbleError, HubbleSource};
use crate::source::replay::{ReplayReport, replay_path};
use crate::store::Store;

/// Exit code for a configuration, rule or usage error (BSD `EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;
/// Exit code for an input file that cannot be read (BSD `EX_NOINPUT`).
pub const EXIT_NO_INPUT: u8 = 66;
/// Exit code when the flow source stopped for a reason retrying cannot fix.
pub const EXIT_SOURCE: u8 = 69;
/// Exit code when the state store cannot be opened (BSD `EX_CANTCREAT`).
pub const EXIT_STORE: u8 = 73;

/// The rule pack shipped in `rules/`, used when no configuration names another.
pub const DEFAULT_RULES: &str = include_str!("../rules/segmentation.yaml");

/// The cursor under which the time of the last processed flow is saved.
const HUBBLE_CURSOR: &str = "hubble.last_flow_ns";
/// How often the cursor is saved while flows arrive.
const CURSOR_EVERY: Duration = Duration::from_secs(5);

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

/// The rules of `config`'s `rules.dir`, or the default pack when there is no configuration.
fn load_rules(config: Option<&Config>) -> Result<Vec<Arc<Rule>>, rules::RuleErrors> {
    let rules = match config {
        Some(c) => rules::load_dir(&c.rules_dir)?,
        None => rules::load_text(DEFAULT_RULES, "rules/segmentation.yaml")?,
    };
    Ok(rules.into_iter().map(Arc::new).collect())
}

/// `exfilwatch check`: validates the configuration and the rule pack.
pub fn check(config_path: &Path) -> Outcome {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => return Outcome::fail(EXIT_CONFIG, e),
    };
    if let Err(e) = api::tokens(&config.api) {
        return Outcome::fail(EXIT_CONFIG, format!("{}: {e}", config_path.display()));
    }
    match rules::load_dir(&config.rules_dir) {
        Err(e) => Outcome::fail(EXIT_CONFIG, e),
        Ok(rules) => {
            let enabled = rules.iter().filter(|r| r.enabled).count();
            Outcome {
                exit_code: 0,
                output: format!(
                    "{}: ok (hubble {} watching {:?}; {} rule(s), {enabled} enabled, from {})\n",
                    config_path.display(),
                    config.hubble.address,
                    config.hubble.namespaces,
                    rules.len(),
                    config.rules_dir.display()
                ),
            }
        }
    }
}

/// The sinks delivering from the store's outbox.
#[derive(Debug)]
pub struct Delivery {
    pub store: Store,
    pub stats: Arc<DeliveryStats>,
    sinks: Vec<JoinHandle<()>>,
    stop_sinks: CancellationToken,
}

impl Delivery {
    /// Stops the sinks after one last flush; returns what is still queued.
    pub async fn finish(self) -> u64 {
        self.stop_sinks.cancel();
        for sink in self.sinks {
            let _ = sink.await;
        }
        self.store.outbox_depth().unwrap_or(0)
    }
}

/// The engine over `store`, and sinks for `config`'s targets (none when `send` is false).
pub fn start_alerting(
    config: &Config,
    rules: &[Arc<Rule>],
    store: Store,
    send: bool,
) -> Result<(Engine, Delivery), String> {
    let targets = if send {
        sink::targets(&config.alertmanager, &config.api.external_url)?
    } else {
        Vec::new()
    };
    let wake = Arc::new(Notify::new());
    let lifecycle = LifecycleConfig {
        resend_interval: config.alertmanager.resend_interval,
        update_interval: config.alertmanager.update_interval,
        external_url: config.api.external_url.clone(),
        targets: targets.iter().map(|t| t.id.clone()).collect(),
    };
    let manager =
        Manager::new(lifecycle, store.clone(), wake.clone(), rules).map_err(|e| e.to_string())?;
    let stats = Arc::new(DeliveryStats::default());
    let stop_sinks = CancellationToken::new();
    let sinks = targets
        .into_iter()
        .map(|t| {
            tokio::spawn(sink::deliver(
                t,
                store.clone(),
                wake.clone(),
                stats.clone(),
                stop_sinks.clone(),
            ))
        })
        .collect();
    Ok((
        Engine::new(
            rules,
            manager,
            stats.clone(),
            config.prometheus.blind_after,
            &store,
        ),
        Delivery {
            store,
            stats,
            sinks,
            stop_sinks,
        },
    ))
}

/// The receiving ends of the egress task.
type EgressFeed = (
    mpsc::Receiver<EgressReport>,
    watch::Receiver<Arc<EgressReport>>,
    EgressApi,
);

/// Starts the egress task when `prometheus.url` is set. Volume rules without it are
/// reported once: they cannot be evaluated.
fn start_egress(
    config: &Config,
    rules: &[Arc<Rule>],
    store: &Store,
    cancel: CancellationToken,
) -> Result<Option<EgressFeed>, String> {
    let volume_rules: Vec<&str> = rules
        .iter()
        .filter(|r| r.enabled && matches!(r.kind, rules::Kind::VolumeSpike(_)))
        .map(|r| r.name.as_str())
        .collect();
    let Some(url) = &config.prometheus.url else {
        if !volume_rules.is_empty() {
            tracing::warn!(rules = ?volume_rules, "egress: prometheus.url is not set: volume_spike rules are not evaluated");
        }
        return Ok(None);
    };
    let p = &config.prometheus;
    let prometheus = Prometheus::new(url, p.timeout, p.auth.clone(), p.tls.as_ref())?;
    let min_coverage_hours = rules
        .iter()
        .filter(|r| r.enabled)
        .filter_map(|r| match &r.kind {
            rules::Kind::VolumeSpike(v) => Some((v.min_coverage.as_secs() / 3600) as usize),
            _ => None,
        })
        .min()
        .unwrap_or(72);
    let dashboards = EgressApi {
        prometheus: prometheus.clone(),
        selector: p.selector.clone(),
        min_coverage_hours,
    };
    let sampler =
        Sampler::new(prometheus, &p.selector, store.clone()).map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(4);
    let (latest_tx, latest_rx) = watch::channel(Arc::new(EgressReport::default()));
    tokio::spawn(egress::watch::run(
        sampler,
        p.interval,
        Engine::smallest_spike_factor(rules),
        tx,
        latest_tx,
        cancel,
    ));
    tracing::info!(%url, interval = ?p.interval, "egress: sampling rates and baselines from Prometheus");
    Ok(Some((rx, latest_rx, dashboards)))
}

/// Logs each policy-denied flow leaving a watched namespace as it arrives.
fn log_denials(summary: &Summary, event: &Event) {
    if let Event::Flow(flow) = event
        && summary.is_watched_denial(flow)
    {
        tracing::debug!(
            reason = flow.drop_reason_name(),
            node = %flow.node,
            "policy-denied egress: {}/{} -> {}",
            flow.source.namespace,
            flow.source.pod,
            destination_label(flow)
        );
    }
}

/// Alerts as text: one block per alert.
fn alerts_table(alerts: &[Alert]) -> String {
    let mut out = String::new();
    if alerts.is_empty() {
        out.push_str("\nalerts: none\n");
        return out;
    }
    let firing = alerts
        .iter()
        .filter(|a| a.status == crate::alert::Status::Firing)
        .count();
    if firing == alerts.len() {
        let _ = writeln!(out, "\nalerts firing: {firing}");
    } else {
        let _ = writeln!(out, "\nalerts: {}, {firing} still firing", alerts.len());
    }
    for a in alerts {
        let get = |k: &str| a.annotations.get(k).map_or("", String::as_str);
        let label = |k: &str| a.labels.get(k).map_or("", String::as_str);
        let severity = match a.status {
            crate::alert::Status::Firing => label("severity").to_owned(),
            crate::alert::Status::Resolved => format!("{}, resolved", label("severity")),
        };
        let _ = writeln!(
            out,
            "  {} [{}] {} -> {}\n    {}",
            label("alertname"),
            severity,
            label("namespace"),
            label("destination"),
            get("summary")
        );
        if a.context.extra.is_empty() {
            let policies = if get("policies").is_empty() {
                "(default deny)"
            } else {
                get("policies")
            };
            let _ = writeln!(
                out,
                "    pods: {}  ports: {}  policies: {policies}",
                get("source_pods"),
                get("ports")
            );
        } else if !get("expected").is_empty() {
            let _ = writeln!(
                out,
                "    pods: {}  ports: {}\n    expected only: {}",
                get("source_pods"),
                get("ports"),
                get("expected")
            );
        } else if !get("reasons").is_empty() {
            let _ = writeln!(
                out,
                "    {}\n    names: {}",
                get("reasons"),
                get("sample_queries")
            );
        } else if !get("scanners").is_empty() {
            let _ = writeln!(
                out,
                "    {}\n    destinations include: {}",
                get("scanners"),
                get("sample_destinations")
            );
        } else if !get("top_pods").is_empty() || !get("top_destinations").is_empty() {
            let _ = writeln!(
                out,
                "    top pods: {}\n    top destinations: {}",
                get("top_pods"),
                get("top_destinations")
            );
        }
    }
    out
}

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

/// `exfilwatch replay`: reads captures, evaluates the rules, summarises, and with `send`
/// delivers the alerts to the configured Alertmanagers.
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
                crate::flow::format_time(t * 1_000_000_000)
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
pub async fn replay(
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
        None => load_rules(config),
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
    let consumer = tokio::spawn(pipeline::consume(
        rx,
        Summary::new(&config.hubble.namespaces),
        Some(engine),
        None,
        tick,
        |_, _| {},
    ));
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
    let (summary, mut engine) = consumer.await.unwrap_or_default();
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
    // Every alert that fired, including those the backtest saw resolve.
    let mut alerts = delivery.store.alerts().unwrap_or_default();
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

/// `exfilwatch run`: follows Hubble Relay and raises alerts until cancelled.
pub async fn run(config: Config, every: Duration, cancel: CancellationToken) -> Outcome {
    let rules = match load_rules(Some(&config)) {
        Ok(r) => r,
        Err(e) => return Outcome::fail(EXIT_CONFIG, e),
    };
    let store = match Store::open(&config.storage_dir) {
        Ok(s) => s,
        Err(e) => return Outcome::fail(EXIT_STORE, e),
    };
    follow(&config, &rules, store, every, cancel).await
}

/// The `run` pipeline over an opened store.
async fn follow(
    config: &Config,
    rules: &[Arc<Rule>],
    store: Store,
    every: Duration,
    cancel: CancellationToken,
) -> Outcome {
    let flow_store = match FlowStore::open(config.flows.clone()) {
        Ok(s) => s,
        Err(e) => return Outcome::fail(EXIT_STORE, e),
    };
    let (engine, delivery) = match start_alerting(config, rules, store, true) {
        Ok(a) => a,
        Err(e) => return Outcome::fail(EXIT_CONFIG, e),
    };
    let store = delivery.store.clone();
    let stats = Arc::new(SourceStats::default());
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let mut source = HubbleSource::new(config.hubble.clone(), stats.clone());
    match store.cursor(HUBBLE_CURSOR) {
        Ok(Some(cursor)) => {
            // Pick up the flows Hubble still holds from while exfilwatch was down. Relay merges
            // nodes with some delay, so start an overlap early: a flow counted twice is better
            // than a flow missed.
            let overlap = i64::try_from(config.hubble.resume_overlap.as_nanos()).unwrap_or(0);
            source = source.start_at(cursor.saturating_sub(overlap));
        }
        // A first start follows from now; the cursor is set at once, so that a crash before
        // the first periodic save still resumes from here.
        Ok(None) => {
            if let Err(e) = store.set_cursor(HUBBLE_CURSOR, crate::alert::now_ns()) {
                tracing::error!("{e}");
            }
        }
        Err(e) => tracing::error!("{e}; following Hubble from now"),
    }
    let egress_stop = cancel.child_token();
    let egress = match start_egress(config, rules, &store, egress_stop.clone()) {
        Ok(e) => e,
        Err(e) => {
            delivery.finish().await;
            return Outcome::fail(EXIT_CONFIG, e);
        }
    };
    let (egress_rx, egress_latest, egress_api) = match egress {
        Some((rx, latest, api)) => (Some(rx), Some(latest), Some(api)),
        None => (None, None, None),
    };
    let telemetry = Arc::new(Telemetry {
        source: stats.clone(),
        delivery: delivery.stats.clone(),
        store: store.clone(),
        egress: egress_latest,
        flows: Some(flow_store.clone()),
        query_latency: crate::api::metrics::query_histogram(),
        bad_requests: Default::default(),
        denied: Default::default(),
    });
    let api = match api::prepare(&config.api, telemetry.clone(), source.state(), egress_api) {
        Ok(mut state) => {
            state.flows = Some(flow_store.clone());
            state.alerts = Some(store.clone());
            state.watched = config.hubble.namespaces.clone();
            Ok(state)
        }
        Err(e) => Err(e),
    };
    let api = match api {
        Ok(state) => match api::bind(config.api.listen).await {
            Ok(listener) => Ok((state, listener)),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let (api_state, listener) = match api {
        Ok(a) => a,
        Err(e) => {
            egress_stop.cancel();
            delivery.finish().await;
            return Outcome::fail(EXIT_CONFIG, e);
        }
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("api: serving http://{addr}/api/v1/flows, /metrics, /healthz, /readyz");
    }
    let (flow_sink, flow_writer) = FlowSink::start(flow_store.clone());
    let api_stop = CancellationToken::new();
    let api_task = tokio::spawn(api::serve(
        listener,
        Arc::new(api_state),
        config.api.clone(),
        api_stop.clone(),
    ));
    let mut engine = engine;
    engine.watch_stream(source.state());
    let source_task = tokio::spawn(source.run(tx, cancel.clone()));
    let mut last_log = tokio::time::Instant::now();
    let mut last_cursor: Option<tokio::time::Instant> = None;
    let (summary, engine) = pipeline::consume(
        rx,
        Summary::new(&config.hubble.namespaces),
        Some(engine),
        egress_rx,
        Engine::tick_interval(rules),
        |summary, event| {
            if let Event::Flow(flow) = event {
                flow_sink.push(flow);
                if summary.is_watched_denial(flow) {
                    telemetry
                        .denied
                        .add(&flow.source.namespace, destination_label(flow));
                }
            }
            log_denials(summary, event);
            if last_log.elapsed() >= every {
                last_log = tokio::time::Instant::now();
                tracing::info!(
                    flows = summary.flows,
                    lost = stats.lost_total(),
                    duplicates = stats.duplicates.load(Ordering::Relaxed),
                    reconnects = stats.reconnects.load(Ordering::Relaxed),
                    alerts_sent = delivery.stats.sent.load(Ordering::Relaxed),
                    outbox = store.outbox_depth().unwrap_or(0),
                    "pipeline: progress"
                );
            }
            // Every flow before this event has been through the engine, its alerts committed.
            // The first save comes with the first flow, then every CURSOR_EVERY.
            if last_cursor.is_none_or(|t: tokio::time::Instant| t.elapsed() >= CURSOR_EVERY)
                && summary.last_flow_ns > 0
            {
                last_cursor = Some(tokio::time::Instant::now());
                if let Err(e) = store.set_cursor(HUBBLE_CURSOR, summary.last_flow_ns) {
                    tracing::error!("{e}");
                }
            }
        },
    )
    .await;
    if summary.last_flow_ns > 0
        && let Err(e) = store.set_cursor(HUBBLE_CURSOR, summary.last_flow_ns)
    {
        tracing::error!("{e}");
    }
    let result = source_task.await.unwrap_or(Ok(()));
    flow_sink.close();
    let persisted = tokio::task::spawn_blocking(move || {
        let _ = flow_writer.join();
        flow_store.persist()
    })
    .await;
    if let Ok(Err(e)) = persisted {
        tracing::error!("{e}; flows still in memory are lost");
    }
    let alerts = engine.map(|e| e.firing()).unwrap_or_default();
    let delivered = delivery.stats.clone();
    let queued = delivery.finish().await;
    api_stop.cancel();
    let _ = api_task.await;
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
        (
            "alert states delivered",
            delivered.sent.load(Ordering::Relaxed),
        ),
        ("alert states queued", queued),
    ];
    let mut output = summary.to_table(&extra);
    output.push_str(&alerts_table(&alerts));
    match result {
        Ok(()) => Outcome {
            exit_code: 0,
            output,
        },
        Err(e @ HubbleError::Address { .. }) => Outcome::fail(EXIT_CONFIG, e),
        Err(e) => Outcome {
            exit_code: EXIT_SOURCE,
            output: format!("{output}\nerror: {e}\n"),
        },
    }
}

/// `exfilwatch demo`: a simulated training namespace behind a Hubble-compatible server on
/// loopback, an exfiltration attempt a third of the way in, and the real `run` pipeline with
/// the default rule pack following it for `duration`. Alerts go to `alertmanager` when given.
pub async fn demo(
    duration: Duration,
    flows_per_second: u32,
    alertmanager: Option<String>,
    cancel: CancellationToken,
) -> std::io::Result<Outcome> {
    let sim = SimObserver::default();
    let server_stop = CancellationToken::new();
    let addr = sim.clone().spawn_local(None, server_stop.clone()).await?;
    let egress_model = Arc::new(EgressModel::default());
    let prometheus_addr =
        crate::sim::prometheus::spawn_local(egress_model.clone(), server_stop.clone()).await?;
    tracing::info!(%prometheus_addr, "demo: simulated Prometheus API serving the namespaces' egress counters");
    tracing::info!(%addr, "demo: simulated Hubble Relay serving an '{TRAINING_NAMESPACE}' namespace");

    let start_ns = crate::alert::now_ns();
    let rate = flows_per_second.max(1);
    let step = Duration::from_secs(1) / rate;
    let traffic_stop = cancel.child_token();
    let generator = {
        let sim = sim.clone();
        let stop = traffic_stop.clone();
        let egress_model = egress_model.clone();
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
                    // ...and worker 2, still allowed to reach S3, starts a bulk upload there.
                    egress_model.spike_from(crate::alert::now_ns() / 1_000_000_000);
                }
            }
        })
    };

    let mut config = Config::default();
    config.hubble.address = format!("http://{addr}");
    config.hubble.namespaces = vec![TRAINING_NAMESPACE.into()];
    config.alertmanager.urls = alertmanager.into_iter().collect();
    config.prometheus.url = Some(format!("http://{prometheus_addr}"));
    config.prometheus.interval = Duration::from_secs(1);
    // An ephemeral port: the demo must not collide with a service on 8080.
    config.api.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.flows.dir = None;
    let rules: Vec<Arc<Rule>> = match rules::load_text(DEFAULT_RULES, "rules/segmentation.yaml") {
        Ok(r) => r.into_iter().map(Arc::new).collect(),
        Err(e) => return Ok(Outcome::fail(EXIT_CONFIG, e)),
    };
    let store = Store::in_memory().map_err(std::io::Error::other)?;
    let run_cancel = cancel.child_token();
    let timer = {
        let run_cancel = run_cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            run_cancel.cancel();
        })
    };
    let outcome = follow(&config, &rules, store, Duration::from_secs(5), run_cancel).await;
    traffic_stop.cancel();
    timer.abort();
    let _ = generator.await;
    server_stop.cancel();
    Ok(outcome)
}
