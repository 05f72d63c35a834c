//! Assembles `exfilwatch run`: the source (Hubble Relay, or a Kafka topic) feeding the
//! pipeline, whose consumers are the flow store, the detection engine (with the alert manager,
//! its outbox and sinks) and the telemetry; the Prometheus egress task; the REST API. Then
//! shuts them down in order: the source stops, the pipeline drains into the engine, the
//! engine's last state changes are committed, the flow store persists, the sinks flush what
//! they can (the rest stays in the outbox), and the API closes. [`reload`] puts edited rules in force while it runs.

pub mod reload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::alert::Alert;
use crate::alert::manager::{LifecycleConfig, Manager};
use crate::alert::sink::{self, DeliveryStats};
use crate::api::reload::ReloadStatus;
use crate::api::{self, egress::EgressApi, metrics::Telemetry};
use crate::common::clock::{now_ns, span_ns};
use crate::config::{Config, SourceKind};
use crate::detect::engine::Engine;
use crate::egress::{self, prometheus::Prometheus, sampler::Sampler, watch::EgressReport};
use crate::flowstore::{FlowSink, FlowStore};
use crate::pipeline::{
    self, CHANNEL_CAPACITY, Consumers, Cursor, DeniedFlows, Progress, Side, Summary,
};
use crate::rules::{self, Rule};
use crate::source::hubble::HubbleSource;
use crate::source::kafka::KafkaSource;
use crate::source::{SourceError, SourceStats, StreamState};
use crate::state::Store;

/// The cursor under which the time of the last processed flow is saved.
const HUBBLE_CURSOR: &str = "hubble.last_flow_ns";
/// How often the cursor is saved while flows arrive.
const CURSOR_EVERY: Duration = Duration::from_secs(5);

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting that cannot work: an address, a TLS file, a target.
    #[error("{0}")]
    Config(String),
    /// The flow store's directory cannot be used.
    #[error("{0}")]
    Storage(String),
}

/// What a finished run leaves to report.
#[derive(Debug)]
pub struct Finished {
    pub summary: Summary,
    pub source: Arc<SourceStats>,
    /// Alert states delivered, and still queued in the outbox.
    pub delivered: u64,
    pub queued: u64,
    /// Alerts firing at the end.
    pub alerts: Vec<Alert>,
    /// Why the source stopped, when it failed.
    pub source_result: Result<(), SourceError>,
}

/// The source a run follows.
#[derive(Debug)]
enum Live {
    Hubble(HubbleSource),
    Kafka(KafkaSource),
}

impl Live {
    fn state(&self) -> watch::Receiver<StreamState> {
        match self {
            Live::Hubble(s) => s.state(),
            Live::Kafka(s) => s.state(),
        }
    }

    /// Runs until `cancel`; the Kafka source commits what `durable` reports.
    async fn run(
        self,
        tx: mpsc::Sender<crate::flow::Event>,
        durable: watch::Receiver<u64>,
        cancel: CancellationToken,
    ) -> Result<(), SourceError> {
        match self {
            Live::Hubble(s) => s.run(tx, cancel).await.map_err(SourceError::Hubble),
            Live::Kafka(s) => s.run(tx, durable, cancel).await.map_err(SourceError::Kafka),
        }
    }
}

