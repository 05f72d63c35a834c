//! Decodes Hubble's protobuf `GetFlowsResponse` bytes straight into [`Event`]s.
//!
//! A full decode into generated message structs allocates a `String` for every field and a
//! `Vec` for every repeated one, then throws most of them away. This decoder walks the wire
//! format over the borrowed buffer, reads only the fields a `FlowEvent` keeps, and interns the
//! strings directly from the buffer: a flow whose namespaces, pods and labels were seen before
//! costs no allocation at all. Unknown fields are skipped, as protobuf requires, so newer
//! Hubble versions decode fine. Field numbers are those of Cilium 1.19's `flow.proto`,
//! `observer.proto` and `relay.proto` (mirrored in `proto/`).

use super::{
    Assembler, DESTINATION, Dns, Event, FieldError, FlowEvent, L4Protocol, LostEvent, NodeStatus,
    PolicyRef, RawPeer, SOURCE, Side, Tables, TcpFlags, endpoint_from, timestamp_ns,
};
use crate::flow::{LostEventSource, NodeState, TrafficDirection, Verdict, parse_uuid};
use std::sync::Arc;

use crate::flow::intern::Interner;

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated message")]
    Truncated,
    #[error("malformed varint")]
    Varint,
    #[error("field {field}: unsupported wire type {wire_type}")]
    WireType { field: u32, wire_type: u8 },
    #[error("field number 0 is invalid")]
    FieldZero,
    #[error("field {field}: expected {expected}")]
    Shape {
        field: &'static str,
        expected: &'static str,
    },
    #[error(transparent)]
    Field(#[from] FieldError),
}

/// One field's value as it sits on the wire.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    /// A fixed 32- or 64-bit value: no field exfilwatch reads has one.
    Fixed,
    Bytes(&'a [u8]),
}

impl<'a> Value<'a> {
    fn varint(self, field: &'static str) -> Result<u64, DecodeError> {
        match self {
            Value::Varint(v) => Ok(v),
            _ => Err(DecodeError::Shape {
                field,
                expected: "a varint",
            }),
        }
    }

    /// proto3 `int32`/enum: the low 32 bits of the varint, sign included.
    fn int32(self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(self.varint(field)? as i32)
    }

    fn uint32(self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(self.varint(field)? as u32)
    }

    fn bool(self, field: &'static str) -> Result<bool, DecodeError> {
        Ok(self.varint(field)? != 0)
    }

    fn bytes(self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        match self {
            Value::Bytes(b) => Ok(b),
            _ => Err(DecodeError::Shape {
                field,
                expected: "a length-delimited value",
            }),
        }
    }
}

/// A cursor over one message's fields.
struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf }
    }

    /// Most keys and lengths fit one or two bytes: those cases cost a comparison or two.
    #[inline(always)]
    fn varint(&mut self) -> Result<u64, DecodeError> {
        match self.buf {
            [byte, rest @ ..] if *byte < 0x80 => {
                self.buf = rest;
                Ok(u64::from(*byte))
            }
            // Keys of fields 16 to 2047 and lengths up to 16 KiB.
            [low, high, rest @ ..] if *high < 0x80 => {
                self.buf = rest;
                Ok(u64::from(*low & 0x7f) | (u64::from(*high) << 7))
            }
            _ => self.long_varint(),
        }
    }

    /// Three bytes or more: timestamps, large lengths, out-of-range values.
    #[inline(never)]
    fn long_varint(&mut self) -> Result<u64, DecodeError> {
        let buf = self.buf;
        let mut value = 0u64;
        for i in 0..buf.len().min(10) {
            let byte = buf[i];
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                self.buf = &buf[i + 1..];
                return Ok(value);
            }
        }
        Err(if buf.len() < 10 {
            DecodeError::Truncated
        } else {
            DecodeError::Varint
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// The next field, or `None` at the end of the message.
    #[inline(always)]
    fn next(&mut self) -> Result<Option<(u32, Value<'a>)>, DecodeError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).map_err(|_| DecodeError::Varint)?;
        if field == 0 {
            return Err(DecodeError::FieldZero);
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| DecodeError::Truncated)?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            wire_type => {
                return Err(DecodeError::WireType {
                    field,
                    wire_type: wire_type as u8,
                });
            }
        };
        Ok(Some((field, value)))
    }
}

/// Most labels an endpoint is expected to carry; more spill into a heap vector.
const ENDPOINT_LABELS: usize = 48;

/// Most names or query types a flow is expected to carry.
const FLOW_NAMES: usize = 8;

/// Repeated strings of one message (an endpoint's labels, a flow's names), collected without
/// allocating while there are at most `N`.
struct Labels<'a, const N: usize> {
    inline: [&'a [u8]; N],
    len: usize,
    spill: Vec<&'a [u8]>,
}

