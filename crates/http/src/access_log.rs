//! The access log: one line per finished request (target `meridian::access`, level INFO).
//!
//! With structured (JSON) logs each fact is a field of a tracing event. With text logs the line
//! is formatted here in one pass, in the shape tracing's text format gives every other line
//! (`<RFC 3339 time>  INFO meridian::access: name=value ...`), and handed straight to the
//! binary's log writer when it installed one ([`text_access_log_to`]). Profiles of a node
//! serving small objects showed why: recording thirteen fields through tracing's visitor cost a
//! quarter of its CPU, and even one preformatted message cost a tenth, because tracing's text
//! format copies a message through its escaping writer a character at a time and formats the
//! time anew for every event.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::request::{Observer, RequestRecord};

/// The access log [`Observer`] every listener has.
pub struct AccessLog;

static STRUCTURED: AtomicBool = AtomicBool::new(false);

/// Where finished text lines go when the binary takes them directly.
type Sink = Box<dyn Fn(&[u8]) + Send + Sync>;
static TEXT_SINK: OnceLock<Sink> = OnceLock::new();

/// Whether access log lines carry their facts as separate fields (for JSON logs).
pub fn structured_access_log(on: bool) {
    STRUCTURED.store(on, Ordering::Relaxed);
}

/// Sends text access lines (each ending in a newline) to `sink` instead of through tracing's
/// formatter. Whether a line is written at all is still tracing's filter's decision
/// (`RUST_LOG=meridian::access=off` turns it off). Only the first call takes effect.
pub fn text_access_log_to(sink: impl Fn(&[u8]) + Send + Sync + 'static) {
    let _ = TEXT_SINK.set(Box::new(sink));
}

thread_local! {
    /// The line being formatted, reused from request to request.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
    /// The formatted date and time of the last whole second a line was stamped with.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl Observer for AccessLog {
    fn request_done(&self, r: &RequestRecord) {
        if STRUCTURED.load(Ordering::Relaxed) {
            log_fields(r);
            return;
        }
        if !tracing::enabled!(target: "meridian::access", tracing::Level::INFO) {
            return;
        }
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else { return log_fields(r) };
            line.clear();
            match TEXT_SINK.get() {
                Some(sink) => {
                    stamp(&mut line, SystemTime::now());
                    line.push_str("  INFO meridian::access: ");
                    write_line(&mut line, r);
                    line.push('\n');
                    sink(line.as_bytes());
                }
                None => {
                    write_line(&mut line, r);
                    tracing::info!(target: "meridian::access", "{}", line.as_str());
                }
            }
        });
    }
}

/// Appends `at` as tracing's text format writes times: `2026-12-06T00:00:31.162081Z` (UTC).
fn stamp(out: &mut String, at: SystemTime) {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let second = since_epoch.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            cached.1 = date_time(second);
            cached.0 = second;
        }
        out.push_str(&cached.1);
    });
    let micros = since_epoch.subsec_micros();
    let _ = write!(out, ".{micros:06}Z");
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time in seconds, in UTC.
fn date_time(unix_seconds: u64) -> String {
    let at = i64::try_from(unix_seconds)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let (date, clock) = (at.date(), at.time());
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        date.year(),
        u8::from(date.month()),
        date.day(),
        clock.hour(),
        clock.minute(),
        clock.second()
    )
}

/// Appends the line's `name=value` facts.
fn write_line(out: &mut String, r: &RequestRecord) {
    let mut number = itoa::Buffer::new();
    let nanos = r.duration.as_nanos();
    out.push_str("listener=");
    quoted(out, r.listener);
    // Writing to a String cannot fail.
    let _ = write!(out, " request_id={} peer={} method=", r.id, r.peer);
    out.push_str(r.method.as_str());
    out.push_str(" path=");
    out.push_str(&r.path);
    out.push_str(" status=");
    out.push_str(number.format(r.status.as_u16()));
    out.push_str(" bytes_in=");
    out.push_str(number.format(r.bytes_in));
    out.push_str(" bytes_out=");
    out.push_str(number.format(r.bytes_out));
    out.push_str(" duration_ms=");
    out.push_str(number.format(nanos / 1_000_000));
    let _ = write!(out, ".{:06}", nanos % 1_000_000);
    out.push_str(if r.completed { " completed=true principal=" } else { " completed=false principal=" });
    quoted(out, r.principal.as_deref().unwrap_or("-"));
    out.push_str(" operation=");
    quoted(out, r.operation.as_deref().unwrap_or("-"));
}

/// `value` as Rust's `{:?}` writes a string, without its per-character escaping machinery when
/// nothing needs escaping (the usual case: key names and operation names).
fn quoted(out: &mut String, value: &str) {
    if value.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(value);
        out.push('"');
    } else {
        let _ = write!(out, "{value:?}");
    }
}

fn log_fields(r: &RequestRecord) {
    tracing::info!(
        target: "meridian::access",
        listener = r.listener,
        request_id = %r.id,
        peer = %r.peer,
        method = %r.method,
        path = %r.path,
        status = r.status.as_u16(),
        bytes_in = r.bytes_in,
        bytes_out = r.bytes_out,
        duration_ms = r.duration.as_secs_f64() * 1e3,
        completed = r.completed,
        principal = r.principal.as_deref().unwrap_or("-"),
        operation = r.operation.as_deref().unwrap_or("-"),
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::request::RequestId;

    fn record(principal: &str) -> RequestRecord {
        RequestRecord {
            listener: "web",
            id: RequestId(0xAB),
            peer: "127.0.0.1:4000".parse().unwrap(),
            method: http::Method::GET,
            path: "/a b\"".into(),
            status: http::StatusCode::NOT_FOUND,
            bytes_in: 3,
            bytes_out: 9,
            duration: Duration::from_micros(21_314),
            completed: true,
            principal: Some(principal.into()),
            operation: None,
        }
    }

    #[test]
    fn the_line_names_every_fact() {
        let mut line = String::new();
        write_line(&mut line, &record("ann\"x"));
        assert_eq!(
            line,
            "listener=\"web\" request_id=00000000000000AB peer=127.0.0.1:4000 method=GET path=/a b\" status=404 \
             bytes_in=3 bytes_out=9 duration_ms=21.314000 completed=true principal=\"ann\\\"x\" operation=\"-\""
        );
    }

    #[test]
    fn quoting_matches_debug_for_every_kind_of_value() {
        for value in ["plain", "", "with space", "q\"uote", "back\\slash", "tab\there", "new\nline", "é", "\u{7f}"] {
            let mut out = String::new();
            quoted(&mut out, value);
            assert_eq!(out, format!("{value:?}"), "{value:?}");
        }
    }

    #[test]
    fn times_are_written_as_tracing_writes_them() {
        let at = UNIX_EPOCH + Duration::from_micros(1_796_515_231_162_081);
        let mut out = String::new();
        stamp(&mut out, at);
        assert_eq!(out, "2026-12-06T00:00:31.162081Z");
        // A second stamp in the same second reuses the cached date; the next second does not.
        out.clear();
        stamp(&mut out, at + Duration::from_micros(5));
        assert_eq!(out, "2026-12-06T00:00:31.162086Z");
        out.clear();
        stamp(&mut out, at + Duration::from_secs(1));
        assert_eq!(out, "2026-12-06T00:00:32.162081Z");
        out.clear();
        stamp(&mut out, UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!(out, "2000-02-29T00:00:00.000000Z");
    }
}
