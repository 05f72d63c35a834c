//! Wall-clock time as the service reports it: nanoseconds since the Unix epoch, and RFC 3339.
//!
//! Intervals, windows and timers use `tokio::time::Instant` instead (pausable in tests).

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, span_ns)
}

/// `span` in nanoseconds, as flow times are compared with it; a span too long for 64 bits
/// (about 292 years) counts as forever.
pub fn span_ns(span: std::time::Duration) -> i64 {
    i64::try_from(span.as_nanos()).unwrap_or(i64::MAX)
}

/// RFC 3339 with nanoseconds, the form Hubble's JSON and Alertmanager use.
pub fn format_time(time_ns: i64) -> String {
    prost_types::Timestamp {
        seconds: time_ns.div_euclid(1_000_000_000),
        nanos: i32::try_from(time_ns.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_rfc3339_with_their_nanoseconds() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_time(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert!(now_ns() > 1_700_000_000_000_000_000);
    }
}
