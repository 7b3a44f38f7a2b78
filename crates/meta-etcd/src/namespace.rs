//! Keys of one store live under a namespace prefix inside the shared etcd keyspace.

use std::ops::Bound;

use bytes::{BufMut, Bytes, BytesMut};
use meridian_meta::{MetaError, MetaResult, RangeRequest, prefix_end};

/// etcd's "every key from `key` on" marker for `range_end`.
const ALL_FROM: &[u8] = b"\0";

/// Translates between the caller's keys and etcd keys under `prefix`.
#[derive(Clone, Debug)]
pub(crate) struct Namespace {
    prefix: Bytes,
}

/// An etcd key range `[key, range_end)` in etcd's encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EtcdRange {
    pub key: Bytes,
    /// `\0` means "to the end of the keyspace", as in etcd.
    pub range_end: Bytes,
}

impl Namespace {
    pub(crate) fn new(prefix: Bytes) -> Self {
        Namespace { prefix }
    }

    pub(crate) fn prefix(&self) -> &Bytes {
        &self.prefix
    }

    /// The etcd key for the caller's `key`.
    pub(crate) fn key(&self, key: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(self.prefix.len() + key.len());
        out.put_slice(&self.prefix);
        out.put_slice(key);
        out.freeze()
    }

    /// Any etcd key that is valid to read (etcd refuses empty keys); used when only the
    /// response header (the revision) matters.
    pub(crate) fn probe_key(&self) -> Bytes {
        if self.prefix.is_empty() { Bytes::from_static(ALL_FROM) } else { self.prefix.clone() }
    }

    /// The caller's key for an etcd key read from inside this namespace.
    pub(crate) fn strip(&self, key: Bytes) -> MetaResult<Bytes> {
        if key.starts_with(&self.prefix) {
            Ok(key.slice(self.prefix.len()..))
        } else {
            Err(MetaError::Storage(format!(
                "etcd returned key {:?} outside the namespace {:?}",
                String::from_utf8_lossy(&key),
                String::from_utf8_lossy(&self.prefix)
            )))
        }
    }

    /// The etcd range for a caller's range, or `None` when the range is empty.
    pub(crate) fn range(&self, req: &RangeRequest) -> Option<EtcdRange> {
        let mut key = match &req.start {
            Bound::Included(s) => self.key(s),
            Bound::Excluded(s) => self.successor(s),
            Bound::Unbounded => self.prefix.clone(),
        };
        // `None`: the end of the keyspace.
        let end = match &req.end {
            Bound::Excluded(e) => Some(self.key(e)),
            Bound::Included(e) => Some(self.successor(e)),
            Bound::Unbounded => prefix_end(&self.prefix).map(Bytes::from),
        };
        if key.is_empty() {
            // Only possible with an empty prefix: "" is not a valid etcd key, and "\0" is the
            // smallest key after it.
            key = Bytes::from_static(ALL_FROM);
        }
        match end {
            Some(end) if end <= key => None,
            Some(end) => Some(EtcdRange { key, range_end: end }),
            None => Some(EtcdRange { key, range_end: Bytes::from_static(ALL_FROM) }),
        }
    }

    /// The smallest etcd key after the caller's `key`.
    fn successor(&self, key: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(self.prefix.len() + key.len() + 1);
        out.put_slice(&self.prefix);
        out.put_slice(key);
        out.put_u8(0);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ns(p: &'static str) -> Namespace {
        Namespace::new(Bytes::from_static(p.as_bytes()))
    }

    fn r(key: &'static [u8], end: &'static [u8]) -> Option<EtcdRange> {
        Some(EtcdRange { key: Bytes::from_static(key), range_end: Bytes::from_static(end) })
    }

    #[test]
    fn prefix_ranges_stay_inside_the_namespace() {
        let n = ns("/m/");
        assert_eq!(n.range(&RangeRequest::prefix("o/")), r(b"/m/o/", b"/m/o0"));
        assert_eq!(n.range(&RangeRequest::prefix("")), r(b"/m/", b"/m0"), "everything in the namespace");
        assert_eq!(n.range(&RangeRequest::prefix("a").after("ab")), r(b"/m/ab\0", b"/m/b"));
        assert_eq!(n.range(&RangeRequest::between("a", "c")), r(b"/m/a", b"/m/c"));
        assert_eq!(n.range(&RangeRequest::between("c", "a")), None);
        assert_eq!(n.range(&RangeRequest::between("a", "a")), None);
        let all = RangeRequest { start: Bound::Unbounded, end: Bound::Included(Bytes::from("z")), limit: 0 };
        assert_eq!(n.range(&all), r(b"/m/", b"/m/z\0"));
    }

    #[test]
    fn an_all_ff_prefix_ranges_to_the_end_of_the_keyspace() {
        let n = Namespace::new(Bytes::from_static(b"\xff"));
        assert_eq!(n.range(&RangeRequest::prefix("")), r(b"\xff", b"\0"));
    }

    #[test]
    fn an_empty_namespace_is_the_whole_keyspace() {
        let n = ns("");
        assert_eq!(n.range(&RangeRequest::prefix("")), r(b"\0", b"\0"));
        assert_eq!(n.range(&RangeRequest::prefix("a")), r(b"a", b"b"));
        assert_eq!(n.range(&RangeRequest::between("", "")), None);
        assert_eq!(n.probe_key(), Bytes::from_static(b"\0"));
    }

    #[test]
    fn strip_refuses_foreign_keys() {
        let n = ns("/m/");
        assert_eq!(n.strip(Bytes::from("/m/x")).unwrap(), Bytes::from("x"));
        assert!(n.strip(Bytes::from("/n/x")).is_err());
    }
}
