//! Times to live: parsing `--ttl 12h` and showing the time a workspace
//! has left.

use jiff::SignedDuration;

/// A time to live that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("bad --ttl {input:?}: expected e.g. 12h, 90m, 1d or 1h30m")]
pub struct TtlError {
    /// What was given.
    pub input: String,
}

/// Parse a time to live: `12h`, `90m`, `1d`, `1h30m`, `45s`.
pub fn parse_ttl(s: &str) -> Result<SignedDuration, TtlError> {
    let bad = || TtlError {
        input: s.to_owned(),
    };
    let mut total: i64 = 0;
    let mut num = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit: i64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: i64 = num.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        num.clear();
        any = true;
    }
    if !num.is_empty() || !any || total <= 0 {
        return Err(bad());
    }
    Ok(SignedDuration::from_secs(total))
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
        for bad in ["", "12", "h", "0h", "1y", "-1h", "1.5h"] {
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
