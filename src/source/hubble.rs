//! The live flow stream from Hubble Relay.
//!
//! Opens `observer.Observer/GetFlows` with `follow: true` and server-side namespace filters,
//! decodes each response's bytes with [`crate::flow::wire`] and sends the events downstream.
//! When the stream breaks it reconnects forever with capped, jittered exponential backoff and
//! resumes with `since` a little before the last flow it saw; the overlap's re-delivered flows
//! (and any Relay replays) are dropped by UUID, so no flow reaches the pipeline twice. Lost
//! events are counted and passed on as visibility gaps; they never end the stream. Codes that
//! retrying cannot fix (bad credentials, a refused request, a server without the API) stop the
//! source with a message that says what the operator must change.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{SourceStats, StreamState};
use crate::common::clock::span_ns;
use crate::common::error_chain;
use crate::common::retry::Backoff;
use crate::config::HubbleConfig;
use crate::flow::Event;
use crate::flow::wire::Decoder;
use crate::proto::flow::FlowFilter;
use crate::proto::observer::GetFlowsRequest;
use crate::proto::raw::observer_client::ObserverClient;

/// Relay's grpc-go server answers HTTP/2 pings more frequent than this with "too many pings".
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(300);

/// HTTP/2 flow-control window for the flow stream.
const STREAM_WINDOW: u32 = 4 << 20;

/// Why the Hubble source stopped for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubbleError {
    #[error("hubble relay at {address} answered {code:?}: {message}; {hint}")]
    Fatal {
        address: String,
        code: Code,
        message: String,
        hint: &'static str,
    },
    #[error("hubble.address {address:?}: {message}")]
    Address { address: String, message: String },
}

/// Remembers the keys of the most recent flows to drop re-delivered copies.
///
/// A copy carries its original's time, so a flow later than every flow seen so far is new
/// without a look-up: in a stream in time order (the common case) each flow only appends its
/// key to a ring, read sequentially. The set of keys is brought up to date with the ring when a
/// flow is not the latest (a resumed stream's overlap, a node's late flow), so each key is
/// hashed once at most and the answer is the same as a set kept on every flow.
#[derive(Debug)]
pub struct Dedup {
    /// Keys of the last `capacity` flows, oldest first.
    order: VecDeque<u128>,
    /// The keys of `order[..indexed]`.
    seen: HashSet<u128, foldhash::fast::RandomState>,
    indexed: usize,
    capacity: usize,
    /// The latest flow time seen.
    latest_ns: i64,
}

impl Dedup {
    pub fn new(capacity: usize) -> Dedup {
        let capacity = capacity.max(1);
        Dedup {
            order: VecDeque::with_capacity(capacity),
            seen: HashSet::with_hasher(Default::default()),
            indexed: 0,
            capacity,
            latest_ns: i64::MIN,
        }
    }

    /// True when `key` (of a flow at `time_ns`) was not seen among the last `capacity` keys.
    pub fn first_time(&mut self, key: u128, time_ns: i64) -> bool {
        if time_ns > self.latest_ns {
            self.latest_ns = time_ns;
        } else {
            self.seen.extend(self.order.range(self.indexed..));
            self.indexed = self.order.len();
            if self.seen.contains(&key) {
                return false;
            }
        }
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
            && self.indexed > 0
        {
            self.indexed -= 1;
            self.seen.remove(&old);
        }
        self.order.push_back(key);
        true
    }
}

