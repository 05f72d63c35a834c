//! Delivery from the outbox to Alertmanager (API v2) and plain webhooks.
//!
//! One task per target drains that target's rows of the outbox: Alertmanager gets a batch as
//! one `POST /api/v2/alerts`; a webhook gets Alertmanager's webhook payload (version 4), one
//! alert per request. A row leaves the outbox only when the target answered 2xx. Connection
//! errors, timeouts and 5xx/429 answers are retried with capped, jittered backoff, forever.
//! A 4xx answer to a batch is retried alert by alert, so one bad alert cannot block the rest;
//! an alert the target refuses on its own goes to the dead letters with the target's answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{Alert, PostableAlert};
use crate::common::clock::now_ns;
use crate::common::http::HttpAuth;
use crate::common::retry::Backoff;
use crate::config::AlertmanagerConfig;
use crate::state::{Pending, Store};

/// Largest batch posted to Alertmanager at once.
const BATCH: usize = 256;

/// Where alerts go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Alertmanager,
    Webhook,
}

/// One delivery target.
#[derive(Clone)]
pub struct Target {
    /// The outbox key: the configured URL, prefixed `webhook:` for webhooks.
    pub id: String,
    pub kind: TargetKind,
    endpoint: String,
    client: reqwest::Client,
    auth: Option<HttpAuth>,
    external_url: String,
    /// Longest wait between delivery attempts.
    retry_max: Duration,
    /// How long the last attempt at shutdown may take.
    flush_timeout: Duration,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The auth secret stays out of logs.
        f.debug_struct("Target")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .finish()
    }
}

/// Counters of one or more sinks.
#[derive(Debug)]
pub struct DeliveryStats {
    pub sent: AtomicU64,
    pub errors: AtomicU64,
    pub refused: AtomicU64,
    /// State changes the store could not commit (retried).
    pub store_errors: AtomicU64,
    /// Time from a state change's commit to its target's acceptance.
    pub latency: prometheus_client::metrics::histogram::Histogram,
    /// Accepted deliveries so far; subscribe to follow them.
    pub delivered: watch::Sender<u64>,
    /// Alerts folded into roll-ups instead of sent one by one.
    pub folded: Arc<super::rollup::Folded>,
}

impl Default for DeliveryStats {
    fn default() -> Self {
        DeliveryStats {
            sent: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            // 1 ms .. ~65 s: loopback deliveries take about a millisecond, outages minutes.
            latency: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17),
            ),
            delivered: watch::channel(0).0,
            folded: Arc::default(),
        }
    }
}

/// Builds the targets the configuration names.
pub fn targets(config: &AlertmanagerConfig, external_url: &str) -> Result<Vec<Target>, String> {
    let client = crate::common::http::client("alertmanager", config.timeout, config.tls.as_ref())?;
    let make = |url: &String, kind| {
        let base = url.trim_end_matches('/');
        Target {
            id: match kind {
                TargetKind::Alertmanager => base.to_owned(),
                TargetKind::Webhook => format!("webhook:{base}"),
            },
            kind,
            endpoint: match kind {
                TargetKind::Alertmanager => format!("{base}/api/v2/alerts"),
                TargetKind::Webhook => base.to_owned(),
            },
            client: client.clone(),
            auth: config.auth.clone(),
            external_url: external_url.to_owned(),
            retry_max: config.retry_max,
            flush_timeout: config.timeout,
        }
    };
    Ok(config
        .urls
        .iter()
        .map(|u| make(u, TargetKind::Alertmanager))
        .chain(config.webhooks.iter().map(|u| make(u, TargetKind::Webhook)))
        .collect())
}

/// Alertmanager's webhook payload, version 4.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct WebhookMessage<'a> {
    version: &'static str,
    group_key: String,
    truncated_alerts: u32,
    status: &'static str,
    receiver: &'static str,
    group_labels: &'a std::collections::BTreeMap<String, String>,
    common_labels: &'a std::collections::BTreeMap<String, String>,
    common_annotations: &'a std::collections::BTreeMap<String, String>,
    #[serde(rename = "externalURL")]
    external_url: &'a str,
    alerts: [WebhookAlert<'a>; 1],
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct WebhookAlert<'a> {
    status: &'static str,
    #[serde(flatten)]
    alert: PostableAlert,
    fingerprint: &'a str,
}

