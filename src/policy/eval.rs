//! What a set of policies does to one connection, as Cilium enforces it.
//!
//! A direction of an endpoint is in default deny when any policy selecting the endpoint turns
//! it on (a Cilium policy with rules that way, unless `enableDefaultDeny` says otherwise; a
//! Kubernetes policy with that policy type). Then a connection passes when an allow rule of a
//! selecting policy matches it and no deny rule does; deny wins everywhere. A connection
//! between two pods of the namespace passes the source's egress and the destination's
//! ingress.

use std::net::IpAddr;
use std::rc::Rc;

use super::model::{
    Entity, NAMESPACE_LABELS, NameMatch, Operator, PeerMatch, Policy, PortMatch, Rule, Rules,
    Selector,
};
use crate::common::hash::FastMap;
use crate::flow::L4Protocol;
use crate::flowstore::ConnectionKey;

/// A Cilium label split into source, key and value ("k8s:app=minio").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label<'a> {
    pub source: &'a str,
    pub key: &'a str,
    pub value: &'a str,
}

/// Splits a stored label set (labels joined by commas).
pub fn labels(joined: &str) -> Vec<Label<'_>> {
    joined
        .split(',')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (source, rest) = l.split_once(':').unwrap_or(("", l));
            let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
            Label { source, key, value }
        })
        .collect()
}

/// What kind of peer an endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartyKind {
    Pod,
    World,
    Reserved(Entity),
}

/// One side of a connection.
#[derive(Debug, Clone)]
pub struct Party<'a> {
    pub namespace: &'a str,
    pub labels: Rc<[Label<'a>]>,
    pub identity: u32,
    pub ip: Option<IpAddr>,
}

impl<'a> Party<'a> {
    /// Both sides of connection `key`, with their parsed labels; `ip` is the address of the
    /// side that is the peer (the source for a flow seen at ingress).
    pub fn sides(
        key: &'a ConnectionKey,
        src_labels: Rc<[Label<'a>]>,
        dst_labels: Rc<[Label<'a>]>,
        ip: Option<IpAddr>,
    ) -> (Party<'a>, Party<'a>) {
        let ingress_seen = key.direction == 1;
        (
            Party {
                namespace: &key.src_namespace,
                labels: src_labels,
                identity: key.src_identity,
                ip: if ingress_seen { ip } else { None },
            },
            Party {
                namespace: &key.dst_namespace,
                labels: dst_labels,
                identity: key.dst_identity,
                ip: if ingress_seen { None } else { ip },
            },
        )
    }

    pub fn kind(&self) -> PartyKind {
        let reserved = |name: &str| {
            self.labels
                .iter()
                .any(|l| l.source == "reserved" && l.key == name)
        };
        for (name, id, entity) in [
            ("host", 1, Entity::Host),
            ("remote-node", 6, Entity::RemoteNode),
            ("kube-apiserver", 7, Entity::KubeApiserver),
            ("health", 4, Entity::Health),
            ("init", 5, Entity::Init),
            ("ingress", 8, Entity::Ingress),
            ("unmanaged", 3, Entity::Unmanaged),
        ] {
            if reserved(name) || self.identity == id {
                return PartyKind::Reserved(entity);
            }
        }
        if self.namespace.is_empty() {
            PartyKind::World
        } else {
            PartyKind::Pod
        }
    }

    /// The labels of the party's namespace, as a Kubernetes `namespaceSelector` sees them.
    fn namespace_labels(&self) -> Vec<Label<'_>> {
        let mut out: Vec<Label<'_>> = self
            .labels
            .iter()
            .filter_map(|l| {
                Some(Label {
                    source: "k8s",
                    key: l.key.strip_prefix(NAMESPACE_LABELS)?,
                    value: l.value,
                })
            })
            .collect();
        if !out.iter().any(|l| l.key == "kubernetes.io/metadata.name") {
            out.push(Label {
                source: "k8s",
                key: "kubernetes.io/metadata.name",
                value: self.namespace,
            });
        }
        out
    }
}

fn key_matches(selector_key: &str, label: &Label<'_>) -> bool {
    match selector_key.split_once(':') {
        Some((source, key)) => key == label.key && (source == "any" || source == label.source),
        None => selector_key == label.key,
    }
}

impl Selector {
    /// True when `labels` satisfy every label and expression.
    pub fn matches(&self, labels: &[Label<'_>]) -> bool {
        let has = |key: &str, accept: &dyn Fn(&str) -> bool| {
            labels
                .iter()
                .any(|l| key_matches(key, l) && accept(l.value))
        };
        self.labels.iter().all(|(k, v)| has(k, &|x| x == v))
            && self.expressions.iter().all(|(k, op, values)| {
                let listed = |x: &str| values.iter().any(|v| v == x);
                match op {
                    Operator::In => has(k, &listed),
                    Operator::NotIn => !has(k, &listed),
                    Operator::Exists => has(k, &|_| true),
                    Operator::DoesNotExist => !has(k, &|_| true),
                }
            })
    }

    fn names_reserved(&self) -> bool {
        self.labels.iter().any(|(k, _)| k.starts_with("reserved:"))
    }
}

impl NameMatch {
    /// True when the DNS `name` (any case, trailing dot or not) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match self {
            NameMatch::Name(n) => *n == name,
            NameMatch::Pattern(p) if p == "*" => true,
            NameMatch::Pattern(p) => glob(p.as_bytes(), name.as_bytes()),
        }
    }
}

