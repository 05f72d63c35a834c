//! Alerts that lead to their evidence: an attack of every kind streamed into the running
//! service, with a real Prometheus and a real Alertmanager. Every alert that reaches
//! Alertmanager carries the count of the flows sent, and its `generatorURL`, fetched with the
//! API token, returns those flows from the alert's source pod.

use std::time::Duration;

use exfilwatch::proto::flow::{Flow, Verdict};
use exfilwatch::sim::traffic::TrainingCluster;
use serde_json::Value;

use crate::alertmanager::{Alertmanager, Receiver};
use crate::prometheus::PromServer;
use crate::support::service::{RunConfig, Service};
use crate::support::{GUARD, free_port, relay};

const TOKEN: &str = "evidence-token-2c8f5a1d7e3b9046c2f8";

/// Builds attack flows from the simulator's, each fresh (UUID, source port, time now) and
/// from a pod of its own.
struct Attacker {
    cluster: TrainingCluster,
    rng: fastrand::Rng,
}

impl Attacker {
    fn flow(&mut self, template: &Flow, pod: &str) -> Flow {
        let mut f = template.clone();
        f.uuid = exfilwatch::flow::format_uuid(self.rng.u128(..));
        f.source.as_mut().unwrap().pod_name = pod.into();
        let now = exfilwatch::common::clock::now_ns();
        f.time = Some(prost_types::Timestamp {
            seconds: now / 1_000_000_000,
            nanos: (now % 1_000_000_000) as i32,
        });
        if let Some(exfilwatch::proto::flow::layer4::Protocol::Tcp(tcp)) =
            f.l4.as_mut().and_then(|l| l.protocol.as_mut())
        {
            tcp.source_port = self.rng.u32(32_768..61_000);
        }
        f
    }

    /// The probe of the production database, dropped by the default deny.
    fn probe(&mut self) -> Flow {
        self.cluster.exfiltration_attempt().swap_remove(1)
    }

    /// A DNS request through kube-dns.
    fn lookup(&mut self) -> Flow {
        loop {
            let f = self.cluster.next_flow();
            if f.l7.is_some() {
                return f;
            }
        }
    }
}

