//! `exfilwatch demo`: the real `run` pipeline against a simulated training cluster on loopback.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{EXIT_CONFIG, Outcome};
use crate::config::Config;
use crate::rules::{self, Rule};
use crate::sim::observer::SimObserver;
use crate::sim::prometheus::EgressModel;
use crate::sim::traffic::{TRAINING_NAMESPACE, TrainingCluster};
use crate::state::Store;

/// `exfilwatch demo`: a simulated training namespace behind a Hubble-compatible server on
/// loopback, an exfiltration attempt a third of the way in, and the real `run` pipeline with
/// the default rule pack following it for `duration`. Alerts go to `alertmanager` when given.
pub(super) async fn demo(
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

    let start_ns = crate::common::clock::now_ns();
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
                    egress_model.spike_from(crate::common::clock::now_ns() / 1_000_000_000);
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
    // A free port: the demo must not collide with a service on 8080. The console's links
    // need the port it ends up on.
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port());
    config.api.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    config.api.external_url = format!("http://127.0.0.1:{port}");
    tracing::info!(
        "demo: the console is at http://127.0.0.1:{port}/ui/ while the demo runs (--duration 10m to look around)"
    );
    config.flows.dir = None;
    let rules: Vec<Arc<Rule>> = match rules::default_pack() {
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
    let outcome = super::run::follow(
        &config,
        None,
        &rules,
        store,
        Duration::from_secs(5),
        run_cancel,
    )
    .await;
    traffic_stop.cancel();
    timer.abort();
    let _ = generator.await;
    server_stop.cancel();
    Ok(outcome)
}
