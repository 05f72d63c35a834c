//! Decodes `hubble observe -o jsonpb` lines into [`Event`]s.
//!
//! Each line is one `{"flow":{...},"node_name":"...","time":"..."}` object (or
//! `{"lost_events":{...}}`, `{"node_status":{...}}`); a bare flow object, as very old CLIs
//! printed, is accepted too. The structs below name only the fields exfilwatch keeps, so
//! unknown and newer fields are ignored and older captures with missing fields decode.
//! Protobuf's JSON mapping is honoured: proto field names, enums as names or numbers,
//! 64-bit integers as strings or numbers, timestamps in RFC 3339.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::value::RawValue;

use super::{
    Assembler, DESTINATION, Dns, Event, FieldError, FlowEvent, L4Protocol, LostEvent, NodeStatus,
    PolicyRef, RawPeer, SOURCE, Side, Tables, TcpFlags, endpoint_from,
};
use crate::flow::{DropReason, LostEventSource, NodeState, TrafficDirection, Verdict, parse_uuid};
use crate::proto::flow::L7FlowType;

/// Why a line could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("invalid JSON: {0}")]
    Syntax(String),
    #[error("line has no flow, lost_events or node_status object")]
    Empty,
    #[error("field {field}: invalid timestamp {value:?}")]
    Time { field: &'static str, value: String },
    #[error(transparent)]
    Field(#[from] FieldError),
}

/// A protobuf enum as its JSON mapping allows: the value name or the number.
trait ProtoEnum {
    const NAME: &'static str;
    fn number(name: &str) -> Option<i32>;
}

macro_rules! proto_enum {
    ($($ty:ty => $name:literal),* $(,)?) => {$(
        impl ProtoEnum for $ty {
            const NAME: &'static str = $name;
            fn number(name: &str) -> Option<i32> {
                <$ty>::from_str_name(name).map(|v| v as i32)
            }
        }
    )*};
}

proto_enum! {
    Verdict => "Verdict",
    DropReason => "DropReason",
    TrafficDirection => "TrafficDirection",
    LostEventSource => "LostEventSource",
    NodeState => "NodeState",
    L7FlowType => "L7FlowType",
}

/// An enum field's number.
struct Enum<E>(i32, PhantomData<E>);

impl<'de, E: ProtoEnum> Deserialize<'de> for Enum<E> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<E>(PhantomData<E>);
        impl<E: ProtoEnum> Visitor<'_> for V<E> {
            type Value = Enum<E>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a {} name or number", E::NAME)
            }
            fn visit_str<Err: de::Error>(self, v: &str) -> Result<Enum<E>, Err> {
                E::number(v)
                    .map(|n| Enum(n, PhantomData))
                    .ok_or_else(|| Err::custom(format_args!("unknown {} value {v:?}", E::NAME)))
            }
            fn visit_i64<Err: de::Error>(self, v: i64) -> Result<Enum<E>, Err> {
                i32::try_from(v)
                    .map(|n| Enum(n, PhantomData))
                    .map_err(|_| Err::custom(format_args!("{} number {v} out of range", E::NAME)))
            }
            fn visit_u64<Err: de::Error>(self, v: u64) -> Result<Enum<E>, Err> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// An integer that protobuf's JSON mapping may write as a number or a string.
#[derive(Default, Clone, Copy)]
struct Int(i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string holding one")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                i64::try_from(v)
                    .map(Int)
                    .map_err(|_| E::custom(format_args!("integer {v} out of range")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Int, E> {
                v.parse()
                    .map(Int)
                    .map_err(|_| E::custom(format_args!("invalid integer {v:?}")))
            }
        }
        d.deserialize_any(V)
    }
}

