//! The store's columns ([`Col`]: name, type, what a row holds) and one flow as a row of them.

use super::*;

/// Numeric and coded columns, in order after `seq` and `time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Col {
    Verdict,
    DropReason,
    Direction,
    Protocol,
    TcpFlags,
    /// 0 unknown, 1 request, 2 reply.
    IsReply,
    EventType,
    Node,
    SrcNamespace,
    SrcPod,
    SrcWorkload,
    SrcIp,
    SrcPort,
    SrcIdentity,
    DstNamespace,
    DstPod,
    DstWorkload,
    DstIp,
    DstPort,
    DstIdentity,
    Fqdn,
    PolicyNamespace,
    Policy,
    /// The queried name of a DNS record (requests and responses).
    DnsQuery,
    /// 0 no L7 record, 1 DNS request, 2 DNS response.
    L7,
    DnsRcode,
    /// The endpoints' Cilium labels, sorted and joined by commas (one dictionary entry per
    /// distinct set): what the policy advisor selects peers by.
    SrcLabels,
    DstLabels,
}

/// Columns a segment written by an earlier version may lack.
pub(super) const ADDED: [Col; 5] = [
    Col::DnsQuery,
    Col::L7,
    Col::DnsRcode,
    Col::SrcLabels,
    Col::DstLabels,
];

/// How a column's values are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Number,
    Text,
    Ip,
}

pub const COLUMNS: usize = 28;

/// Name and kind of every [`Col`], in order.
pub const SCHEMA: [(&str, Kind); COLUMNS] = [
    ("verdict", Kind::Number),
    ("drop_reason", Kind::Number),
    ("direction", Kind::Number),
    ("protocol", Kind::Number),
    ("tcp_flags", Kind::Number),
    ("is_reply", Kind::Number),
    ("event_type", Kind::Number),
    ("node", Kind::Text),
    ("src_namespace", Kind::Text),
    ("src_pod", Kind::Text),
    ("src_workload", Kind::Text),
    ("src_ip", Kind::Ip),
    ("src_port", Kind::Number),
    ("src_identity", Kind::Number),
    ("dst_namespace", Kind::Text),
    ("dst_pod", Kind::Text),
    ("dst_workload", Kind::Text),
    ("dst_ip", Kind::Ip),
    ("dst_port", Kind::Number),
    ("dst_identity", Kind::Number),
    ("fqdn", Kind::Text),
    ("policy_namespace", Kind::Text),
    ("policy", Kind::Text),
    ("dns_query", Kind::Text),
    ("l7", Kind::Number),
    ("dns_rcode", Kind::Number),
    ("src_labels", Kind::Text),
    ("dst_labels", Kind::Text),
];

/// The columns that hold a flow's UUID, high and low 64 bits.
pub const UUID_COLUMNS: [&str; 2] = ["uuid_hi", "uuid_lo"];
/// The row index a segment read column-first carries: where its matches are in the segment.
pub const ROW_INDEX: &str = "row";

impl Col {
    pub const ALL: [Col; COLUMNS] = [
        Col::Verdict,
        Col::DropReason,
        Col::Direction,
        Col::Protocol,
        Col::TcpFlags,
        Col::IsReply,
        Col::EventType,
        Col::Node,
        Col::SrcNamespace,
        Col::SrcPod,
        Col::SrcWorkload,
        Col::SrcIp,
        Col::SrcPort,
        Col::SrcIdentity,
        Col::DstNamespace,
        Col::DstPod,
        Col::DstWorkload,
        Col::DstIp,
        Col::DstPort,
        Col::DstIdentity,
        Col::Fqdn,
        Col::PolicyNamespace,
        Col::Policy,
        Col::DnsQuery,
        Col::L7,
        Col::DnsRcode,
        Col::SrcLabels,
        Col::DstLabels,
    ];

    pub fn name(self) -> &'static str {
        SCHEMA[self as usize].0
    }

    pub fn kind(self) -> Kind {
        SCHEMA[self as usize].1
    }
}

/// What the flow store keeps of a flow, as the pipeline hands it over: shared strings and
/// endpoints only, so making one costs no allocation.
#[derive(Debug, Clone)]
pub struct Row {
    pub time_ns: i64,
    /// Hubble's UUID; 0 when the flow had none.
    pub uuid: u128,
    pub numbers: [u32; 7],
    pub node: Sym,
    pub source: Arc<Endpoint>,
    pub source_ip: Option<IpAddr>,
    pub source_port: u16,
    pub destination: Arc<Endpoint>,
    pub destination_ip: Option<IpAddr>,
    pub destination_port: u16,
    pub fqdn: Option<Sym>,
    pub policy: Option<(Sym, Sym)>,
    /// The DNS record's name, response flag and rcode.
    pub dns: Option<(Sym, bool, u32)>,
}

impl Row {
    pub fn new(flow: &FlowEvent) -> Row {
        let policy = flow
            .egress_denied_by
            .first()
            .or(flow.ingress_denied_by.first())
            .map(|p| (p.namespace.clone(), p.name.clone()));
        Row {
            time_ns: flow.time_ns,
            uuid: flow.uuid.unwrap_or(0),
            numbers: [
                flow.verdict as u32,
                flow.drop_reason,
                flow.direction as u32,
                flow.protocol as u32,
                u32::from(flow.tcp_flags.0),
                match flow.is_reply {
                    None => 0,
                    Some(false) => 1,
                    Some(true) => 2,
                },
                u32::try_from(flow.event_type).unwrap_or(0),
            ],
            node: flow.node.clone(),
            source: flow.source.endpoint.clone(),
            source_ip: flow.source.ip,
            source_port: flow.source.port,
            destination: flow.destination.endpoint.clone(),
            destination_ip: flow.destination.ip,
            destination_port: flow.destination.port,
            fqdn: flow.destination_names.first().cloned(),
            policy,
            dns: flow
                .dns
                .as_ref()
                .map(|d| (d.query.clone(), d.response, d.rcode)),
        }
    }
}

/// An endpoint's labels as one text: sorted, joined by commas (Kubernetes label keys and
/// values cannot hold one).
pub fn join_labels(labels: &[Sym]) -> String {
    let mut sorted: Vec<&str> = labels.iter().map(|l| &**l).collect();
    sorted.sort_unstable();
    sorted.dedup();
    sorted.join(",")
}
