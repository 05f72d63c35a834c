//! Least-privilege policies from what a namespace did: each forwarded connection becomes an
//! allow rule for the pods that made it (by their identifying labels, never pod names), to
//! the peer by labels, entity, DNS name or address, on the port it used. Denied attempts get
//! no rule; a default-deny policy keeps them denied. Destinations a `segmentation` rule
//! forbids for the namespace are left out and listed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Serialize;

use super::eval::{Label, Party, PartyKind, labels};
use super::model::{Entity, Flavor, NAMESPACE_KEY};
use super::render::{self, PeerSpec, PortSpec, RuleSpec, Subject};
use super::{forwarded, policy_denied};
use crate::flow::L4Protocol;
use crate::flowstore::{Connection, ConnectionKey};
use crate::rules::Allowed;

/// Label keys that name a workload, most specific first; one of them is enough.
const IDENTIFYING: [&str; 5] = [
    "app.kubernetes.io/name",
    "app",
    "k8s-app",
    "name",
    "component",
];

/// Label keys (or prefixes) that differ between pods of one workload or are Cilium's own.
const NOISY: [&str; 11] = [
    "io.kubernetes.",
    "io.cilium.",
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/",
    "batch.kubernetes.io/",
    "apps.kubernetes.io/",
    "controller-uid",
    "job-name",
    "training.kubeflow.org/replica-index",
];

/// Most names or addresses one rule lists before addresses are collapsed into /24 blocks.
const MAX_ADDRESSES: usize = 32;
/// Most DNS names one DNS rule lists; a namespace asking for more is left out (and shown).
const MAX_DNS_NAMES: usize = 256;

/// The labels a policy selects an endpoint by: one identifying key when it has one, else all
/// its Kubernetes labels but the per-pod ones.
pub fn identifying(all: &[Label<'_>]) -> BTreeMap<String, String> {
    let k8s = || all.iter().filter(|l| l.source == "k8s");
    for key in IDENTIFYING {
        if let Some(l) = k8s().find(|l| l.key == key) {
            return BTreeMap::from([(l.key.to_owned(), l.value.to_owned())]);
        }
    }
    k8s()
        .filter(|l| !NOISY.iter().any(|n| l.key.starts_with(n)))
        .map(|l| (l.key.to_owned(), l.value.to_owned()))
        .collect()
}

/// A destination or source the suggestion leaves out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LeftOut {
    pub source: String,
    pub destination: String,
    pub port: String,
    pub flows: u64,
    pub reason: String,
}

/// A suggested policy set.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Suggestion {
    pub namespace: String,
    pub flavor: &'static str,
    /// Ready for `kubectl apply -f -`.
    pub yaml: String,
    pub policies: usize,
    pub rules: usize,
    /// Forwarded flows the suggestion allows.
    pub flows_allowed: u64,
    pub left_out: Vec<LeftOut>,
}

/// What one connection adds to a subject's rules.
#[derive(Debug, Default)]
struct Usage {
    flows: u64,
    last_ns: i64,
    pods: BTreeSet<String>,
    dns: BTreeSet<String>,
}

type Plan = BTreeMap<Subject, BTreeMap<(PeerSpec, PortSpec), Usage>>;

