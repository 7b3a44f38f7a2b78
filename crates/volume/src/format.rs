//! The on-bucket format (see docs/volumes.md).
//!
//! Log objects follow the seed 004 layout exactly: a 12 KiB header of 1,024 entries of
//! (u64 BE byte address, u32 BE byte length), a zero length ending the list, then the data of the
//! entries in header order. Every entry Meridian writes means exactly what the seed says: data
//! at an address. Meridian adds two things a seed-004 reader never sees:
//!
//! * at most [`MAX_DATA_ENTRIES`] entries are used, so slot 1020 is always a terminator and the
//!   last three slots (after it, hence ignored by such readers) hold a trailer with a magic, the
//!   writer's fencing epoch, the object's sequence number and its kind;
//! * the address bytes of slot 1020 (a terminator, so never read as an entry) say where the
//!   object sits in a *commit unit*: a run of consecutive objects written from one cut of the
//!   write-back journal, which recovery applies all together or not at all.
//!
//! Objects of log version 1 (before zeroing was written as data) may also hold *zero extents*:
//! entries whose address has bit 63 set and which carry no data. They are still read; version 2
//! objects never hold one (see docs/decisions/012-volume-log-zeros-as-data.md).

use serde::{Deserialize, Serialize};

use crate::error::{Result, VolumeError};

pub const SECTOR: u64 = 4096;
pub const SECTOR_SHIFT: u32 = 12;
pub const HEADER_BYTES: usize = 12 * 1024;
pub const HEADER_ENTRIES: usize = 1024;
const ENTRY_BYTES: usize = 12;
/// Data entries per object; slot 1020 stays a terminator, slots 1021..1023 hold the trailer.
pub const MAX_DATA_ENTRIES: usize = 1020;
pub const ZERO_FLAG: u64 = 1 << 63;
const TRAILER_MAGIC: &[u8; 8] = b"MRDNVLOG";
const TRAILER_OFFSET: usize = HEADER_BYTES - 3 * ENTRY_BYTES;
/// The address bytes of the always-terminating slot 1020 hold the object's [`UnitPos`].
const UNIT_OFFSET: usize = MAX_DATA_ENTRIES * ENTRY_BYTES;
/// Version of the manifest and checkpoint layouts.
pub const FORMAT_VERSION: u32 = 1;
/// Version written in log object trailers: 2 never uses zero extents.
pub const LOG_VERSION: u32 = 2;
/// Oldest log version still read (its zero extents are understood).
const OLDEST_LOG_VERSION: u32 = 1;

/// What a log object is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// Writes from the device.
    Data = 0,
    /// Empty object a new writer puts at the end of the log when it takes the lease.
    Fence = 1,
    /// Empty object marking a rollback; a checkpoint with the same number holds the state.
    /// Only written by log version 1 (rollbacks now write the data through the log).
    Rollback = 2,
    /// Replaces an object whose data GC found dead at every retained point.
    Tombstone = 3,
    /// Live data that GC moved out of mostly-dead objects.
    Gc = 4,
}

impl ObjectKind {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Data,
            1 => Self::Fence,
            2 => Self::Rollback,
            3 => Self::Tombstone,
            4 => Self::Gc,
            _ => return None,
        })
    }
}

/// One header entry. `addr` and `len` are in bytes, sector aligned. `zero` is only ever set by
/// objects of log version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub addr: u64,
    pub len: u32,
    pub zero: bool,
}

/// Meridian's trailer in the ignored tail of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub epoch: u64,
    pub seq: u64,
    pub kind: ObjectKind,
    pub unit: UnitPos,
}

impl Trailer {
    /// A trailer for an object that is a unit of its own.
    pub fn single(epoch: u64, seq: u64, kind: ObjectKind) -> Self {
        Self { epoch, seq, kind, unit: UnitPos::default() }
    }
}

/// Where an object sits in its commit unit: how many objects of the same unit come before and
/// after it. `0, 0` is a unit of one (every object written before units existed reads so).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnitPos {
    pub before: u32,
    pub after: u32,
}

impl UnitPos {
    /// First and last sequence number of the unit of object `seq`.
    pub fn span(self, seq: u64) -> (u64, u64) {
        (seq.saturating_sub(u64::from(self.before)), seq.saturating_add(u64::from(self.after)))
    }
}

/// A parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub entries: Vec<Entry>,
    pub trailer: Trailer,
}

impl Header {
    /// Bytes of data following the header.
    pub fn data_bytes(&self) -> u64 {
        self.entries.iter().filter(|e| !e.zero).map(|e| u64::from(e.len)).sum()
    }
}