/// The `GetFlows` request: follow, namespace filters, and `since` when resuming.
///
/// Hubble has no namespace field: like the hubble CLI, a namespace becomes a `"ns/"` prefix
/// on `source_pod` in one filter and on `destination_pod` in another (filters are OR'ed).
pub fn flows_request(namespaces: &[String], since_ns: Option<i64>) -> GetFlowsRequest {
    let prefixes: Vec<String> = namespaces.iter().map(|ns| format!("{ns}/")).collect();
    let whitelist = if prefixes.is_empty() {
        Vec::new()
    } else {
        vec![
            FlowFilter {
                source_pod: prefixes.clone(),
                ..Default::default()
            },
            FlowFilter {
                destination_pod: prefixes,
                ..Default::default()
            },
        ]
    };
    GetFlowsRequest {
        follow: true,
        whitelist,
        since: since_ns.map(|ns| prost_types::Timestamp {
            seconds: ns.div_euclid(1_000_000_000),
            nanos: ns.rem_euclid(1_000_000_000) as i32,
        }),
        ..Default::default()
    }
}

/// Builds the channel endpoint: address, TLS and HTTP/2 settings.
pub fn endpoint(config: &HubbleConfig) -> Result<Endpoint, HubbleError> {
    let address_error = |message: String| HubbleError::Address {
        address: config.address.clone(),
        message,
    };
    let mut endpoint = Endpoint::from_shared(config.address.clone())
        .map_err(|e| address_error(error_chain(&e)))?
        .connect_timeout(config.connect_timeout)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(Duration::from_secs(20))
        // A follow stream is one long download: windows far above HTTP/2's 64 KiB default
        // save a WINDOW_UPDATE round trip every hundred flows.
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(STREAM_WINDOW * 2))
        .tcp_nodelay(true);
    if let Some(tls) = &config.tls {
        crate::common::http::install_crypto();
        let mut tls_config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&tls.ca_pem))
            // Relay's TLS listener does not negotiate ALPN "h2"; speak HTTP/2 regardless.
            .assume_http2(true);
        if let Some((cert, key)) = &tls.identity {
            tls_config = tls_config.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &tls.server_name {
            tls_config = tls_config.domain_name(name.clone());
        }
        endpoint = endpoint
            .tls_config(tls_config)
            .map_err(|e| address_error(error_chain(&e)))?;
    }
    Ok(endpoint)
}

/// A status's code, message and underlying transport error, if any.
fn status_text(status: &tonic::Status) -> String {
    let cause = std::error::Error::source(status).map(error_chain);
    match cause {
        Some(cause) if cause.starts_with(status.message()) => {
            format!("{:?}: {cause}", status.code())
        }
        Some(cause) => format!("{:?}: {}: {cause}", status.code(), status.message()),
        None => format!("{:?}: {}", status.code(), status.message()),
    }
}

/// What to do after a stream ended with `status`.
fn fatal_hint(code: Code) -> Option<&'static str> {
    match code {
        Code::Unauthenticated | Code::PermissionDenied => Some(
            "check hubble.tls: Relay wants a client certificate signed by its CA (cert_file, key_file)",
        ),
        Code::InvalidArgument => Some(
            "Relay refused the GetFlows request: check hubble.namespaces and the Relay version",
        ),
        Code::Unimplemented => Some(
            "the server does not serve observer.Observer/GetFlows: point hubble.address at Hubble Relay",
        ),
        _ => None,
    }
}

/// The Hubble Relay flow source.
#[derive(Debug)]
pub struct HubbleSource {
    config: HubbleConfig,
    stats: Arc<SourceStats>,
    state: watch::Sender<StreamState>,
    start_ns: Option<i64>,
}

impl HubbleSource {
    pub fn new(config: HubbleConfig, stats: Arc<SourceStats>) -> HubbleSource {
        let (state, _) = watch::channel(StreamState::Connecting);
        HubbleSource {
            config,
            stats,
            state,
            start_ns: None,
        }
    }

    /// Starts the first stream at `since_ns` (inclusive) instead of the live end, e.g. at a
    /// cursor saved before a restart.
    pub fn start_at(mut self, since_ns: i64) -> HubbleSource {
        self.start_ns = Some(since_ns);
        self
    }

    /// Follows the source's state.
    pub fn state(&self) -> watch::Receiver<StreamState> {
        self.state.subscribe()
    }

