//! Simulated traffic of an AI-training namespace, as Hubble would report it.
//!
//! The benign mix follows the segmentation guide's allowed paths: trainers exchanging
//! gradients on TCP 29500/29501, DNS to kube-dns, dataset reads from MinIO in `storage` on
//! 9000 and from S3 by FQDN on 443. [`TrainingCluster::exfiltration_attempt`] adds what a
//! compromised trainer does: a connection to the production database and an upload to an
//! unknown host, both dropped by policy. Seeded, so tests and benchmarks are repeatable.

use crate::flow::{EVENT_DROP, EVENT_L7, EVENT_POLICY_VERDICT, EVENT_TRACE, format_uuid};
use crate::proto::flow::{
    CiliumEventType, Dns, DropReason, Endpoint, Flow, FlowType, Ip, IpVersion, L7FlowType, Layer4,
    Layer7, NetworkInterface, Policy, Service, Tcp, TcpFlags, TrafficDirection, Udp, Verdict,
    Workload, layer4, layer7,
};

/// The namespace the simulator's training job runs in.
pub const TRAINING_NAMESPACE: &str = "ai-training";
/// The S3 name the trainers are allowed to read from.
pub const DATASET_FQDN: &str = "training-data.s3.us-east-1.amazonaws.com";
/// The host the exfiltration attempt uploads to (a documentation address).
pub const EXFIL_IP: &str = "203.0.113.77";
pub const EXFIL_FQDN: &str = "paste.example.net";
/// The production database the compromised trainer probes.
pub const PRODUCTION_DB_IP: &str = "10.0.5.20";

const TRAINERS: usize = 4;
const NODES: [&str; 2] = ["gpu-node-a", "gpu-node-b"];

/// `flow` as a real Cilium cluster reports it, about 1.2-1.3 KB on the wire instead of the
/// simulator's 600 bytes: every endpoint with the labels Kubernetes and Cilium put on a pod
/// (app and chart labels, pod-template hash, service account, cluster, namespace labels), the
/// node's labels, the services on both sides, the interface, the policy that allowed it and
/// Hubble's one-line summary. The values the detectors read are unchanged.
pub fn cilium_shaped(mut flow: Flow) -> Flow {
    let enrich = |e: &mut Endpoint| {
        let ns = e.namespace.clone();
        let app = e
            .workloads
            .first()
            .map_or_else(|| "world".to_owned(), |w| w.name.clone());
        if ns.is_empty() {
            e.labels.push("reserved:world".into());
            return;
        }
        for label in [
            format!("k8s:app.kubernetes.io/name={app}"),
            format!("k8s:app.kubernetes.io/instance={app}-prod"),
            "k8s:app.kubernetes.io/managed-by=Helm".to_owned(),
            format!("k8s:helm.sh/chart={app}-1.4.2"),
            format!(
                "k8s:pod-template-hash={:x}",
                e.id.wrapping_mul(2_654_435_761)
            ),
            "k8s:io.cilium.k8s.policy.cluster=gpu-prod-1".to_owned(),
            format!("k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name={ns}"),
            "k8s:io.cilium.k8s.namespace.labels.team=ml-platform".to_owned(),
        ] {
            // Eight labels an endpoint, as on a typical Helm-deployed pod.
            if e.labels.len() < 8 && !e.labels.contains(&label) {
                e.labels.push(label);
            }
        }
        e.cluster_name = "gpu-prod-1".into();
    };
    if let Some(e) = flow.source.as_mut() {
        enrich(e);
    }
    if let Some(e) = flow.destination.as_mut() {
        enrich(e);
    }
    let service = |e: &Option<Endpoint>| {
        e.as_ref()
            .and_then(|e| Some((e.workloads.first()?.name.clone(), e.namespace.clone())))
            .map(|(name, namespace)| Service { name, namespace })
    };
    flow.source_service = service(&flow.source);
    flow.destination_service = service(&flow.destination);
    flow.node_labels = vec![
        format!("kubernetes.io/hostname={}", flow.node_name),
        "node.kubernetes.io/instance-type=p4d.24xlarge".into(),
        "topology.kubernetes.io/zone=eu-west-1b".into(),
    ];
    flow.interface = Some(NetworkInterface {
        index: 17,
        name: "lxc8f3a1c2be5d7".into(),
    });
    if flow.verdict == Verdict::Forwarded as i32 {
        flow.policy_match_type = 1;
        flow.egress_allowed_by = vec![Policy {
            name: "allow-training-egress".into(),
            namespace: TRAINING_NAMESPACE.into(),
            labels: vec!["k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy".into()],
            revision: 42,
            kind: "CiliumNetworkPolicy".into(),
        }];
    }
    flow.summary = match flow.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(t)) => format!(
            "TCP Flags: {}",
            if t.flags.as_ref().is_some_and(|f| f.syn) {
                "SYN"
            } else {
                "ACK, PSH"
            }
        ),
        Some(layer4::Protocol::Udp(_)) => "UDP".into(),
        _ => String::new(),
    };
    flow
}

