//! `FlowEvent`, the one internal flow type, and the events a flow source emits.
//!
//! Flows enter as protobuf bytes from Hubble's gRPC stream ([`wire`]) or as `hubble observe
//! -o jsonpb` lines ([`json`]); both decoders keep only what exfilwatch uses and share
//! namespaces, pods, labels and names through one [`Interner`], so a flow costs no allocation
//! for strings the decoder has seen before. What leaves is an [`Event`]: a flow, a lost-events
//! notice (a visibility gap) or a Relay node-status change.

pub mod destination;
pub mod intern;
pub mod json;
pub mod wire;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::proto::flow::{DropReason, LostEventSource, TrafficDirection, Verdict};
pub use crate::proto::relay::NodeState;

use crate::common::clock::format_time;
use intern::{BytesMemo, Interner, InvalidUtf8, Sym, SymList};

/// Monitor event type of a drop notification.
pub const EVENT_DROP: i32 = 1;
/// Monitor event type of a trace notification.
pub const EVENT_TRACE: i32 = 4;
/// Monitor event type of a policy-verdict notification.
pub const EVENT_POLICY_VERDICT: i32 = 5;
/// Monitor event type of an L7 (proxy) record.
pub const EVENT_L7: i32 = 129;

/// Layer-4 protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum L4Protocol {
    /// No L4 header was decoded.
    #[default]
    Unknown,
    Tcp,
    Udp,
    Icmpv4,
    Icmpv6,
    Sctp,
}

impl L4Protocol {
    /// The protocol's name as Hubble's JSON spells the `l4` oneof.
    pub fn as_str(self) -> &'static str {
        match self {
            L4Protocol::Unknown => "",
            L4Protocol::Tcp => "TCP",
            L4Protocol::Udp => "UDP",
            L4Protocol::Icmpv4 => "ICMPv4",
            L4Protocol::Icmpv6 => "ICMPv6",
            L4Protocol::Sctp => "SCTP",
        }
    }
}

/// TCP flags as a bit set, in the order of Hubble's `TCPFlags` fields (FIN first).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u16);

impl TcpFlags {
    pub const NAMES: [&'static str; 9] =
        ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS"];
    pub const FIN: TcpFlags = TcpFlags(1);
    pub const SYN: TcpFlags = TcpFlags(1 << 1);
    pub const RST: TcpFlags = TcpFlags(1 << 2);
    pub const ACK: TcpFlags = TcpFlags(1 << 4);

    /// The flag with `TCPFlags` field number `field` (1 = FIN .. 9 = NS).
    pub fn from_field(field: u32) -> TcpFlags {
        match field {
            1..=9 => TcpFlags(1 << (field - 1)),
            _ => TcpFlags(0),
        }
    }

    pub fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn insert(&mut self, other: TcpFlags) {
        self.0 |= other.0;
    }
}

impl fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (i, name) in Self::NAMES.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// Who is on one side of a flow: the pod and its identity, shared by every flow of the pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// Kubernetes namespace; empty for world, host and other reserved identities.
    pub namespace: Sym,
    pub pod: Sym,
    /// The first workload (Deployment, Job, ...) that owns the pod.
    pub workload: Sym,
    pub workload_kind: Sym,
    /// Cilium labels, "source:key=value".
    pub labels: SymList,
    /// Cilium security identity (2 = world, 1 = host).
    pub identity: u32,
    /// [`Endpoint::pod_key`] and [`Endpoint::workload_key`], worked out by the first reader.
    pub(crate) pod_key: Memo,
    pub(crate) workload_key: Memo,
}

impl Endpoint {
    /// A 64-bit identity of the endpoint's (namespace, pod), seeded at random per process:
    /// worked out once for an endpoint the decoder shares between flows, not on every flow.
    pub fn pod_key(&self) -> u64 {
        self.pod_key
            .get_or_init(|| pod_key(&self.namespace, &self.pod))
    }

    /// The key of the endpoint as an exact destination ([`DestinationRef::workload`]), once
    /// per endpoint the decoder shares between flows.
    ///
    /// [`DestinationRef::workload`]: destination::DestinationRef::workload
    pub fn workload_key(&self) -> u64 {
        self.workload_key.get_or_init(|| {
            destination::DestinationRef::workload(self, destination::Granularity::Exact).key()
        })
    }
}