    /// Streams until `cancel` fires, the receiver is dropped, or a fatal error.
    pub async fn run(
        self,
        tx: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> Result<(), HubbleError> {
        let result = self.stream_forever(&tx, &cancel).await;
        let error = result.as_ref().err().map(ToString::to_string);
        self.state.send_replace(StreamState::Stopped { error });
        result
    }

    async fn stream_forever(
        &self,
        tx: &mpsc::Sender<Event>,
        cancel: &CancellationToken,
    ) -> Result<(), HubbleError> {
        let endpoint = endpoint(&self.config)?;
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max)
            .map_err(|message| HubbleError::Address {
                address: self.config.address.clone(),
                message,
            })?;
        let mut decoder = Decoder::default();
        let mut dedup = Dedup::new(self.config.dedup_capacity);
        let mut last_flow_ns: Option<i64> = None;
        let overlap = span_ns(self.config.resume_overlap);
        let mut attempts = 0u64;
        loop {
            if attempts > 0 {
                self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            attempts += 1;
            self.state.send_replace(StreamState::Connecting);
            let since = match last_flow_ns {
                Some(t) => Some(t.saturating_sub(overlap)),
                // Until a flow arrives, every attempt starts where the caller asked.
                None => self.start_ns,
            };
            let outcome = tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(()),
                outcome = self.stream_once(&endpoint, since, tx, &mut decoder, &mut dedup, &mut last_flow_ns, &mut backoff) => outcome,
            };
            let error = match outcome {
                Ended::Downstream => return Ok(()),
                Ended::Status(status) => {
                    if let Some(hint) = fatal_hint(status.code()) {
                        return Err(HubbleError::Fatal {
                            address: self.config.address.clone(),
                            code: status.code(),
                            message: status.message().to_owned(),
                            hint,
                        });
                    }
                    format!("stream failed: {}", status_text(&status))
                }
                Ended::Connect(error) => format!("cannot connect: {error}"),
                Ended::ServerClosed => "server ended the stream".to_owned(),
            };
            let delay = backoff.delay();
            tracing::warn!(address = %self.config.address, retry_in = ?delay, "hubble: {error}");
            self.state.send_replace(StreamState::Retrying { error });
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream_once(
        &self,
        endpoint: &Endpoint,
        since: Option<i64>,
        tx: &mpsc::Sender<Event>,
        decoder: &mut Decoder,
        dedup: &mut Dedup,
        last_flow_ns: &mut Option<i64>,
        backoff: &mut Backoff,
    ) -> Ended {
        let channel: Channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => return Ended::Connect(error_chain(&e)),
        };
        let mut client =
            ObserverClient::new(channel).max_decoding_message_size(self.config.max_message_bytes);
        let request = flows_request(&self.config.namespaces, since);
        let mut stream = match client.get_flows(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Ended::Status(status),
        };
        self.state.send_replace(StreamState::Streaming);
        tracing::info!(address = %self.config.address, since = since.map(crate::common::clock::format_time), "hubble: streaming flows");
        let mut delivered = false;
        loop {
            let bytes = match stream.message().await {
                Ok(Some(bytes)) => bytes,
                Ok(None) => return Ended::ServerClosed,
                Err(status) => return Ended::Status(status),
            };
            if !delivered {
                delivered = true;
                backoff.reset();
            }
            let event = match decoder.decode_response(&bytes) {
                Ok(Some(event)) => event,
                Ok(None) => continue,
                Err(error) => {
                    let n = self.stats.bad_messages.fetch_add(1, Ordering::Relaxed);
                    // One bad message in a thousand is enough to show a pattern in the log.
                    if n.is_multiple_of(1000) {
                        tracing::warn!(
                            bad_messages = n + 1,
                            "hubble: undecodable GetFlowsResponse skipped: {error}"
                        );
                    }
                    continue;
                }
            };
            match &event {
                Event::Flow(flow) => {
                    if !dedup.first_time(flow.dedup_key(), flow.time_ns) {
                        self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    *last_flow_ns =
                        Some(last_flow_ns.map_or(flow.time_ns, |t| t.max(flow.time_ns)));
                }
                Event::Lost(lost) => {
                    tracing::debug!(source = lost.source.as_str_name(), count = lost.count, node = %lost.node, "hubble: events lost");
                }
                Event::NodeStatus(status) => {
                    tracing::info!(state = status.state.as_str_name(), nodes = ?status.nodes, message = %status.message, "hubble: node status");
                }
                Event::Checkpoint(_) => {}
            }
            self.stats.record(&event);
            if tx.send(event).await.is_err() {
                return Ended::Downstream;
            }
        }
    }
}

/// How one stream attempt ended.
#[derive(Debug)]
enum Ended {
    /// The receiving side is gone: nothing left to do.
    Downstream,
    Connect(String),
    Status(tonic::Status),
    ServerClosed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_forgets_the_oldest_beyond_capacity() {
        let mut d = Dedup::new(2);
        assert!(d.first_time(1, 10));
        assert!(!d.first_time(1, 10));
        assert!(d.first_time(2, 20));
        assert!(d.first_time(3, 30));
        assert!(d.first_time(1, 10), "1 was evicted by 3");
        assert!(!d.first_time(3, 30));
    }

    /// The set kept lazily answers as one kept on every flow: checked against a plain set and
    /// ring on flows in order, out of order, repeated and re-delivered after a gap.
    #[test]
    fn dedup_answers_as_a_set_kept_on_every_flow() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut next = || rng.u64(..);
        for capacity in [1, 3, 16, 100] {
            let mut lazy = Dedup::new(capacity);
            let mut plain_set = HashSet::new();
            let mut plain_order = VecDeque::new();
            let mut time = 0_i64;
            let mut dropped = 0;
            for _ in 0..5_000 {
                // Mostly later flows; sometimes a copy of a recent one, or a late flow.
                let t = match next() % 8 {
                    0 | 1 => (time - (next() % 40) as i64).max(0),
                    _ => {
                        time += 1 + (next() % 3) as i64;
                        time
                    }
                };
                // A flow's key determines its time, as a re-delivered copy's does.
                let key = u128::from(t.unsigned_abs()) << 8 | u128::from(next() % 2);
                let want = plain_set.insert(key);
                if want {
                    if plain_order.len() == capacity
                        && let Some(old) = plain_order.pop_front()
                    {
                        plain_set.remove(&old);
                    }
                    plain_order.push_back(key);
                } else {
                    dropped += 1;
                }
                assert_eq!(
                    lazy.first_time(key, t),
                    want,
                    "capacity {capacity}, key {key:x}"
                );
            }
            assert!(dropped >= 10, "capacity {capacity}: only {dropped} copies");
        }
    }

    #[test]
    fn namespaces_become_pod_prefix_filters_like_the_cli() {
        let r = flows_request(
            &["ai-training".into(), "storage".into()],
            Some(1_500_000_000_250),
        );
        assert!(r.follow);
        assert_eq!(r.whitelist.len(), 2);
        assert_eq!(r.whitelist[0].source_pod, ["ai-training/", "storage/"]);
        assert!(r.whitelist[0].destination_pod.is_empty());
        assert_eq!(r.whitelist[1].destination_pod, ["ai-training/", "storage/"]);
        let since = r.since.unwrap();
        assert_eq!((since.seconds, since.nanos), (1500, 250));
        assert!(flows_request(&[], None).whitelist.is_empty());
    }

    #[test]
    fn only_unfixable_codes_are_fatal() {
        assert!(fatal_hint(Code::Unauthenticated).is_some());
        assert!(fatal_hint(Code::PermissionDenied).is_some());
        assert!(fatal_hint(Code::InvalidArgument).is_some());
        assert!(fatal_hint(Code::Unavailable).is_none());
        assert!(fatal_hint(Code::DeadlineExceeded).is_none());
        assert!(fatal_hint(Code::Internal).is_none());
    }
}
