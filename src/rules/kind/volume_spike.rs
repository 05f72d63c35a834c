//! `volume_spike`: a namespace's egress rate over its window above `factor` times its baseline
//! (Prometheus' transmitted bytes; flows carry no byte counts).

use super::*;

/// What a namespace's egress is compared with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BaselineModel {
    /// The mean of the last 7 days' hourly rates: the guide's `avg_over_time(...[7d:1h])`.
    Mean,
    /// The mean of the same hour of the week over the last 4 weeks.
    HourOfWeek,
    /// The median of the last 7 days' hourly rates; the rate must also be `threshold`
    /// robust standard deviations (1.4826 x MAD) above it.
    MedianMad { threshold: f64 },
}

impl BaselineModel {
    pub fn name(self) -> &'static str {
        match self {
            BaselineModel::Mean => "mean",
            BaselineModel::HourOfWeek => "hour_of_week",
            BaselineModel::MedianMad { .. } => "median_mad",
        }
    }
}

/// Parameters of the `volume_spike` detector.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeSpikeParams {
    pub model: BaselineModel,
    pub factor: f64,
    pub window: Duration,
    pub baseline: Duration,
    pub min_coverage: Duration,
    pub floor_bytes_per_second: f64,
    pub hold_for: Duration,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawVolumeSpike {
    model: Option<String>,
    mad_threshold: Option<f64>,
    factor: Option<f64>,
    window: Option<String>,
    baseline: Option<String>,
    min_coverage: Option<String>,
    floor_bytes_per_second: Option<f64>,
    #[serde(rename = "for")]
    hold_for: Option<String>,
}

pub(super) fn parse(raw: Option<Value>, report: &mut Report<'_>) -> VolumeSpikeParams {
    let p: RawVolumeSpike = report.params(raw);
    let factor = p.factor.unwrap_or(1.5);
    if !(factor.is_finite() && factor > 1.0) {
        report.problem(
            "params.factor",
            format!("{factor} must be a number above 1"),
        );
    }
    let floor = p.floor_bytes_per_second.unwrap_or(0.0);
    if !(floor.is_finite() && floor >= 0.0) {
        report.problem(
            "params.floor_bytes_per_second",
            format!("{floor} must be zero or more"),
        );
    }
    let mad_threshold = p.mad_threshold.unwrap_or(3.0);
    if !(mad_threshold.is_finite() && mad_threshold > 0.0) {
        report.problem(
            "params.mad_threshold",
            format!("{mad_threshold} must be a number above 0"),
        );
    }
    let model = match p.model.as_deref().unwrap_or("mean") {
        "mean" => BaselineModel::Mean,
        "hour_of_week" => BaselineModel::HourOfWeek,
        "median_mad" => BaselineModel::MedianMad {
            threshold: mad_threshold,
        },
        other => {
            report.problem(
                "params.model",
                format!("{other:?} is not one of mean, hour_of_week, median_mad"),
            );
            BaselineModel::Mean
        }
    };
    VolumeSpikeParams {
        model,
        factor,
        window: report.duration(
            "params.window",
            p.window.as_deref(),
            Duration::from_secs(600),
        ),
        baseline: report.duration(
            "params.baseline",
            p.baseline.as_deref(),
            Duration::from_secs(7 * 86_400),
        ),
        min_coverage: report.duration(
            "params.min_coverage",
            p.min_coverage.as_deref(),
            Duration::from_secs(3 * 86_400),
        ),
        floor_bytes_per_second: floor,
        hold_for: report.duration("params.for", p.hold_for.as_deref(), Duration::ZERO),
    }
}

impl Spec for VolumeSpikeParams {
    fn evidence(&self) -> Evidence {
        Evidence::egress(Some("FORWARDED"))
    }

    /// The window whose rate was over the baseline.
    fn lookback(&self) -> Duration {
        self.window
    }
}