/// Cilium's `matchPattern`: `*` stands for any run of the characters of one DNS label.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => {
            let mut i = 0;
            loop {
                if glob(rest, &name[i..]) {
                    return true;
                }
                match name.get(i) {
                    Some(c) if c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_' => i += 1,
                    _ => return false,
                }
            }
        }
        Some((c, rest)) => name.first() == Some(c) && glob(rest, &name[1..]),
    }
}

/// A connection seen from the side a policy applies to.
#[derive(Debug, Clone)]
pub struct View<'a> {
    pub local: Party<'a>,
    pub peer: Party<'a>,
    /// DNS names the peer is known by.
    pub peer_names: Vec<&'a str>,
    pub port: u16,
    pub protocol: L4Protocol,
    /// The queried name of a DNS request.
    pub dns_query: Option<&'a str>,
}

impl PeerMatch {
    fn matches(&self, view: &View<'_>) -> bool {
        let peer = &view.peer;
        let kind = peer.kind();
        match self {
            PeerMatch::Endpoints {
                pods,
                namespace,
                namespaces,
            } => {
                if pods.names_reserved() {
                    return pods.matches(&peer.labels);
                }
                kind == PartyKind::Pod
                    && namespace.as_ref().is_none_or(|n| n == peer.namespace)
                    && namespaces
                        .as_ref()
                        .is_none_or(|s| s.matches(&peer.namespace_labels()))
                    && pods.matches(&peer.labels)
            }
            PeerMatch::Entity(e) => match e {
                Entity::All => true,
                Entity::World => kind == PartyKind::World,
                Entity::Cluster => kind != PartyKind::World,
                other => kind == PartyKind::Reserved(*other),
            },
            PeerMatch::Cidr { net, except } => {
                kind == PartyKind::World
                    && peer.ip.is_some_and(|ip| {
                        net.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
                    })
            }
            PeerMatch::Fqdn(m) => {
                kind == PartyKind::World && view.peer_names.iter().any(|n| m.matches(n))
            }
        }
    }
}

impl PortMatch {
    fn matches(&self, view: &View<'_>, with_dns: bool) -> bool {
        let protocol_ok = match self.protocol {
            Some(p) => p == view.protocol,
            None => matches!(
                view.protocol,
                L4Protocol::Tcp | L4Protocol::Udp | L4Protocol::Sctp
            ),
        };
        protocol_ok
            && (self.from..=self.to).contains(&view.port)
            && (!with_dns
                || match (&self.dns, view.dns_query) {
                    (Some(names), Some(q)) => names.iter().any(|n| n.matches(q)),
                    _ => true,
                })
    }
}

impl Rule {
    fn matches(&self, view: &View<'_>, with_dns: bool) -> bool {
        self.peers
            .as_ref()
            .is_none_or(|peers| peers.iter().any(|p| p.matches(view)))
            && self
                .ports
                .as_ref()
                .is_none_or(|ports| ports.iter().any(|p| p.matches(view, with_dns)))
    }
}

/// What the policies do to a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Passed; the policies whose rules allowed it (empty: nothing enforced).
    Allowed(Vec<String>),
    /// Dropped: why, with the policy that denied it or the default deny's policies.
    Dropped(String),
}

