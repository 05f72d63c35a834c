//! exfilwatch: catches data exfiltration from Kubernetes AI-training namespaces while it
//! happens, from Cilium Hubble flows and Prometheus egress counters.
//!
//! ```text
//! Hubble Relay ──gRPC GetFlows(follow, since, filters)──► source::hubble ─┐
//! `hubble observe -o jsonpb` file / stdin ──────────────► source::replay ─┤  Event
//! built-in Hubble-compatible server (demo) ──gRPC───────► source::hubble ─┘  (FlowEvent,
//!                                                                   │         lost events)
//!                                                      bounded mpsc ▼
//!                                                     pipeline (summary; detection later)
//! ```
//!
//! Module map:
//! - [`proto`]: the Hubble API (wire-compatible with Cilium 1.19) and raw-bytes codecs.
//! - [`flow`]: `FlowEvent`, the one internal flow type, and its protobuf and jsonpb decoders.
//! - [`intern`]: shared strings, so repeated namespaces, pods and labels cost nothing.
//! - [`source`]: flow sources: the Hubble Relay client and the capture replayer.
//! - [`sim`]: a Hubble-compatible Observer server and a training-cluster traffic simulator,
//!   for `exfilwatch demo`, the tests and the benchmarks.
//! - [`config`]: the YAML configuration, validated with precise messages.
//! - [`pipeline`]: wires sources to consumers and summarises what flowed.

pub mod alert;
pub mod api;
pub mod baseline;
pub mod commands;
pub mod config;
pub mod detect;
pub mod egress;
pub mod flow;
pub mod flows;
pub mod http;
pub mod intern;
pub mod pipeline;
pub mod proto;
pub mod sim;
pub mod source;
pub mod store;
