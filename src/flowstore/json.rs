//! Stored flows read back, and their JSON: the field names and enum spellings of Hubble's
//! jsonpb, so a `format=ndjson` answer reads like `hubble observe -o jsonpb` output.

use std::net::IpAddr;
use std::sync::Arc;

use polars::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::GroupBy;
use super::chunk::{COLUMNS, Chunk, Col, UUID_COLUMNS};
use crate::flow::intern::Sym;
use crate::flow::{L4Protocol, TcpFlags, TrafficDirection, Verdict, drop_reason_name};

/// One stored flow: its codes, read through the chunk it came from.
#[derive(Debug, Clone)]
pub struct StoredFlow {
    pub seq: u64,
    pub time_ns: i64,
    /// Hubble's UUID; 0 when the flow had none.
    pub uuid: u128,
    /// Numbers, and codes for text and address columns, by [`Col`].
    values: [u32; COLUMNS],
    chunk: Arc<Chunk>,
}

impl StoredFlow {
    /// The rows of `found`, a frame selected from `chunk`, in its order.
    pub fn read(chunk: &Arc<Chunk>, found: &DataFrame) -> PolarsResult<Vec<StoredFlow>> {
        let seq = found.column("seq")?.u64()?;
        let time = found.column("time")?.i64()?;
        let hi = found.column(UUID_COLUMNS[0])?.u64()?;
        let lo = found.column(UUID_COLUMNS[1])?.u64()?;
        let columns: Vec<&UInt32Chunked> = Col::ALL
            .iter()
            .map(|c| found.column(c.name()).and_then(|x| x.u32()))
            .collect::<PolarsResult<_>>()?;
        Ok((0..found.height())
            .map(|i| StoredFlow {
                seq: seq.get(i).unwrap_or(0),
                time_ns: time.get(i).unwrap_or(0),
                uuid: (u128::from(hi.get(i).unwrap_or(0)) << 64)
                    | u128::from(lo.get(i).unwrap_or(0)),
                values: std::array::from_fn(|c| columns[c].get(i).unwrap_or(0)),
                chunk: chunk.clone(),
            })
            .collect())
    }

    fn number(&self, c: Col) -> u32 {
        self.values[c as usize]
    }

    fn text(&self, c: Col) -> &str {
        self.chunk
            .texts
            .get(self.number(c) as usize)
            .map_or("", |s| s)
    }

    fn ip(&self, c: Col) -> Option<IpAddr> {
        ip(&self.chunk, self.number(c))
    }

    fn endpoint(&self, source: bool) -> EndpointJson {
        let (ns, pod, workload, identity, labels) = if source {
            (
                Col::SrcNamespace,
                Col::SrcPod,
                Col::SrcWorkload,
                Col::SrcIdentity,
                Col::SrcLabels,
            )
        } else {
            (
                Col::DstNamespace,
                Col::DstPod,
                Col::DstWorkload,
                Col::DstIdentity,
                Col::DstLabels,
            )
        };
        let labels = self.text(labels);
        let workload = self.text(workload);
        EndpointJson {
            identity: self.number(identity),
            namespace: self.text(ns).to_owned(),
            pod_name: self.text(pod).to_owned(),
            labels: if labels.is_empty() {
                Vec::new()
            } else {
                labels.split(',').map(str::to_owned).collect()
            },
            workloads: if workload.is_empty() {
                Vec::new()
            } else {
                vec![WorkloadJson {
                    name: workload.to_owned(),
                }]
            },
        }
    }