/// The Hubble source, resuming from the saved cursor.
fn hubble_source(config: &Config, store: &Store, stats: Arc<SourceStats>) -> HubbleSource {
    let source = HubbleSource::new(config.hubble.clone(), stats);
    match store.cursor(HUBBLE_CURSOR) {
        Ok(Some(cursor)) => {
            // Pick up the flows Hubble still holds from while exfilwatch was down. Relay merges
            // nodes with some delay, so start an overlap early: a flow counted twice is better
            // than a flow missed.
            let overlap = span_ns(config.hubble.resume_overlap);
            source.start_at(cursor.saturating_sub(overlap))
        }
        // A first start follows from now; the cursor is set at once, so that a crash before
        // the first periodic save still resumes from here.
        Ok(None) => {
            if let Err(e) = store.set_cursor(HUBBLE_CURSOR, now_ns()) {
                tracing::error!("{e}");
            }
            source
        }
        Err(e) => {
            tracing::error!("{e}; following Hubble from now");
            source
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

/// What a checkpoint uploads besides the flows: the known destinations in `store`, when
/// they changed.
fn learned_exporter(store: Store) -> crate::flowstore::Exporter {
    crate::flowstore::Exporter(Box::new(move |last| {
        let version = store.learned_version();
        if version == last {
            return None;
        }
        match store
            .all_known_destinations()
            .map(|rows| serde_json::to_vec(&rows))
        {
            Ok(Ok(bytes)) => Some((version, bytes)),
            Ok(Err(e)) => {
                tracing::error!("new_destination: encoding what was learned: {e}");
                None
            }
            Err(e) => {
                tracing::error!("new_destination: {e}");
                None
            }
        }
    }))
}

/// How often what other replicas learned is read again besides each assignment.
const LEARNED_EVERY: Duration = Duration::from_secs(60);

/// What the other replicas learned, read from the bucket and sent to the detectors.
fn read_learned(
    bucket: &crate::flowstore::bucket::Bucket,
    tx: &watch::Sender<Arc<Vec<crate::state::Learned>>>,
) {
    let objects = match bucket.learned() {
        Ok(objects) => objects,
        Err(e) => {
            tracing::warn!("new_destination: what other replicas learned: {e}");
            return;
        }
    };
    let mut rows: Vec<crate::state::Learned> = Vec::new();
    for (replica, bytes) in objects {
        match serde_json::from_slice::<Vec<crate::state::Learned>>(&bytes) {
            Ok(r) => rows.extend(r),
            Err(e) => {
                bucket
                    .stats
                    .learned_bad
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    "new_destination: learned state of replica {}: skipped: {e}",
                    replica.escape_debug()
                );
            }
        }
    }
    tracing::debug!(
        "new_destination: {} destinations the other replicas learned, read from the bucket",
        rows.len()
    );
    bucket
        .stats
        .learned
        .store(rows.len() as u64, std::sync::atomic::Ordering::Relaxed);
    // Unchanged (the usual minute), the detectors are not woken to merge it all again on
    // the flow path.
    tx.send_if_modified(|current| {
        let changed = **current != rows;
        if changed {
            *current = Arc::new(rows);
        }
        changed
    });
}

/// What the other replicas learned, for the detectors: read at each assignment before its
/// records (the namespaces this replica takes over were learned elsewhere; the hook runs in
/// the consumer's rebalance), and every [`LEARNED_EVERY`].
fn share_learned(
    bucket: Arc<crate::flowstore::bucket::Bucket>,
    stop: CancellationToken,
) -> (crate::detect::SharedLearned, crate::source::kafka::OnAssign) {
    let (tx, rx) = watch::channel(Arc::new(Vec::new()));
    let tx = Arc::new(tx);
    let (b, t) = (bucket.clone(), tx.clone());
    let hook = crate::source::kafka::OnAssign(Arc::new(move || {
        tokio::task::block_in_place(|| read_learned(&b, &t));
    }));
    tokio::spawn(async move {
        let mut every = tokio::time::interval(LEARNED_EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = stop.cancelled() => return,
            }
            let (b, t) = (bucket.clone(), tx.clone());
            let _ = tokio::task::spawn_blocking(move || read_learned(&b, &t)).await;
        }
    });
    (rx, hook)
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
        max_firing: config.alertmanager.max_firing,
        retention: config.alertmanager.retention,
        folded: Arc::default(),
    };
    let folded = lifecycle.folded.clone();
    let manager =
        Manager::new(lifecycle, store.clone(), wake.clone(), rules).map_err(|e| e.to_string())?;
    let stats = Arc::new(DeliveryStats {
        folded,
        ..DeliveryStats::default()
    });
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
/// reported once: they cannot be evaluated. `spike_factor` follows the pack in force.
fn start_egress(
    config: &Config,
    rules: &[Arc<Rule>],
    store: &Store,
    spike_factor: watch::Receiver<f64>,
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
        spike_factor,
        tx,
        latest_tx,
        cancel,
    ));
    tracing::info!(%url, interval = ?p.interval, "egress: sampling rates and baselines from Prometheus");
    Ok(Some((rx, latest_rx, dashboards)))
}