/// How a request ended.
enum Answer {
    Accepted,
    /// Worth retrying later: connection error, timeout, 5xx, 429.
    Retry(String),
    /// The target refused the content: retrying the same content will not help.
    Refused(String),
}

impl Target {
    async fn post(&self, body: Vec<u8>) -> Answer {
        let request = self
            .client
            .post(&self.endpoint)
            .header("content-type", "application/json")
            .body(body);
        let request = crate::common::http::authorize(request, self.auth.as_ref());
        match request.send().await {
            Err(e) => Answer::Retry(crate::common::error_chain(&e)),
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    return Answer::Accepted;
                }
                let text = response.text().await.unwrap_or_default();
                let text = text.chars().take(300).collect::<String>();
                if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
                    Answer::Refused(format!("{status}: {}", text.trim()))
                } else {
                    Answer::Retry(format!("{status}: {}", text.trim()))
                }
            }
        }
    }

    async fn send(&self, batch: &[(Pending, Alert)]) -> Answer {
        match self.kind {
            TargetKind::Alertmanager => {
                let alerts: Vec<PostableAlert> = batch.iter().map(|(_, a)| a.postable()).collect();
                self.post(serde_json::to_vec(&alerts).unwrap_or_default())
                    .await
            }
            TargetKind::Webhook => {
                for (_, alert) in batch {
                    let status = alert.status.as_str();
                    let message = WebhookMessage {
                        version: "4",
                        group_key: format!("exfilwatch/{}", alert.fingerprint),
                        truncated_alerts: 0,
                        status,
                        receiver: "exfilwatch",
                        group_labels: &alert.labels,
                        common_labels: &alert.labels,
                        common_annotations: &alert.annotations,
                        external_url: &self.external_url,
                        alerts: [WebhookAlert {
                            status,
                            alert: alert.postable(),
                            fingerprint: &alert.fingerprint,
                        }],
                    };
                    match self
                        .post(serde_json::to_vec(&message).unwrap_or_default())
                        .await
                    {
                        Answer::Accepted => {}
                        other => return other,
                    }
                }
                Answer::Accepted
            }
        }
    }
}