/// The decision of one side (egress of the source or ingress of the destination), given the
/// policies that select its local endpoint.
fn side(
    applying: &[&Policy],
    view: &View<'_>,
    rules: fn(&Policy) -> &Rules,
    way: &str,
) -> Decision {
    if let Some(p) = applying
        .iter()
        .find(|p| rules(p).deny.iter().any(|r| r.matches(view, false)))
    {
        return Decision::Dropped(format!("{way} denied by {}", p.name));
    }
    let enforcing: Vec<&str> = applying
        .iter()
        .filter(|p| rules(p).default_deny)
        .map(|p| p.name.as_str())
        .collect();
    if enforcing.is_empty() {
        return Decision::Allowed(Vec::new());
    }
    let allowed_by: Vec<String> = applying
        .iter()
        .filter(|p| rules(p).allow.iter().any(|r| r.matches(view, true)))
        .map(|p| p.name.clone())
        .collect();
    if allowed_by.is_empty() {
        Decision::Dropped(format!(
            "{way}: default deny ({}), no rule allows it",
            enforcing.join(", ")
        ))
    } else {
        Decision::Allowed(allowed_by)
    }
}

/// Decides connections of one namespace, remembering each label set's parse and which
/// policies select each local endpoint: a week of connections repeats a few endpoints.
#[derive(Debug)]
pub struct Decider<'a> {
    policies: &'a [Policy],
    namespace: &'a str,
    labels: FastMap<&'a str, Rc<[Label<'a>]>>,
    selecting: FastMap<(&'a str, &'a str), Rc<[usize]>>,
}

impl<'a> Decider<'a> {
    pub fn new(policies: &'a [Policy], namespace: &'a str) -> Decider<'a> {
        Decider {
            policies,
            namespace,
            labels: FastMap::default(),
            selecting: FastMap::default(),
        }
    }

    fn labels(&mut self, joined: &'a str) -> Rc<[Label<'a>]> {
        self.labels
            .entry(joined)
            .or_insert_with(|| labels(joined).into())
            .clone()
    }

    fn applying(&mut self, local: &Party<'a>, joined: &'a str) -> Vec<&'a Policy> {
        let policies = self.policies;
        let chosen = self
            .selecting
            .entry((local.namespace, joined))
            .or_insert_with(|| {
                policies
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| {
                        p.namespace == local.namespace && p.subject.matches(&local.labels)
                    })
                    .map(|(i, _)| i)
                    .collect()
            });
        chosen.iter().map(|i| &policies[*i]).collect()
    }

    /// What the policies do to connection `key`: the egress of its source when the source is
    /// in the namespace, then the ingress of its destination when that is.
    /// `ip` is the peer's address (one of the connection's `addresses`), when known.
    pub fn decide(&mut self, key: &'a ConnectionKey, ip: Option<IpAddr>) -> Decision {
        let (src, dst) = (self.labels(&key.src_labels), self.labels(&key.dst_labels));
        let (source, destination) = Party::sides(key, src, dst, ip);
        let protocol = crate::flowstore::json::protocol(key.protocol);
        let dns_query = (!key.dns_query.is_empty()).then_some(&*key.dns_query);
        let names: Vec<&str> = [&*key.fqdn].into_iter().filter(|n| !n.is_empty()).collect();
        let mut allowed = Vec::new();
        if source.namespace == self.namespace {
            let applying = self.applying(&source, &key.src_labels);
            let view = View {
                local: source.clone(),
                peer: destination.clone(),
                peer_names: names,
                port: key.dst_port,
                protocol,
                dns_query,
            };
            match side(&applying, &view, |p| &p.egress, "egress") {
                Decision::Allowed(by) => allowed.extend(by),
                dropped => return dropped,
            }
        }
        if destination.namespace == self.namespace {
            let applying = self.applying(&destination, &key.dst_labels);
            let view = View {
                local: destination,
                peer: source,
                peer_names: Vec::new(),
                port: key.dst_port,
                protocol,
                dns_query,
            };
            match side(&applying, &view, |p| &p.ingress, "ingress") {
                Decision::Allowed(by) => allowed.extend(by),
                dropped => return dropped,
            }
        }
        allowed.sort();
        allowed.dedup();
        Decision::Allowed(allowed)
    }
}