/// The key [`Endpoint::pod_key`] gives the pod `pod` of `namespace`.
pub fn pod_key(namespace: &str, pod: &str) -> u64 {
    use std::hash::BuildHasher;
    crate::common::hash::process_seed().hash_one((namespace, pod))
}

/// One side of a flow: the endpoint (shared) and this flow's address and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub endpoint: Arc<Endpoint>,
    pub ip: Option<IpAddr>,
    pub port: u16,
}

impl std::ops::Deref for Peer {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// A network policy named by a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRef {
    pub name: Sym,
    pub namespace: Sym,
    pub kind: Sym,
}

/// The DNS record of an L7 DNS flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// The queried name. Not interned: exfiltration through DNS makes it high-cardinality.
    pub query: Arc<str>,
    pub rcode: u32,
    pub qtypes: SymList,
    pub ips: Vec<IpAddr>,
    pub ttl: u32,
    /// True for the response record, false for the request.
    pub response: bool,
}

/// One flow, with what the detectors, the flow store and the alerts need of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowEvent {
    /// Nanoseconds since the Unix epoch.
    pub time_ns: i64,
    /// Hubble's flow UUID as a number; absent on flows from agents older than Cilium 1.14.
    pub uuid: Option<u128>,
    pub verdict: Verdict,
    /// `DropReason` code (0 when not dropped); numbers unknown to this build are kept as is.
    pub drop_reason: u32,
    pub direction: TrafficDirection,
    /// Monitor event type (see the `EVENT_*` constants) and sub-type.
    pub event_type: i32,
    pub event_sub_type: i32,
    pub node: Sym,
    pub source: Peer,
    pub destination: Peer,
    pub protocol: L4Protocol,
    pub tcp_flags: TcpFlags,
    /// DNS names the destination IP is known by (needs Hubble DNS visibility).
    pub destination_names: SymList,
    pub dns: Option<Box<Dns>>,
    /// Policies that explicitly denied the flow; usually empty for default-deny drops.
    pub egress_denied_by: Box<[PolicyRef]>,
    pub ingress_denied_by: Box<[PolicyRef]>,
    /// Whether this is the reply direction of a connection; `None` when unknown.
    pub is_reply: Option<bool>,
    /// The key of the exact destination, computed by the first detector that asks (see
    /// [`FlowEvent::destination_key`]); a flow is not changed once it is read.
    pub(crate) exact_key: Memo,
}

/// A value worked out from a flow once, by whichever reader asks first. It is no part of the
/// flow's value: flows compare equal whatever their memos hold, and a copy of a flow starts
/// with an empty one (the copy may be changed before it is read).
#[derive(Default)]
pub struct Memo(AtomicU64);

impl Memo {
    /// The value, worked out by `f` on the first call. Zero stands for "not yet": a value
    /// that is zero is worked out again (as two threads asking at once may both do; `f`
    /// gives both the same answer).
    pub fn get_or_init(&self, f: impl FnOnce() -> u64) -> u64 {
        match self.0.load(Ordering::Relaxed) {
            0 => {
                let value = f();
                self.0.store(value, Ordering::Relaxed);
                value
            }
            value => value,
        }
    }
}

impl Clone for Memo {
    fn clone(&self) -> Memo {
        Memo::default()
    }
}

impl PartialEq for Memo {
    fn eq(&self, _: &Memo) -> bool {
        true
    }
}

impl Eq for Memo {}

impl fmt::Debug for Memo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Memo")
    }
}

impl FlowEvent {
    /// The drop reason's enum name, e.g. "POLICY_DENIED"; "" when the code is not known.
    pub fn drop_reason_name(&self) -> &'static str {
        drop_reason_name(self.drop_reason)
    }

    /// Key under which re-delivered copies of this flow are recognised: the UUID, or for
    /// flows without one a hash of time, node and 5-tuple.
    pub fn dedup_key(&self) -> u128 {
        if let Some(uuid) = self.uuid {
            return uuid;
        }
        use std::hash::{Hash, Hasher};
        // Fixed keys: the key must be the same for both copies of a flow, in every run.
        let mut lo = std::hash::DefaultHasher::new();
        (self.time_ns, &*self.node, self.source.ip, self.source.port).hash(&mut lo);
        let mut hi = std::hash::DefaultHasher::new();
        (
            self.destination.ip,
            self.destination.port,
            self.protocol,
            self.verdict as i32,
            self.event_type,
            self.time_ns,
        )
            .hash(&mut hi);
        (u128::from(hi.finish()) << 64) | u128::from(lo.finish())
    }

    /// The flow time formatted as RFC 3339 with nanoseconds.
    pub fn time_rfc3339(&self) -> String {
        format_time(self.time_ns)
    }
}

