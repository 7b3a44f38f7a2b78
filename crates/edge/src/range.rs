//! `Range` requests: parsing, resolving against an object's size, and the
//! `multipart/byteranges` body for several ranges.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use meridian_engine::{Body, BodyError, ByteRange};

/// More ranges than this in one request are ignored (the whole object is sent), as RFC 9110
/// allows: many tiny ranges cost far more than they save.
pub const MAX_RANGES: usize = 32;

/// The ranges of a `Range` header; `None` when the header must be ignored (another unit, bad
/// syntax, too many ranges).
pub fn parse(header: &str) -> Option<Vec<ByteRange>> {
    let specs = header.trim().strip_prefix("bytes=")?;
    let ranges: Option<Vec<ByteRange>> = specs.split(',').map(|spec| parse_one(spec.trim())).collect();
    ranges.filter(|r| !r.is_empty() && r.len() <= MAX_RANGES)
}

fn parse_one(spec: &str) -> Option<ByteRange> {
    let (first, last) = spec.split_once('-')?;
    if first.is_empty() {
        return Some(ByteRange::Suffix { len: last.parse().ok()? });
    }
    let first = first.parse().ok()?;
    let last = if last.is_empty() { None } else { Some(last.parse().ok()?) };
    if last.is_some_and(|last| last < first) {
        return None;
    }
    Some(ByteRange::From { first, last })
}

/// The satisfiable ranges, inclusive, in order, overlapping or adjacent ones merged. Empty when
/// none is satisfiable (416).
pub fn resolve(ranges: &[ByteRange], size: u64) -> Vec<(u64, u64)> {
    let mut resolved: Vec<(u64, u64)> = ranges.iter().filter_map(|r| r.resolve(size).ok()).collect();
    resolved.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(resolved.len());
    for (first, last) in resolved {
        match merged.last_mut() {
            Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
            _ => merged.push((first, last)),
        }
    }
    merged
}

/// A `multipart/byteranges` body cut from one read of the bytes from the first range's start
/// to the last range's end (so every part comes from the same version of the object).
pub struct Multipart {
    pub boundary: String,
    /// Part heads and the closing delimiter, in order: `heads[i]` precedes range `i`.
    heads: Vec<Bytes>,
    ranges: Vec<(u64, u64)>,
}

impl Multipart {
    pub fn new(ranges: Vec<(u64, u64)>, size: u64, content_type: &str) -> Multipart {
        let boundary = format!("meridian-{:016x}", rand::random::<u64>());
        let mut heads: Vec<Bytes> = ranges
            .iter()
            .enumerate()
            .map(|(i, (first, last))| {
                let lead = if i == 0 { "" } else { "\r\n" };
                Bytes::from(format!(
                    "{lead}--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: bytes {first}-{last}/{size}\r\n\r\n"
                ))
            })
            .collect();
        heads.push(Bytes::from(format!("\r\n--{boundary}--\r\n")));
        Multipart { boundary, heads, ranges }
    }

    /// The whole body's length.
    pub fn content_length(&self) -> u64 {
        let heads: u64 = self.heads.iter().map(|h| h.len() as u64).sum();
        heads + self.ranges.iter().map(|(first, last)| last - first + 1).sum::<u64>()
    }

    /// The span to read: from the first range's start to the last one's end, inclusive.
    pub fn covering(&self) -> (u64, u64) {
        (self.ranges[0].0, self.ranges[self.ranges.len() - 1].1)
    }

    /// The body, given the bytes of [`Multipart::covering`].
    pub fn body(self, covering: Body) -> impl Stream<Item = Result<Bytes, BodyError>> + Send {
        let start = self.ranges[0].0;
        let wanted: Vec<(u64, u64)> = self.ranges.iter().map(|(f, l)| (f - start, l - start + 1)).collect();
        let state = Cut {
            source: covering,
            pos: 0,
            pending: Bytes::new(),
            heads: self.heads.into_iter(),
            wanted,
            next: 0,
            in_range: false,
        };
        futures::stream::unfold(state, Cut::step)
    }
}