/// What `policies` do to connection `key` of `namespace` (see [`Decider::decide`]).
pub fn decide(
    policies: &[Policy],
    key: &ConnectionKey,
    ip: Option<IpAddr>,
    namespace: &str,
) -> Decision {
    Decider::new(policies, namespace).decide(key, ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::parse;

    const NS: &str = "ai-training";
    const TRAINER: &str = "k8s:app=llm-pretrain,k8s:io.kubernetes.pod.namespace=ai-training";

    /// A connection key and the peer address it is asked about.
    #[derive(Clone)]
    struct T {
        key: ConnectionKey,
        ip: Option<IpAddr>,
    }

    impl std::ops::Deref for T {
        type Target = ConnectionKey;
        fn deref(&self) -> &ConnectionKey {
            &self.key
        }
    }

    impl std::ops::DerefMut for T {
        fn deref_mut(&mut self) -> &mut ConnectionKey {
            &mut self.key
        }
    }

    /// An egress connection from a trainer.
    fn egress(dst_ns: &str, dst_labels: &str, ip: &str, port: u16, protocol: L4Protocol) -> T {
        let key = ConnectionKey {
            direction: 2,
            verdict: 1,
            drop_reason: 0,
            src_namespace: NS.into(),
            src_labels: TRAINER.into(),
            src_identity: 41_001,
            dst_namespace: dst_ns.into(),
            dst_labels: dst_labels.into(),
            dst_identity: if dst_ns.is_empty() { 2 } else { 50_000 },
            dst_port: port,
            protocol: protocol as u32,
            fqdn: "".into(),
            dns_query: "".into(),
        };
        T {
            key,
            ip: if dst_ns.is_empty() {
                ip.parse().ok()
            } else {
                None
            },
        }
    }

    fn world(ip: &str, port: u16) -> T {
        egress("", "reserved:world", ip, port, L4Protocol::Tcp)
    }

    fn allowed(yaml: &str, t: &T) -> bool {
        let policies = parse(yaml, "p.yaml", NS).unwrap();
        matches!(decide(&policies, &t.key, t.ip, NS), Decision::Allowed(_))
    }

    const CNP: &str =
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n";

    #[test]
    fn nothing_selecting_a_pod_allows_everything_and_an_empty_rule_denies_by_default() {
        let key = world("203.0.113.7", 443);
        assert!(allowed(
            &format!(
                "{CNP}  endpointSelector: {{matchLabels: {{app: other}}}}\n  egress: [{{}}]\n"
            ),
            &key
        ));
        assert!(!allowed(
            &format!("{CNP}  endpointSelector: {{}}\n  egress: [{{}}]\n"),
            &key
        ));
        // Ingress rules do not put egress into default deny.
        assert!(allowed(
            &format!("{CNP}  endpointSelector: {{}}\n  ingress: [{{}}]\n"),
            &key
        ));
        // enableDefaultDeny: false keeps the rest open.
        assert!(allowed(
            &format!(
                "{CNP}  endpointSelector: {{}}\n  enableDefaultDeny: {{egress: false}}\n  egress: [{{toEntities: [host]}}]\n"
            ),
            &key
        ));
    }

    #[test]
    fn endpoint_selectors_imply_the_policy_namespace_unless_they_name_one() {
        let minio = egress(
            "storage",
            "k8s:app=minio,k8s:io.kubernetes.pod.namespace=storage",
            "10.0.2.5",
            9000,
            L4Protocol::Tcp,
        );
        let same_ns = format!(
            "{CNP}  endpointSelector: {{}}\n  egress: [{{toEndpoints: [{{matchLabels: {{app: minio}}}}]}}]\n"
        );
        assert!(!allowed(&same_ns, &minio));
        let named = format!(
            "{CNP}  endpointSelector: {{}}\n  egress: [{{toEndpoints: [{{matchLabels: {{app: minio, k8s:io.kubernetes.pod.namespace: storage}}}}]}}]\n"
        );
        assert!(allowed(&named, &minio));
        let expression = format!(
            "{CNP}  endpointSelector: {{}}\n  egress: [{{toEndpoints: [{{matchExpressions: [{{key: app, operator: In, values: [minio, s3]}}, {{key: io.kubernetes.pod.namespace, operator: Exists}}]}}]}}]\n"
        );
        assert!(allowed(&expression, &minio));
        let not_in = format!(
            "{CNP}  endpointSelector: {{}}\n  egress: [{{toEndpoints: [{{matchExpressions: [{{key: app, operator: NotIn, values: [minio]}}, {{key: io.kubernetes.pod.namespace, operator: Exists}}]}}]}}]\n"
        );
        assert!(!allowed(&not_in, &minio));
    }

    #[test]
    fn ports_ranges_and_protocols() {
        let rule = |ports: &str| {
            format!(
                "{CNP}  endpointSelector: {{}}\n  egress: [{{toPorts: [{{ports: [{ports}]}}]}}]\n"
            )
        };
        let tcp = world("198.51.100.1", 29_501);
        assert!(allowed(
            &rule("{port: \"29500\", endPort: 29510, protocol: TCP}"),
            &tcp
        ));
        assert!(!allowed(&rule("{port: \"29500\", protocol: TCP}"), &tcp));
        assert!(!allowed(&rule("{port: \"29501\", protocol: UDP}"), &tcp));
        assert!(
            allowed(&rule("{port: \"29501\"}"), &tcp),
            "no protocol: any"
        );
        assert!(
            allowed(&rule("{port: \"0\", protocol: TCP}"), &tcp),
            "port 0: any"
        );
        let icmp = egress("", "reserved:world", "198.51.100.1", 0, L4Protocol::Icmpv4);
        assert!(
            !allowed(&rule("{port: \"0\"}"), &icmp),
            "ports never match ICMP"
        );
        assert!(
            parse(&rule("{port: http}"), "p.yaml", NS)
                .unwrap_err()
                .message
                .contains("named port")
        );
    }

    #[test]
    fn cidr_with_except_applies_to_world_only() {
        let p = format!(
            "{CNP}  endpointSelector: {{}}\n  egress: [{{toCIDRSet: [{{cidr: 10.0.0.0/8, except: [10.0.5.0/24]}}]}}]\n"
        );
        assert!(allowed(&p, &world("10.1.2.3", 5432)));
        assert!(!allowed(&p, &world("10.0.5.20", 5432)));
        let pod = egress(
            "production",
            "k8s:app=postgres,k8s:io.kubernetes.pod.namespace=production",
            "10.1.2.3",
            5432,
            L4Protocol::Tcp,
        );
        assert!(!allowed(&p, &pod), "CIDR rules do not select pods");
    }

    #[test]
    fn fqdn_names_and_patterns() {
        let p = format!(
            "{CNP}  endpointSelector: {{}}\n  egress: [{{toFQDNs: [{{matchName: storage.googleapis.com}}, {{matchPattern: \"*.s3.us-east-1.amazonaws.com\"}}]}}]\n"
        );
        let mut key = world("52.216.1.1", 443);
        key.fqdn = "training-data.s3.us-east-1.amazonaws.com".into();
        assert!(allowed(&p, &key));
        key.fqdn = "a.b.s3.us-east-1.amazonaws.com".into();
        assert!(!allowed(&p, &key), "* stays within one label");
        key.fqdn = "STORAGE.googleapis.com.".into();
        assert!(allowed(&p, &key));
        key.fqdn = "".into();
        assert!(!allowed(&p, &key), "no name known: no FQDN match");
        assert!(NameMatch::Pattern("*".into()).matches("anything.example"));
        assert!(NameMatch::Pattern("api-*.example.com".into()).matches("api-eu1.example.com"));
    }

    #[test]
    fn dns_rules_filter_the_queried_names() {
        let p = format!(
            "{CNP}  endpointSelector: {{}}\n  egress: [{{toEntities: [cluster], toPorts: [{{ports: [{{port: \"53\", protocol: UDP}}], rules: {{dns: [{{matchPattern: \"*.svc.cluster.local\"}}]}}}}]}}]\n"
        );
        let mut dns = egress(
            "kube-system",
            "k8s:k8s-app=kube-dns,k8s:io.kubernetes.pod.namespace=kube-system",
            "10.0.0.10",
            53,
            L4Protocol::Udp,
        );
        dns.dns_query = "minio.storage.svc.cluster.local.".into();
        assert!(!allowed(&p, &dns), "* is one label: minio.storage is two");
        dns.dns_query = "storage.svc.cluster.local.".into();
        assert!(allowed(&p, &dns));
        dns.dns_query = "x.exfil.example.".into();
        assert!(!allowed(&p, &dns));
    }

    #[test]
    fn deny_rules_win_and_entities_classify_reserved_peers() {
        let p = format!(
            "{CNP}  endpointSelector: {{}}\n  egress: [{{toEntities: [all]}}]\n  egressDeny: [{{toEntities: [kube-apiserver]}}]\n"
        );
        assert!(allowed(&p, &world("203.0.113.9", 443)));
        let api = egress(
            "",
            "reserved:kube-apiserver",
            "10.96.0.1",
            443,
            L4Protocol::Tcp,
        );
        assert!(!allowed(&p, &api));
        let host = egress("", "reserved:host", "10.0.0.1", 10_250, L4Protocol::Tcp);
        let world_only =
            format!("{CNP}  endpointSelector: {{}}\n  egress: [{{toEntities: [world]}}]\n");
        assert!(!allowed(&world_only, &host));
        let cluster =
            format!("{CNP}  endpointSelector: {{}}\n  egress: [{{toEntities: [cluster]}}]\n");
        assert!(allowed(&cluster, &host));
        assert!(!allowed(&cluster, &world("203.0.113.9", 443)));
    }

    #[test]
    fn ingress_is_the_destinations_side() {
        let peers = egress("ai-training", TRAINER, "10.0.1.11", 29_500, L4Protocol::Tcp);
        let egress_only = format!(
            "{CNP}  endpointSelector: {{}}\n  ingress: [{{}}]\n  egress: [{{toEndpoints: [{{}}]}}]\n"
        );
        assert!(
            !allowed(&egress_only, &peers),
            "the destination's ingress is default deny"
        );
        let both = format!(
            "{CNP}  endpointSelector: {{}}\n  ingress: [{{fromEndpoints: [{{matchLabels: {{app: llm-pretrain}}}}], toPorts: [{{ports: [{{port: \"29500\"}}]}}]}}]\n  egress: [{{toEndpoints: [{{}}]}}]\n"
        );
        assert!(allowed(&both, &peers));
        // A flow into the namespace from elsewhere meets only the ingress side.
        let mut scrape = peers.clone();
        scrape.direction = 1;
        scrape.src_namespace = "monitoring".into();
        scrape.src_labels = "k8s:app=prometheus,k8s:io.kubernetes.pod.namespace=monitoring".into();
        assert!(!allowed(&both, &scrape));
    }

    #[test]
    fn kubernetes_network_policies() {
        const NP: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: k}\nspec:\n  podSelector: {}\n";
        let key = world("203.0.113.7", 443);
        // No Egress type: egress stays open; Egress with no rules: closed.
        assert!(allowed(&format!("{NP}  policyTypes: [Ingress]\n"), &key));
        assert!(!allowed(&format!("{NP}  policyTypes: [Egress]\n"), &key));
        // An empty rule allows everything (unlike Cilium's).
        assert!(allowed(&format!("{NP}  egress: [{{}}]\n"), &key));
        let minio = egress(
            "storage",
            "k8s:app=minio,k8s:io.kubernetes.pod.namespace=storage,k8s:io.cilium.k8s.namespace.labels.team=data",
            "10.0.2.5",
            9000,
            L4Protocol::Tcp,
        );
        let by_ns = format!(
            "{NP}  egress: [{{to: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: storage}}}}, podSelector: {{matchLabels: {{app: minio}}}}}}], ports: [{{port: 9000}}]}}]\n"
        );
        assert!(allowed(&by_ns, &minio));
        let by_team = format!(
            "{NP}  egress: [{{to: [{{namespaceSelector: {{matchLabels: {{team: data}}}}}}]}}]\n"
        );
        assert!(allowed(&by_team, &minio));
        let pod_only =
            format!("{NP}  egress: [{{to: [{{podSelector: {{matchLabels: {{app: minio}}}}}}]}}]\n");
        assert!(
            !allowed(&pod_only, &minio),
            "podSelector alone: the policy's namespace"
        );
        let udp = format!("{NP}  egress: [{{ports: [{{port: 9000, protocol: UDP}}]}}]\n");
        assert!(!allowed(&udp, &minio));
        let block = format!(
            "{NP}  egress: [{{to: [{{ipBlock: {{cidr: 203.0.113.0/24, except: [203.0.113.7/32]}}}}]}}]\n"
        );
        assert!(!allowed(&block, &key));
        assert!(allowed(&block, &world("203.0.113.8", 443)));
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let text = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: x}}\n---\n{CNP}  endpointSelector: {{}}\n  egress:\n    - toPortz: []\n"
        );
        let e = parse(&text, "p.yaml", NS).unwrap_err();
        assert!(e.to_string().starts_with("p.yaml:11:"), "{e}");
        assert!(e.message.contains("toPortz"), "{e}");
    }
}