impl<'a, const N: usize> Labels<'a, N> {
    fn new() -> Self {
        Labels {
            inline: [&[]; N],
            len: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, label: &'a [u8]) {
        if self.len < N {
            self.inline[self.len] = label;
            self.len += 1;
        } else {
            if self.spill.is_empty() {
                self.spill.extend_from_slice(&self.inline);
            }
            self.spill.push(label);
        }
    }

    fn as_slice(&self) -> &[&'a [u8]] {
        if self.spill.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spill
        }
    }
}

/// Decodes Hubble messages into events, sharing strings across calls.
#[derive(Debug, Default)]
pub struct Decoder {
    tables: Tables,
}

impl Decoder {
    pub fn new(tables: Tables) -> Self {
        Decoder { tables }
    }

    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Decodes one `observer.GetFlowsResponse`. `Ok(None)` for a response that carries none
    /// of the payloads exfilwatch reads (agent or debug events, future kinds).
    pub fn decode_response(&mut self, buf: &[u8]) -> Result<Option<Event>, DecodeError> {
        let mut event = None;
        let mut node: &[u8] = &[];
        let mut time = None;
        let mut fields = Fields::new(buf);
        while let Some((field, value)) = fields.next()? {
            match field {
                1 => event = Some(Event::Flow(self.decode_flow(value.bytes("flow")?)?)),
                2 => {
                    event = Some(Event::NodeStatus(
                        self.node_status(value.bytes("node_status")?)?,
                    ))
                }
                3 => event = Some(Event::Lost(self.lost_event(value.bytes("lost_events")?)?)),
                1000 => node = value.bytes("node_name")?,
                1001 => time = Some(value.bytes("time")?),
                _ => {}
            }
        }
        // The envelope's node and time stand in for what an event leaves out.
        let mut asm = Assembler {
            tables: &mut self.tables,
        };
        match &mut event {
            Some(Event::Flow(flow)) => {
                if flow.node.is_empty() && !node.is_empty() {
                    flow.node = asm.sym("node_name", node)?;
                }
                if flow.time_ns == 0
                    && let Some(time) = time
                {
                    flow.time_ns = timestamp(time)?;
                }
            }
            Some(Event::Lost(lost)) if lost.node.is_empty() && !node.is_empty() => {
                lost.node = asm.sym("node_name", node)?;
            }
            _ => {}
        }
        Ok(event)
    }

    /// Decodes one `flow.Flow`.
    pub fn decode_flow(&mut self, buf: &[u8]) -> Result<FlowEvent, DecodeError> {
        let mut asm = Assembler {
            tables: &mut self.tables,
        };
        let mut flow = asm.empty_flow();
        let mut legacy_drop_reason = 0;
        let mut legacy_reply = false;
        let mut names = Labels::<FLOW_NAMES>::new();
        let mut egress_denied: Vec<PolicyRef> = Vec::new();
        let mut ingress_denied: Vec<PolicyRef> = Vec::new();
        let mut fields = Fields::new(buf);
        while let Some((field, value)) = fields.next()? {
            match field {
                1 => flow.time_ns = timestamp(value.bytes("time")?)?,
                2 => {
                    flow.verdict =
                        Verdict::try_from(value.int32("verdict")?).unwrap_or(Verdict::Unknown)
                }
                3 => legacy_drop_reason = value.uint32("drop_reason")?,
                5 => ip(&mut asm, &mut flow, value.bytes("IP")?)?,
                6 => l4(&mut flow, value.bytes("l4")?)?,
                8 => flow.source.endpoint = endpoint(&mut asm, &SOURCE, value.bytes("source")?)?,
                9 => {
                    flow.destination.endpoint =
                        endpoint(&mut asm, &DESTINATION, value.bytes("destination")?)?;
                }
                11 => flow.node = asm.sym("node_name", value.bytes("node_name")?)?,
                14 => names.push(value.bytes("destination_names")?),
                15 => flow.dns = l7(&mut asm, value.bytes("l7")?)?,
                16 => legacy_reply = value.bool("reply")?,
                19 => {
                    let mut f = Fields::new(value.bytes("event_type")?);
                    while let Some((n, v)) = f.next()? {
                        match n {
                            1 => flow.event_type = v.int32("event_type.type")?,
                            2 => flow.event_sub_type = v.int32("event_type.sub_type")?,
                            _ => {}
                        }
                    }
                }
                22 => {
                    flow.direction = TrafficDirection::try_from(value.int32("traffic_direction")?)
                        .unwrap_or(TrafficDirection::Unknown);
                }
                25 => flow.drop_reason = value.uint32("drop_reason_desc")?,
                26 => {
                    let mut reply = false;
                    let mut f = Fields::new(value.bytes("is_reply")?);
                    while let Some((n, v)) = f.next()? {
                        if n == 1 {
                            reply = v.bool("is_reply.value")?;
                        }
                    }
                    flow.is_reply = Some(reply);
                }
                21004 => egress_denied.push(policy(&mut asm, value.bytes("egress_denied_by")?)?),
                21005 => ingress_denied.push(policy(&mut asm, value.bytes("ingress_denied_by")?)?),
                34 => flow.uuid = parse_uuid(value.bytes("uuid")?),
                _ => {}
            }
        }
        if flow.drop_reason == 0 {
            flow.drop_reason = legacy_drop_reason;
        }
        if flow.is_reply.is_none() && legacy_reply {
            flow.is_reply = Some(true);
        }
        if names.len > 0 {
            flow.destination_names =
                asm.list("destination_names", names.as_slice().iter().copied())?;
        }
        if !egress_denied.is_empty() {
            flow.egress_denied_by = egress_denied.into_boxed_slice();
        }
        if !ingress_denied.is_empty() {
            flow.ingress_denied_by = ingress_denied.into_boxed_slice();
        }
        Ok(flow)
    }