/// `DropReason` name for a code, "" when unknown.
pub fn drop_reason_name(code: u32) -> &'static str {
    i32::try_from(code)
        .ok()
        .and_then(|c| DropReason::try_from(c).ok())
        .map_or("", |r| r.as_str_name())
}

/// A visibility gap reported by Hubble: events it could not deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostEvent {
    pub source: LostEventSource,
    pub count: u64,
    pub cpu: Option<i32>,
    pub first_ns: Option<i64>,
    pub last_ns: Option<i64>,
    pub node: Sym,
}

/// Relay's report that nodes joined or left the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub state: NodeState,
    pub nodes: Vec<Sym>,
    pub message: String,
}

/// What a flow source emits.
// Flows are the common variant by far: boxing them to shrink the rare ones would cost an
// allocation per flow.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Flow(FlowEvent),
    Lost(LostEvent),
    NodeStatus(NodeStatus),
    /// A source's marker behind its events (the Kafka source's, before it commits offsets):
    /// once the pipeline reports checkpoint `n` durable, everything the events before it did
    /// (stored flows, alert state) is on disk.
    Checkpoint(u64),
}

/// Nanoseconds since the epoch from a protobuf timestamp's parts, saturating.
pub fn timestamp_ns(seconds: i64, nanos: i32) -> i64 {
    seconds
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(nanos))
}

/// Parses a canonical 36-character UUID ("8-4-4-4-12" hex digits) into a number.
pub fn parse_uuid(text: &[u8]) -> Option<u128> {
    if text.len() != 36 {
        return None;
    }
    uuid::Uuid::try_parse_ascii(text).ok().map(|u| u.as_u128())
}

/// Formats a UUID number in its canonical lowercase form.
pub fn format_uuid(uuid: u128) -> String {
    uuid::Uuid::from_u128(uuid).hyphenated().to_string()
}

/// Parses an IP address field; empty means absent.
fn parse_ip(text: &[u8]) -> Result<Option<IpAddr>, ()> {
    if text.is_empty() {
        return Ok(None);
    }
    if let Some(v4) = dotted_quad(text) {
        return Ok(Some(IpAddr::V4(v4)));
    }
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or(())
}

/// A canonical IPv4 address (four decimal octets, no leading zeros), read without the UTF-8
/// check and the general parser; `None` for anything else, which the standard parser then
/// decides.
#[inline]
fn dotted_quad(text: &[u8]) -> Option<Ipv4Addr> {
    if text.len() > 15 {
        return None;
    }
    let mut octets = [0u8; 4];
    let (mut part, mut value, mut digits, mut leading_zero) = (0, 0u16, 0, false);
    for &c in text {
        if c == b'.' {
            if digits == 0 || part == 3 {
                return None;
            }
            octets[part] = u8::try_from(value).ok()?;
            (part, value, digits, leading_zero) = (part + 1, 0, 0, false);
        } else if c.is_ascii_digit() {
            if leading_zero || digits == 3 {
                return None;
            }
            leading_zero = digits == 0 && c == b'0';
            value = value * 10 + u16::from(c - b'0');
            digits += 1;
        } else {
            return None;
        }
    }
    if digits == 0 || part != 3 {
        return None;
    }
    octets[3] = u8::try_from(value).ok()?;
    Some(Ipv4Addr::from(octets))
}

/// The raw pieces of an endpoint as a decoder found them, before interning.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RawPeer<'a> {
    pub namespace: &'a [u8],
    pub pod: &'a [u8],
    pub workload: &'a [u8],
    pub workload_kind: &'a [u8],
    pub identity: u32,
}

