//! Charts drawn on the server as inline SVG: a few hundred bytes each, no script, no library,
//! nothing for the Content-Security-Policy to allow. Colours are presentation attributes, not
//! `style`, for the same reason.

use maud::{Markup, html};

const ACCENT: &str = "#2453c7";
const MUTED: &str = "#8a93a6";
const CRITICAL: &str = "#b3261e";

/// Bytes per second as a person reads them (as the volume-spike alerts write them).
pub use crate::detect::volume_spike::human_rate as rate;

/// `HH:MM` UTC of `t` (seconds since the epoch).
fn clock(t: i64) -> String {
    let s = t.rem_euclid(86_400);
    format!("{:02}:{:02}", s / 3600, s / 60 % 60)
}

/// A bar per bucket: `(start, count)` in time order, each `step` seconds wide.
pub fn bars(buckets: &[(i64, u64)], step: i64, id: &str) -> Markup {
    let (w, h, pad) = (720.0, 120.0, 24.0);
    let max = buckets.iter().map(|b| b.1).max().unwrap_or(0).max(1) as f64;
    let n = buckets.len().max(1) as f64;
    let bar = (w - 2.0 * pad) / n;
    let f1 = |v: f64| format!("{v:.1}");
    html! {
        svg.chart id=(id) viewBox={ "0 0 " (w) " " (h) } width=(w) height=(h) role="img" aria-label="flows over time" {
            @for (i, (_, count)) in buckets.iter().enumerate() {
                @let bh = (h - 2.0 * pad) * (*count as f64) / max;
                rect x=(f1(pad + i as f64 * bar + 1.0)) y=(f1(h - pad - bh)) width=(f1((bar - 2.0).max(1.0))) height=(f1(bh)) fill=(ACCENT) {
                    title { (count) }
                }
            }
            @if let (Some(first), Some(last)) = (buckets.first(), buckets.last()) {
                text x=(pad) y=(h - 6.0) { (clock(first.0)) }
                text x=(w - pad) y=(h - 6.0) text-anchor="end" { (clock(last.0 + step)) }
                text x=(pad) y="14" { (max as u64) " flows per " (step) "s at most" }
            }
        }
    }
}

/// Lines of (time, value) series on one scale: the egress rate, its baseline and the limit
/// (the baseline times `factor`); `mark` shades a time span (the alert's).
pub fn egress(
    current: &[(i64, f64)],
    baseline: &[(i64, f64)],
    factor: Option<f64>,
    mark: Option<(i64, i64)>,
    id: &str,
    small: bool,
) -> Markup {
    let (w, h, pad) = if small {
        (240.0, 48.0, 2.0)
    } else {
        (720.0, 200.0, 28.0)
    };
    let limit: Vec<(i64, f64)> = factor
        .map(|f| baseline.iter().map(|(t, v)| (*t, v * f)).collect())
        .unwrap_or_default();
    let all = current.iter().chain(baseline).chain(&limit);
    let (t0, t1) = all.clone().fold((i64::MAX, i64::MIN), |(a, b), (t, _)| {
        (a.min(*t), b.max(*t))
    });
    let max = all.fold(0.0f64, |m, (_, v)| m.max(*v)).max(1.0);
    let x = |t: i64| pad + (w - 2.0 * pad) * (t - t0) as f64 / (t1 - t0).max(1) as f64;
    let y = |v: f64| h - pad - (h - 2.0 * pad) * v / max;
    let f1 = |v: f64| format!("{v:.1}");
    let lines = [
        (&limit[..], CRITICAL, Some("4 3")),
        (baseline, MUTED, None),
        (current, ACCENT, None),
    ];
    html! {
        svg.chart id=(id) viewBox={ "0 0 " (w) " " (h) } width=(w) height=(h) role="img" aria-label="egress rate against its baseline" {
            @if t0 >= t1 {
                text x="8" y="20" { "no data" }
            } @else {
                @if let Some((from, to)) = mark {
                    @let (a, b) = (x(from.clamp(t0, t1)), x(to.clamp(t0, t1)));
                    rect x=(f1(a)) y=(pad) width=(f1((b - a).max(2.0))) height=(f1(h - 2.0 * pad)) fill=(CRITICAL) fill-opacity="0.08" {}
                }
                @for (points, colour, dash) in lines {
                    @if !points.is_empty() {
                        @let path: Vec<String> = points.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect();
                        polyline fill="none" stroke=(colour) stroke-width="1.5" stroke-dasharray=[dash] points=(path.join(" ")) {}
                    }
                }
                @if !small {
                    text x=(pad) y="16" { (rate(max)) }
                    text x=(pad) y=(h - 8.0) { (clock(t0)) }
                    text x=(w - pad) y=(h - 8.0) text-anchor="end" { (clock(t1)) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_plain_svg_without_style_or_script() {
        let s = bars(&[(0, 3), (60, 0), (120, 7)], 60, "t").into_string();
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert_eq!(s.matches("<rect").count(), 3);
        let e = egress(
            &[(0, 10.0), (300, 40.0)],
            &[(0, 10.0), (300, 10.0)],
            Some(1.5),
            Some((200, 300)),
            "e",
            false,
        )
        .into_string();
        assert_eq!(e.matches("<polyline").count(), 3);
        for chart in [s, e] {
            assert!(
                !chart.contains("style") && !chart.contains("script"),
                "{chart}"
            );
        }
        assert_eq!(rate(36_700_000.0), "36.7 MB/s");
    }
}