    /// The flow in Hubble's JSON form.
    pub fn to_json(&self) -> FlowJson {
        let verdict = i32::try_from(self.number(Col::Verdict))
            .ok()
            .and_then(|v| Verdict::try_from(v).ok())
            .unwrap_or(Verdict::Unknown);
        let direction = i32::try_from(self.number(Col::Direction))
            .ok()
            .and_then(|v| TrafficDirection::try_from(v).ok())
            .unwrap_or(TrafficDirection::Unknown);
        let drop = self.number(Col::DropReason);
        let ip = match [self.ip(Col::SrcIp), self.ip(Col::DstIp)] {
            [None, None] => None,
            [s, d] => Some(IpJson {
                source: s.map(|x| x.to_string()).unwrap_or_default(),
                destination: d.map(|x| x.to_string()).unwrap_or_default(),
                ip_version: if s.or(d).is_some_and(|x| x.is_ipv6()) {
                    "IPv6"
                } else {
                    "IPv4"
                },
            }),
        };
        let ports = PortsJson {
            source_port: self.number(Col::SrcPort),
            destination_port: self.number(Col::DstPort),
            flags: None,
        };
        let flags = TcpFlags(u16::try_from(self.number(Col::TcpFlags)).unwrap_or(0));
        let mut l4 = L4Json::default();
        match protocol(self.number(Col::Protocol)) {
            L4Protocol::Tcp => {
                l4.tcp = Some(PortsJson {
                    flags: (flags.0 != 0).then(|| {
                        TcpFlags::NAMES
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| flags.0 & (1 << i) != 0)
                            .map(|(_, n)| (*n).to_owned())
                            .collect()
                    }),
                    ..ports
                });
            }
            L4Protocol::Udp => l4.udp = Some(ports),
            L4Protocol::Sctp => l4.sctp = Some(ports),
            L4Protocol::Icmpv4 => l4.icmpv4 = Some(IcmpJson::default()),
            L4Protocol::Icmpv6 => l4.icmpv6 = Some(IcmpJson::default()),
            L4Protocol::Unknown => {}
        }
        let fqdn = self.text(Col::Fqdn);
        let policy = self.text(Col::Policy);
        let denied_by = if policy.is_empty() {
            Vec::new()
        } else {
            vec![PolicyJson {
                name: policy.to_owned(),
                namespace: self.text(Col::PolicyNamespace).to_owned(),
            }]
        };
        let is_reply = match self.number(Col::IsReply) {
            1 => Some(false),
            2 => Some(true),
            _ => None,
        };
        let query = self.text(Col::DnsQuery);
        let l7 = match self.number(Col::L7) {
            1 | 2 if !query.is_empty() => Some(L7Json {
                kind: if self.number(Col::L7) == 2 {
                    "RESPONSE"
                } else {
                    "REQUEST"
                },
                dns: DnsJson {
                    query: query.to_owned(),
                    rcode: self.number(Col::DnsRcode),
                },
            }),
            _ => None,
        };
        FlowJson {
            time: crate::common::clock::format_time(self.time_ns),
            uuid: if self.uuid == 0 {
                String::new()
            } else {
                crate::flow::format_uuid(self.uuid)
            },
            verdict: verdict.as_str_name(),
            drop_reason_desc: match (drop, drop_reason_name(drop)) {
                (0, _) => String::new(),
                (n, "") => n.to_string(),
                (_, name) => name.to_owned(),
            },
            ip,
            l4: (protocol(self.number(Col::Protocol)) != L4Protocol::Unknown).then_some(l4),
            source: self.endpoint(true),
            destination: self.endpoint(false),
            kind: if l7.is_some() { "L7" } else { "L3_L4" },
            l7,
            node_name: self.text(Col::Node).to_owned(),
            destination_names: if fqdn.is_empty() {
                Vec::new()
            } else {
                vec![fqdn.to_owned()]
            },
            is_reply,
            event_type: EventTypeJson {
                kind: self.number(Col::EventType),
            },
            traffic_direction: direction.as_str_name(),
            egress_denied_by: if direction == TrafficDirection::Ingress {
                Vec::new()
            } else {
                denied_by.clone()
            },
            ingress_denied_by: if direction == TrafficDirection::Ingress {
                denied_by
            } else {
                Vec::new()
            },
        }
    }

    /// The line `hubble observe -o jsonpb` would print for this flow.
    pub fn to_jsonpb_line(&self) -> String {
        let flow = self.to_json();
        let line = ObserveLine {
            node_name: flow.node_name.clone(),
            time: flow.time.clone(),
            flow,
        };
        serde_json::to_string(&line).unwrap_or_default()
    }
}

