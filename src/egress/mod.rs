//! Egress volume from Prometheus: the HTTP API client ([`prometheus`]), the sampler that
//! keeps every namespace's current 10-minute rate and hourly baseline samples ([`sampler`]),
//! the rolling 7-day baselines themselves ([`baseline`]), and the task that evaluates them
//! every interval into an `EgressReport` for the engine and the dashboards ([`watch`]).
//!
//! Flows carry no byte counts; cAdvisor's `container_network_transmit_bytes_total` does.
//! The rate is PromQL's own `sum by (namespace) (rate(...[10m]))`, so it equals what
//! Prometheus reports for `sum(rate(...{namespace=X}[10m]))`, counter resets and
//! extrapolation included.

pub mod baseline;
pub mod prometheus;
pub mod sampler;
pub mod watch;
