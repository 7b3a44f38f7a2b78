//! Reading one cookie from a request's `Cookie` headers.

/// The value of cookie `name` in the given `Cookie` header values (`a=1; b=2`), the first
/// one when several carry it.
///
/// ```
/// use meridian_common::cookie::cookie_value;
/// assert_eq!(cookie_value(["theme=dark; sid=abc"], "sid"), Some("abc"));
/// assert_eq!(cookie_value(["sid=abc"], "si"), None);
/// ```
pub fn cookie_value<'a>(header_values: impl IntoIterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    header_values
        .into_iter()
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}