/// Follows the configured source with `rules` over an opened state `store` until `cancel`,
/// logging progress every `every`. With `config_path`, the file `config` was read from, the rules
/// are reloaded while running (see [`reload`]).
pub async fn run(
    config: &Config,
    config_path: Option<PathBuf>,
    rules: &[Arc<Rule>],
    store: Store,
    every: Duration,
    cancel: CancellationToken,
) -> Result<Finished, StartError> {
    let flow_store =
        FlowStore::open(config.flows.clone()).map_err(|e| StartError::Storage(e.to_string()))?;
    if let Some(b) = flow_store.bucket() {
        b.check().await.map_err(StartError::Storage)?;
        tracing::info!(
            "flow store: segments also go to the bucket as replica {}",
            b.replica()
        );
    }
    let (engine, delivery) =
        start_alerting(config, rules, store, true).map_err(StartError::Config)?;
    let store = delivery.store.clone();
    let stats = Arc::new(SourceStats::default());
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let hubble_mode = config.source == SourceKind::Hubble;
    let (mut source, kafka, owned) = match config.source {
        SourceKind::Hubble => (
            Live::Hubble(hubble_source(config, &store, stats.clone())),
            None,
            None,
        ),
        SourceKind::Kafka => {
            let source = KafkaSource::new(config.kafka.clone(), stats.clone());
            let owned = source.ownership();
            let kafka = (source.stats(), owned.clone());
            (Live::Kafka(source), Some(kafka), Some(owned))
        }
    };
    let egress_stop = cancel.child_token();
    let (spike_factor, spike_factor_rx) = watch::channel(Engine::smallest_spike_factor(rules));
    let egress = match start_egress(config, rules, &store, spike_factor_rx, egress_stop.clone()) {
        Ok(e) => e,
        Err(e) => {
            delivery.finish().await;
            return Err(StartError::Config(e));
        }
    };
    let (egress_rx, egress_latest, egress_api) = match egress {
        Some((rx, latest, api)) => (Some(rx), Some(latest), Some(api)),
        None => (None, None, None),
    };
    let denied = Arc::new(DeniedFlows::default());
    let reload_status = config_path
        .as_ref()
        .map(|_| Arc::new(ReloadStatus::default()));
    let telemetry = Arc::new(Telemetry {
        source: stats.clone(),
        delivery: delivery.stats.clone(),
        store: store.clone(),
        egress: egress_latest,
        flows: Some(flow_store.clone()),
        query_latency: crate::api::metrics::query_histogram(),
        bad_requests: Default::default(),
        http: Default::default(),
        denied: denied.clone(),
        reload: reload_status.clone(),
        kafka,
    });
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let api = async {
        let mut state = api::prepare(&config.api, telemetry.clone(), source.state(), egress_api)?;
        state.flows = Some(flow_store.clone());
        state.alerts = Some(store.clone());
        state.watched = config.hubble.namespaces.clone();
        state.alertmanager = config.alertmanager.urls.first().cloned();
        *state.rules.write().unwrap_or_else(|p| p.into_inner()) = rules.to_vec();
        if config_path.is_some() {
            state.reloads = Some(reload_tx);
        }
        let listener = api::bind(&config.api).await?;
        Ok::<_, String>((state, listener))
    };
    let (api_state, listener) = match api.await {
        Ok(a) => a,
        Err(e) => {
            egress_stop.cancel();
            delivery.finish().await;
            return Err(StartError::Config(e));
        }
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            "api: serving the console at http://{addr}/ui/, and /api/v1/flows, /metrics, /healthz, /readyz"
        );
    }
    let shown_rules = api_state.rules.clone();
    let (flow_sink, flow_writer) = FlowSink::start(flow_store.clone());
    // A Kafka source waits for the store rather than commit past flows it dropped.
    let flow_sink = if hubble_mode {
        flow_sink
    } else {
        flow_sink.lossless()
    };
    let durable = flow_sink.durable();
    let api_stop = CancellationToken::new();
    let api_task = tokio::spawn(api::serve(
        listener,
        api_state,
        config.api.clone(),
        api_stop.clone(),
    ));
    let (rules_tx, rules_rx) = mpsc::channel(1);
    let reloader = match (config_path, reload_status) {
        (Some(path), Some(status)) => {
            let reloader = reload::Reloader {
                path,
                config: config.clone(),
                status,
                engine: rules_tx,
                spike_factor,
                shown: shown_rules,
            };
            Some(tokio::spawn(reloader.run(reload_rx, cancel.child_token())))
        }
        _ => None,
    };
    let mut engine = engine;
    engine.watch_stream(source.state());
    if let Some(bucket) = flow_store.bucket().cloned() {
        flow_store.export_with(learned_exporter(store.clone()));
        if let Live::Kafka(kafka) = &mut source {
            let (learned, hook) = share_learned(bucket, cancel.child_token());
            kafka.on_assign(hook);
            engine.share_learned(learned);
        }
    }
    let source_task = tokio::spawn(source.run(tx, durable, cancel.clone()));
    let consumers = Consumers {
        summary: Summary::new(&config.hubble.namespaces).with_metric(denied),
        engine: Some(engine),
        flows: Some(flow_sink),
        progress: Some(Progress::new(
            every,
            stats.clone(),
            delivery.stats.clone(),
            store.clone(),
        )),
        // Kafka keeps its own position: offsets committed at durable checkpoints.
        cursor: hubble_mode.then(|| Cursor::new(store.clone(), HUBBLE_CURSOR, CURSOR_EVERY)),
    };
    let side = Side {
        egress: egress_rx,
        owned,
        rules: Some(rules_rx),
    };
    let consumers = pipeline::consume(rx, consumers, side, Engine::tick_interval(rules)).await;
    if let Some(reloader) = reloader {
        reloader.abort();
    }
    let source_result = source_task.await.unwrap_or(Ok(()));
    if let Some(sink) = &consumers.flows {
        sink.close();
    }
    let persisted = tokio::task::spawn_blocking(move || {
        let _ = flow_writer.join();
        flow_store.persist()
    })
    .await;
    if let Ok(Err(e)) = persisted {
        tracing::error!("{e}; flows still in memory are lost");
    }
    let mut consumers = consumers;
    // The last flows' effect on firing alerts is committed (and delivered by the sinks' last
    // flush, or at the next start).
    if let Some(engine) = consumers.engine.as_mut() {
        engine.flush(tokio::time::Instant::now());
    }
    let alerts = consumers
        .engine
        .as_ref()
        .map(Engine::firing)
        .unwrap_or_default();
    let delivery_stats = delivery.stats.clone();
    let queued = delivery.finish().await;
    // Read after the sinks' last flush.
    let delivered = delivery_stats
        .sent
        .load(std::sync::atomic::Ordering::Relaxed);
    api_stop.cancel();
    let _ = api_task.await;
    Ok(Finished {
        summary: consumers.summary,
        source: stats,
        delivered,
        queued,
        alerts,
        source_result,
    })
}
