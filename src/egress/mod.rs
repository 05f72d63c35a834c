//! Egress volume from Prometheus: the HTTP API client ([`prometheus`]) and the sampler that
//! keeps every namespace's current 10-minute rate and hourly baseline samples ([`sampler`]).
//!
//! Flows carry no byte counts; cAdvisor's `container_network_transmit_bytes_total` does.
//! The rate is PromQL's own `sum by (namespace) (rate(...[10m]))`, so it equals what
//! Prometheus reports for `sum(rate(...{namespace=X}[10m]))`, counter resets and
//! extrapolation included.

pub mod baseline;
pub mod prometheus;
pub mod sampler;
pub mod watch;