/// The alert Alertmanager holds for `alertname` (and `destination`, when given).
async fn held(am: &Alertmanager, alertname: &str, destination: Option<&str>) -> Value {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let alerts = am.alerts().await;
        if let Some(a) = alerts.iter().find(|a| {
            a["labels"]["alertname"] == alertname
                && destination.is_none_or(|d| a["labels"]["destination"] == d)
        }) {
            return a.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Alertmanager never got {alertname} {destination:?}: {alerts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until Alertmanager's copy of the alert says `count` flows.
async fn counted(
    am: &Alertmanager,
    alertname: &str,
    destination: Option<&str>,
    count: u64,
) -> Value {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let alert = held(am, alertname, destination).await;
        if alert["annotations"]["count"].as_str() == Some(count.to_string().as_str()) {
            return alert;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{alertname}: count never reached {count}: {alert:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The flows the alert's generatorURL returns, fetched with the token.
async fn evidence(service: &Service, alert: &Value) -> Vec<Value> {
    let url = alert["generatorURL"].as_str().unwrap();
    assert!(url.starts_with(&service.base), "{url}");
    assert!(
        !url.contains("1970-01-01"),
        "since is the first flow: {url}"
    );
    let r = service
        .client
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{url}");
    let page: Value = r.json().await.unwrap();
    page["flows"].as_array().unwrap().clone()
}

fn pods(flows: &[Value], side: &str) -> Vec<String> {
    let mut pods: Vec<String> = flows
        .iter()
        .map(|f| f[side]["pod_name"].as_str().unwrap_or("").to_owned())
        .collect();
    pods.dedup();
    pods
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kinds_alert_links_to_the_flows_behind_it_and_counts_them() {
    let end = (exfilwatch::common::clock::now_ns() / 1_000_000_000) / 60 * 60 - 60;
    let prometheus = PromServer::start(end).await;
    let receiver = Receiver::start().await;
    let am = Alertmanager::start(free_port(), &receiver.url).await;
    let relay = relay(None).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens"), format!("{TOKEN}\n")).unwrap();
    // The shipped pack, learning new destinations from the first flow on.
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("rules/default.yaml"),
        exfilwatch::rules::DEFAULT_PACK.replace("learning: 1d", "learning: 0s"),
    )
    .unwrap();
    let config = RunConfig::new(relay.addr)
        .with("rules", "dir: {dir}/rules")
        .with(
            "api",
            "tokens_file: tokens\nexternal_url: http://127.0.0.1:{port}",
        )
        .with(
            "prometheus",
            &format!("url: {}\ninterval: 1s", prometheus.url),
        )
        .with(
            "alertmanager",
            &format!(
                "urls: [\"{}\"]\nupdate_interval: 200ms\nresend_interval: 2s",
                am.url
            ),
        );
    let service = Service::spawn(&config, dir).with_token(TOKEN);
    service.ready().await;
    let mut attacker = Attacker {
        cluster: TrainingCluster::new(11, exfilwatch::common::clock::now_ns(), 1_000_000),
        rng: fastrand::Rng::with_seed(3),
    };

    // Policy-denied: three probes of the production database.
    let probe = attacker.probe();
    for _ in 0..3 {
        relay.sim.push_flow(attacker.flow(&probe, "intruder-deny"));
    }
    // Segmentation and new destination: the same database reached, the network forwarding it.
    let mut reached = probe.clone();
    reached.verdict = Verdict::Forwarded as i32;
    reached.drop_reason = 0;
    reached.drop_reason_desc = 0;
    for _ in 0..4 {
        relay.sim.push_flow(attacker.flow(&reached, "intruder-seg"));
    }
    // Scan: 25 hosts of one subnet on 22, denied.
    for host in 1..=25 {
        let mut f = attacker.flow(&probe, "intruder-scan");
        f.destination = None;
        f.ip.as_mut().unwrap().destination = format!("10.0.9.{host}");
        relay.sim.push_flow(f);
    }
    // DNS exfiltration: 40 TXT queries whose names carry hex-encoded data.
    let lookup = attacker.lookup();
    for i in 0..40u32 {
        let mut f = attacker.flow(&lookup, "intruder-dns");
        let chunk: String = (0..28)
            .map(|j| format!("{:02x}", (i * 31 + j * 7) % 251))
            .collect();
        let Some(exfilwatch::proto::flow::layer7::Record::Dns(dns)) =
            f.l7.as_mut().and_then(|l| l.record.as_mut())
        else {
            panic!("a DNS template");
        };
        dns.query = format!("{}.{}.t.tunnel.example.", &chunk[..28], &chunk[28..]);
        dns.qtypes = vec!["TXT".into()];
        relay.sim.push_flow(f);
    }

    let cases = [
        (
            "TrainingPodUnexpectedEgress",
            Some("production/orders-db"),
            3,
            "intruder-deny",
        ),
        (
            "TrainingNamespaceSegmentation",
            Some("production/orders-db"),
            4,
            "intruder-seg",
        ),
        (
            "TrainingPodNewDestination",
            Some("production/orders-db"),
            4,
            "intruder-seg",
        ),
        ("TrainingPodScanning", None, 25, "intruder-scan"),
        (
            "TrainingPodDnsExfiltration",
            Some("tunnel.example"),
            40,
            "intruder-dns",
        ),
    ];
    for (alertname, destination, count, pod) in cases {
        let alert = counted(&am, alertname, destination, count).await;
        assert!(
            alert["annotations"]["source_pods"]
                .as_str()
                .unwrap()
                .contains(&format!("ai-training/{pod}")),
            "{alert:#}"
        );
        let flows = evidence(&service, &alert).await;
        assert_eq!(flows.len() as u64, count, "{alertname}: {flows:#?}");
        assert_eq!(pods(&flows, "source"), [pod], "{alertname}");
        // The runbook link works without a token, served by the service itself.
        let runbook = alert["annotations"]["runbook_url"].as_str().unwrap();
        assert_eq!(runbook, service.url(&format!("/runbooks/{alertname}")));
        let r = reqwest::get(runbook).await.unwrap();
        assert_eq!(r.status(), 200, "{runbook}");
        assert!(
            r.text()
                .await
                .unwrap()
                .starts_with(&format!("# {alertname}\n")),
            "{runbook}"
        );
        assert!(alert["labels"]["mitre_technique"].is_string(), "{alert:#}");
        let samples = alert["annotations"]["sample_flows"].as_str().unwrap();
        assert!(
            flows
                .iter()
                .any(|f| samples.contains(f["uuid"].as_str().unwrap())),
            "{alertname}: the sample flows are among the evidence"
        );
    }

    // The volume spike has no flow of its own: its link returns what the namespace sent
    // through the network around it.
    let spike = held(&am, "TrainingDataEgressVolumeSpike", None).await;
    let flows = evidence(&service, &spike).await;
    assert!(!flows.is_empty(), "{spike:#}");
    for f in &flows {
        assert_eq!(f["source"]["namespace"], "ai-training", "{f}");
        assert_eq!(f["verdict"], "FORWARDED", "{f}");
    }
    let (code, out) = service.terminate().await;
    assert_eq!(code, Some(0), "{out}");
}
