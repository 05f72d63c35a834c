//! A stand-in for a cluster: a Hubble-compatible Observer server ([`observer`]), the
//! traffic of an AI-training namespace ([`traffic`]), DNS tunnels ([`dns`]) and its egress
//! volume behind a
//! Prometheus-API-compatible endpoint ([`prometheus`]). `exfilwatch demo` runs the real
//! pipeline against them; the tests and benchmarks use them as the far end of the wire.

pub mod dns;
pub mod observer;
pub mod prometheus;
pub mod traffic;

use prost::Message;

use crate::flow::wire::Decoder;
use crate::flow::{Event, FlowEvent};
use crate::proto::flow::Flow;
use crate::proto::observer::GetFlowsResponse;
use crate::proto::observer::get_flows_response::ResponseTypes;

/// `flow` in the `GetFlowsResponse` Relay sends it in, with the flow's node and time.
pub fn response(flow: Flow) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: flow.node_name.clone(),
        time: flow.time,
        response_types: Some(ResponseTypes::Flow(flow)),
    }
}

/// `flow` as bytes on the wire: its response, encoded.
pub fn encode(flow: Flow) -> Vec<u8> {
    response(flow).encode_to_vec()
}

/// `flow` as the service sees it: sent as Relay sends it, read by the wire decoder. `None`
/// when the decoder refuses it.
pub fn received(decoder: &mut Decoder, flow: Flow) -> Option<FlowEvent> {
    match decoder.decode_response(&encode(flow)) {
        Ok(Some(Event::Flow(f))) => Some(f),
        _ => None,
    }
}
