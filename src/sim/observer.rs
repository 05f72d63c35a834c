//! A Hubble-compatible `observer.Observer` gRPC server backed by an in-memory ring.
//!
//! It behaves like a Hubble node or Relay where the client can tell: responses are kept in a
//! bounded ring; `GetFlows` starts at the first event at or after `since` (inclusive), or
//! with the last `number` events, or at the live end; `follow` keeps the stream open for new
//! events; whitelist and blacklist filters select flows by pod prefix, verdict and node;
//! `first` with `follow` is refused as InvalidArgument. Events are stored encoded, so
//! streaming them costs the server no protobuf encoding.
//!
//! For tests it can also misbehave on purpose: cut every stream after N messages, or refuse
//! every call with a given status. It records the requests it received.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};

use crate::flow::timestamp_ns;
use crate::proto::flow::{Flow, FlowFilter};
use crate::proto::observer::get_flows_response::ResponseTypes;
use crate::proto::observer::{
    GetFlowsRequest, GetFlowsResponse, ServerStatusRequest, ServerStatusResponse,
};
use crate::proto::raw::observer_server::{Observer, ObserverServer};

/// Hubble's default ring size per node.
pub const DEFAULT_RING: usize = 4095;

#[derive(Debug)]
struct Entry {
    seq: u64,
    time_ns: i64,
    /// Set for flows; lost-event and node-status notices pass every filter.
    flow: Option<FlowKeys>,
    bytes: Bytes,
}

/// What the filters look at, taken from the flow when it is pushed.
#[derive(Debug)]
struct FlowKeys {
    source_pod: String,
    destination_pod: String,
    verdict: i32,
    node: String,
}

#[derive(Debug, Default, Clone)]
struct Faults {
    cut_after: Option<u64>,
    refuse: Option<(Code, String)>,
}

#[derive(Debug)]
struct Shared {
    ring: Mutex<VecDeque<Entry>>,
    capacity: usize,
    /// The sequence number of the newest event; followers wake when it changes.
    newest: watch::Sender<u64>,
    requests: Mutex<Vec<GetFlowsRequest>>,
    faults: Mutex<Faults>,
    seen: Mutex<u64>,
}

/// The simulated server; clones share one ring.
#[derive(Debug, Clone)]
pub struct SimObserver {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these plain collections half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for SimObserver {
    fn default() -> Self {
        SimObserver::new(DEFAULT_RING)
    }
}

impl SimObserver {
    pub fn new(capacity: usize) -> SimObserver {
        let (newest, _) = watch::channel(0);
        SimObserver {
            shared: Arc::new(Shared {
                ring: Mutex::new(VecDeque::with_capacity(capacity)),
                capacity: capacity.max(1),
                newest,
                requests: Mutex::new(Vec::new()),
                faults: Mutex::new(Faults::default()),
                seen: Mutex::new(0),
            }),
        }
    }

    /// Adds a response (flow, lost events or node status) to the ring.
    pub fn push(&self, response: &GetFlowsResponse) {
        let time_ns = response
            .time
            .as_ref()
            .map_or(0, |t| timestamp_ns(t.seconds, t.nanos));
        let flow = match &response.response_types {
            Some(ResponseTypes::Flow(f)) => Some(keys(f)),
            _ => None,
        };
        self.push_encoded(time_ns, flow, Bytes::from(response.encode_to_vec()));
    }

    /// Adds a flow, wrapped in a response with the flow's node and time.
    pub fn push_flow(&self, flow: Flow) {
        self.push_flow_ref(&flow);
    }

    /// Adds a flow without taking it: a load generator re-stamps and re-sends the same flows
    /// instead of cloning them. The bytes are those of `super::response(flow)`, encoded.
    pub fn push_flow_ref(&self, flow: &Flow) {
        use prost::encoding::{message, string};
        let time_ns = flow
            .time
            .as_ref()
            .map_or(0, |t| timestamp_ns(t.seconds, t.nanos));
        let len = flow.encoded_len();
        let mut buf = Vec::with_capacity(len + flow.node_name.len() + 32);
        message::encode(1, flow, &mut buf);
        if !flow.node_name.is_empty() {
            string::encode(1000, &flow.node_name, &mut buf);
        }
        if let Some(time) = &flow.time {
            message::encode(1001, time, &mut buf);
        }
        self.push_encoded(time_ns, Some(keys(flow)), Bytes::from(buf));
    }

