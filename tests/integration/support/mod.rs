//! The one test harness: a simulated Relay on loopback, a fast-retrying client config,
//! waiting for events with a generous guard timeout (a hang fails the test instead of
//! blocking CI), and the service itself ([`service`]).

pub mod browser;
pub mod kafka;
pub mod s3;
pub mod schema;
pub mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use exfilwatch::config::HubbleConfig;
use exfilwatch::flow::Event;
use exfilwatch::proto::flow::Flow;
use exfilwatch::sim::observer::SimObserver;
use exfilwatch::source::SourceStats;
use exfilwatch::source::StreamState;
use exfilwatch::source::hubble::{HubbleError, HubbleSource};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::ServerTlsConfig;

/// Upper bound on any single wait; only reached when something is broken.
pub const GUARD: Duration = Duration::from_secs(20);

/// A port nobody listens on now, for a server the test starts itself.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Relay {
    pub sim: SimObserver,
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn relay(tls: Option<ServerTlsConfig>) -> Relay {
    let sim = SimObserver::new(100_000);
    let stop = CancellationToken::new();
    let addr = sim
        .clone()
        .spawn_local(tls, stop.clone())
        .await
        .expect("bind 127.0.0.1");
    Relay { sim, addr, stop }
}

/// A client config that retries quickly and resumes with a 50 ms overlap.
pub fn client_config(address: String) -> HubbleConfig {
    HubbleConfig {
        address,
        namespaces: vec!["ai-training".into()],
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        resume_overlap: Duration::from_millis(50),
        connect_timeout: Duration::from_secs(5),
        ..HubbleConfig::default()
    }
}

pub struct Client {
    pub rx: mpsc::Receiver<Event>,
    pub state: watch::Receiver<StreamState>,
    pub stats: Arc<SourceStats>,
    pub task: JoinHandle<Result<(), HubbleError>>,
    pub cancel: CancellationToken,
}

pub fn start_client(config: HubbleConfig) -> Client {
    let stats = Arc::new(SourceStats::default());
    let source = HubbleSource::new(config, stats.clone());
    let state = source.state();
    let (tx, rx) = mpsc::channel(1024);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(source.run(tx, cancel.clone()));
    Client {
        rx,
        state,
        stats,
        task,
        cancel,
    }
}

impl Client {
    /// Waits until the source's state satisfies `pred`, returning that state.
    pub async fn wait_state(&mut self, pred: impl Fn(&StreamState) -> bool) -> StreamState {
        tokio::time::timeout(GUARD, self.state.wait_for(|s| pred(s)))
            .await
            .expect("state not reached in time")
            .expect("source dropped its state")
            .clone()
    }

    pub async fn streaming(&mut self) {
        self.wait_state(|s| *s == StreamState::Streaming).await;
    }

    pub async fn next(&mut self) -> Event {
        tokio::time::timeout(GUARD, self.rx.recv())
            .await
            .expect("no event in time")
            .expect("source ended")
    }

    pub async fn next_flow_uuid(&mut self) -> u128 {
        match self.next().await {
            Event::Flow(f) => f.uuid.expect("flow has a uuid"),
            other => panic!("expected a flow, got {other:?}"),
        }
    }
}

/// `flow` as the service sees it: encoded as Relay sends it, decoded by the wire decoder.
pub fn received(
    decoder: &mut exfilwatch::flow::wire::Decoder,
    flow: Flow,
) -> exfilwatch::flow::FlowEvent {
    exfilwatch::sim::received(decoder, flow).expect("the simulator's flows decode")
}

pub fn uuid_of(flow: &Flow) -> u128 {
    exfilwatch::flow::parse_uuid(flow.uuid.as_bytes()).expect("generated uuid parses")
}

/// Runs `script` with the Python of the project's tool virtualenv (pyarrow, DuckDB and its
/// `delta` extension): what it prints.
pub fn python(script: &str) -> String {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.tools/venv/bin/python");
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}; scripts/setup.sh installs it"));
    assert!(
        out.status.success(),
        "{python}: {}\n(scripts/setup.sh installs pyarrow, duckdb and its extensions there)",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