/// Encodes a header. Callers guarantee at most [`MAX_DATA_ENTRIES`] aligned data entries (never
/// zero extents: the current version writes zeros as data).
pub fn encode_header(entries: &[Entry], trailer: Trailer) -> Vec<u8> {
    debug_assert!(entries.len() <= MAX_DATA_ENTRIES);
    debug_assert!(entries.iter().all(|e| !e.zero));
    let mut h = vec![0u8; HEADER_BYTES];
    for (i, e) in entries.iter().enumerate() {
        let at = i * ENTRY_BYTES;
        h[at..at + 8].copy_from_slice(&e.addr.to_be_bytes());
        h[at + 8..at + 12].copy_from_slice(&e.len.to_be_bytes());
    }
    h[UNIT_OFFSET..UNIT_OFFSET + 4].copy_from_slice(&trailer.unit.before.to_be_bytes());
    h[UNIT_OFFSET + 4..UNIT_OFFSET + 8].copy_from_slice(&trailer.unit.after.to_be_bytes());
    let t = &mut h[TRAILER_OFFSET..];
    t[0..8].copy_from_slice(TRAILER_MAGIC);
    t[8..12].copy_from_slice(&LOG_VERSION.to_be_bytes());
    t[12..20].copy_from_slice(&trailer.epoch.to_be_bytes());
    t[20..24].copy_from_slice(&(trailer.kind as u32).to_be_bytes());
    t[24..32].copy_from_slice(&trailer.seq.to_be_bytes());
    // Entry count, so a reader can cross-check the terminator.
    t[32..36].copy_from_slice(&(entries.len() as u32).to_be_bytes());
    h
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

fn corrupt(what: &str, detail: impl Into<String>) -> VolumeError {
    VolumeError::Corrupt { what: what.to_string(), detail: detail.into() }
}

/// Parses a header and its Meridian trailer.
pub fn decode_header(what: &str, h: &[u8]) -> Result<Header> {
    if h.len() < HEADER_BYTES {
        return Err(corrupt(what, format!("header is {} bytes, want {HEADER_BYTES}", h.len())));
    }
    let mut entries = Vec::new();
    for i in 0..HEADER_ENTRIES {
        let at = i * ENTRY_BYTES;
        let len = be_u32(&h[at + 8..]);
        if len == 0 {
            break;
        }
        let raw = be_u64(&h[at..]);
        let e = Entry { addr: raw & !ZERO_FLAG, len, zero: raw & ZERO_FLAG != 0 };
        if !e.addr.is_multiple_of(SECTOR) || u64::from(e.len) % SECTOR != 0 {
            return Err(corrupt(what, format!("entry {i} ({}+{}) is not 4 KiB aligned", e.addr, e.len)));
        }
        entries.push(e);
    }
    let t = &h[TRAILER_OFFSET..HEADER_BYTES];
    if &t[0..8] != TRAILER_MAGIC {
        return Err(corrupt(what, "no Meridian trailer (not written by Meridian)"));
    }
    let version = be_u32(&t[8..]);
    if !(OLDEST_LOG_VERSION..=LOG_VERSION).contains(&version) {
        return Err(corrupt(
            what,
            format!("log format version {version} is not supported (this build reads 1 to {LOG_VERSION})"),
        ));
    }
    if version >= 2 && entries.iter().any(|e| e.zero) {
        return Err(corrupt(what, format!("a version {version} object holds a zero extent")));
    }
    let kind = ObjectKind::from_u32(be_u32(&t[20..])).ok_or_else(|| corrupt(what, "unknown object kind"))?;
    let count = be_u32(&t[32..]) as usize;
    if count != entries.len() || count > MAX_DATA_ENTRIES {
        return Err(corrupt(what, format!("trailer says {count} entries, header has {}", entries.len())));
    }
    let unit = UnitPos { before: be_u32(&h[UNIT_OFFSET..]), after: be_u32(&h[UNIT_OFFSET + 4..]) };
    Ok(Header { entries, trailer: Trailer { epoch: be_u64(&t[12..]), seq: be_u64(&t[24..]), kind, unit } })
}

/// Object keys of one volume: everything lives under `{prefix}{name}/`. A fork's log objects up
/// to its fork point are its ancestors' ([`Self::with_ancestors`]).
#[derive(Debug, Clone)]
pub struct Layout {
    prefix: String,
    root: String,
    /// For a fork: (fork point, root) of the parent, then of the parent's parent..., with
    /// decreasing fork points. Object `seq` ≤ a fork point belongs to that ancestor.
    ancestors: Vec<(u64, String)>,
}

impl Layout {
    pub fn new(prefix: &str, name: &str) -> Result<Self> {
        validate_name(name)?;
        Ok(Self { prefix: prefix.to_string(), root: format!("{prefix}{name}/"), ancestors: Vec::new() })
    }
    /// The layout of volume `name` beside this one (same bucket and prefix).
    pub fn sibling(&self, name: &str) -> Result<Self> {
        Self::new(&self.prefix, name)
    }
    /// This layout with its log objects up to `point` read from `parent` (itself resolved).
    pub fn with_ancestors(&self, point: u64, parent: &Layout) -> Self {
        let mut ancestors = vec![(point, parent.root.clone())];
        ancestors.extend(parent.ancestors.iter().filter(|(p, _)| *p < point).cloned());
        Self { prefix: self.prefix.clone(), root: self.root.clone(), ancestors }
    }
    pub fn root(&self) -> &str {
        &self.root
    }
    /// The parent's layout, from this (resolved) fork's: its ancestors are this one's past the
    /// first. Callers pass the parent's plain layout.
    pub fn with_ancestors_of(mut self, child: &Layout) -> Self {
        self.ancestors = child.ancestors.iter().skip(1).cloned().collect();
        self
    }
    /// A fork's fork point (its own log starts after it); 0 for other volumes.
    pub fn fork_point(&self) -> u64 {
        self.ancestors.first().map_or(0, |(point, _)| *point)
    }
    /// Root of the volume holding log object `seq`.
    fn log_root(&self, seq: u64) -> &str {
        let mut root = &self.root;
        for (point, ancestor) in &self.ancestors {
            if seq > *point {
                break;
            }
            root = ancestor;
        }
        root
    }
    pub fn manifest(&self) -> String {
        format!("{}volume.json", self.root)
    }
    pub fn lease(&self) -> String {
        format!("{}lease.json", self.root)
    }
    pub fn log_prefix(&self) -> String {
        format!("{}log/", self.root)
    }
    pub fn log(&self, seq: u64) -> String {
        format!("{}log/{seq:016x}", self.log_root(seq))
    }
    pub fn checkpoint_prefix(&self) -> String {
        format!("{}checkpoint/", self.root)
    }
    pub fn checkpoint(&self, seq: u64) -> String {
        format!("{}checkpoint/{seq:016x}", self.root)
    }
    pub fn snapshot_prefix(&self) -> String {
        format!("{}snapshots/", self.root)
    }
    pub fn snapshot(&self, label: &str) -> String {
        format!("{}snapshots/{label}.json", self.root)
    }
    /// Records of this volume's forks: each keeps what its fork point reads from GC.
    pub fn fork_prefix(&self) -> String {
        format!("{}forks/", self.root)
    }
    pub fn fork(&self, child: &str) -> String {
        format!("{}forks/{child}.json", self.root)
    }
}

/// Parses the sequence number at the end of a log or checkpoint key.
pub fn parse_seq(key: &str, prefix: &str) -> Option<u64> {
    let hex = key.strip_prefix(prefix)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Volume names and snapshot labels become key segments: keep them boring.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(VolumeError::BadName(name.to_string())) }
}