    fn push_encoded(&self, time_ns: i64, flow: Option<FlowKeys>, bytes: Bytes) {
        let mut ring = lock(&self.shared.ring);
        let seq = ring.back().map_or(1, |e| e.seq + 1);
        if ring.len() == self.shared.capacity {
            ring.pop_front();
        }
        ring.push_back(Entry {
            seq,
            time_ns,
            flow,
            bytes,
        });
        drop(ring);
        *lock(&self.shared.seen) += 1;
        self.shared.newest.send_replace(seq);
    }

    /// End every stream with Unavailable after it has sent `n` messages (None: never).
    pub fn cut_streams_after(&self, n: Option<u64>) {
        lock(&self.shared.faults).cut_after = n;
    }

    /// Refuse every call with `code` (None: serve normally).
    pub fn refuse_with(&self, refusal: Option<(Code, &str)>) {
        lock(&self.shared.faults).refuse = refusal.map(|(c, m)| (c, m.to_owned()));
    }

    /// The `GetFlows` requests received so far.
    pub fn requests(&self) -> Vec<GetFlowsRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Events currently in the ring.
    pub fn len(&self) -> usize {
        lock(&self.shared.ring).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Serves on `listener` (with TLS when given) until `shutdown` fires.
    pub async fn serve(
        self,
        listener: TcpListener,
        tls: Option<ServerTlsConfig>,
        shutdown: CancellationToken,
    ) -> Result<(), tonic::transport::Error> {
        let mut builder = Server::builder();
        if let Some(tls) = tls {
            crate::common::http::install_crypto();
            builder = builder.tls_config(tls)?;
        }
        builder
            .add_service(ObserverServer::new(self))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                shutdown.cancelled_owned(),
            )
            .await
    }

    /// Binds 127.0.0.1 on an ephemeral port and serves in the background; returns the address.
    pub async fn spawn_local(
        self,
        tls: Option<ServerTlsConfig>,
        shutdown: CancellationToken,
    ) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            if let Err(e) = self.serve(listener, tls, shutdown).await {
                tracing::error!("simulated observer stopped: {e}");
            }
        });
        Ok(addr)
    }

    /// The index in the ring where a stream for `request` starts.
    fn start_seq(&self, request: &GetFlowsRequest) -> u64 {
        let ring = lock(&self.shared.ring);
        let live_end = ring.back().map_or(0, |e| e.seq);
        if let Some(since) = &request.since {
            let since_ns = timestamp_ns(since.seconds, since.nanos);
            return ring
                .iter()
                .find(|e| e.time_ns >= since_ns)
                .map_or(live_end, |e| e.seq - 1);
        }
        if request.number > 0 {
            let skip = ring
                .len()
                .saturating_sub(usize::try_from(request.number).unwrap_or(usize::MAX));
            return ring.get(skip).map_or(live_end, |e| e.seq - 1);
        }
        live_end
    }

    /// Matching events after `after`, at most `max`. A reader that fell so far behind that
    /// the ring overwrote events it had not read gets a lost-events notice first, as Hubble
    /// sends one (`HUBBLE_RING_BUFFER`).
    fn batch_after(&self, after: u64, request: &GetFlowsRequest, max: usize) -> (Vec<Bytes>, u64) {
        let ring = lock(&self.shared.ring);
        let mut last = after;
        let mut out = Vec::new();
        if let Some(oldest) = ring.front()
            && oldest.seq > after + 1
        {
            out.push(lost_notice(oldest.seq - after - 1, oldest.time_ns));
        }
        // Sequence numbers are consecutive, so the first unread event's place is arithmetic.
        let first = ring.front().map_or(0, |oldest| {
            usize::try_from((after + 1).saturating_sub(oldest.seq)).unwrap_or(usize::MAX)
        });
        for entry in ring.range(first.min(ring.len())..).take(max) {
            last = entry.seq;
            if passes(entry, request) {
                out.push(entry.bytes.clone());
            }
        }
        (out, last)
    }
}

