//! Network policies read from YAML: CiliumNetworkPolicy (`cilium.io/v2`) and Kubernetes
//! NetworkPolicy (`networking.k8s.io/v1`), turned into one form the advisor evaluates.
//!
//! What is read is what Hubble's flows can answer: endpoint selectors, entities, CIDRs with
//! exceptions, FQDNs, ports and ranges, DNS rules, deny rules and default-deny. Anything else
//! (services, groups, nodes, HTTP/Kafka rules, authentication) is refused with its line, so a
//! check never reports on a policy it only half read.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::flow::L4Protocol;

mod read;

pub use read::{LabelSelector, Requirement, parse};

/// Which policy kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Cilium,
    Kubernetes,
}

impl Flavor {
    pub fn parse(name: &str) -> Option<Flavor> {
        match name {
            "cilium" => Some(Flavor::Cilium),
            "kubernetes" => Some(Flavor::Kubernetes),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Cilium => "cilium",
            Flavor::Kubernetes => "kubernetes",
        }
    }
}

/// The namespace label Cilium gives every pod.
pub const NAMESPACE_KEY: &str = "io.kubernetes.pod.namespace";
/// Prefix of the namespace's own labels among a pod's Cilium labels.
pub const NAMESPACE_LABELS: &str = "io.cilium.k8s.namespace.labels.";

/// A label selector with, for Cilium's namespaced selectors, the namespace it implies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    pub labels: Vec<(String, String)>,
    pub expressions: Vec<(String, Operator, Vec<String>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// Reserved identities a Cilium rule can name as `toEntities`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    All,
    World,
    Cluster,
    Host,
    RemoteNode,
    KubeApiserver,
    Health,
    Init,
    Ingress,
    Unmanaged,
}

impl Entity {
    fn parse(name: &str) -> Option<Entity> {
        Some(match name {
            "all" => Entity::All,
            "world" | "world-ipv4" | "world-ipv6" => Entity::World,
            "cluster" => Entity::Cluster,
            "host" => Entity::Host,
            "remote-node" => Entity::RemoteNode,
            "kube-apiserver" => Entity::KubeApiserver,
            "health" => Entity::Health,
            "init" => Entity::Init,
            "ingress" => Entity::Ingress,
            "unmanaged" => Entity::Unmanaged,
            _ => return None,
        })
    }
}

/// A DNS name or pattern (`matchName` / `matchPattern`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameMatch {
    Name(String),
    Pattern(String),
}

/// Who a rule lets through on the other side.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerMatch {
    /// Pods: the selector on their labels, and the namespaces they may be in (`None`: any).
    Endpoints {
        pods: Selector,
        namespace: Option<String>,
        /// Kubernetes `namespaceSelector`, on the namespace's labels.
        namespaces: Option<Selector>,
    },
    Entity(Entity),
    Cidr {
        net: IpNet,
        except: Vec<IpNet>,
    },
    Fqdn(NameMatch),
}

/// A port, range or any port of a protocol, with the DNS names allowed through it.
#[derive(Debug, Clone, PartialEq)]
pub struct PortMatch {
    pub from: u16,
    pub to: u16,
    /// `None`: TCP, UDP and SCTP.
    pub protocol: Option<L4Protocol>,
    /// DNS rules of the port; `None` when it has none.
    pub dns: Option<Vec<NameMatch>>,
}

/// One allow or deny rule: peers (`None`: any) and ports (`None`: any).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub peers: Option<Vec<PeerMatch>>,
    pub ports: Option<Vec<PortMatch>>,
}

/// A policy's rules in one direction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    /// Whether the policy puts the endpoints it selects into default deny this way.
    pub default_deny: bool,
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
}

/// One policy, evaluated form.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub flavor: Flavor,
    pub name: String,
    pub namespace: String,
    /// Where it was read: "file:line".
    pub origin: String,
    /// The pods it applies to (in `namespace`).
    pub subject: Selector,
    pub ingress: Rules,
    pub egress: Rules,
}

impl Policy {
    /// Whether any rule names addresses (CIDR, `ipBlock`): only then does a peer's address
    /// change a decision.
    pub fn names_addresses(&self) -> bool {
        [&self.ingress, &self.egress].iter().any(|r| {
            r.allow.iter().chain(&r.deny).any(|rule| {
                rule.peers
                    .iter()
                    .flatten()
                    .any(|p| matches!(p, PeerMatch::Cidr { .. }))
            })
        })
    }
}

/// A policy file that cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub origin: String,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}