/// Suggests policies for `namespace` from its `connections`; `segmentation` lists the allow
/// entries of the rules that watch it (with the rule's name).
pub fn suggest(
    connections: &[Connection],
    namespace: &str,
    flavor: Flavor,
    segmentation: &[(String, Vec<Allowed>)],
    window: (i64, i64),
) -> Suggestion {
    let mut egress: Plan = BTreeMap::new();
    let mut ingress: Plan = BTreeMap::new();
    let mut left_out: BTreeMap<(String, String, String, String), u64> = BTreeMap::new();
    let mut flows_allowed = 0;
    // Addresses that were denied must stay outside any block the suggestion writes.
    let denied: Vec<IpAddr> = connections
        .iter()
        .filter(|c| policy_denied(&c.key))
        .flat_map(|c| c.addresses.iter().map(|(ip, _)| *ip))
        .collect();
    for c in connections.iter().filter(|c| forwarded(&c.key)) {
        let k = &c.key;
        let Some(port) = port_spec(k) else {
            *left_out
                .entry(left(
                    k,
                    None,
                    "ICMP and other port-less traffic is not written (Cilium icmps rules)",
                ))
                .or_default() += c.flows;
            continue;
        };
        for (ip, flows) in super::units(c) {
            let (src, dst) = Party::sides(
                k,
                labels(&k.src_labels).into(),
                labels(&k.dst_labels).into(),
                ip,
            );
            // The connection allowed in `plan` for `holder`'s pods, toward (or from) `peer`;
            // left out, with why, when the peer cannot be written.
            let allow = |plan: &mut Plan,
                         left_out: &mut BTreeMap<(String, String, String, String), u64>,
                         holder: &Party,
                         peer: &Party,
                         fqdn: &str| match peer_spec(peer, fqdn, flavor) {
                Ok(peer) => {
                    let usage = plan
                        .entry(subject(holder))
                        .or_default()
                        .entry((peer, port.clone()))
                        .or_default();
                    record(usage, c, flows);
                    true
                }
                Err(why) => {
                    *left_out.entry(left(k, ip, why)).or_default() += flows;
                    false
                }
            };
            let mut used = false;
            if k.src_namespace.as_ref() == namespace {
                if let Some(rule) = forbidden(segmentation, k, ip) {
                    *left_out
                        .entry(left(
                            k,
                            ip,
                            &format!("the segmentation rule {rule} forbids it"),
                        ))
                        .or_default() += flows;
                    continue;
                }
                used |= allow(&mut egress, &mut left_out, &src, &dst, &k.fqdn);
            }
            if k.dst_namespace.as_ref() == namespace {
                used |= allow(&mut ingress, &mut left_out, &dst, &src, "");
            }
            if used {
                flows_allowed += flows;
            }
        }
    }
    // DNS rules that would list too many names are left out whole.
    for plan in [&mut egress, &mut ingress] {
        for rules in plan.values_mut() {
            rules.retain(|(peer, port), usage| {
                if usage.dns.len() <= MAX_DNS_NAMES {
                    return true;
                }
                let key = (
                    String::new(),
                    format!("{peer:?}"),
                    port.text(),
                    format!(
                        "{} distinct DNS names: more than a policy should list",
                        usage.dns.len()
                    ),
                );
                *left_out.entry(key).or_default() += usage.flows;
                false
            });
        }
    }
    let subjects: BTreeSet<&Subject> = egress.keys().chain(ingress.keys()).collect();
    let mut specs = Vec::new();
    for s in subjects {
        let rules = |plan: &Plan| -> Vec<RuleSpec> {
            plan.get(s)
                .map(|r| group_rules(r, flavor, &denied))
                .unwrap_or_default()
        };
        specs.push((s.clone(), rules(&egress), rules(&ingress)));
    }
    let rules = specs.iter().map(|(_, e, i)| e.len() + i.len()).sum();
    let yaml = render::policies(namespace, flavor, &specs, window);
    Suggestion {
        namespace: namespace.to_owned(),
        flavor: flavor.as_str(),
        policies: specs.len() + 1,
        rules,
        yaml,
        flows_allowed,
        left_out: left_out
            .into_iter()
            .map(|((source, destination, port, reason), flows)| LeftOut {
                source,
                destination,
                port,
                flows,
                reason,
            })
            .collect(),
    }
}

fn record(usage: &mut Usage, c: &Connection, flows: u64) {
    usage.flows += flows;
    usage.last_ns = usage.last_ns.max(c.last_ns);
    for p in &c.pods {
        if usage.pods.len() < 8 {
            usage.pods.insert(p.to_string());
        }
    }
    if !c.key.dns_query.is_empty() {
        usage
            .dns
            .insert(c.key.dns_query.trim_end_matches('.').to_ascii_lowercase());
    }
}

fn left(k: &ConnectionKey, ip: Option<IpAddr>, reason: &str) -> (String, String, String, String) {
    (
        super::source_text(k, ip),
        super::destination_text(k, ip),
        super::port_text(k),
        reason.to_owned(),
    )
}

/// The name of the segmentation rule that forbids an egress connection, if one does.
fn forbidden(
    segmentation: &[(String, Vec<Allowed>)],
    k: &ConnectionKey,
    ip: Option<IpAddr>,
) -> Option<String> {
    let all = labels(&k.dst_labels);
    let texts: Vec<String> = all
        .iter()
        .map(|l| format!("{}:{}={}", l.source, l.key, l.value))
        .collect();
    let names = [&*k.fqdn, &*k.dns_query]
        .into_iter()
        .filter(|n| !n.is_empty());
    segmentation
        .iter()
        .find(|(_, allow)| {
            !allow.iter().any(|a| {
                let labels = texts.iter().map(String::as_str);
                a.permits(&k.dst_namespace, labels, ip, k.dst_port, names.clone())
            })
        })
        .map(|(name, _)| name.clone())
}