/// The superblock: `volume.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    /// Random id; names the local cache directory so two volumes never share one.
    pub volume_id: String,
    /// Size in bytes, a multiple of 4096.
    pub size: u64,
    pub sector_size: u64,
    /// Target data bytes per log object.
    pub object_bytes: u64,
    pub created_unix: u64,
    /// Present when data is encrypted client side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionInfo>,
    /// Present for a fork: the volume it started as, and where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
}

/// A fork's parent: its log objects up to `seq` are the fork's too.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ParentRef {
    /// Volume name, beside the fork (same bucket and prefix).
    pub name: String,
    /// The parent's volume id, so a parent deleted and re-created under the same name is noticed.
    pub volume_id: String,
    /// The fork point: the parent's log position the fork started from.
    pub seq: u64,
}

/// How data is encrypted; the key itself never goes to the bucket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EncryptionInfo {
    pub cipher: String,
    /// Hex of a keyed hash of the key, to refuse a wrong key with a clear error.
    pub key_check: String,
    /// Which key this is: 1 at creation, one more at each `rotate-key`.
    #[serde(default = "first_key_generation")]
    pub generation: u32,
    /// A rotation in progress: the key being retired, which objects written before the rotation
    /// may still be sealed under until GC has sealed each again under the current key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotating_from: Option<KeyRef>,
    /// Keys retired by completed rotations (the newest last), so a retired key is refused as
    /// such rather than as an unknown one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<KeyRef>,
}