fn lost_notice(count: u64, time_ns: i64) -> Bytes {
    let time = Some(prost_types::Timestamp {
        seconds: time_ns.div_euclid(1_000_000_000),
        nanos: time_ns.rem_euclid(1_000_000_000) as i32,
    });
    let response = GetFlowsResponse {
        response_types: Some(ResponseTypes::LostEvents(crate::proto::flow::LostEvent {
            source: crate::proto::flow::LostEventSource::HubbleRingBuffer as i32,
            num_events_lost: count,
            first: time,
            last: time,
            ..Default::default()
        })),
        node_name: String::new(),
        time,
    };
    Bytes::from(response.encode_to_vec())
}

fn keys(flow: &Flow) -> FlowKeys {
    let pod = |ep: &Option<crate::proto::flow::Endpoint>| {
        ep.as_ref()
            .map_or(String::new(), |e| format!("{}/{}", e.namespace, e.pod_name))
    };
    FlowKeys {
        source_pod: pod(&flow.source),
        destination_pod: pod(&flow.destination),
        verdict: flow.verdict,
        node: flow.node_name.clone(),
    }
}

/// One filter: every field that is set must match (fields are AND'ed, values OR'ed).
fn matches(filter: &FlowFilter, keys: &FlowKeys) -> bool {
    let prefix = |list: &[String], value: &str| {
        list.is_empty() || list.iter().any(|p| value.starts_with(p.as_str()))
    };
    prefix(&filter.source_pod, &keys.source_pod)
        && prefix(&filter.destination_pod, &keys.destination_pod)
        && (filter.verdict.is_empty() || filter.verdict.contains(&keys.verdict))
        && (filter.node_name.is_empty() || filter.node_name.iter().any(|n| n == &keys.node))
}

fn passes(entry: &Entry, request: &GetFlowsRequest) -> bool {
    let Some(keys) = &entry.flow else { return true };
    (request.whitelist.is_empty() || request.whitelist.iter().any(|f| matches(f, keys)))
        && !request.blacklist.iter().any(|f| matches(f, keys))
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

#[tonic::async_trait]
impl Observer for SimObserver {
    type GetFlowsStream = FlowStream;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<FlowStream>, Status> {
        let request = request.into_inner();
        lock(&self.shared.requests).push(request.clone());
        let faults = lock(&self.shared.faults).clone();
        if let Some((code, message)) = faults.refuse {
            return Err(Status::new(code, message));
        }
        if request.first && request.follow {
            return Err(Status::invalid_argument(
                "first cannot be combined with follow",
            ));
        }
        let (tx, rx) = mpsc::channel(1024);
        let sim = self.clone();
        let mut newest = self.shared.newest.subscribe();
        let mut cursor = self.start_seq(&request);
        tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                let (batch, last) = sim.batch_after(cursor, &request, 1024);
                let caught_up = last == cursor;
                cursor = last;
                for bytes in batch {
                    if faults.cut_after.is_some_and(|n| sent >= n) {
                        let _ = tx
                            .send(Err(Status::unavailable("stream cut by the simulator")))
                            .await;
                        return;
                    }
                    if tx.send(Ok(bytes)).await.is_err() {
                        return;
                    }
                    sent += 1;
                }
                if caught_up {
                    if !request.follow {
                        return;
                    }
                    // Wake when something newer than the cursor arrives, or the client leaves.
                    tokio::select! {
                        changed = newest.wait_for(|n| *n > cursor) => if changed.is_err() { return },
                        () = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn server_status(
        &self,
        _: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        Ok(Response::new(ServerStatusResponse {
            num_flows: self.len() as u64,
            max_flows: self.shared.capacity as u64,
            seen_flows: *lock(&self.shared.seen),
            version: concat!("exfilwatch-sim/", env!("CARGO_PKG_VERSION")).into(),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::traffic::TrainingCluster;

    /// What `push_flow` stores is the flow's response as prost encodes it, with and without a
    /// node name and a time.
    #[test]
    fn a_pushed_flow_is_its_response_encoded() {
        let mut cluster = TrainingCluster::new(5, 1_764_115_200_000_000_000, 1_000_000);
        let full = crate::sim::traffic::cilium_shaped(cluster.next_flow());
        let mut bare = cluster.next_flow();
        bare.node_name.clear();
        bare.time = None;
        let sim = SimObserver::new(8);
        for flow in [full, bare] {
            sim.push_flow(flow.clone());
            let bytes = lock(&sim.shared.ring).back().unwrap().bytes.clone();
            let decoded = GetFlowsResponse::decode(bytes).unwrap();
            assert_eq!(decoded, super::super::response(flow));
        }
    }
}
