//! Where a flow went: the one destination type, in the three granularities the service uses.
//!
//! Every form prefers the most telling name Hubble knew: the first DNS name of the destination
//! address, else the destination's namespace and workload (or pod), else its address. They
//! differ only in how fine they cut:
//! - [`Granularity::Grouped`]: alerts. A workload, and world addresses by block (/24, /64), so
//!   one alert covers a service that answers from many addresses.
//! - [`Granularity::Exact`]: counting distinct destinations (scans). A workload, the address.
//! - [`Granularity::Pod`]: what a person reads in a log line or a metric label. The pod, the
//!   address; with the port in [`label`].

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;

use ipnet::IpNet;

use super::{Endpoint, FlowEvent};
use crate::common::net::network;

/// How finely destinations are told apart; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// Workloads, and world addresses by block of these prefix lengths.
    Grouped { v4_bits: u8, v6_bits: u8 },
    /// Workloads, and exact addresses.
    Exact,
    /// Pods, and exact addresses.
    Pod,
}

/// The grouping alerts use unless a rule sets its own: /24 for IPv4, /64 for IPv6.
pub const DEFAULT_GROUPING: Granularity = Granularity::Grouped {
    v4_bits: 24,
    v6_bits: 64,
};

/// Where a flow went, borrowed from the flow: no allocation on the per-flow paths.
/// Displays exactly as its owned [`Destination`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationRef<'a> {
    Fqdn(&'a str),
    Workload { namespace: &'a str, name: &'a str },
    Address(IpAddr),
    Block(IpNet),
    Unknown,
}

impl<'a> DestinationRef<'a> {
    /// Where `flow` went, told apart as finely as `granularity` says.
    #[inline]
    pub fn of(flow: &'a FlowEvent, granularity: Granularity) -> DestinationRef<'a> {
        let dst = &flow.destination;
        if let Some(name) = flow.destination_names.first() {
            DestinationRef::Fqdn(name)
        } else if !dst.namespace.is_empty() {
            DestinationRef::workload(dst, granularity)
        } else if let Some(ip) = dst.ip {
            match granularity {
                Granularity::Grouped { v4_bits, v6_bits } => {
                    DestinationRef::Block(network(ip, v4_bits, v6_bits))
                }
                Granularity::Exact | Granularity::Pod => DestinationRef::Address(ip),
            }
        } else {
            DestinationRef::Unknown
        }
    }

    /// The in-cluster endpoint `dst` as a destination: its workload, or its pod when it has
    /// none or `granularity` is [`Granularity::Pod`].
    pub fn workload(dst: &'a Endpoint, granularity: Granularity) -> DestinationRef<'a> {
        let name = if dst.workload.is_empty() || granularity == Granularity::Pod {
            &dst.pod
        } else {
            &dst.workload
        };
        DestinationRef::Workload {
            namespace: &dst.namespace,
            name,
        }
    }

    /// The owned form, for an alert's identity.
    pub fn owned(&self) -> Destination {
        match *self {
            DestinationRef::Fqdn(name) => Destination::Fqdn(name.to_owned()),
            DestinationRef::Workload { namespace, name } => Destination::Workload {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            DestinationRef::Address(ip) => Destination::Cidr(IpNet::from(ip).to_string()),
            DestinationRef::Block(net) => Destination::Cidr(net.to_string()),
            DestinationRef::Unknown => Destination::Unknown,
        }
    }

    /// A 64-bit identity for counting and finding, computed without building the text. Seeded
    /// at random once per process: destinations are named by the watched workloads (DNS
    /// names, pods), so their keys must not be chosen to collide.
    pub fn key(&self) -> u64 {
        crate::common::hash::process_seed().hash_one(self)
    }
}

impl FlowEvent {
    /// The key ([`DestinationRef::key`]) of where the flow went, told apart as `granularity`
    /// says. The exact destination's key is worked out once per flow, for every detector
    /// that counts destinations (an in-cluster one's once per endpoint); the grouped form
    /// shares it except for a world address (grouped by block).
    pub fn destination_key(&self, granularity: Granularity) -> u64 {
        let exact = || {
            self.exact_key
                .get_or_init(|| match DestinationRef::of(self, Granularity::Exact) {
                    DestinationRef::Workload { .. } => self.destination.endpoint.workload_key(),
                    d => d.key(),
                })
        };
        if granularity == Granularity::Exact {
            return exact();
        }
        match DestinationRef::of(self, granularity) {
            d @ DestinationRef::Block(_) => d.key(),
            d if granularity == Granularity::Pod => d.key(),
            _ => exact(),
        }
    }
}

/// Hashed on every flow by several detectors: an address or block goes in as two words
/// (kind, family and prefix length; the address bits) rather than field by field.
impl Hash for DestinationRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (kind, ip, prefix) = match *self {
            DestinationRef::Fqdn(name) => {
                state.write_u8(0);
                return name.hash(state);
            }
            DestinationRef::Workload { namespace, name } => {
                state.write_u8(1);
                namespace.hash(state);
                return name.hash(state);
            }
            DestinationRef::Address(ip) => (2, Some(ip), 0),
            DestinationRef::Block(net) => (3, Some(net.addr()), net.prefix_len()),
            DestinationRef::Unknown => (4, None, 0),
        };
        let (family, bits) = match ip {
            Some(IpAddr::V4(v4)) => (4u64, u128::from(v4.to_bits())),
            Some(IpAddr::V6(v6)) => (6, v6.to_bits()),
            None => (0, 0),
        };
        state.write_u64(kind | family << 8 | u64::from(prefix) << 16);
        state.write_u128(bits);
    }
}

impl fmt::Display for DestinationRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DestinationRef::Fqdn(name) => f.write_str(name),
            DestinationRef::Workload { namespace, name } => write!(f, "{namespace}/{name}"),
            DestinationRef::Address(ip) => write!(f, "{ip}"),
            DestinationRef::Block(net) => write!(f, "{net}"),
            DestinationRef::Unknown => f.write_str("unknown"),
        }
    }
}

