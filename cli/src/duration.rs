//! Durations on the command line: `500ms`, `30s`, `5m`, `2h`, or sums such as `1m30s`.
//!
//! Every duration is bounded, so that no input can overflow a clock
//! computation: at most [`MAX_DURATION`] (about a century), and a ttl at
//! least [`MIN_TTL`].

use std::time::Duration;

/// The longest duration accepted anywhere: 876000h (100 × 365 days).
pub const MAX_DURATION: Duration = Duration::from_secs(876_000 * 3600);

/// The shortest ttl: a lease must be refreshable in time (every ttl/3).
pub const MIN_TTL: Duration = spacelock_client::MIN_TTL;

/// Parses a duration: one or more `<integer><unit>` parts, unit one of
/// `ms`, `s`, `m`, `h`, at most [`MAX_DURATION`]. A bare number is rejected
/// (the unit is never guessed).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad =
        |why: &str| format!("invalid duration {text:?}: {why} (examples: 500ms, 30s, 5m, 1m30s)");
    let s = text.trim();
    if s.is_empty() {
        return Err(bad("empty"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("expected a number"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| bad("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = rest.split_at(unit_len);
        let part = match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "" => return Err(bad("missing unit (ms, s, m or h)")),
            _ => return Err(bad("unknown unit (use ms, s, m or h)")),
        }
        .ok_or_else(|| bad("too large"))?;
        total = total.checked_add(part).ok_or_else(|| bad("too large"))?;
        rest = after;
    }
    if total > MAX_DURATION {
        return Err(bad("too large (at most 876000h)"));
    }
    Ok(total)
}

/// Like [`parse_duration`], but at least [`MIN_TTL`] (for the ttl: a shorter
/// lease cannot be refreshed in time and would always be lost).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < MIN_TTL {
        return Err(format!(
            "invalid ttl {text:?}: at least {} (the lease is refreshed every ttl/3)",
            format_duration(MIN_TTL)
        ));
    }
    Ok(d)
}

/// Formats a duration compactly for messages: `500ms`, `30s`, `5m`, `1m30s`, `1.25s`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms % 1000 != 0 {
        let s = ms as f64 / 1000.0;
        return format!("{s}s");
    }
    let secs = ms / 1000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 10s "), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "  ",
            "30",
            "s",
            "-5s",
            "5 s",
            "1.5s",
            "5sec",
            "5S",
            "ms",
            "3d",
            "1m30",
            "99999999999999999999s",
            "18446744073709551615h",
            "5124095576030431h",
            "876001h",
            "876000h1ms",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        let msg = parse_duration("30").unwrap_err();
        assert!(msg.contains("missing unit"), "{msg}");
    }

    #[test]
    fn the_largest_duration_is_accepted_and_overflows_nothing() {
        assert_eq!(parse_duration("876000h"), Ok(MAX_DURATION));
        let now = std::time::Instant::now();
        assert!(now.checked_add(MAX_DURATION).is_some());
        let t = tokio::time::Instant::now();
        assert!(t.checked_add(MAX_DURATION).is_some());
        let msg = parse_duration("5124095576030431h").unwrap_err();
        assert!(msg.contains("too large"), "{msg}");
    }

    #[test]
    fn ttl_has_a_minimum() {
        for bad in ["0ms", "0s0ms", "1ms", "9ms"] {
            let msg = parse_ttl(bad).unwrap_err();
            assert!(msg.contains("at least 10ms"), "{bad}: {msg}");
        }
        assert_eq!(parse_ttl("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_ttl("30s"), Ok(Duration::from_secs(30)));
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format_duration(Duration::from_millis(300)), "300ms");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(3661)), "1h1m1s");
        assert_eq!(format_duration(Duration::from_millis(1250)), "1.25s");
    }
}
