//! `/metrics`: the counters the pipeline keeps, read at scrape time.
//!
//! The hot path only bumps plain atomics ([`SourceStats`], [`DeliveryStats`]); this collector
//! turns them into Prometheus metric families when scraped, and asks the store for the
//! outbox depth.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::alert::sink::DeliveryStats;
use crate::egress::watch::EgressReport;
use crate::flow::{LostEventSource, Verdict};
use crate::flowstore::FlowStore;
use crate::pipeline::DeniedFlows;
use crate::source::SourceStats;
use crate::source::kafka::{KafkaStats, Ownership};
use crate::state::Store;

/// Content type of the text exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything `/metrics` and `/healthz` report.
#[derive(Debug)]
pub struct Telemetry {
    pub source: Arc<SourceStats>,
    pub delivery: Arc<DeliveryStats>,
    pub store: Store,
    /// The latest egress report, when Prometheus is configured.
    pub egress: Option<tokio::sync::watch::Receiver<Arc<EgressReport>>>,
    pub flows: Option<Arc<FlowStore>>,
    /// Time the flow queries of the REST API took.
    pub query_latency: Histogram,
    /// Requests refused with 4xx, e.g. for a bad parameter.
    pub bad_requests: Counter,
    /// What the HTTP server refused or cut short: connections over the bound, timeouts,
    /// cross-site requests, sign-ins.
    pub http: Arc<super::server::HttpStats>,
    /// Policy-denied flows from watched namespaces, by destination.
    pub denied: Arc<DeniedFlows>,
    /// The last reload's outcome, when the service can reload.
    pub reload: Option<Arc<super::reload::ReloadStatus>>,
    /// The Kafka source's counters and the partitions it holds, when it is the source.
    pub kafka: Option<(
        Arc<KafkaStats>,
        tokio::sync::watch::Receiver<Arc<Ownership>>,
    )>,
}

/// Buckets for [`Telemetry::query_latency`]: 1 ms to about 4 s.
pub fn query_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 13))
}

