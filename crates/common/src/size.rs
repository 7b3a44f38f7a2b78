//! Byte sizes as people write them: `4096`, `4KiB`, `10MB`, `1.5GiB`, `4G`.
//!
//! The units mean what they say, everywhere in Meridian:
//!
//! | unit (any letter case) | bytes |
//! |---|---|
//! | none, `B` | 1 |
//! | `KB`, `MB`, `GB`, `TB` | 10^3, 10^6, 10^9, 10^12 (SI) |
//! | `KiB`, `MiB`, `GiB`, `TiB` (also `Ki`, `Mi`, `Gi`, `Ti`) | 2^10, 2^20, 2^30, 2^40 |
//! | `K`, `M`, `G`, `T` alone | 2^10, 2^20, 2^30, 2^40, as in fio, qemu-img and `truncate` |
//!
//! A fraction is allowed when the result is a whole number of bytes (`1.5KiB` is 1536; `1.0001KiB`
//! is an error). Spaces around the number and between it and the unit are ignored.

use std::fmt;

use crate::decimal::split_number;

/// Why a size did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("empty size: {SIZE_HELP}")]
    Empty,
    #[error("invalid size {0:?}: it must start with a number ({SIZE_HELP})")]
    NotANumber(String),
    #[error("invalid size {text:?}: unknown unit {unit:?} ({SIZE_HELP})")]
    UnknownUnit { text: String, unit: String },
    #[error("invalid size {0:?}: not a whole number of bytes")]
    FractionalBytes(String),
    #[error("size {0:?} is too large (at most {max} bytes)", max = u64::MAX)]
    Overflow(String),
}

/// What a size looks like, for error messages.
pub const SIZE_HELP: &str = "e.g. 4096, 4KiB, 64MiB, 1.5GiB (binary) or 10MB, 2GB (SI)";

/// Parses a size in bytes; see the [module documentation](self) for the units.
///
/// ```
/// use meridian_common::size::{parse_size, SizeError};
/// assert_eq!(parse_size("10MB"), Ok(10_000_000));
/// assert_eq!(parse_size("10MiB"), Ok(10 << 20));
/// assert_eq!(parse_size("4G"), Ok(4 << 30));
/// assert!(matches!(parse_size("10XB"), Err(SizeError::UnknownUnit { .. })));
/// ```
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(SizeError::Empty);
    }
    let (number, unit) = split_number(trimmed).ok_or_else(|| SizeError::NotANumber(text.to_string()))?;
    let multiplier = unit_bytes(unit.trim())
        .ok_or_else(|| SizeError::UnknownUnit { text: text.to_string(), unit: unit.trim().to_string() })?;
    let bytes = number.times(u128::from(multiplier)).ok_or_else(|| SizeError::Overflow(text.to_string()))?;
    if bytes.remainder != 0 {
        return Err(SizeError::FractionalBytes(text.to_string()));
    }
    u64::try_from(bytes.whole).map_err(|_| SizeError::Overflow(text.to_string()))
}

fn unit_bytes(unit: &str) -> Option<u64> {
    const KIB: u64 = 1 << 10;
    let bytes = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => KIB,
        "m" | "mi" | "mib" => KIB.pow(2),
        "g" | "gi" | "gib" => KIB.pow(3),
        "t" | "ti" | "tib" => KIB.pow(4),
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    Some(bytes)
}

/// A byte count with the largest binary unit that keeps it at least 1: `4 KiB`, `1.5 MiB`,
/// `512 B`; one decimal when it is not whole.
pub fn format_size(bytes: u64) -> String {
    FormattedSize(bytes).to_string()
}

struct FormattedSize(u64);

impl fmt::Display for FormattedSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if (value - value.round()).abs() < 1e-9 {
            write!(f, "{} {}", value.round() as u64, UNITS[unit])
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_numbers_are_bytes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 10 B "), Ok(10));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn si_and_binary_units_mean_what_they_say() {
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("4KB"), Ok(4000));
        assert_eq!(parse_size("4kb"), Ok(4000));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("1TB"), Ok(1_000_000_000_000));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("64Mi"), Ok(64 << 20));
    }

    #[test]
    fn bare_letters_are_binary() {
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("16G"), Ok(16 << 30));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
    }

    #[test]
    fn fractions_must_make_whole_bytes() {
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("1.5KB"), Ok(1500));
        assert_eq!(parse_size(".5KiB"), Ok(512));
        assert_eq!(parse_size("2.KiB"), Ok(2048));
        assert_eq!(parse_size("1.0001KiB"), Err(SizeError::FractionalBytes("1.0001KiB".into())));
        assert_eq!(parse_size("0.5"), Err(SizeError::FractionalBytes("0.5".into())));
    }

    #[test]
    fn junk_is_rejected_with_the_reason() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("  "), Err(SizeError::Empty));
        assert_eq!(parse_size("KiB"), Err(SizeError::NotANumber("KiB".into())));
        assert_eq!(parse_size("-5"), Err(SizeError::NotANumber("-5".into())));
        assert_eq!(parse_size("."), Err(SizeError::NotANumber(".".into())));
        assert_eq!(parse_size("1.2.3"), Err(SizeError::NotANumber("1.2.3".into())));
        assert_eq!(parse_size("10XB"), Err(SizeError::UnknownUnit { text: "10XB".into(), unit: "XB".into() }));
        assert!(matches!(parse_size("1e3"), Err(SizeError::UnknownUnit { .. })));
        assert!(matches!(parse_size("4 parsecs"), Err(SizeError::UnknownUnit { .. })));
        assert!(matches!(parse_size("4KiB 5"), Err(SizeError::UnknownUnit { .. })));
        let message = parse_size("10XB").unwrap_err().to_string();
        assert!(message.contains("unknown unit \"XB\""), "{message}");
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_size("18446744073709551616"), Err(SizeError::Overflow("18446744073709551616".into())));
        assert_eq!(parse_size("16777216TiB"), Err(SizeError::Overflow("16777216TiB".into())));
        assert_eq!(parse_size("16777215TiB"), Ok(16_777_215 << 40));
        assert!(matches!(parse_size(&"9".repeat(60)), Err(SizeError::Overflow(_))));
    }

    #[test]
    fn formats_with_binary_units() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(4096), "4 KiB");
        assert_eq!(format_size(64 << 20), "64 MiB");
        assert_eq!(format_size(3 << 19), "1.5 MiB");
        assert_eq!(format_size(1 << 50), "1024 TiB");
        for n in [0, 4096, 3 << 29, 10 << 40] {
            assert_eq!(parse_size(&format_size(n).replace(' ', "")), Ok(n));
        }
    }
}