type Str<'a> = Cow<'a, str>;

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    flow: Option<JsonFlow<'a>>,
    #[serde(borrow)]
    lost_events: Option<JsonLost<'a>>,
    #[serde(borrow)]
    node_status: Option<JsonNodeStatus<'a>>,
    #[serde(borrow)]
    node_name: Option<Str<'a>>,
    #[serde(borrow)]
    time: Option<Str<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JsonFlow<'a> {
    #[serde(borrow)]
    time: Option<Str<'a>>,
    #[serde(borrow)]
    uuid: Option<Str<'a>>,
    verdict: Option<Enum<Verdict>>,
    drop_reason: Option<Int>,
    drop_reason_desc: Option<Enum<DropReason>>,
    #[serde(rename = "IP", borrow)]
    ip: Option<JsonIp<'a>>,
    l4: Option<JsonL4>,
    #[serde(borrow)]
    source: Option<&'a RawValue>,
    #[serde(borrow)]
    destination: Option<&'a RawValue>,
    #[serde(borrow)]
    node_name: Option<Str<'a>>,
    #[serde(borrow)]
    destination_names: Vec<Str<'a>>,
    #[serde(borrow)]
    l7: Option<JsonL7<'a>>,
    reply: Option<bool>,
    event_type: Option<JsonEventType>,
    traffic_direction: Option<Enum<TrafficDirection>>,
    is_reply: Option<bool>,
    #[serde(borrow)]
    egress_denied_by: Vec<JsonPolicy<'a>>,
    #[serde(borrow)]
    ingress_denied_by: Vec<JsonPolicy<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JsonIp<'a> {
    #[serde(borrow)]
    source: Str<'a>,
    #[serde(borrow)]
    destination: Str<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JsonPorts {
    source_port: Option<Int>,
    destination_port: Option<Int>,
    flags: Option<JsonTcpFlags>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "UPPERCASE")]