/// Walks the covering bytes, emitting each part's head, then the bytes of its range, skipping
/// the gaps between ranges.
struct Cut {
    source: Body,
    /// Offset (within the covering span) of `pending`'s first byte.
    pos: u64,
    pending: Bytes,
    heads: std::vec::IntoIter<Bytes>,
    /// Ranges as `[from, to)` within the covering span.
    wanted: Vec<(u64, u64)>,
    next: usize,
    in_range: bool,
}

impl Cut {
    async fn step(mut self) -> Option<(Result<Bytes, BodyError>, Cut)> {
        loop {
            if !self.in_range {
                let head = self.heads.next()?;
                self.in_range = self.next < self.wanted.len();
                return Some((Ok(head), self));
            }
            let (from, to) = self.wanted[self.next];
            if self.pending.is_empty() {
                match self.source.next().await {
                    Some(Ok(chunk)) => self.pending = chunk,
                    Some(Err(e)) => return Some((Err(e), self)),
                    None => return Some((Err("the object ended before the requested ranges".into()), self)),
                }
                continue;
            }
            let end = self.pos + self.pending.len() as u64;
            if end <= from {
                self.pos = end;
                self.pending = Bytes::new();
                continue;
            }
            if self.pos < from {
                let skip = (from - self.pos) as usize;
                self.pending = self.pending.slice(skip..);
                self.pos = from;
            }
            let take = (to - self.pos).min(self.pending.len() as u64) as usize;
            let out = self.pending.split_to(take);
            self.pos += take as u64;
            if self.pos == to {
                self.next += 1;
                self.in_range = false;
            }
            return Some((Ok(out), self));
        }
    }
}

/// Collects a body (tests).
#[cfg(test)]
async fn collect(stream: impl Stream<Item = Result<Bytes, BodyError>>) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    futures::pin_mut!(stream);
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    out.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_or_are_ignored() {
        assert_eq!(parse("bytes=0-9"), Some(vec![ByteRange::From { first: 0, last: Some(9) }]));
        assert_eq!(
            parse("bytes=5-, -3"),
            Some(vec![ByteRange::From { first: 5, last: None }, ByteRange::Suffix { len: 3 }])
        );
        for ignored in ["items=0-1", "bytes=", "bytes=a-b", "bytes=9-1", "bytes=1"] {
            assert_eq!(parse(ignored), None, "{ignored}");
        }
        let many = format!("bytes={}", vec!["0-0"; MAX_RANGES + 1].join(","));
        assert_eq!(parse(&many), None);
    }

    #[test]
    fn ranges_resolve_sorted_and_merged() {
        let r = parse("bytes=50-59,0-9,5-14,100-200,-5").unwrap();
        assert_eq!(resolve(&r, 80), vec![(0, 14), (50, 59), (75, 79)]);
        assert!(resolve(&parse("bytes=100-").unwrap(), 80).is_empty());
    }

    #[tokio::test]
    async fn multipart_bodies_hold_exactly_the_ranges() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let ranges = vec![(10, 19), (500, 504), (990, 999)];
        let multipart = Multipart::new(ranges.clone(), 1000, "video/mp4");
        let (first, last) = multipart.covering();
        // Deliver the covering bytes in awkward chunk sizes.
        let covering: Vec<Result<Bytes, BodyError>> =
            data[first as usize..=last as usize].chunks(7).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let expected_len = multipart.content_length();
        let boundary = multipart.boundary.clone();
        let body = collect(multipart.body(Box::pin(futures::stream::iter(covering)))).await;
        assert_eq!(body.len() as u64, expected_len);
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with(&format!(
            "--{boundary}\r\nContent-Type: video/mp4\r\nContent-Range: bytes 10-19/1000\r\n\r\n"
        )));
        assert!(text.ends_with(&format!("\r\n--{boundary}--\r\n")));
        for (first, last) in ranges {
            let head = format!("Content-Range: bytes {first}-{last}/1000\r\n\r\n");
            let at = body.windows(head.len()).position(|w| w == head.as_bytes()).unwrap() + head.len();
            assert_eq!(&body[at..=at + (last - first) as usize], &data[first as usize..=last as usize]);
        }
    }
}
