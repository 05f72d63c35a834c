//! Durations and byte sizes as people write them in configuration, rules and query
//! parameters: "250ms", "10s", "5m", "7d"; "512MiB", "10GiB", "100MB".
//!
//! Parsing is `humantime`'s and `bytesize`'s; this module adds the messages that name the
//! text and what was expected.

use std::time::Duration;

/// Parses a duration with a unit: "250ms", "10s", "5m", "1h", "7d" (or "1h 30m").
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    humantime::parse_duration(text).map_err(|e| {
        format!("invalid duration {text:?}: {e}; expected a number and a unit, e.g. 30s, 5m, 7d")
    })
}

/// Parses a byte size: "1048576", "512MiB", "10GiB", "100MB" (KB, MB, ... are powers of 1000).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let size: bytesize::ByteSize = text.parse().map_err(|e| {
        format!("invalid size {text:?}: {e}; expected a number and a unit, e.g. 512MiB")
    })?;
    // bytesize saturates what does not fit in 64 bits.
    if size.as_u64() == u64::MAX {
        return Err(format!("invalid size {text:?}: too large"));
    }
    Ok(size.as_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration(" 7d "), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("m").is_err());
        assert!(
            parse_duration("5 parsecs")
                .unwrap_err()
                .contains("\"5 parsecs\"")
        );
    }

    #[test]
    fn sizes_in_binary_and_decimal_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert!(parse_size("99999999999TB").is_err());
        assert!(
            parse_size("12 parsecs")
                .unwrap_err()
                .contains("\"12 parsecs\"")
        );
    }
}