struct JsonTcpFlags {
    fin: bool,
    syn: bool,
    rst: bool,
    psh: bool,
    ack: bool,
    urg: bool,
    ece: bool,
    cwr: bool,
    ns: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JsonL4 {
    #[serde(rename = "TCP")]
    tcp: Option<JsonPorts>,
    #[serde(rename = "UDP")]
    udp: Option<JsonPorts>,
    #[serde(rename = "SCTP")]
    sctp: Option<JsonPorts>,
    #[serde(rename = "ICMPv4")]
    icmpv4: Option<de::IgnoredAny>,
    #[serde(rename = "ICMPv6")]
    icmpv6: Option<de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JsonWorkload<'a> {
    #[serde(borrow)]
    name: Str<'a>,
    #[serde(borrow)]
    kind: Str<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JsonEndpoint<'a> {
    identity: Option<Int>,
    #[serde(borrow)]
    namespace: Str<'a>,
    #[serde(borrow)]
    labels: Vec<Str<'a>>,
    #[serde(borrow)]
    pod_name: Str<'a>,
    #[serde(borrow)]
    workloads: Vec<JsonWorkload<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JsonEventType {
    #[serde(rename = "type")]
    kind: Option<Int>,
    sub_type: Option<Int>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JsonPolicy<'a> {
    #[serde(borrow)]
    name: Str<'a>,
    #[serde(borrow)]
    namespace: Str<'a>,
    #[serde(borrow)]
    kind: Str<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JsonL7<'a> {
    #[serde(rename = "type")]
    kind: Option<Enum<L7FlowType>>,
    #[serde(borrow)]
    dns: Option<JsonDns<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JsonDns<'a> {
    #[serde(borrow)]
    query: Str<'a>,
    #[serde(borrow)]
    ips: Vec<Str<'a>>,
    ttl: Option<Int>,
    rcode: Option<Int>,
    #[serde(borrow)]
    qtypes: Vec<Str<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JsonLost<'a> {
    source: Option<Enum<LostEventSource>>,
    num_events_lost: Option<Int>,
    cpu: Option<Int>,
    #[serde(borrow)]
    first: Option<Str<'a>>,
    #[serde(borrow)]
    last: Option<Str<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JsonNodeStatus<'a> {
    state_change: Option<Enum<NodeState>>,
    #[serde(borrow)]
    node_names: Vec<Str<'a>>,
    #[serde(borrow)]
    message: Str<'a>,
}

fn parse_time(field: &'static str, text: &str) -> Result<i64, JsonError> {
    prost_types::Timestamp::from_str(text)
        .map(|t| super::timestamp_ns(t.seconds, t.nanos))
        .map_err(|_| JsonError::Time {
            field,
            value: text.to_owned(),
        })
}

/// Decodes jsonpb lines, sharing strings across calls.
#[derive(Debug, Default)]
pub struct JsonDecoder {
    tables: Tables,
}

impl JsonDecoder {
    pub fn new(tables: Tables) -> Self {
        JsonDecoder { tables }
    }

    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Decodes one line.
    pub fn decode_line(&mut self, line: &str) -> Result<Event, JsonError> {
        let parsed: Line<'_> =
            serde_json::from_str(line).map_err(|e| JsonError::Syntax(e.to_string()))?;
        let mut asm = Assembler {
            tables: &mut self.tables,
        };
        let envelope_time = parsed
            .time
            .as_deref()
            .map(|t| parse_time("time", t))
            .transpose()?;
        let envelope_node = parsed.node_name.as_deref().unwrap_or("");
        if let Some(flow) = parsed.flow {
            let mut flow = convert_flow(&mut asm, flow)?;
            if flow.node.is_empty() && !envelope_node.is_empty() {
                flow.node = asm.sym("node_name", envelope_node.as_bytes())?;
            }
            if flow.time_ns == 0 {
                flow.time_ns = envelope_time.unwrap_or(0);
            }
            return Ok(Event::Flow(flow));
        }
        if let Some(lost) = parsed.lost_events {
            return Ok(Event::Lost(LostEvent {
                source: lost
                    .source
                    .and_then(|e| LostEventSource::try_from(e.0).ok())
                    .unwrap_or(LostEventSource::UnknownLostEventSource),
                count: lost.num_events_lost.map_or(0, |n| n.0.max(0) as u64),
                cpu: lost.cpu.map(|c| c.0 as i32),
                first_ns: lost
                    .first
                    .as_deref()
                    .map(|t| parse_time("lost_events.first", t))
                    .transpose()?,
                last_ns: lost
                    .last
                    .as_deref()
                    .map(|t| parse_time("lost_events.last", t))
                    .transpose()?,
                node: asm.sym("node_name", envelope_node.as_bytes())?,
            }));
        }
        if let Some(status) = parsed.node_status {
            return Ok(Event::NodeStatus(NodeStatus {
                state: status
                    .state_change
                    .and_then(|e| NodeState::try_from(e.0).ok())
                    .unwrap_or(NodeState::UnknownNodeState),
                nodes: status
                    .node_names
                    .iter()
                    .map(|n| asm.sym("node_status.node_names", n.as_bytes()))
                    .collect::<Result<_, _>>()?,
                message: status.message.into_owned(),
            }));
        }
        // Very old CLIs printed the bare flow object.
        let bare: JsonFlow<'_> =
            serde_json::from_str(line).map_err(|e| JsonError::Syntax(e.to_string()))?;
        if bare.time.is_none() && bare.verdict.is_none() && bare.ip.is_none() {
            return Err(JsonError::Empty);
        }
        Ok(Event::Flow(convert_flow(&mut asm, bare)?))
    }
}

/// The shared endpoint for a JSON endpoint object; parsed only the first time this exact
/// text is seen.
fn endpoint(
    asm: &mut Assembler<'_>,
    side: &Side,
    raw: Option<&RawValue>,
) -> Result<Arc<super::Endpoint>, JsonError> {
    let text = raw.map_or("", RawValue::get);
    asm.endpoint(text.as_bytes(), |strings| {
        let ep: JsonEndpoint<'_> = if text.is_empty() {
            JsonEndpoint::default()
        } else {
            serde_json::from_str(text)
                .map_err(|e| JsonError::Syntax(format!("field {}: {e}", side.name)))?
        };
        let workload = ep.workloads.first();
        let parts = RawPeer {
            namespace: ep.namespace.as_bytes(),
            pod: ep.pod_name.as_bytes(),
            workload: workload.map_or(&[][..], |w| w.name.as_bytes()),
            workload_kind: workload.map_or(&[][..], |w| w.kind.as_bytes()),
            identity: ep.identity.map_or(0, |i| i.0 as u32),
        };
        Ok(endpoint_from(
            strings,
            side,
            parts,
            ep.labels.iter().map(|l| l.as_bytes()),
        )?)
    })
}

fn policies(
    asm: &mut Assembler<'_>,
    list: &[JsonPolicy<'_>],
) -> Result<Box<[PolicyRef]>, FieldError> {
    list.iter()
        .map(|p| asm.policy(p.name.as_bytes(), p.namespace.as_bytes(), p.kind.as_bytes()))
        .collect()
}

fn convert_flow(asm: &mut Assembler<'_>, j: JsonFlow<'_>) -> Result<FlowEvent, JsonError> {
    let mut flow = asm.empty_flow();
    if let Some(t) = j.time.as_deref() {
        flow.time_ns = parse_time("flow.time", t)?;
    }
    flow.uuid = j.uuid.as_deref().and_then(|u| parse_uuid(u.as_bytes()));
    flow.verdict = j
        .verdict
        .and_then(|v| Verdict::try_from(v.0).ok())
        .unwrap_or(Verdict::Unknown);
    flow.drop_reason = match (j.drop_reason_desc, j.drop_reason) {
        (Some(desc), _) if desc.0 != 0 => desc.0 as u32,
        (_, Some(legacy)) => legacy.0 as u32,
        _ => 0,
    };
    flow.direction = j
        .traffic_direction
        .and_then(|d| TrafficDirection::try_from(d.0).ok())
        .unwrap_or(TrafficDirection::Unknown);
    if let Some(et) = j.event_type {
        flow.event_type = et.kind.map_or(0, |n| n.0 as i32);
        flow.event_sub_type = et.sub_type.map_or(0, |n| n.0 as i32);
    }
    flow.node = asm.sym("node_name", j.node_name.as_deref().unwrap_or("").as_bytes())?;
    flow.source.endpoint = endpoint(asm, &SOURCE, j.source)?;
    flow.destination.endpoint = endpoint(asm, &DESTINATION, j.destination)?;
    if let Some(ip) = j.ip {
        flow.source.ip = asm.ip("IP.source", ip.source.as_bytes())?;
        flow.destination.ip = asm.ip("IP.destination", ip.destination.as_bytes())?;
    }
    if let Some(l4) = j.l4 {
        let ports = if let Some(p) = l4.tcp {
            flow.protocol = L4Protocol::Tcp;
            Some(p)
        } else if let Some(p) = l4.udp {
            flow.protocol = L4Protocol::Udp;
            Some(p)
        } else if let Some(p) = l4.sctp {
            flow.protocol = L4Protocol::Sctp;
            Some(p)
        } else {
            if l4.icmpv4.is_some() {
                flow.protocol = L4Protocol::Icmpv4;
            } else if l4.icmpv6.is_some() {
                flow.protocol = L4Protocol::Icmpv6;
            }
            None
        };
        if let Some(p) = ports {
            flow.source.port = p.source_port.map_or(0, |n| n.0 as u16);
            flow.destination.port = p.destination_port.map_or(0, |n| n.0 as u16);
            if let Some(f) = p.flags {
                let bits = [f.fin, f.syn, f.rst, f.psh, f.ack, f.urg, f.ece, f.cwr, f.ns];
                for (i, set) in bits.into_iter().enumerate() {
                    if set {
                        flow.tcp_flags.insert(TcpFlags::from_field(i as u32 + 1));
                    }
                }
            }
        }
    }
    flow.destination_names = asm.list(
        "destination_names",
        j.destination_names.iter().map(|n| n.as_bytes()),
    )?;
    if let Some(l7) = j.l7
        && let Some(dns) = l7.dns
    {
        let ips = dns
            .ips
            .iter()
            .filter_map(|ip| asm.ip("l7.dns.ips", ip.as_bytes()).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        flow.dns = Some(Box::new(Dns {
            query: dns.query.as_ref().into(),
            rcode: dns.rcode.map_or(0, |n| n.0 as u32),
            qtypes: asm.list("l7.dns.qtypes", dns.qtypes.iter().map(|q| q.as_bytes()))?,
            ips,
            ttl: dns.ttl.map_or(0, |n| n.0 as u32),
            response: l7.kind.is_some_and(|k| k.0 == L7FlowType::Response as i32),
        }));
    }
    flow.is_reply = j.is_reply.or(j.reply.filter(|r| *r));
    flow.egress_denied_by = policies(asm, &j.egress_denied_by)?;
    flow.ingress_denied_by = policies(asm, &j.ingress_denied_by)?;
    Ok(flow)
}
