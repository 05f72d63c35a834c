//! Charts drawn on the server as inline SVG: a few hundred bytes each, no script, no library,
//! nothing for the Content-Security-Policy to allow. Colours are presentation attributes, not
//! `style`, for the same reason.

use std::fmt::Write as _;

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
pub fn bars(buckets: &[(i64, u64)], step: i64, id: &str) -> String {
    let (w, h, pad) = (720.0, 120.0, 24.0);
    let max = buckets.iter().map(|b| b.1).max().unwrap_or(0).max(1) as f64;
    let n = buckets.len().max(1) as f64;
    let bar = (w - 2.0 * pad) / n;
    let mut out = format!(
        "<svg class=\"chart\" id=\"{id}\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"flows over time\">"
    );
    for (i, (_, count)) in buckets.iter().enumerate() {
        let bh = (h - 2.0 * pad) * (*count as f64) / max;
        let _ = write!(
            out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{ACCENT}\"><title>{count}</title></rect>",
            pad + i as f64 * bar + 1.0,
            h - pad - bh,
            (bar - 2.0).max(1.0)
        );
    }
    if let (Some(first), Some(last)) = (buckets.first(), buckets.last()) {
        let _ = write!(
            out,
            "<text x=\"{pad}\" y=\"{:.0}\">{}</text><text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">{}</text><text x=\"{pad}\" y=\"14\">{} flows per {}s at most</text>",
            h - 6.0,
            clock(first.0),
            w - pad,
            h - 6.0,
            clock(last.0 + step),
            max as u64,
            step
        );
    }
    out.push_str("</svg>");
    out
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
) -> String {
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
    let mut out = format!(
        "<svg class=\"chart\" id=\"{id}\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"egress rate against its baseline\">"
    );
    if t0 >= t1 {
        out.push_str("<text x=\"8\" y=\"20\">no data</text></svg>");
        return out;
    }
    let x = |t: i64| pad + (w - 2.0 * pad) * (t - t0) as f64 / (t1 - t0) as f64;
    let y = |v: f64| h - pad - (h - 2.0 * pad) * v / max;
    if let Some((from, to)) = mark {
        let (a, b) = (x(from.clamp(t0, t1)), x(to.clamp(t0, t1)));
        let _ = write!(
            out,
            "<rect x=\"{a:.1}\" y=\"{pad}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{CRITICAL}\" fill-opacity=\"0.08\"/>",
            (b - a).max(2.0),
            h - 2.0 * pad
        );
    }
    for (points, colour, dash) in [
        (&limit, CRITICAL, " stroke-dasharray=\"4 3\""),
        (&baseline.to_vec(), MUTED, ""),
        (&current.to_vec(), ACCENT, ""),
    ] {
        if points.is_empty() {
            continue;
        }
        let path: Vec<String> = points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let _ = write!(
            out,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\"{dash} points=\"{}\"/>",
            path.join(" ")
        );
    }
    if !small {
        let _ = write!(
            out,
            "<text x=\"{pad}\" y=\"16\">{}</text><text x=\"{pad}\" y=\"{:.0}\">{}</text><text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">{}</text>",
            rate(max),
            h - 8.0,
            clock(t0),
            w - pad,
            h - 8.0,
            clock(t1)
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_plain_svg_without_style_or_script() {
        let s = bars(&[(0, 3), (60, 0), (120, 7)], 60, "t");
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert_eq!(s.matches("<rect").count(), 3);
        let e = egress(
            &[(0, 10.0), (300, 40.0)],
            &[(0, 10.0), (300, 10.0)],
            Some(1.5),
            Some((200, 300)),
            "e",
            false,
        );
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