/// A seeded generator of Hubble flows for one training job.
#[derive(Debug)]
pub struct TrainingCluster {
    rng: fastrand::Rng,
    now_ns: i64,
    step_ns: i64,
}

fn labels(pairs: &[&str]) -> Vec<String> {
    pairs.iter().map(|p| format!("k8s:{p}")).collect()
}

fn trainer(i: usize) -> (Endpoint, String) {
    let endpoint = Endpoint {
        id: 1000 + i as u32,
        identity: 41_001,
        namespace: TRAINING_NAMESPACE.into(),
        labels: labels(&[
            "app=llm-pretrain",
            "training.kubeflow.org/job-name=llm-pretrain",
            "io.kubernetes.pod.namespace=ai-training",
            "io.cilium.k8s.policy.serviceaccount=trainer",
        ]),
        pod_name: format!("llm-pretrain-worker-{i}"),
        workloads: vec![Workload {
            name: "llm-pretrain".into(),
            kind: "PyTorchJob".into(),
        }],
        cluster_name: "default".into(),
    };
    (endpoint, format!("10.0.1.{}", 10 + i))
}

/// An endpoint of a service; `app_label` is its identifying "key=value" label.
fn service(
    namespace: &str,
    pod: &str,
    app_label: &str,
    identity: u32,
    kind: &str,
    workload: &str,
) -> Endpoint {
    Endpoint {
        id: 0,
        identity,
        namespace: namespace.into(),
        labels: labels(&[
            app_label,
            &format!("io.kubernetes.pod.namespace={namespace}"),
        ]),
        pod_name: pod.into(),
        workloads: vec![Workload {
            name: workload.into(),
            kind: kind.into(),
        }],
        cluster_name: "default".into(),
    }
}

fn world() -> Endpoint {
    Endpoint {
        identity: 2,
        labels: vec!["reserved:world".into()],
        ..Default::default()
    }
}

fn tcp(sport: u32, dport: u32, syn: bool) -> Option<Layer4> {
    Some(Layer4 {
        protocol: Some(layer4::Protocol::Tcp(Tcp {
            source_port: sport,
            destination_port: dport,
            flags: Some(TcpFlags {
                syn,
                ack: !syn,
                psh: !syn,
                ..Default::default()
            }),
        })),
    })
}

impl TrainingCluster {
    /// A generator starting at `start_ns`, one flow every `step_ns`.
    pub fn new(seed: u64, start_ns: i64, step_ns: i64) -> TrainingCluster {
        TrainingCluster {
            rng: fastrand::Rng::with_seed(seed),
            now_ns: start_ns,
            step_ns: step_ns.max(1),
        }
    }

    /// The time the next flow gets.
    pub fn now_ns(&self) -> i64 {
        self.now_ns
    }