pub fn protocol(n: u32) -> L4Protocol {
    [
        L4Protocol::Unknown,
        L4Protocol::Tcp,
        L4Protocol::Udp,
        L4Protocol::Icmpv4,
        L4Protocol::Icmpv6,
        L4Protocol::Sctp,
    ]
    .into_iter()
    .find(|p| *p as u32 == n)
    .unwrap_or_default()
}

fn text(chunk: &Chunk, code: u32) -> Sym {
    chunk
        .texts
        .get(code as usize)
        .cloned()
        .unwrap_or_else(|| chunk.texts[0].clone())
}

fn ip(chunk: &Chunk, code: u32) -> Option<IpAddr> {
    chunk.ips.get(code as usize).copied().flatten()
}

/// A `/flows/top` group's key from the codes its packed key holds (see `GroupBy::codes`).
pub fn group_key(chunk: &Chunk, by: GroupBy, codes: &[u32]) -> String {
    let t = |i: usize| text(chunk, codes.get(i).copied().unwrap_or(0));
    let n = |i: usize| codes.get(i).copied().unwrap_or(0);
    match by {
        GroupBy::Destination => {
            let (fqdn, ns, pod) = (t(0), t(1), t(2));
            let target = if !fqdn.is_empty() {
                fqdn.to_string()
            } else if !ns.is_empty() {
                format!("{ns}/{pod}")
            } else {
                ip(chunk, n(3)).map_or_else(|| "unknown".into(), |ip| ip.to_string())
            };
            port_label(target, n(4), n(5))
        }
        GroupBy::Source => match (&*t(0), &*t(1)) {
            ("", "") => "(world)".into(),
            (ns, pod) => format!("{ns}/{pod}"),
        },
        GroupBy::Fqdn => t(0).to_string(),
        GroupBy::Port => port_label(String::new(), n(0), n(1))
            .trim_start_matches(':')
            .to_owned(),
        GroupBy::Namespace => match &*t(0) {
            "" => "(world)".into(),
            ns => ns.to_owned(),
        },
        GroupBy::Verdict => i32::try_from(n(0))
            .ok()
            .and_then(|v| Verdict::try_from(v).ok())
            .map_or_else(|| n(0).to_string(), |v| v.as_str_name().to_owned()),
    }
}

fn port_label(target: String, port: u32, proto: u32) -> String {
    let proto = protocol(proto).as_str();
    match (port, proto) {
        (0, "") => target,
        (0, p) => format!("{target} {p}"),
        (port, "") => format!("{target}:{port}"),
        (port, p) => format!("{target}:{port}/{p}"),
    }
}

/// A flow as Hubble's JSON spells it (the fields exfilwatch keeps).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FlowJson {
    /// RFC 3339 with nanoseconds.
    pub time: String,
    /// Hubble's flow UUID (empty when the flow had none).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uuid: String,
    /// FORWARDED, DROPPED, AUDIT, ...
    pub verdict: &'static str,
    /// The drop reason's name (POLICY_DENIED, ...); empty unless dropped.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub drop_reason_desc: String,
    #[serde(rename = "IP", skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l4: Option<L4Json>,
    pub source: EndpointJson,
    pub destination: EndpointJson,
    /// L3_L4, or L7 for a DNS record.
    #[serde(rename = "Type")]
    pub kind: &'static str,
    /// The DNS record of an L7 flow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l7: Option<L7Json>,
    pub node_name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_reply: Option<bool>,
    pub event_type: EventTypeJson,
    /// INGRESS, EGRESS or TRAFFIC_DIRECTION_UNKNOWN.
    pub traffic_direction: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub egress_denied_by: Vec<PolicyJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ingress_denied_by: Vec<PolicyJson>,
}