/// Why a decoded value could not become part of a `FlowEvent`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("field {field}: invalid UTF-8")]
    Utf8 { field: &'static str },
    #[error("field {field}: invalid IP address {value:?}")]
    Ip { field: &'static str, value: String },
}

impl FieldError {
    pub(crate) fn ip(field: &'static str, raw: &[u8]) -> FieldError {
        FieldError::Ip {
            field,
            value: String::from_utf8_lossy(raw).into_owned(),
        }
    }
}

/// The shared-string tables a decoder keeps across flows: strings and string lists, and
/// whole endpoints memoised by their encoding (protobuf bytes or raw JSON text), so a pod seen
/// before costs one look-up instead of a dozen.
#[derive(Debug, Default)]
pub struct Tables {
    pub strings: Interner,
    pub endpoints: BytesMemo<Endpoint>,
    /// The endpoint of a flow that names none, shared by every such flow.
    nobody: Arc<Endpoint>,
}

/// Interns decoded pieces into `FlowEvent` parts; the one place both decoders assemble from.
pub(crate) struct Assembler<'t> {
    pub tables: &'t mut Tables,
}

impl Assembler<'_> {
    pub fn sym(&mut self, field: &'static str, raw: &[u8]) -> Result<Sym, FieldError> {
        sym(&mut self.tables.strings, field, raw)
    }

    pub fn list<'a, I>(&mut self, field: &'static str, items: I) -> Result<SymList, FieldError>
    where
        I: Iterator<Item = &'a [u8]> + Clone,
    {
        self.tables
            .strings
            .intern_list(items)
            .map_err(|InvalidUtf8| FieldError::Utf8 { field })
    }

    pub fn ip(&mut self, field: &'static str, raw: &[u8]) -> Result<Option<IpAddr>, FieldError> {
        parse_ip(raw).map_err(|()| FieldError::ip(field, raw))
    }

    /// The shared endpoint whose encoding is `encoded`; `parse` runs only for a new one.
    pub fn endpoint<E>(
        &mut self,
        encoded: &[u8],
        parse: impl FnOnce(&mut Interner) -> Result<Endpoint, E>,
    ) -> Result<Arc<Endpoint>, E> {
        let Tables {
            strings, endpoints, ..
        } = &mut *self.tables;
        endpoints.get_or_try_insert(encoded, || parse(strings))
    }

    pub fn policy(
        &mut self,
        name: &[u8],
        namespace: &[u8],
        kind: &[u8],
    ) -> Result<PolicyRef, FieldError> {
        Ok(PolicyRef {
            name: self.sym("policy.name", name)?,
            namespace: self.sym("policy.namespace", namespace)?,
            kind: self.sym("policy.kind", kind)?,
        })
    }

    /// A flow with every field empty, to be filled in by a decoder.
    pub fn empty_flow(&mut self) -> FlowEvent {
        let peer = Peer {
            endpoint: self.tables.nobody.clone(),
            ip: None,
            port: 0,
        };
        FlowEvent {
            time_ns: 0,
            uuid: None,
            verdict: Verdict::Unknown,
            drop_reason: 0,
            direction: TrafficDirection::Unknown,
            event_type: 0,
            event_sub_type: 0,
            node: self.tables.strings.empty(),
            source: peer.clone(),
            destination: peer,
            protocol: L4Protocol::Unknown,
            tcp_flags: TcpFlags::default(),
            destination_names: self.tables.strings.empty_list(),
            dns: None,
            egress_denied_by: Box::default(),
            ingress_denied_by: Box::default(),
            is_reply: None,
            exact_key: Memo::default(),
        }
    }
}

fn sym(strings: &mut Interner, field: &'static str, raw: &[u8]) -> Result<Sym, FieldError> {
    strings
        .intern_bytes(raw)
        .map_err(|InvalidUtf8| FieldError::Utf8 { field })
}