fn subject(p: &Party<'_>) -> Subject {
    Subject {
        labels: identifying(&p.labels),
    }
}

fn port_spec(k: &ConnectionKey) -> Option<PortSpec> {
    let protocol = crate::flowstore::json::protocol(k.protocol);
    matches!(
        protocol,
        L4Protocol::Tcp | L4Protocol::Udp | L4Protocol::Sctp
    )
    .then(|| PortSpec {
        protocol: protocol.as_str(),
        port: k.dst_port,
    })
}

/// How a rule names the peer.
fn peer_spec(p: &Party<'_>, fqdn: &str, flavor: Flavor) -> Result<PeerSpec, &'static str> {
    match p.kind() {
        PartyKind::Pod => {
            let mut labels = identifying(&p.labels);
            labels.remove(NAMESPACE_KEY);
            Ok(PeerSpec::Pods {
                namespace: p.namespace.to_owned(),
                labels,
            })
        }
        PartyKind::Reserved(e) => match flavor {
            Flavor::Cilium => Ok(PeerSpec::Entity(entity_name(e))),
            Flavor::Kubernetes => p.ip.map(PeerSpec::Address).ok_or(
                "a reserved identity without an address cannot be written as a NetworkPolicy",
            ),
        },
        PartyKind::World => {
            let fqdn = fqdn.trim_end_matches('.').to_ascii_lowercase();
            match (flavor, fqdn.is_empty(), p.ip) {
                (Flavor::Cilium, false, _) => Ok(PeerSpec::Name(fqdn)),
                (_, _, Some(ip)) => Ok(PeerSpec::Address(ip)),
                _ => Err("a world peer without a name or address cannot be written"),
            }
        }
    }
}

fn entity_name(e: Entity) -> &'static str {
    match e {
        Entity::Host => "host",
        Entity::RemoteNode => "remote-node",
        Entity::KubeApiserver => "kube-apiserver",
        Entity::Health => "health",
        Entity::Init => "init",
        Entity::Ingress => "ingress",
        Entity::Unmanaged => "unmanaged",
        Entity::World => "world",
        Entity::Cluster => "cluster",
        Entity::All => "all",
    }
}

/// A peer's ports (with the DNS names asked through each), flows, last time and pods.
type PeerUse = (
    BTreeMap<PortSpec, BTreeSet<String>>,
    u64,
    i64,
    BTreeSet<String>,
);

/// A subject's rules: one per peer (pods, entity), one per port set for names and addresses.
fn group_rules(
    usages: &BTreeMap<(PeerSpec, PortSpec), Usage>,
    flavor: Flavor,
    denied: &[IpAddr],
) -> Vec<RuleSpec> {
    // Peers with the same ports share a rule for names and addresses; pods and entities get
    // one rule each.
    let mut by_peer: BTreeMap<PeerSpec, PeerUse> = BTreeMap::new();
    for ((peer, port), u) in usages {
        let e = by_peer.entry(peer.clone()).or_default();
        e.0.entry(port.clone())
            .or_default()
            .extend(u.dns.iter().cloned());
        e.1 += u.flows;
        e.2 = e.2.max(u.last_ns);
        e.3.extend(u.pods.iter().cloned());
    }
    let mut rules: Vec<RuleSpec> = Vec::new();
    let mut shared: BTreeMap<(bool, Vec<PortSpec>), RuleSpec> = BTreeMap::new();
    for (peer, (ports, flows, last, pods)) in by_peer {
        let port_list: Vec<PortSpec> = ports.keys().cloned().collect();
        let dns: BTreeMap<PortSpec, Vec<String>> = ports
            .into_iter()
            .filter(|(_, names)| !names.is_empty())
            .map(|(p, names)| (p, names.into_iter().collect()))
            .collect();
        match peer {
            PeerSpec::Name(_) | PeerSpec::Address(_) => {
                let is_name = matches!(peer, PeerSpec::Name(_));
                let rule = shared
                    .entry((is_name, port_list.clone()))
                    .or_insert_with(|| RuleSpec {
                        peers: Vec::new(),
                        ports: port_list,
                        dns: BTreeMap::new(),
                        flows: 0,
                        last_ns: 0,
                        pods: BTreeSet::new(),
                    });
                rule.peers.push(peer);
                rule.flows += flows;
                rule.last_ns = rule.last_ns.max(last);
                rule.pods.extend(pods);
            }
            _ => rules.push(RuleSpec {
                peers: vec![peer],
                ports: port_list,
                dns: if flavor == Flavor::Cilium {
                    dns
                } else {
                    BTreeMap::new()
                },
                flows,
                last_ns: last,
                pods,
            }),
        }
    }
    for (_, mut rule) in shared {
        collapse(&mut rule.peers, denied);
        rules.push(rule);
    }
    rules
}

