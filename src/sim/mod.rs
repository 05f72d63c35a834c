//! A stand-in for a cluster: a Hubble-compatible Observer server ([`observer`]), the
//! traffic of an AI-training namespace ([`traffic`]) and its egress volume behind a
//! Prometheus-API-compatible endpoint ([`prometheus`]). `exfilwatch demo` runs the real
//! pipeline against them; the tests and benchmarks use them as the far end of the wire.

pub mod observer;
pub mod prometheus;
pub mod traffic;
