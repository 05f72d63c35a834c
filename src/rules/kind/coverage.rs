//! `coverage`: the service's own blind spots: Hubble reporting lost events, or its stream down.

use super::*;

/// Parameters of the `coverage` detector.
#[derive(Debug, Clone, PartialEq)]
pub struct CoverageParams {
    pub window: Duration,
    /// Events Hubble reported lost within `window` that make a gap worth an alert.
    pub lost_events: u64,
    /// How long the Hubble stream may be down before it is an alert.
    pub stream_down_after: Duration,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawCoverage {
    window: Option<String>,
    lost_events: Option<u64>,
    stream_down_after: Option<String>,
}

pub(super) fn parse(raw: Option<Value>, report: &mut Report<'_>) -> CoverageParams {
    let p: RawCoverage = report.params(raw);
    let lost_events = p.lost_events.unwrap_or(1000);
    if lost_events == 0 {
        report.problem("params.lost_events", "must be at least 1");
    }
    CoverageParams {
        window: report.duration(
            "params.window",
            p.window.as_deref(),
            Duration::from_secs(300),
        ),
        lost_events: lost_events.max(1),
        stream_down_after: report.duration(
            "params.stream_down_after",
            p.stream_down_after.as_deref(),
            Duration::from_secs(120),
        ),
    }
}

impl Spec for CoverageParams {
    /// Every flow of the namespace, either side: what the gap may have hidden.
    fn evidence(&self) -> Evidence {
        Evidence {
            side: "namespace",
            verdict: None,
            destination: false,
            pod: None,
        }
    }

    /// The window the lost events were counted in.
    fn lookback(&self) -> Duration {
        self.window
    }
}
