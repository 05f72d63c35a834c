//! exfilwatch: catches data exfiltration from Kubernetes AI-training namespaces while it
//! happens, from Cilium Hubble flows and Prometheus egress counters.
//!
//! ```text
//! Hubble Relay ──gRPC GetFlows(follow, since)──► source::hubble ─┐
//! Kafka topic (keyed by namespace) ────────────► source::kafka ──┤ Event (FlowEvent,
//! `hubble observe -o jsonpb` file / stdin ─────► source::replay ─┤  lost events, node status,
//! simulated cluster (demo, tests, benches) ────► sim ──gRPC──────┘  durability checkpoints)
//!                                                                │ bounded mpsc
//!                                                                ▼
//!            pipeline: per event ──► flowstore sink ──► chunks, parquet segments ──► api
//!                                                        └─► S3 bucket (shared) ─┘
//!                                ──► summary (+ denied-flows metric), cursor, progress
//!                                ──► detect::Engine (rules/) ──► alert::Manager
//! Prometheus ──► egress (sampler, baselines) ──► EgressReport ──┘        │
//!                                                        state (SQLite outbox)
//!                                                                        │
//!                                              alert::sink ──► Alertmanager API v2, webhooks
//! ```
//!
//! Layers, lowest first; a module imports only from the layers below it (checked by the
//! `layers` integration test):
//!
//! 0. [`common`]: clock, error chains, units, the YAML parser, network blocks, retry, HTTP
//!    clients.
//! 1. [`proto`]: the Hubble API (wire-compatible with Cilium 1.19) and raw-bytes codecs.
//! 2. [`flow`]: `FlowEvent`, the one internal flow type, its interned strings, and its
//!    protobuf and jsonpb decoders. [`config`]: the YAML configuration, one file per section.
//! 3. [`state`]: the SQLite state (alert outbox, baselines, learned destinations, cursors).
//!    [`rules`]: the rule model, loading, templates and the default pack.
//! 4. [`source`]: Hubble Relay, a Kafka topic and capture replay. [`egress`]: Prometheus,
//!    sampler and baselines. [`flowstore`]: the flow history (and its shared bucket,
//!    `flowstore::bucket`). [`alert`]: the alert model,
//!    manager and sinks. [`sim`]: the simulated cluster.
//! 5. [`detect`]: the engine and one file per detector. [`policy`]: the policy advisor
//!    (Cilium and Kubernetes policies evaluated against the flow store's connections, and
//!    least-privilege suggestions).
//! 6. [`pipeline`]: the per-event fan-out to its consumers.
//! 7. [`api`]: the REST API (flows, alerts, policy advisor), `/metrics`, probes and the
//!    console.
//! 8. [`app`]: assembles `run`.
//! 9. [`cli`]: one file per command.

pub mod alert;
pub mod api;
pub mod app;
pub mod cli;
pub mod common;
pub mod config;
pub mod detect;
pub mod egress;
pub mod flow;
pub mod flowstore;
pub mod pipeline;
pub mod policy;
pub mod proto;
pub mod rules;
pub mod sim;
pub mod source;
pub mod state;

/// The unit tests run on the binary's allocator, whose per-thread counts let them measure
/// what a structure really holds (see `flowstore::chunk`).
#[cfg(all(test, feature = "jemalloc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
