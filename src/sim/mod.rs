//! A stand-in for a cluster: a Hubble-compatible Observer server ([`observer`]), the
//! traffic of an AI-training namespace ([`traffic`]) and its egress volume behind a
//! Prometheus-API-compatible endpoint ([`prometheus`]). `exfilwatch demo` runs the real
//! pipeline against them; the tests and benchmarks use them as the far end of the wire.

pub mod observer;
pub mod prometheus;
pub mod traffic;

use prost::Message;

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