    fn base(
        &mut self,
        source: Endpoint,
        src_ip: &str,
        destination: Endpoint,
        dst_ip: &str,
    ) -> Flow {
        let t = self.now_ns;
        self.now_ns += self.step_ns;
        let time = Some(prost_types::Timestamp {
            seconds: t.div_euclid(1_000_000_000),
            nanos: t.rem_euclid(1_000_000_000) as i32,
        });
        Flow {
            time,
            uuid: format_uuid(self.rng.u128(..)),
            verdict: Verdict::Forwarded as i32,
            ip: Some(Ip {
                source: src_ip.into(),
                destination: dst_ip.into(),
                ip_version: IpVersion::IPv4 as i32,
                ..Default::default()
            }),
            source: Some(source),
            destination: Some(destination),
            r#type: FlowType::L3L4 as i32,
            node_name: NODES[self.rng.usize(..NODES.len())].into(),
            event_type: Some(CiliumEventType {
                r#type: EVENT_TRACE,
                sub_type: 0,
            }),
            traffic_direction: TrafficDirection::Egress as i32,
            is_reply: Some(false),
            ..Default::default()
        }
    }

    /// The next benign flow of the training job.
    pub fn next_flow(&mut self) -> Flow {
        let i = self.rng.usize(..TRAINERS);
        let (src, src_ip) = trainer(i);
        let sport = self.rng.u32(32_768..61_000);
        match self.rng.u8(..100) {
            // Gradient all-reduce between trainers (rendezvous on 29500, NCCL on 29501).
            0..=59 => {
                let j = (i + 1 + self.rng.usize(..TRAINERS - 1)) % TRAINERS;
                let (dst, dst_ip) = trainer(j);
                let mut f = self.base(src, &src_ip, dst, &dst_ip);
                f.l4 = tcp(sport, if self.rng.bool() { 29500 } else { 29501 }, false);
                f
            }
            // Name lookups through kube-dns, seen by the DNS proxy as L7 flows.
            60..=69 => {
                let query = if self.rng.bool() {
                    DATASET_FQDN
                } else {
                    "minio.storage.svc.cluster.local"
                };
                self.lookup_from(src, &src_ip, sport, query, "A")
            }
            // Dataset shards from in-cluster MinIO.
            70..=84 => {
                let minio = service(
                    "storage",
                    "minio-0",
                    "app=minio",
                    52_010,
                    "StatefulSet",
                    "minio",
                );
                let mut f = self.base(src, &src_ip, minio, "10.0.2.5");
                f.l4 = tcp(sport, 9000, false);
                f
            }
            // Dataset reads from S3, allowed by FQDN.
            _ => {
                let ip = format!("52.216.{}.{}", self.rng.u8(1..255), self.rng.u8(1..255));
                let mut f = self.base(src, &src_ip, world(), &ip);
                f.l4 = tcp(sport, 443, false);
                f.destination_names = vec![DATASET_FQDN.into()];
                f
            }
        }
    }

    /// A lookup of `name` (query type `qtype`) by trainer `i` through kube-dns, as the DNS
    /// proxy reports it.
    pub fn lookup(&mut self, i: usize, name: &str, qtype: &str) -> Flow {
        let (src, src_ip) = trainer(i);
        let sport = self.rng.u32(32_768..61_000);
        self.lookup_from(src, &src_ip, sport, name, qtype)
    }

    fn lookup_from(
        &mut self,
        src: Endpoint,
        src_ip: &str,
        sport: u32,
        name: &str,
        qtype: &str,
    ) -> Flow {
        let dns = service(
            "kube-system",
            "coredns-5d78c9869d-x7k2p",
            "k8s-app=kube-dns",
            102,
            "Deployment",
            "coredns",
        );
        let mut f = self.base(src, src_ip, dns, "10.0.0.10");
        f.l4 = Some(Layer4 {
            protocol: Some(layer4::Protocol::Udp(Udp {
                source_port: sport,
                destination_port: 53,
            })),
        });
        f.r#type = FlowType::L7 as i32;
        f.event_type = Some(CiliumEventType {
            r#type: EVENT_L7,
            sub_type: 0,
        });
        let mut l7 = dns_request(name);
        if let Some(layer7::Record::Dns(d)) = &mut l7.record {
            d.qtypes = vec![qtype.into()];
        }
        f.l7 = Some(l7);
        f
    }

