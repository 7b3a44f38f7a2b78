//! Durations as people write them: `500ms`, `90s`, `5m` (or `5min`), `2h`, `7d`, compounds such
//! as `1m30s` or `1h 30m`, fractions such as `1.5s`, and a bare number meaning seconds (`90`).
//!
//! Units are lower case: `ms`, `s`, `m`/`min`, `h`, `d` (24 h). Every term but a lone bare
//! number needs a unit. Fractions are exact down to the nanosecond. Bounds (a TTL's at least
//! 1 ms, say) are the caller's business: this accepts anything from zero up to
//! [`Duration::MAX`].

use std::time::Duration;

use crate::decimal::split_number;

/// Why a duration did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration: {DURATION_HELP}")]
    Empty,
    #[error("invalid duration {0:?}: expected a number ({DURATION_HELP})")]
    NotANumber(String),
    #[error("invalid duration {text:?}: unknown unit {unit:?} ({DURATION_HELP})")]
    UnknownUnit { text: String, unit: String },
    #[error("invalid duration {0:?}: a number in a compound duration needs a unit ({DURATION_HELP})")]
    MissingUnit(String),
    #[error("duration {0:?} is too long")]
    Overflow(String),
}

/// What a duration looks like, for error messages.
pub const DURATION_HELP: &str = "use a number with a unit, e.g. 500ms, 90s, 5m, 2h, 7d or 1m30s";

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses a duration; see the [module documentation](self) for the grammar.
///
/// ```
/// use std::time::Duration;
/// use meridian_common::duration::parse_duration;
/// assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
/// assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
/// assert!(parse_duration("5 parsecs").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut rest = trimmed;
    let mut total_nanos: u128 = 0;
    let mut terms = 0;
    while !rest.is_empty() {
        let (number, after) = split_number(rest).ok_or_else(|| DurationError::NotANumber(text.to_string()))?;
        let after = after.trim_start();
        let unit_end = after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        terms += 1;
        let unit_nanos = match unit {
            // Only a lone number may omit its unit: in `1m30` the 30 is ambiguous.
            "" if terms == 1 && next.is_empty() => NANOS_PER_SEC,
            "" => return Err(DurationError::MissingUnit(text.to_string())),
            _ => unit_nanos(unit)
                .ok_or_else(|| DurationError::UnknownUnit { text: text.to_string(), unit: unit.to_string() })?,
        };
        let overflow = || DurationError::Overflow(text.to_string());
        let term = number.times(unit_nanos).ok_or_else(overflow)?.whole;
        total_nanos = total_nanos.checked_add(term).ok_or_else(overflow)?;
        rest = next.trim_start();
    }
    to_duration(total_nanos).ok_or_else(|| DurationError::Overflow(text.to_string()))
}

fn unit_nanos(unit: &str) -> Option<u128> {
    let nanos = match unit {
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" | "min" => 60 * NANOS_PER_SEC,
        "h" => 3600 * NANOS_PER_SEC,
        "d" => 86_400 * NANOS_PER_SEC,
        _ => return None,
    };
    Some(nanos)
}

fn to_duration(nanos: u128) -> Option<Duration> {
    let secs = u64::try_from(nanos / NANOS_PER_SEC).ok()?;
    // The remainder is below 10^9, so it fits.
    let subsec = (nanos % NANOS_PER_SEC) as u32;
    Some(Duration::new(secs, subsec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Duration {
        parse_duration(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn every_unit() {
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("90s"), Duration::from_secs(90));
        assert_eq!(ok("5m"), Duration::from_secs(300));
        assert_eq!(ok("5min"), Duration::from_secs(300));
        assert_eq!(ok("2h"), Duration::from_secs(7200));
        assert_eq!(ok("7d"), Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn bare_number_is_seconds() {
        assert_eq!(ok("90"), Duration::from_secs(90));
        assert_eq!(ok(" 1.5 "), Duration::from_millis(1500));
        assert_eq!(ok("0"), Duration::ZERO);
    }

    #[test]
    fn compounds_add_up() {
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1h 30m"), Duration::from_secs(5400));
        assert_eq!(ok("1d2h3m4s5ms"), Duration::from_millis(93_784_005));
        assert_eq!(ok("2 s"), Duration::from_secs(2));
    }

    #[test]
    fn fractions_are_exact() {
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("1.5m"), Duration::from_secs(90));
        assert_eq!(ok("0.1s"), Duration::from_millis(100));
        assert_eq!(ok(".25h"), Duration::from_secs(900));
        assert_eq!(ok("0.5ms"), Duration::from_micros(500));
        assert_eq!(ok("0.0000000001s"), Duration::ZERO);
    }

    #[test]
    fn junk_is_rejected_with_the_reason() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("ms"), Err(DurationError::NotANumber("ms".into())));
        assert_eq!(parse_duration("-5s"), Err(DurationError::NotANumber("-5s".into())));
        assert_eq!(parse_duration("1m30"), Err(DurationError::MissingUnit("1m30".into())));
        assert_eq!(parse_duration("5 30s"), Err(DurationError::MissingUnit("5 30s".into())));
        assert_eq!(
            parse_duration("5 parsecs"),
            Err(DurationError::UnknownUnit { text: "5 parsecs".into(), unit: "parsecs".into() })
        );
        for bad in ["200y", "1e3s", "5S", "1.2.3s", "5s!"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(parse_duration("200y").unwrap_err().to_string().contains("unknown unit \"y\""));
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert_eq!(ok("18446744073709551615s"), Duration::from_secs(u64::MAX));
        assert_eq!(
            parse_duration("18446744073709551616s"),
            Err(DurationError::Overflow("18446744073709551616s".into()))
        );
        assert!(matches!(parse_duration("300000000000000d"), Err(DurationError::Overflow(_))));
        assert!(matches!(parse_duration(&"9".repeat(50)), Err(DurationError::Overflow(_))));
    }
}
