//! `scan`: one pod reaching many destinations or ports within a sliding window.

use super::*;

/// Parameters of the `scan` detector.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanParams {
    /// The sliding window distinct destinations and ports are counted in.
    pub window: Duration,
    /// Distinct destinations (FQDN, namespace/workload or address block) that make a scan.
    pub destinations: usize,
    /// Distinct (destination, port) pairs that make a scan.
    pub ports: usize,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawScan {
    window: Option<String>,
    destinations: Option<usize>,
    ports: Option<usize>,
}

pub(super) fn parse(raw: Option<Value>, report: &mut Report<'_>) -> ScanParams {
    let p: RawScan = report.params(raw);
    let mut count = |field: &str, value: Option<usize>, default: usize| {
        let n = value.unwrap_or(default);
        if !(2..=100_000).contains(&n) {
            report.problem(field, format!("{n} is not between 2 and 100000"));
        }
        n
    };
    let destinations = count("params.destinations", p.destinations, 20);
    let ports = count("params.ports", p.ports, 50);
    let window = report.duration(
        "params.window",
        p.window.as_deref(),
        Duration::from_secs(60),
    );
    if window.is_zero() || window > Duration::from_secs(3600) {
        report.problem(
            "params.window",
            format!("{window:?} must be above zero and at most 1h"),
        );
    }
    ScanParams {
        window,
        destinations,
        ports,
    }
}

impl Spec for ScanParams {
    /// Allowed and denied alike (a sweep is both), of the pod, to every destination.
    fn evidence(&self) -> Evidence {
        Evidence {
            destination: false,
            pod: Some("source_pod"),
            ..Evidence::egress(None)
        }
    }
}
