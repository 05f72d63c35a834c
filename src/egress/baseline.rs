//! Rolling 7-day egress baselines per namespace.
//!
//! A baseline is the namespace's 10-minute egress rate sampled at every whole hour of the
//! last 7 days. Its value at time `t` is the mean of the samples at the whole hours in
//! `[t - 7d, t]`, both ends included: exactly the points PromQL's
//! `avg_over_time(sum(rate(container_network_transmit_bytes_total{namespace=X}[10m]))[7d:1h])`
//! averages (168 of them, 169 when `t` is on the hour). An hour where the rate had no value
//! has no sample, as in PromQL. Memory is one `(hour, rate)` pair per namespace per hour.

use std::collections::BTreeMap;

use serde::Serialize;

/// Seconds in an hour.
pub const HOUR: i64 = 3600;
/// Seconds in the baseline window.
pub const WEEK: i64 = 7 * 24 * HOUR;
/// Weeks of history the hour-of-week model averages over.
pub const SEASONAL_WEEKS: i64 = 4;
/// Seconds of samples kept: four weeks for the hour-of-week model, plus a day so a 24-hour
/// dashboard range has a full window behind every point.
pub const RETAIN: i64 = SEASONAL_WEEKS * WEEK + 24 * HOUR;
/// Longest dashboard range served.
pub const MAX_RANGE: i64 = 24 * HOUR;

/// The first whole hour at or after `t`.
pub fn hour_ceil(t: i64) -> i64 {
    t.div_euclid(HOUR) * HOUR + if t.rem_euclid(HOUR) == 0 { 0 } else { HOUR }
}

/// The last whole hour at or before `t`.
pub fn hour_floor(t: i64) -> i64 {
    t.div_euclid(HOUR) * HOUR
}

/// How much of a baseline exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Less than the minimum coverage: no spike alerts.
    Learning,
    /// Enough to alert on, not yet a full week.
    Partial,
    /// A full week of hours.
    Ready,
}

/// One namespace's hourly samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Baseline {
    samples: BTreeMap<i64, f64>,
}

impl Baseline {
    pub fn insert(&mut self, hour: i64, rate: f64) {
        if rate.is_finite() && rate >= 0.0 {
            self.samples.insert(hour, rate);
        }
    }

    /// Forgets the hours older than [`RETAIN`] before `t`.
    pub fn prune(&mut self, t: i64) {
        self.samples = self.samples.split_off(&(t - RETAIN));
    }

    fn window(&self, t: i64) -> impl Iterator<Item = f64> + '_ {
        self.samples.range(t - WEEK..=t).map(|(_, v)| *v)
    }

    /// The baseline at `t`: the mean of the hourly samples in `[t - 7d, t]`.
    pub fn mean_at(&self, t: i64) -> Option<f64> {
        let (n, sum) = self.window(t).fold((0u32, 0.0), |(n, s), v| (n + 1, s + v));
        (n > 0).then(|| sum / f64::from(n))
    }

    /// The hour-of-week seasonal mean at `t`: the mean of the samples at the same hour of
    /// the week in each of the previous [`SEASONAL_WEEKS`] weeks.
    pub fn hour_of_week_at(&self, t: i64) -> Option<f64> {
        let hour = hour_floor(t);
        let values: Vec<f64> = (1..=SEASONAL_WEEKS)
            .filter_map(|k| self.samples.get(&(hour - k * WEEK)).copied())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    }

    /// The median of the samples in `[t - 7d, t]` and their median absolute deviation.
    pub fn median_mad_at(&self, t: i64) -> Option<(f64, f64)> {
        fn median(sorted: &[f64]) -> f64 {
            let n = sorted.len();
            if n % 2 == 1 {
                sorted[n / 2]
            } else {
                (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
            }
        }
        let mut values: Vec<f64> = self.window(t).collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let m = median(&values);
        let mut deviations: Vec<f64> = values.iter().map(|v| (v - m).abs()).collect();
        deviations.sort_by(f64::total_cmp);
        Some((m, median(&deviations)))
    }

    /// Hours with a sample in the window ending at `t`.
    pub fn coverage_hours(&self, t: i64) -> usize {
        self.window(t).count()
    }

    /// The state at `t` given the hours needed before alerting.
    pub fn state(&self, t: i64, min_hours: usize) -> State {
        match self.coverage_hours(t) {
            n if n < min_hours => State::Learning,
            n if n < 168 => State::Partial,
            _ => State::Ready,
        }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_includes_both_ends_like_a_promql_subquery() {
        let mut b = Baseline::default();
        let t = 1_000 * HOUR;
        for h in 0..=200 {
            b.insert(t - h * HOUR, h as f64);
        }
        // On the hour: 169 points, hours 0..=168 back.
        assert_eq!(b.coverage_hours(t), 169);
        assert_eq!(b.mean_at(t), Some(84.0));
        // Off the hour: 168 points.
        assert_eq!(b.coverage_hours(t - 1800), 168);
        assert_eq!(hour_ceil(t - 1800), t);
        assert_eq!(hour_floor(t - 1800), t - HOUR);
    }

    #[test]
    fn the_seasonal_model_compares_an_hour_with_the_same_hour_of_earlier_weeks() {
        let mut b = Baseline::default();
        let t = 10_000 * HOUR + 1800;
        // Busy on this hour of the week, quiet the rest of the time.
        for h in 0..(5 * 168) {
            let hour = hour_floor(t) - h * HOUR;
            b.insert(hour, if h % 168 == 0 { 900.0 } else { 100.0 });
        }
        assert_eq!(b.hour_of_week_at(t), Some(900.0));
        assert!(b.mean_at(t).unwrap() < 110.0);
    }

    #[test]
    fn median_and_mad_shrug_off_an_outlier() {
        let mut b = Baseline::default();
        for h in 0..168 {
            b.insert(h * HOUR, if h == 5 { 1e9 } else { 100.0 + (h % 3) as f64 });
        }
        let (median, mad) = b.median_mad_at(167 * HOUR).unwrap();
        assert_eq!((median, mad), (101.0, 1.0));
    }

    #[test]
    fn states_follow_coverage_and_bad_values_are_refused() {
        let mut b = Baseline::default();
        b.insert(0, f64::NAN);
        b.insert(HOUR, -1.0);
        assert!(b.is_empty());
        for h in 0..100 {
            b.insert(h * HOUR, 1.0);
        }
        assert_eq!(b.state(99 * HOUR, 72), State::Partial);
        assert_eq!(b.state(99 * HOUR, 120), State::Learning);
        b.prune(99 * HOUR + RETAIN);
        assert_eq!(b.len(), 1);
    }
}
