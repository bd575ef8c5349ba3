//! Times to live: parsing `--ttl 12h` and showing the time a workspace
//! has left.

use jiff::{SignedDuration, Span, SpanRelativeTo};

/// A time to live that does not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "bad --ttl {input:?}: expected a positive duration such as 12h, 90m, 1.5h, 1d or 1h30m (days are 24 hours; years and months are not accepted)"
)]
pub struct TtlError {
    /// What was given.
    pub input: String,
}

/// Parse a time to live with jiff's duration formats: `12h`, `90m`, `1d`,
/// `1h30m`, `1.5h`, `2 days`, `1w`, or ISO 8601 (`PT12H`). A day is 24
/// hours; years and months (which need a calendar) and anything not
/// positive are refused.
pub fn parse_ttl(s: &str) -> Result<SignedDuration, TtlError> {
    let bad = || TtlError {
        input: s.to_owned(),
    };
    let span: Span = s.trim().parse().map_err(|_| bad())?;
    let d = span
        .to_duration(SpanRelativeTo::days_are_24_hours())
        .map_err(|_| bad())?;
    if d <= SignedDuration::ZERO {
        return Err(bad());
    }
    Ok(d)
}

/// `3d 4h`, `11h 59m`, `5m`, `40s`; `expired` when not positive.
pub fn human_left(left: SignedDuration) -> String {
    let s = left.as_secs();
    if s <= 0 {
        return "expired".into();
    }
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    match () {
        _ if d > 0 => format!("{d}d {h}h"),
        _ if h > 0 => format!("{h}h {m:02}m"),
        _ if m > 0 => format!("{m}m"),
        _ => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_parses_units_and_rejects_junk() {
        assert_eq!(parse_ttl("12h").unwrap().as_secs(), 12 * 3600);
        assert_eq!(parse_ttl("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(parse_ttl("1d").unwrap().as_secs(), 86_400);
        assert_eq!(parse_ttl("45s").unwrap().as_secs(), 45);
        assert_eq!(parse_ttl("1.5h").unwrap().as_secs(), 5400);
        assert_eq!(parse_ttl("2 days").unwrap().as_secs(), 2 * 86_400);
        assert_eq!(parse_ttl("1w").unwrap().as_secs(), 7 * 86_400);
        assert_eq!(parse_ttl("PT12H").unwrap().as_secs(), 12 * 3600);
        for bad in ["", "12", "h", "0h", "1y", "2 months", "-1h", "1h ago"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn time_left_is_short() {
        let s = SignedDuration::from_secs;
        assert_eq!(human_left(s(12 * 3600)), "12h 00m");
        assert_eq!(human_left(s(90_000)), "1d 1h");
        assert_eq!(human_left(s(300)), "5m");
        assert_eq!(human_left(s(0)), "expired");
    }
}