/// Many single addresses become /24 blocks (/64 for IPv6), except a block holding an address
/// that was denied.
fn collapse(peers: &mut Vec<PeerSpec>, denied: &[IpAddr]) {
    let addresses = peers
        .iter()
        .filter(|p| matches!(p, PeerSpec::Address(_)))
        .count();
    if addresses <= MAX_ADDRESSES {
        return;
    }
    let mut out = Vec::new();
    let mut blocks = BTreeSet::new();
    for p in peers.drain(..) {
        let PeerSpec::Address(ip) = p else {
            out.push(p);
            continue;
        };
        let block = crate::common::net::network(ip, 24, 64);
        if denied.iter().any(|d| block.contains(d)) {
            out.push(PeerSpec::Address(ip));
        } else {
            blocks.insert(block);
        }
    }
    out.extend(blocks.into_iter().map(PeerSpec::Block));
    *peers = out;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::flow::{DropReason, Verdict};
    use crate::flowstore::ConnectionKey;
    use crate::policy::{Decision, decide, parse};

    const NS: &str = "ai-training";
    const TRAINER: &str = "k8s:app=llm-pretrain,k8s:io.kubernetes.pod.namespace=ai-training,k8s:pod-template-hash=5d9f";

    fn conn(
        dst_ns: &str,
        dst_labels: &str,
        port: u16,
        fqdn: &str,
        addresses: &[(&str, u64)],
    ) -> Connection {
        let flows = addresses.iter().map(|(_, n)| n).sum::<u64>().max(1);
        Connection {
            key: ConnectionKey {
                direction: 2,
                verdict: Verdict::Forwarded as u32,
                drop_reason: 0,
                src_namespace: NS.into(),
                src_labels: TRAINER.into(),
                src_identity: 41_001,
                dst_namespace: dst_ns.into(),
                dst_labels: dst_labels.into(),
                dst_identity: if dst_ns.is_empty() { 2 } else { 50_000 },
                dst_port: port,
                protocol: L4Protocol::Tcp as u32,
                fqdn: fqdn.into(),
                dns_query: "".into(),
            },
            flows,
            first_ns: 1,
            last_ns: 2,
            pods: BTreeSet::from(["llm-pretrain-worker-0".into()]),
            policy: "".into(),
            addresses: addresses
                .iter()
                .map(|(ip, n)| (ip.parse().unwrap(), *n))
                .collect(),
        }
    }

    fn world(port: u16, fqdn: &str, addresses: &[(&str, u64)]) -> Connection {
        conn("", "reserved:world", port, fqdn, addresses)
    }

    fn denied(mut c: Connection) -> Connection {
        c.key.verdict = Verdict::Dropped as u32;
        c.key.drop_reason = DropReason::PolicyDenied as u32;
        c
    }

    /// Whether the suggested policies let `c` (to or from `ip`) through.
    fn passes(s: &Suggestion, c: &Connection, ip: &str) -> bool {
        let policies = parse(&s.yaml, "suggested", NS).unwrap();
        matches!(
            decide(&policies, &c.key, ip.parse().ok(), NS),
            Decision::Allowed(_)
        )
    }

    #[test]
    fn peers_are_selected_by_identifying_labels_never_per_pod_ones() {
        let minio = conn(
            "storage",
            "k8s:app=minio,k8s:io.kubernetes.pod.namespace=storage,k8s:pod-template-hash=77aa",
            9000,
            "",
            &[],
        );
        let s = suggest(&[minio], NS, Flavor::Cilium, &[], (0, 1));
        assert!(s.yaml.contains("\"app\": \"minio\""), "{}", s.yaml);
        assert!(!s.yaml.contains("pod-template-hash"), "{}", s.yaml);
        assert!(
            !s.yaml.contains("llm-pretrain-worker-0\""),
            "pods only in comments: {}",
            s.yaml
        );
    }

    #[test]
    fn segmentation_forbidden_destinations_are_left_out_and_listed() {
        let allowed = Allowed {
            fqdns: vec!["*.s3.us-east-1.amazonaws.com".into()],
            ports: vec![(443, 443)],
            ..Allowed::default()
        };
        let segmentation = vec![("TrainingNamespaceSegmentation".to_owned(), vec![allowed])];
        let s3 = world(
            443,
            "training-data.s3.us-east-1.amazonaws.com",
            &[("52.216.1.1", 5)],
        );
        let paste = world(443, "paste.example.net", &[("203.0.113.77", 3)]);
        let s = suggest(
            &[s3.clone(), paste.clone()],
            NS,
            Flavor::Cilium,
            &segmentation,
            (0, 1),
        );
        assert_eq!(s.left_out.len(), 1, "{:?}", s.left_out);
        assert_eq!(s.left_out[0].flows, 3);
        assert!(
            s.left_out[0]
                .reason
                .contains("TrainingNamespaceSegmentation")
        );
        assert!(s.left_out[0].destination.contains("paste.example.net"));
        assert!(passes(&s, &s3, "52.216.1.1"));
        assert!(!passes(&s, &paste, "203.0.113.77"));
    }

    #[test]
    fn many_addresses_become_blocks_but_never_one_holding_a_denied_address() {
        let addresses: Vec<String> = (1..=40)
            .map(|i| format!("198.51.100.{i}"))
            .chain((1..=40).map(|i| format!("192.0.2.{i}")))
            .collect();
        let listed: Vec<(&str, u64)> = addresses.iter().map(|a| (a.as_str(), 1)).collect();
        let seen = world(443, "", &listed);
        let attempt = denied(world(443, "", &[("192.0.2.200", 1)]));
        let s = suggest(
            &[seen.clone(), attempt.clone()],
            NS,
            Flavor::Kubernetes,
            &[],
            (0, 1),
        );
        assert!(s.yaml.contains("\"198.51.100.0/24\""), "{}", s.yaml);
        assert!(!s.yaml.contains("\"192.0.2.0/24\""), "{}", s.yaml);
        assert!(s.yaml.contains("\"192.0.2.7/32\""), "{}", s.yaml);
        assert!(passes(&s, &seen, "198.51.100.33"));
        assert!(passes(&s, &seen, "192.0.2.7"));
        assert!(!passes(&s, &attempt, "192.0.2.200"));
    }

    #[test]
    fn a_dns_rule_with_too_many_names_is_left_out() {
        let dns = |name: String| {
            let mut c = conn(
                "kube-system",
                "k8s:k8s-app=kube-dns,k8s:io.kubernetes.pod.namespace=kube-system",
                53,
                "",
                &[],
            );
            c.key.protocol = L4Protocol::Udp as u32;
            c.key.dns_query = name.into();
            c
        };
        let few: Vec<Connection> = (0..3)
            .map(|i| dns(format!("host{i}.example.com.")))
            .collect();
        let s = suggest(&few, NS, Flavor::Cilium, &[], (0, 1));
        assert!(
            s.yaml.contains("matchName: \"host2.example.com\""),
            "{}",
            s.yaml
        );
        assert!(s.left_out.is_empty());
        let tunnel: Vec<Connection> = (0..300)
            .map(|i| dns(format!("{i:x}a9f3.t.exfil.example.")))
            .collect();
        let s = suggest(&tunnel, NS, Flavor::Cilium, &[], (0, 1));
        assert!(!s.yaml.contains("exfil.example"), "{}", s.yaml);
        assert_eq!(s.left_out.len(), 1, "{:?}", s.left_out);
        assert!(s.left_out[0].reason.contains("300 distinct DNS names"));
    }

    #[test]
    fn comments_cannot_carry_markup_or_new_lines_from_pod_names() {
        let mut c = conn(
            "storage",
            "k8s:app=minio,k8s:io.kubernetes.pod.namespace=storage",
            9000,
            "",
            &[],
        );
        c.pods = BTreeSet::from(["evil\napiVersion: v1\nkind: Secret".into()]);
        let s = suggest(&[c], NS, Flavor::Cilium, &[], (0, 1));
        assert!(!s.yaml.contains("\nkind: Secret"), "{}", s.yaml);
        assert!(s.yaml.contains("evil\\u{a}apiVersion"), "{}", s.yaml);
        assert!(parse(&s.yaml, "suggested", NS).is_ok());
    }
}