    fn lost_event(&mut self, buf: &[u8]) -> Result<LostEvent, DecodeError> {
        let mut lost = LostEvent {
            source: LostEventSource::UnknownLostEventSource,
            count: 0,
            cpu: None,
            first_ns: None,
            last_ns: None,
            node: self.tables.strings.empty(),
        };
        let mut fields = Fields::new(buf);
        while let Some((field, value)) = fields.next()? {
            match field {
                1 => {
                    lost.source = LostEventSource::try_from(value.int32("lost_events.source")?)
                        .unwrap_or(LostEventSource::UnknownLostEventSource);
                }
                2 => lost.count = value.varint("lost_events.num_events_lost")?,
                3 => {
                    let mut cpu = 0;
                    let mut f = Fields::new(value.bytes("lost_events.cpu")?);
                    while let Some((n, v)) = f.next()? {
                        if n == 1 {
                            cpu = v.int32("lost_events.cpu.value")?;
                        }
                    }
                    lost.cpu = Some(cpu);
                }
                4 => lost.first_ns = Some(timestamp(value.bytes("lost_events.first")?)?),
                5 => lost.last_ns = Some(timestamp(value.bytes("lost_events.last")?)?),
                _ => {}
            }
        }
        Ok(lost)
    }

    fn node_status(&mut self, buf: &[u8]) -> Result<NodeStatus, DecodeError> {
        let mut status = NodeStatus {
            state: NodeState::UnknownNodeState,
            nodes: Vec::new(),
            message: String::new(),
        };
        let mut asm = Assembler {
            tables: &mut self.tables,
        };
        let mut fields = Fields::new(buf);
        while let Some((field, value)) = fields.next()? {
            match field {
                1 => {
                    status.state = NodeState::try_from(value.int32("node_status.state_change")?)
                        .unwrap_or(NodeState::UnknownNodeState);
                }
                2 => status.nodes.push(asm.sym(
                    "node_status.node_names",
                    value.bytes("node_status.node_names")?,
                )?),
                3 => {
                    status.message =
                        String::from_utf8_lossy(value.bytes("node_status.message")?).into_owned();
                }
                _ => {}
            }
        }
        Ok(status)
    }
}

/// `google.protobuf.Timestamp` as nanoseconds since the epoch.
fn timestamp(buf: &[u8]) -> Result<i64, DecodeError> {
    let (mut seconds, mut nanos) = (0i64, 0i32);
    let mut fields = Fields::new(buf);
    while let Some((field, value)) = fields.next()? {
        match field {
            1 => seconds = value.varint("timestamp.seconds")? as i64,
            2 => nanos = value.int32("timestamp.nanos")?,
            _ => {}
        }
    }
    Ok(timestamp_ns(seconds, nanos))
}

fn ip(asm: &mut Assembler<'_>, flow: &mut FlowEvent, buf: &[u8]) -> Result<(), DecodeError> {
    let mut fields = Fields::new(buf);
    while let Some((field, value)) = fields.next()? {
        match field {
            1 => flow.source.ip = asm.ip("IP.source", value.bytes("IP.source")?)?,
            2 => flow.destination.ip = asm.ip("IP.destination", value.bytes("IP.destination")?)?,
            _ => {}
        }
    }
    Ok(())
}

