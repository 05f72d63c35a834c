//! Integration tests against real components: a tonic Hubble Observer server on 127.0.0.1
//! (plain, TLS and mTLS), fixtures encoded by the upstream protobuf definitions, and the
//! `exfilwatch` binary itself.

// Test helpers panic on purpose: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

mod alertmanager;
mod cli;
mod console;
mod deploy;
mod dns_corpus;
mod evidence;
mod flow_api;
mod flow_store_memory;
mod fuzz;
mod hostile;
mod hubble_stream;
mod hubble_tls;
mod kafka_source;
mod layers;
mod policy_advisor;
mod prometheus;
mod reload;
mod replay;
mod shared_history;
mod soak;
mod supply_chain;
mod support;
mod wire_compat;