fn gauge(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

/// A metric family of `kind`, one sample per label set (the descriptor even when there is
/// none).
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut family = e.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Telemetry {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.source;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        family(
            &mut e,
            "exfilwatch_flows_received",
            "Flows received from Hubble, by verdict",
            MetricType::Counter,
            s.by_verdict.iter().enumerate().map(|(i, n)| {
                let verdict =
                    Verdict::try_from(i as i32).map_or("VERDICT_UNKNOWN", |v| v.as_str_name());
                ([("verdict", verdict)], ConstCounter::new(load(n)))
            }),
        )?;
        family(
            &mut e,
            "exfilwatch_lost_events",
            "Events Hubble reported lost, by source",
            MetricType::Counter,
            s.lost.iter().enumerate().map(|(i, n)| {
                let source = LostEventSource::try_from(i as i32)
                    .map_or("UNKNOWN_LOST_EVENT_SOURCE", |v| v.as_str_name());
                ([("source", source)], ConstCounter::new(load(n)))
            }),
        )?;
        counter(
            &mut e,
            "exfilwatch_flows_duplicate",
            "Re-delivered flows dropped",
            load(&s.duplicates),
        )?;
        counter(
            &mut e,
            "exfilwatch_bad_messages",
            "Flow messages or lines that could not be decoded",
            load(&s.bad_messages),
        )?;
        let http = &self.http;
        gauge(
            &mut e,
            "exfilwatch_api_connections",
            "Connections the API is serving",
            load(&http.open),
        )?;
        for (name, help, value) in [
            (
                "exfilwatch_api_connections_refused",
                "Connections closed on arrival because api.max_connections were open",
                &http.refused,
            ),
            (
                "exfilwatch_api_request_timeouts",
                "Requests answered 503 after api.request_timeout",
                &http.timed_out,
            ),
            (
                "exfilwatch_api_cross_site_refused",
                "Requests refused as cross-site or for a Host the API does not answer to",
                &http.cross_site,
            ),
            (
                "exfilwatch_api_signin_failures",
                "Console sign-ins with a token that is not accepted",
                &http.signin_failed,
            ),
            (
                "exfilwatch_api_signin_throttled",
                "Console sign-ins refused because their client failed too often",
                &http.signin_throttled,
            ),
        ] {
            counter(&mut e, name, help, load(value))?;
        }
        counter(
            &mut e,
            "exfilwatch_hubble_reconnects",
            "Attempts to reopen the Hubble stream",
            load(&s.reconnects),
        )?;
        counter(
            &mut e,
            "exfilwatch_hubble_node_status",
            "Relay node-status notices",
            load(&s.node_status),
        )?;
        if let Some((k, _)) = &self.kafka {
            for (name, help, value) in [
                ("exfilwatch_kafka_records", "Kafka records read", &k.records),
                (
                    "exfilwatch_kafka_bad_records",
                    "Kafka records that could not be decoded, skipped",
                    &k.bad_records,
                ),
                (
                    "exfilwatch_kafka_commits",
                    "Offset commits sent after a durable checkpoint",
                    &k.commits,
                ),
                (
                    "exfilwatch_kafka_commit_errors",
                    "Offset commits that failed (their records are read again)",
                    &k.commit_errors,
                ),
                (
                    "exfilwatch_kafka_rebalances",
                    "Partition assignments received",
                    &k.rebalances,
                ),
                (
                    "exfilwatch_kafka_revoked_partitions",
                    "Partitions a rebalance took from this replica (their durable offsets committed first)",
                    &k.revoked,
                ),
            ] {
                counter(&mut e, name, help, load(value))?;
            }
            gauge(
                &mut e,
                "exfilwatch_kafka_assigned_partitions",
                "Partitions of the topic this replica consumes",
                load(&k.partitions),
            )?;
        }
        let d = &self.delivery;
        counter(
            &mut e,
            "exfilwatch_alert_deliveries",
            "Alert states accepted by a target",
            load(&d.sent),
        )?;
        counter(
            &mut e,
            "exfilwatch_alert_delivery_errors",
            "Failed delivery attempts (retried)",
            load(&d.errors),
        )?;
        counter(
            &mut e,
            "exfilwatch_alert_refused",
            "Alert states a target refused (dead letters)",
            load(&d.refused),
        )?;
        counter(
            &mut e,
            "exfilwatch_alert_store_errors",
            "Alert state changes the store could not commit (retried)",
            load(&d.store_errors),
        )?;
        let depth = ConstGauge::new(
            self.store
                .outbox_depth()
                .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
        );
        depth.encode(e.encode_descriptor(
            "exfilwatch_alert_outbox_depth",
            "Alert states waiting for delivery (-1: store unreadable)",
            None,
            depth.metric_type(),
        )?)?;
        let denied = self.denied.snapshot();
        family(
            &mut e,
            "exfilwatch_denied_flows",
            "Policy-denied flows from watched namespaces, by destination",
            MetricType::Counter,
            denied.iter().map(|((namespace, destination), n)| {
                (
                    [
                        ("namespace", namespace.as_str()),
                        ("destination", destination.as_str()),
                    ],
                    ConstCounter::new(*n),
                )
            }),
        )?;
        if let Some(reload) = &self.reload {
            gauge(
                &mut e,
                "exfilwatch_config_last_reload_successful",
                "Whether the last reload of the configuration and rules succeeded (1) or was refused (0)",
                u64::from(reload.successful()),
            )?;
            gauge(
                &mut e,
                "exfilwatch_config_last_reload_success_timestamp_seconds",
                "When the configuration and rules were last loaded successfully (at start or by a reload)",
                u64::try_from(reload.success_seconds()).unwrap_or(0),
            )?;
        }
        if let Some(rss) = crate::common::heap::resident_set() {
            gauge(
                &mut e,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                rss,
            )?;
        }
        if let Some(heap) = crate::common::heap::heap() {
            gauge(
                &mut e,
                "exfilwatch_heap_allocated_bytes",
                "Bytes in live heap allocations, as the allocator counts them",
                heap.allocated,
            )?;
            gauge(
                &mut e,
                "exfilwatch_heap_resident_bytes",
                "Bytes of the allocator's pages resident in memory: live allocations, its metadata and freed pages not yet given back",
                heap.resident,
            )?;
        }
        family(
            &mut e,
            "exfilwatch_build_info",
            "The version and git revision of this build; always 1",
            MetricType::Gauge,
            [(
                [
                    ("version", crate::common::version::VERSION),
                    ("revision", crate::common::version::REVISION),
                ],
                ConstGauge::new(1i64),
            )],
        )?;
        family(
            &mut e,
            "exfilwatch_alerts_folded",
            "Alerts folded into a roll-up alert (ExfilwatchAlertFlood) past alertmanager.max_firing, by rule and namespace",
            MetricType::Counter,
            self.delivery
                .folded
                .counts()
                .into_iter()
                .map(|(rule, ns, n)| {
                    (
                        [("alertname", rule), ("namespace", ns)],
                        ConstCounter::new(n),
                    )
                }),
        )?;
        if let Ok(firing) = self.store.firing_counts() {
            family(
                &mut e,
                "exfilwatch_alerts_firing",
                "Alerts firing, by rule and namespace",
                MetricType::Gauge,
                firing.iter().map(|(alertname, ns, n)| {
                    (
                        [
                            ("alertname", alertname.as_str()),
                            ("namespace", ns.as_str()),
                        ],
                        ConstGauge::new(*n),
                    )
                }),
            )?;
        }
        if let Some(flows) = &self.flows {
            let f = &flows.stats;
            counter(
                &mut e,
                "exfilwatch_store_flows_appended",
                "Flows added to the flow store",
                load(&f.appended),
            )?;
            counter(
                &mut e,
                "exfilwatch_store_flows_dropped",
                "Flows the flow store could not take because its writer fell behind",
                load(&f.dropped),
            )?;
            counter(
                &mut e,
                "exfilwatch_store_flows_expired",
                "Flows removed from the flow store by its bounds or retention",
                load(&f.expired),
            )?;
            counter(
                &mut e,
                "exfilwatch_store_segment_errors",
                "Flow store segments that could not be written, read or deleted",
                load(&f.segment_errors),
            )?;
            gauge(
                &mut e,
                "exfilwatch_store_memory_flows",
                "Flows held in memory",
                load(&f.memory_flows),
            )?;
            gauge(
                &mut e,
                "exfilwatch_store_memory_bytes",
                "Bytes the in-memory flows take",
                load(&f.memory_bytes),
            )?;
            gauge(
                &mut e,
                "exfilwatch_store_disk_flows",
                "Flows in parquet segments",
                load(&f.disk_flows),
            )?;
            gauge(
                &mut e,
                "exfilwatch_store_disk_bytes",
                "Bytes the parquet segments take",
                load(&f.disk_bytes),
            )?;
            gauge(
                &mut e,
                "exfilwatch_store_segments",
                "Parquet segments on disk",
                load(&f.segments),
            )?;
            counter(
                &mut e,
                "exfilwatch_store_top_cache_hits",
                "Chunks whose /flows/top groups came from the cache instead of being grouped again",
                load(&f.top_cache_hits),
            )?;
            counter(
                &mut e,
                "exfilwatch_store_segment_reads",
                "Parquet segments or bucket objects queries read whole",
                load(&f.segment_reads),
            )?;
            counter(
                &mut e,
                "exfilwatch_store_segment_filtered_reads",
                "Parquet segments /flows read column-first: the filter's columns, then only the rows from the first match to the last",
                load(&f.segment_filtered_reads),
            )?;
            counter(
                &mut e,
                "exfilwatch_store_match_cache_hits",
                "Stored segments a /flows page answered from the matching rows kept of an earlier page with the same filter",
                load(&f.match_cache_hits),
            )?;
            counter(
                &mut e,
                "exfilwatch_store_unforwarded_hits",
                "Stored segments a /flows page ruling out forwarded flows answered from the segment's other flows, kept in memory since it was written",
                load(&f.unforwarded_hits),
            )?;
            family(
                &mut e,
                "exfilwatch_store_cache_bytes",
                "Bytes the flow store's query caches hold by its own estimate: decoded segments, /flows/top groups, /flows matches",
                MetricType::Gauge,
                flows.cache_bytes().map(|(cache, bytes)| {
                    (
                        [("cache", cache)],
                        ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX)),
                    )
                }),
            )?;
            if let Some(b) = flows.bucket() {
                let b = &b.stats;
                for (name, help, value) in [
                    (
                        "exfilwatch_bucket_uploads",
                        "Segments uploaded to the bucket",
                        &b.uploads,
                    ),
                    (
                        "exfilwatch_bucket_upload_bytes",
                        "Bytes uploaded to the bucket",
                        &b.upload_bytes,
                    ),
                    (
                        "exfilwatch_bucket_errors",
                        "Bucket requests that failed (uploads and commits are retried by the uploader)",
                        &b.errors,
                    ),
                    (
                        "exfilwatch_bucket_downloads",
                        "Objects read from the bucket by queries",
                        &b.downloads,
                    ),
                    (
                        "exfilwatch_bucket_download_bytes",
                        "Bytes of the objects read from the bucket",
                        &b.download_bytes,
                    ),
                    (
                        "exfilwatch_bucket_row_groups_skipped",
                        "Row groups of the table's files a query left unread, their times outside its range",
                        &b.row_groups_skipped,
                    ),
                    (
                        "exfilwatch_bucket_lists",
                        "Reads of the flow table's log for versions committed since the last",
                        &b.lists,
                    ),
                    (
                        "exfilwatch_bucket_commits",
                        "Versions this replica committed to the flow table",
                        &b.commits,
                    ),
                    (
                        "exfilwatch_bucket_expired_files",
                        "Files this replica removed from the flow table past the retention",
                        &b.expired,
                    ),
                    (
                        "exfilwatch_bucket_vacuumed_files",
                        "Files removed from the flow table that this replica deleted from the bucket",
                        &b.vacuumed,
                    ),
                    (
                        "exfilwatch_bucket_compacted_files",
                        "Files of this replica merged into larger ones in the flow table",
                        &b.compacted,
                    ),
                    (
                        "exfilwatch_bucket_duplicate_flows_dropped",
                        "Flows stored twice (one UUID) that merging this replica's files dropped",
                        &b.duplicates,
                    ),
                    (
                        "exfilwatch_bucket_learned_bad",
                        "Other replicas' learned-state objects that could not be decoded (skipped), at each read",
                        &b.learned_bad,
                    ),
                ] {
                    counter(&mut e, name, help, load(value))?;
                }
                gauge(
                    &mut e,
                    "exfilwatch_bucket_learned_destinations",
                    "Known destinations the other replicas learned, as last read from the bucket",
                    load(&b.learned),
                )?;
                gauge(
                    &mut e,
                    "exfilwatch_bucket_pending_uploads",
                    "Segments on disk not in the flow table yet",
                    flows.pending_uploads() as u64,
                )?;
            }
        }
        if let Some(egress) = &self.egress {
            let report = egress.borrow().clone();
            let blind = ConstGauge::new(i64::from(report.error.is_some()));
            blind.encode(e.encode_descriptor(
                "exfilwatch_prometheus_blind",
                "1 when the last egress round got no usable answer from Prometheus",
                None,
                blind.metric_type(),
            )?)?;
            family(
                &mut e,
                "exfilwatch_egress_rate_bytes",
                "10-minute egress rate per namespace, bytes per second",
                MetricType::Gauge,
                report.namespaces.iter().filter_map(|(ns, n)| {
                    Some(([("namespace", ns.as_str())], ConstGauge::new(n.rate?)))
                }),
            )?;
            family(
                &mut e,
                "exfilwatch_egress_baseline_bytes",
                "7-day hourly mean egress rate per namespace, bytes per second",
                MetricType::Gauge,
                report.namespaces.iter().filter_map(|(ns, n)| {
                    Some(([("namespace", ns.as_str())], ConstGauge::new(n.baseline?)))
                }),
            )?;
        }
        Ok(())
    }
}