fn l4(flow: &mut FlowEvent, buf: &[u8]) -> Result<(), DecodeError> {
    let mut fields = Fields::new(buf);
    while let Some((field, value)) = fields.next()? {
        let protocol = match field {
            1 => L4Protocol::Tcp,
            2 => L4Protocol::Udp,
            3 => L4Protocol::Icmpv4,
            4 => L4Protocol::Icmpv6,
            5 => L4Protocol::Sctp,
            _ => continue,
        };
        flow.protocol = protocol;
        let mut inner = Fields::new(value.bytes("l4")?);
        while let Some((n, v)) = inner.next()? {
            match (protocol, n) {
                // ICMP type and code are not ports; only the protocol is kept.
                (L4Protocol::Icmpv4 | L4Protocol::Icmpv6, _) => {}
                (_, 1) => flow.source.port = v.uint32("l4.source_port")? as u16,
                (_, 2) => flow.destination.port = v.uint32("l4.destination_port")? as u16,
                (L4Protocol::Tcp, 3) => {
                    let mut f = Fields::new(v.bytes("l4.TCP.flags")?);
                    while let Some((bit, set)) = f.next()? {
                        if set.bool("l4.TCP.flags")? {
                            flow.tcp_flags.insert(TcpFlags::from_field(bit));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The shared endpoint for a `flow.Endpoint` message; its fields are read only the first time
/// these exact bytes are seen.
fn endpoint(
    asm: &mut Assembler<'_>,
    side: &Side,
    buf: &[u8],
) -> Result<Arc<super::Endpoint>, DecodeError> {
    asm.endpoint(buf, |strings| parse_endpoint(strings, side, buf))
}

fn parse_endpoint(
    strings: &mut Interner,
    side: &Side,
    buf: &[u8],
) -> Result<super::Endpoint, DecodeError> {
    let mut raw = RawPeer::default();
    let mut labels = Labels::<ENDPOINT_LABELS>::new();
    let mut fields = Fields::new(buf);
    while let Some((field, value)) = fields.next()? {
        match field {
            2 => raw.identity = value.uint32("endpoint.identity")?,
            3 => raw.namespace = value.bytes("endpoint.namespace")?,
            4 => labels.push(value.bytes("endpoint.labels")?),
            5 => raw.pod = value.bytes("endpoint.pod_name")?,
            // Only the first workload is kept: the pod's direct owner chain starts there.
            6 if raw.workload.is_empty() => {
                let mut f = Fields::new(value.bytes("endpoint.workloads")?);
                while let Some((n, v)) = f.next()? {
                    match n {
                        1 => raw.workload = v.bytes("workloads.name")?,
                        2 => raw.workload_kind = v.bytes("workloads.kind")?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(endpoint_from(
        strings,
        side,
        raw,
        labels.as_slice().iter().copied(),
    )?)
}

fn policy(asm: &mut Assembler<'_>, buf: &[u8]) -> Result<PolicyRef, DecodeError> {
    let (mut name, mut namespace, mut kind): (&[u8], &[u8], &[u8]) = (&[], &[], &[]);
    let mut fields = Fields::new(buf);
    while let Some((field, value)) = fields.next()? {
        match field {
            1 => name = value.bytes("policy.name")?,
            2 => namespace = value.bytes("policy.namespace")?,
            5 => kind = value.bytes("policy.kind")?,
            _ => {}
        }
    }
    Ok(asm.policy(name, namespace, kind)?)
}

fn l7(asm: &mut Assembler<'_>, buf: &[u8]) -> Result<Option<Box<Dns>>, DecodeError> {
    let mut response = false;
    let mut dns = None;
    let mut fields = Fields::new(buf);
    while let Some((field, value)) = fields.next()? {
        match field {
            1 => {
                response =
                    value.int32("l7.type")? == crate::proto::flow::L7FlowType::Response as i32
            }
            100 => dns = Some(value.bytes("l7.dns")?),
            _ => {}
        }
    }
    let Some(buf) = dns else { return Ok(None) };
    let mut query: &[u8] = &[];
    let mut qtypes = Labels::<FLOW_NAMES>::new();
    let mut ips = Vec::new();
    let (mut rcode, mut ttl) = (0, 0);
    let mut fields = Fields::new(buf);
    while let Some((field, value)) = fields.next()? {
        match field {
            1 => query = value.bytes("l7.dns.query")?,
            2 => {
                let raw = value.bytes("l7.dns.ips")?;
                if let Some(ip) = asm.ip("l7.dns.ips", raw)? {
                    ips.push(ip);
                }
            }
            3 => ttl = value.uint32("l7.dns.ttl")?,
            6 => rcode = value.uint32("l7.dns.rcode")?,
            7 => qtypes.push(value.bytes("l7.dns.qtypes")?),
            _ => {}
        }
    }
    let query = std::str::from_utf8(query).map_err(|_| FieldError::Utf8 {
        field: "l7.dns.query",
    })?;
    Ok(Some(Box::new(Dns {
        query: query.into(),
        rcode,
        qtypes: asm.list("l7.dns.qtypes", qtypes.as_slice().iter().copied())?,
        ips,
        ttl,
        response,
    })))
}
