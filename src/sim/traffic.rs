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
    Layer7, Policy, Tcp, TcpFlags, TrafficDirection, Udp, Verdict, Workload, layer4, layer7,
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