/// A key other than the current one, by generation and key check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyRef {
    pub generation: u32,
    pub key_check: String,
}

fn first_key_generation() -> u32 {
    1
}

impl EncryptionInfo {
    /// A volume's first key.
    pub fn new(cipher: &str, key_check: String) -> Self {
        Self { cipher: cipher.to_string(), key_check, generation: 1, rotating_from: None, retired: Vec::new() }
    }
}

impl Manifest {
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR
    }
}

/// The writer lease: `lease.json`, replaced only with If-Match.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lease {
    pub epoch: u64,
    /// Human-readable identity: `host:pid (listen address)`.
    pub holder: String,
    pub host: String,
    pub pid: u32,
    pub renewed_unix: u64,
    pub ttl_secs: u64,
    /// Set on clean shutdown so the next writer need not wait.
    pub released: bool,
}

/// A snapshot: a position in the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    pub label: String,
    pub seq: u64,
    pub created_unix: u64,
    /// The volume's size when the snapshot was taken (absent in snapshots of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// Checkpoint file layout: magic, version, seq, epoch of log object `seq`, volume sectors, run
/// count, then runs of (volume sector u64, sectors u32, object seq u64, object sector u32), BE.
pub const CHECKPOINT_MAGIC: &[u8; 8] = b"MRDNVCKP";
pub const CHECKPOINT_HEADER: usize = 8 + 4 + 8 + 8 + 8 + 8;
pub const RUN_BYTES: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointHeader {
    pub seq: u64,
    pub epoch: u64,
    pub sectors: u64,
    pub runs: u64,
}

pub fn encode_checkpoint_header(h: &CheckpointHeader) -> Vec<u8> {
    let mut b = Vec::with_capacity(CHECKPOINT_HEADER);
    b.extend_from_slice(CHECKPOINT_MAGIC);
    b.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    b.extend_from_slice(&h.seq.to_be_bytes());
    b.extend_from_slice(&h.epoch.to_be_bytes());
    b.extend_from_slice(&h.sectors.to_be_bytes());
    b.extend_from_slice(&h.runs.to_be_bytes());
    b
}

pub fn decode_checkpoint_header(what: &str, b: &[u8]) -> Result<CheckpointHeader> {
    if b.len() < CHECKPOINT_HEADER || &b[0..8] != CHECKPOINT_MAGIC {
        return Err(corrupt(what, "bad checkpoint magic"));
    }
    if be_u32(&b[8..]) != FORMAT_VERSION {
        return Err(corrupt(what, "unknown checkpoint version"));
    }
    Ok(CheckpointHeader {
        seq: be_u64(&b[12..]),
        epoch: be_u64(&b[20..]),
        sectors: be_u64(&b[28..]),
        runs: be_u64(&b[36..]),
    })
}

/// A run of consecutive volume sectors stored consecutively in one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub sector: u64,
    pub len: u32,
    pub seq: u64,
    pub obj_sector: u32,
}

pub fn encode_run(r: &Run, out: &mut Vec<u8>) {
    out.extend_from_slice(&r.sector.to_be_bytes());
    out.extend_from_slice(&r.len.to_be_bytes());
    out.extend_from_slice(&r.seq.to_be_bytes());
    out.extend_from_slice(&r.obj_sector.to_be_bytes());
}

pub fn decode_run(b: &[u8]) -> Run {
    Run { sector: be_u64(b), len: be_u32(&b[8..]), seq: be_u64(&b[12..]), obj_sector: be_u32(&b[20..]) }
}

/// Parses a size with Meridian's one size grammar (`100GiB`, `4G`, `4096`; `10MB` is SI, 10^6
/// bytes; see [`meridian_common::size`]).
pub fn parse_size(s: &str) -> Result<u64> {
    meridian_common::size::parse_size(s).map_err(|e| VolumeError::BadSize(e.to_string()))
}