impl Telemetry {
    /// The exposition text.
    pub fn encode(self: &Arc<Self>) -> Result<String, String> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        registry.register(
            "exfilwatch_alert_delivery_latency_seconds",
            "Time from an alert state's commit to its acceptance by a target",
            self.delivery.latency.clone(),
        );
        registry.register(
            "exfilwatch_api_query_duration_seconds",
            "Time the REST API's flow queries took",
            self.query_latency.clone(),
        );
        registry.register(
            "exfilwatch_api_bad_requests",
            "REST API requests refused with a 4xx status",
            self.bad_requests.clone(),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .map_err(|e| e.to_string())?;
        Ok(text)
    }

    /// Details for `/healthz`.
    pub fn health(&self) -> serde_json::Value {
        let prometheus = self.egress.as_ref().map(|e| {
            let report = e.borrow();
            match &report.error {
                Some(error) => json!({"state": "blind", "error": error, "at": report.at}),
                None if report.at == 0 => json!({"state": "starting"}),
                None => {
                    json!({"state": "ok", "at": report.at, "namespaces": report.namespaces.len()})
                }
            }
        });
        let kafka = self.kafka.as_ref().map(|(_, owned)| {
            let owned = owned.borrow();
            json!({"partitions": owned.partitions, "of": owned.partition_count})
        });
        let bucket = self.flows.as_ref().and_then(|f| {
            f.bucket().map(|b| {
                json!({
                    "replica": b.replica().as_ref(),
                    "pending_uploads": f.pending_uploads(),
                    "errors": b.stats.errors.load(Ordering::Relaxed),
                })
            })
        });
        json!({
            "prometheus": prometheus,
            "kafka": kafka,
            "bucket": bucket,
            "flows": self.source.flows(),
            "lost_events": self.source.lost_total(),
            "alert_outbox_depth": self.store.outbox_depth().ok(),
            "alert_delivery_errors": self.delivery.errors.load(Ordering::Relaxed),
        })
    }
}