    /// Moves the simulated clock to `t` (nanoseconds since the epoch).
    pub fn set_now_ns(&mut self, t: i64) {
        self.now_ns = t;
    }

    /// What a compromised trainer does: probe the production database (dropped by the
    /// default deny) and upload to an unknown host (dropped by an explicit deny rule). Each
    /// denied packet is reported twice, as a policy verdict and as a drop.
    pub fn exfiltration_attempt(&mut self) -> Vec<Flow> {
        let (src, src_ip) = trainer(2);
        let sport = self.rng.u32(32_768..61_000);
        let db = service(
            "production",
            "orders-db-0",
            "app=postgres",
            60_100,
            "StatefulSet",
            "orders-db",
        );
        let mut probe = self.base(src.clone(), &src_ip, db, PRODUCTION_DB_IP);
        probe.l4 = tcp(sport, 5432, true);
        probe.verdict = Verdict::Dropped as i32;
        probe.drop_reason_desc = DropReason::PolicyDenied as i32;
        probe.drop_reason = DropReason::PolicyDenied as u32;

        let mut upload = self.base(src, &src_ip, world(), EXFIL_IP);
        upload.l4 = tcp(sport + 1, 443, true);
        upload.verdict = Verdict::Dropped as i32;
        upload.drop_reason_desc = DropReason::PolicyDeny as i32;
        upload.drop_reason = DropReason::PolicyDeny as u32;
        upload.destination_names = vec![EXFIL_FQDN.into()];
        upload.egress_denied_by = vec![Policy {
            name: "deny-unapproved-egress".into(),
            namespace: TRAINING_NAMESPACE.into(),
            kind: "CiliumNetworkPolicy".into(),
            labels: vec![],
            revision: 7,
        }];

        let mut out = Vec::with_capacity(4);
        for flow in [probe, upload] {
            let mut verdict = flow.clone();
            verdict.event_type = Some(CiliumEventType {
                r#type: EVENT_POLICY_VERDICT,
                sub_type: 0,
            });
            verdict.uuid = format_uuid(self.rng.u128(..));
            let mut drop = flow;
            drop.event_type = Some(CiliumEventType {
                r#type: EVENT_DROP,
                sub_type: drop.drop_reason as i32,
            });
            out.push(verdict);
            out.push(drop);
        }
        out
    }
}

/// The L7 record of a DNS request for an A record of `name`, as Cilium's DNS proxy reports it.
pub fn dns_request(name: &str) -> Layer7 {
    Layer7 {
        r#type: L7FlowType::Request as i32,
        latency_ns: 0,
        record: Some(layer7::Record::Dns(Dns {
            query: format!("{name}."),
            qtypes: vec!["A".into()],
            observation_source: "proxy".into(),
            ..Default::default()
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cilium_shaped_flows_weigh_what_real_ones_do_and_read_the_same() {
        let mut cluster = TrainingCluster::new(3, 1_767_225_600_000_000_000, 1_000_000);
        let mut decoder = crate::flow::wire::Decoder::default();
        let (mut plain, mut shaped) = (0usize, 0usize);
        for _ in 0..1_000 {
            let f = cluster.next_flow();
            let s = cilium_shaped(f.clone());
            plain += crate::sim::encode(f.clone()).len();
            shaped += crate::sim::encode(s.clone()).len();
            let (a, b) = (
                crate::sim::received(&mut decoder, f).unwrap(),
                crate::sim::received(&mut decoder, s).unwrap(),
            );
            assert_eq!(
                (
                    a.verdict,
                    &a.source.namespace,
                    &a.source.pod,
                    a.destination.port
                ),
                (
                    b.verdict,
                    &b.source.namespace,
                    &b.source.pod,
                    b.destination.port
                )
            );
        }
        let (plain, shaped) = (plain / 1_000, shaped / 1_000);
        assert!(
            (1_200..=1_330).contains(&shaped),
            "{shaped} bytes (simulator: {plain})"
        );
    }
}