/// Checks a volume size: whole sectors, non-zero, and addressable by the table encoding.
pub fn check_size(size: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(SECTOR) {
        return Err(VolumeError::BadSize(format!("{size} bytes: a volume size must be a positive multiple of 4096")));
    }
    // 2^62 bytes keeps every address clear of the zero-extent flag with room to spare.
    if size > (1u64 << 62) {
        return Err(VolumeError::BadSize(format!("{size} bytes is too large")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_terminator() {
        let entries =
            vec![Entry { addr: 8192, len: 8192, zero: false }, Entry { addr: 1 << 30, len: 4096 * 100, zero: false }];
        let t = Trailer { epoch: 7, seq: 42, kind: ObjectKind::Data, unit: UnitPos { before: 3, after: 5 } };
        let h = encode_header(&entries, t);
        assert_eq!(h.len(), HEADER_BYTES);
        assert_eq!(t.unit.span(42), (39, 47));
        // Slot 2 is the seed-format terminator: zero length.
        assert_eq!(&h[2 * 12 + 8..2 * 12 + 12], &[0, 0, 0, 0]);
        let parsed = decode_header("x", &h).unwrap();
        assert_eq!(parsed.entries, entries);
        assert_eq!(parsed.trailer, t);
        assert_eq!(parsed.data_bytes(), 8192 + 4096 * 100);
    }

    #[test]
    fn version_1_zero_extents_are_still_read() {
        let mut h =
            encode_header(&[Entry { addr: 4096, len: 8192, zero: false }], Trailer::single(1, 5, ObjectKind::Data));
        h[0..8].copy_from_slice(&(4096 | ZERO_FLAG).to_be_bytes());
        // As version 2 it is refused: the current format never writes zero extents.
        assert!(decode_header("x", &h).is_err());
        h[TRAILER_OFFSET + 8..TRAILER_OFFSET + 12].copy_from_slice(&1u32.to_be_bytes());
        let parsed = decode_header("x", &h).unwrap();
        assert_eq!(parsed.entries, vec![Entry { addr: 4096, len: 8192, zero: true }]);
        assert_eq!(parsed.data_bytes(), 0);
        h[TRAILER_OFFSET + 8..TRAILER_OFFSET + 12].copy_from_slice(&3u32.to_be_bytes());
        let err = decode_header("x", &h).unwrap_err().to_string();
        assert!(err.contains("version 3 is not supported"), "{err}");
    }

    #[test]
    fn full_header_keeps_terminator() {
        let entries: Vec<Entry> =
            (0..MAX_DATA_ENTRIES as u64).map(|i| Entry { addr: i * 8192, len: 4096, zero: false }).collect();
        let t = Trailer { epoch: 1, seq: 1, kind: ObjectKind::Data, unit: UnitPos { before: 0, after: 1 } };
        let h = encode_header(&entries, t);
        // The unit position lives in slot 1020's address; its length stays the terminator.
        assert_eq!(be_u32(&h[MAX_DATA_ENTRIES * 12 + 8..]), 0);
        let parsed = decode_header("x", &h).unwrap();
        assert_eq!(parsed.entries.len(), MAX_DATA_ENTRIES);
        assert_eq!(parsed.trailer, t);
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode_header("x", &[0u8; 100]).is_err());
        assert!(decode_header("x", &[0u8; HEADER_BYTES]).is_err());
        let mut h = encode_header(&[], Trailer::single(1, 1, ObjectKind::Fence));
        h[8..12].copy_from_slice(&100u32.to_be_bytes()); // misaligned length
        assert!(decode_header("x", &h).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100GiB").unwrap(), 100 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1t").unwrap(), 1 << 40);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("10XB").is_err());
        // SI units are SI here as everywhere (this parser once read `MB` as MiB).
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert!(check_size(4095).is_err());
        assert!(check_size(0).is_err());
        assert!(check_size(1 << 20).is_ok());
    }

    #[test]
    fn names() {
        assert!(validate_name("db-1.vol").is_ok());
        for bad in ["", "..", "a/b", "x y", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        let l = Layout::new("p/", "v").unwrap();
        assert_eq!(l.log(26), "p/v/log/000000000000001a");
        assert_eq!(parse_seq(&l.log(26), &l.log_prefix()), Some(26));
        // A fork of a fork: objects up to each fork point belong to that ancestor.
        let a = l.sibling("a").unwrap().with_ancestors(10, &l);
        let b = l.sibling("b").unwrap().with_ancestors(20, &a);
        assert_eq!(b.log(21), "p/b/log/0000000000000015");
        assert_eq!(b.log(20), "p/a/log/0000000000000014");
        assert_eq!(b.log(11), "p/a/log/000000000000000b");
        assert_eq!(b.log(10), "p/v/log/000000000000000a");
        assert_eq!(b.log_prefix(), "p/b/log/");
    }
}
