//! Exact reading of the decimal numbers in sizes and durations (no floating point, so `1.1KB`
//! is 1100 bytes, not 1099).

/// A non-negative decimal number read exactly: `digits.fraction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decimal<'a> {
    whole: &'a str,
    fraction: &'a str,
}

/// `Decimal × multiplier` split into its whole part and the remainder of the fraction.
pub(crate) struct Product {
    pub(crate) whole: u128,
    /// Non-zero when the product has a fractional part.
    pub(crate) remainder: u128,
}

/// Digits of a fraction beyond this many are dropped: they cannot change a whole byte or
/// nanosecond count of any supported unit.
const MAX_FRACTION_DIGITS: usize = 20;

impl Decimal<'_> {
    /// `self × multiplier`, or `None` on overflow.
    pub(crate) fn times(self, multiplier: u128) -> Option<Product> {
        let whole: u128 = if self.whole.is_empty() { 0 } else { self.whole.parse().ok()? };
        let fraction = &self.fraction[..self.fraction.len().min(MAX_FRACTION_DIGITS)];
        let scale = 10u128.pow(fraction.len() as u32);
        let numerator: u128 = if fraction.is_empty() { 0 } else { fraction.parse().ok()? };
        let scaled = numerator.checked_mul(multiplier)?;
        let product = whole.checked_mul(multiplier)?.checked_add(scaled / scale)?;
        Some(Product { whole: product, remainder: scaled % scale })
    }
}

/// Splits `text` into a leading decimal number (`12`, `1.5`, `.5`, `3.`) and what follows it.
/// `None` if it does not start with one.
pub(crate) fn split_number(text: &str) -> Option<(Decimal<'_>, &str)> {
    let end = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, rest) = text.split_at(end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let well_formed = !fraction.contains('.') && (!whole.is_empty() || !fraction.is_empty());
    well_formed.then_some((Decimal { whole, fraction }, rest))
}