/// An L7 record, as Hubble spells it; exfilwatch keeps DNS ones.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct L7Json {
    /// REQUEST or RESPONSE.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub dns: DnsJson,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DnsJson {
    /// The queried name.
    pub query: String,
    /// The response code (0 NOERROR, 3 NXDOMAIN); 0 for a request.
    pub rcode: u32,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IpJson {
    pub source: String,
    pub destination: String,
    #[serde(rename = "ipVersion")]
    pub ip_version: &'static str,
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct L4Json {
    #[serde(rename = "TCP", skip_serializing_if = "Option::is_none")]
    pub tcp: Option<PortsJson>,
    #[serde(rename = "UDP", skip_serializing_if = "Option::is_none")]
    pub udp: Option<PortsJson>,
    #[serde(rename = "SCTP", skip_serializing_if = "Option::is_none")]
    pub sctp: Option<PortsJson>,
    #[serde(rename = "ICMPv4", skip_serializing_if = "Option::is_none")]
    pub icmpv4: Option<IcmpJson>,
    #[serde(rename = "ICMPv6", skip_serializing_if = "Option::is_none")]
    pub icmpv6: Option<IcmpJson>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PortsJson {
    pub source_port: u32,
    pub destination_port: u32,
    /// Set TCP flags by name, as Hubble's `TCPFlags` (`{"SYN": true}`) lists them.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "flags_object"
    )]
    #[schema(value_type = Option<Object>)]
    pub flags: Option<Vec<String>>,
}

fn flags_object<S: serde::Serializer>(
    flags: &Option<Vec<String>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let flags = flags.as_deref().unwrap_or_default();
    let mut map = s.serialize_map(Some(flags.len()))?;
    for f in flags {
        map.serialize_entry(f, &true)?;
    }
    map.end()
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct IcmpJson {}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EndpointJson {
    pub identity: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
    /// Cilium labels, "source:key=value", sorted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadJson>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkloadJson {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PolicyJson {
    pub name: String,
    pub namespace: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventTypeJson {
    #[serde(rename = "type")]
    pub kind: u32,
}

/// A `format=ndjson` line: what `hubble observe -o jsonpb` prints.
#[derive(Debug, Serialize)]
struct ObserveLine {
    flow: FlowJson,
    node_name: String,
    time: String,
}

#[cfg(test)]
mod tests {
    use crate::flowstore::testing::*;

    use crate::flow::json::JsonDecoder;

    use crate::flow::Event;

    use crate::flowstore::Filter;

    #[test]
    fn ndjson_lines_decode_back_to_the_same_flow() {
        let flows = flows(600);
        let store = filled(small(None), &flows);
        let page = store.list(&Filter::default(), None, 600).unwrap();
        let mut decoder = JsonDecoder::default();
        for stored in &page.flows {
            let original = &flows[(stored.seq - 1) as usize];
            let line = stored.to_jsonpb_line();
            let Event::Flow(back) = decoder.decode_line(&line).unwrap() else {
                panic!("{line}")
            };
            assert_eq!(back.time_ns, original.time_ns, "{line}");
            assert_eq!(back.verdict, original.verdict, "{line}");
            assert_eq!(back.drop_reason, original.drop_reason, "{line}");
            assert_eq!(back.direction, original.direction, "{line}");
            assert_eq!(back.protocol, original.protocol, "{line}");
            assert_eq!(back.node, original.node, "{line}");
            for (b, o) in [
                (&back.source, &original.source),
                (&back.destination, &original.destination),
            ] {
                assert_eq!(
                    (&b.namespace, &b.pod, b.ip, b.port, b.identity),
                    (&o.namespace, &o.pod, o.ip, o.port, o.identity),
                    "{line}"
                );
            }
            assert_eq!(
                back.destination_names.first(),
                original.destination_names.first(),
                "{line}"
            );
            assert_eq!(
                back.egress_denied_by.first().map(|p| &p.name),
                original.egress_denied_by.first().map(|p| &p.name),
                "{line}"
            );
        }
    }
}