/// Drains `target`'s outbox rows until `cancel` fires; on cancel, makes one last attempt to
/// flush what is queued (bounded by the target's timeout) and leaves the rest for the next start.
pub async fn deliver(
    target: Target,
    store: Store,
    wake: Arc<Notify>,
    stats: Arc<DeliveryStats>,
    cancel: CancellationToken,
) {
    let initial = Duration::from_millis(100).min(target.retry_max);
    let mut backoff = Backoff::new(initial, target.retry_max.max(initial))
        .expect("initial delay is at most the cap");
    // After a refused batch, send one alert at a time until the queue is clean again.
    let mut one_by_one = false;
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let stopping = cancel.is_cancelled();
        let limit = if one_by_one { 1 } else { BATCH };
        let pending = match store.pending(&target.id, limit) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(target = %target.id, "alerts: {e}");
                Vec::new()
            }
        };
        if pending.is_empty() {
            one_by_one = false;
            if stopping {
                return;
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = cancel.cancelled() => {}
            }
            continue;
        }
        let mut batch: Vec<(Pending, Alert)> = Vec::with_capacity(pending.len());
        for p in pending {
            match serde_json::from_str::<Alert>(&p.alert) {
                Ok(alert) => batch.push((p, alert)),
                Err(e) => {
                    // Never sendable: keep it for inspection instead of retrying it forever.
                    let reason = format!("undecodable alert state: {e}");
                    tracing::error!(target = %target.id, fingerprint = %p.fingerprint, "alerts: {reason}");
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = store.refused(&target.id, &p, &reason) {
                        tracing::error!(target = %target.id, "alerts: {e}");
                        // The store is failing too: do not spin on the same row.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        let answer = if stopping {
            match tokio::time::timeout(target.flush_timeout, target.send(&batch)).await {
                Ok(answer) => answer,
                Err(_) => Answer::Retry("timed out while shutting down".into()),
            }
        } else {
            target.send(&batch).await
        };
        match answer {
            Answer::Accepted => {
                backoff.reset();
                let sent: Vec<Pending> = batch.into_iter().map(|(p, _)| p).collect();
                if let Err(e) = store.delivered(&target.id, &sent) {
                    tracing::error!(target = %target.id, "alerts: {e}");
                }
                let now = now_ns();
                for p in &sent {
                    stats
                        .latency
                        .observe((now - p.enqueued_ns).max(0) as f64 / 1e9);
                }
                stats.sent.fetch_add(sent.len() as u64, Ordering::Relaxed);
                stats.delivered.send_modify(|n| *n += sent.len() as u64);
                tracing::debug!(target = %target.id, alerts = sent.len(), "alerts: delivered");
            }
            Answer::Refused(error) if batch.len() == 1 => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(target = %target.id, fingerprint = %batch[0].0.fingerprint, "alerts: refused, kept as a dead letter: {error}");
                if let Err(e) = store.refused(&target.id, &batch[0].0, &error) {
                    tracing::error!(target = %target.id, "alerts: {e}");
                }
            }
            Answer::Refused(error) => {
                tracing::warn!(target = %target.id, alerts = batch.len(), "alerts: batch refused ({error}); retrying one by one");
                one_by_one = true;
            }
            Answer::Retry(error) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                if stopping {
                    tracing::warn!(target = %target.id, queued = batch.len(), "alerts: not delivered before shutdown, kept for the next start: {error}");
                    return;
                }
                let delay = backoff.delay();
                tracing::warn!(target = %target.id, retry_in = ?delay, "alerts: delivery failed: {error}");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = cancel.cancelled() => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::alert::Status;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use axum::Router;
    use axum::routing::post;

    use super::*;
    use crate::alert::FlowContext;

    fn alert(fingerprint: &str) -> Alert {
        Alert {
            fingerprint: fingerprint.into(),
            rule: "R".into(),
            labels: BTreeMap::from([
                ("alertname".to_owned(), "R".to_owned()),
                ("destination".to_owned(), fingerprint.to_owned()),
            ]),
            annotations: BTreeMap::new(),
            context: FlowContext::default(),
            status: Status::Firing,
            starts_at_ns: 1,
            ends_at_ns: 2,
            generator_url: String::new(),
            query: String::new(),
        }
    }

    #[tokio::test]
    async fn an_undecodable_outbox_row_becomes_a_dead_letter_and_the_rest_is_delivered() {
        let got = Arc::new(Mutex::new(0usize));
        let counter = got.clone();
        let app = Router::new().route(
            "/hook",
            post(move || {
                let counter = counter.clone();
                async move {
                    *counter.lock().unwrap() += 1;
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });

        let config = AlertmanagerConfig {
            webhooks: vec![url],
            ..AlertmanagerConfig::default()
        };
        let target = targets(&config, "http://exfilwatch").unwrap().remove(0);
        let store = Store::in_memory().unwrap();
        crate::alert::save(&store, &alert("good"), std::slice::from_ref(&target.id)).unwrap();
        crate::alert::save(&store, &alert("broken"), std::slice::from_ref(&target.id)).unwrap();
        store.corrupt_outbox_row(&target.id, "broken");

        let stats = Arc::new(DeliveryStats::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(deliver(
            target,
            store.clone(),
            Arc::new(Notify::new()),
            stats.clone(),
            cancel.clone(),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.outbox_depth().unwrap() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the outbox never drained"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(*got.lock().unwrap(), 1, "only the readable alert is sent");
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
        assert_eq!(stats.sent.load(Ordering::Relaxed), 1);
    }
}