/// Where an alert's flows were going: its `destination` label and the filter of its link.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A DNS name the destination IP is known by.
    Fqdn(String),
    /// A workload (or pod) in a namespace.
    Workload {
        namespace: String,
        name: String,
    },
    /// An address block in the world: /24 or /64 by default.
    Cidr(String),
    /// Every destination: alerts about a namespace's egress as a whole.
    All,
    /// Something exfilwatch depends on, for alerts about exfilwatch itself.
    Dependency(String),
    Unknown,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Fqdn(name) => f.write_str(name),
            Destination::Workload { namespace, name } => write!(f, "{namespace}/{name}"),
            Destination::Cidr(cidr) => f.write_str(cidr),
            Destination::All => f.write_str("*"),
            Destination::Dependency(name) => f.write_str(name),
            Destination::Unknown => f.write_str("unknown"),
        }
    }
}

impl Destination {
    /// The REST flow API filters that select flows to this destination.
    pub fn query(&self) -> Vec<(&'static str, &str)> {
        match self {
            Destination::Fqdn(name) => vec![("fqdn", name)],
            Destination::Workload { namespace, name } => vec![
                ("destination_namespace", namespace),
                ("destination_workload", name),
            ],
            Destination::Cidr(cidr) => vec![("destination_cidr", cidr)],
            Destination::All | Destination::Dependency(_) | Destination::Unknown => Vec::new(),
        }
    }
}

/// Where `flow` was going as a person reads it: the pod or the address, with the port,
/// e.g. "production/orders-db-0:5432/TCP", "paste.example.net:443/TCP", "10.0.0.9 ICMPv4".
pub fn label(flow: &FlowEvent) -> String {
    let target = DestinationRef::of(flow, Granularity::Pod);
    let (port, proto) = (flow.destination.port, flow.protocol.as_str());
    if port == 0 {
        format!("{target} {proto}")
    } else {
        format!("{target}:{port}/{proto}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Event;
    use crate::flow::json::JsonDecoder;

    fn flow(destination: &str, names: &str) -> FlowEvent {
        let line = format!(
            r#"{{"flow":{{"time":"2026-01-01T00:00:00Z","verdict":"FORWARDED","IP":{{"source":"10.0.0.5","destination":"203.0.113.9"}},"source":{{"namespace":"ai-training","pod_name":"w-0"}},"destination":{destination},"destination_names":[{names}],"traffic_direction":"EGRESS"}}}}"#
        );
        match JsonDecoder::default().decode_line(&line).unwrap() {
            Event::Flow(f) => f,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_flow_s_destination_key_is_its_destination_s_in_every_granularity() {
        let flows = [
            flow("{}", r#""paste.example.net""#),
            flow(
                r#"{"namespace":"production","pod_name":"db-0","workloads":[{"name":"db","kind":"StatefulSet"}]}"#,
                "",
            ),
            flow(r#"{"namespace":"production","pod_name":"db-0"}"#, ""),
            flow("{}", ""),
        ];
        let grouped = Granularity::Grouped {
            v4_bits: 16,
            v6_bits: 48,
        };
        for f in &flows {
            // Asked in each order, so the exact key is sometimes worked out first, sometimes not.
            for order in [
                [Granularity::Exact, grouped, Granularity::Pod],
                [Granularity::Pod, grouped, Granularity::Exact],
            ] {
                let copy = f.clone();
                for g in order {
                    assert_eq!(
                        copy.destination_key(g),
                        DestinationRef::of(&copy, g).key(),
                        "{g:?} of {}",
                        DestinationRef::of(&copy, g)
                    );
                }
            }
        }
        let shown: Vec<String> = flows
            .iter()
            .map(|f| DestinationRef::of(f, Granularity::Exact).to_string())
            .collect();
        assert_eq!(
            shown,
            [
                "paste.example.net",
                "production/db",
                "production/db-0",
                "203.0.113.9"
            ]
        );
        // A world address: its block and its address are told apart.
        let world = &flows[3];
        assert_ne!(
            world.destination_key(grouped),
            world.destination_key(Granularity::Exact)
        );
        // A copy of a flow whose key was worked out, changed before it is read, has the key
        // of what it became.
        let named = flows[0].destination_key(Granularity::Exact);
        let mut changed = flows[0].clone();
        changed.destination_names = flows[1].destination_names.clone();
        changed.destination = flows[1].destination.clone();
        assert_eq!(
            changed.destination_key(Granularity::Exact),
            flows[1].destination_key(Granularity::Exact)
        );
        assert_ne!(changed.destination_key(Granularity::Exact), named);
    }
}