/// Builds an endpoint from its decoded pieces.
pub(crate) fn endpoint_from<'a, I>(
    strings: &mut Interner,
    side: &Side,
    raw: RawPeer<'_>,
    labels: I,
) -> Result<Endpoint, FieldError>
where
    I: Iterator<Item = &'a [u8]> + Clone,
{
    Ok(Endpoint {
        namespace: sym(strings, side.namespace, raw.namespace)?,
        pod: sym(strings, side.pod, raw.pod)?,
        workload: sym(strings, side.workload, raw.workload)?,
        workload_kind: sym(strings, side.workload_kind, raw.workload_kind)?,
        labels: strings
            .intern_list(labels)
            .map_err(|InvalidUtf8| FieldError::Utf8 { field: side.labels })?,
        identity: raw.identity,
        pod_key: Memo::default(),
        workload_key: Memo::default(),
    })
}

/// The field names of one endpoint, for error messages.
#[derive(Debug)]
pub(crate) struct Side {
    name: &'static str,
    namespace: &'static str,
    pod: &'static str,
    workload: &'static str,
    workload_kind: &'static str,
    labels: &'static str,
}

pub(crate) const SOURCE: Side = Side {
    name: "source",
    namespace: "source.namespace",
    pod: "source.pod_name",
    workload: "source.workloads.name",
    workload_kind: "source.workloads.kind",
    labels: "source.labels",
};

pub(crate) const DESTINATION: Side = Side {
    name: "destination",
    namespace: "destination.namespace",
    pod: "destination.pod_name",
    workload: "destination.workloads.name",
    workload_kind: "destination.workloads.kind",
    labels: "destination.labels",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_round_trips_and_rejects_malformed_text() {
        let text = "2b5b9c5e-1f0e-4e2a-9a57-0c5fd3c1a0b7";
        let n = parse_uuid(text.as_bytes()).unwrap();
        assert_eq!(format_uuid(n), text);
        assert_eq!(parse_uuid(b"2b5b9c5e-1f0e-4e2a-9a57-0c5fd3c1a0b"), None);
        assert_eq!(parse_uuid(b"2b5b9c5e_1f0e-4e2a-9a57-0c5fd3c1a0b7"), None);
        assert_eq!(parse_uuid(b"zb5b9c5e-1f0e-4e2a-9a57-0c5fd3c1a0b7"), None);
        assert_eq!(parse_uuid(b"2B5B9C5E-1F0E-4E2A-9A57-0C5FD3C1A0B7"), Some(n));
        assert_eq!(parse_uuid(b"2b5b9c5e-1f0e-4e2a-9a57-0c5fd3c1a0g7"), None);
    }

    proptest::proptest! {
        /// The IPv4 shortcut never changes what an address reads as: the same answer as the
        /// standard parser for any text of digits and dots, and for any address's own text.
        #[test]
        fn ip_text_reads_as_the_standard_parser_reads_it(
            text in "[0-9.:a-f]{0,20}",
            octets in proptest::array::uniform4(0u8..),
        ) {
            let standard = |t: &str| if t.is_empty() { Ok(None) } else { t.parse().map(Some).map_err(|_| ()) };
            proptest::prop_assert_eq!(parse_ip(text.as_bytes()), standard(&text));
            let text = Ipv4Addr::from(octets).to_string();
            proptest::prop_assert_eq!(parse_ip(text.as_bytes()), standard(&text));
        }

        #[test]
        fn uuid_text_reads_back_as_written(n in proptest::num::u128::ANY) {
            proptest::prop_assert_eq!(parse_uuid(format_uuid(n).as_bytes()), Some(n));
            proptest::prop_assert_eq!(parse_uuid(format_uuid(n).to_uppercase().as_bytes()), Some(n));
        }
    }

    #[test]
    fn time_formats_as_rfc3339_with_nanoseconds() {
        let ns = timestamp_ns(1_623_862_333, 136_834_446);
        assert_eq!(format_time(ns), "2021-06-16T16:52:13.136834446Z");
    }

    #[test]
    fn drop_reason_names_known_codes_only() {
        assert_eq!(drop_reason_name(133), "POLICY_DENIED");
        assert_eq!(drop_reason_name(181), "POLICY_DENY");
        assert_eq!(drop_reason_name(9999), "");
    }

    #[test]
    fn tcp_flags_debug_lists_names() {
        let mut f = TcpFlags::SYN;
        f.insert(TcpFlags::ACK);
        assert_eq!(format!("{f:?}"), "SYN|ACK");
        assert!(f.contains(TcpFlags::SYN));
        assert_eq!(TcpFlags::from_field(1), TcpFlags::FIN);
    }
}
