//! Keys, records and transactions shaped like Meridian's metadata.

use std::io::Write;

/// History revisions kept in the log (the embedded store's default).
pub const HISTORY: u64 = 100_000;

/// Every object key shares this prefix (one bucket, one "directory"), so a range scan is a
/// prefix listing.
pub const PREFIX: &[u8] = b"/o/bucket-0007/photos/2024/vacation/";

pub const HEADER_LEN: usize = 24;
pub const RECORD_LEN: usize = 300;
pub const INDEX_KEY_LEN: usize = 100;
pub const LOG_LEN: usize = 400;

/// Deterministic, dependency-free PRNG (splitmix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn hex(&mut self, out: &mut Vec<u8>, n: usize) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for _ in 0..n {
            out.push(HEX[(self.next() & 15) as usize]);
        }
    }
}

/// `/o/bucket-0007/photos/2024/vacation/img-0000000042.jpg` (54 bytes); sorted by `i`.
pub fn obj_key(i: u64) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    write!(k, "img-{i:010}.jpg").expect("write to vec");
    k
}

/// The first key after every key with `PREFIX`.
pub fn prefix_end() -> Vec<u8> {
    let mut e = PREFIX.to_vec();
    *e.last_mut().expect("non-empty") += 1;
    e
}

/// A 276-byte record body: some JSON-ish fixed fields and random hex (roughly as compressible
/// as real object metadata with etags, ids and user metadata).
fn body(rng: &mut Rng) -> Vec<u8> {
    let mut b = Vec::with_capacity(RECORD_LEN - HEADER_LEN);
    write!(
        b,
        "{{\"etag\":\"{:016x}{:016x}\",\"size\":{},\"content-type\":\"image/jpeg\",\
         \"storage-class\":\"STANDARD\",\"owner\":\"meridian-user-0001\",\"blob\":\"",
        rng.next(),
        rng.next(),
        rng.below(1 << 30)
    )
    .expect("write to vec");
    let fill = RECORD_LEN - HEADER_LEN - 1 - b.len();
    rng.hex(&mut b, fill);
    b.push(b'"');
    debug_assert_eq!(b.len(), RECORD_LEN - HEADER_LEN);
    b
}

/// One logical metadata transaction (a PutObject): read `key`, compare, write the record,
/// an index key, and a history entry under the next revision.
pub struct Txn {
    pub key: Vec<u8>,
    pub index_key: Vec<u8>,
    pub body: Vec<u8>,
}

pub fn make_txn(rng: &mut Rng, n_keys: u64) -> Txn {
    let key = obj_key(rng.below(n_keys));
    let mut index_key = b"/i/bucket-0007/etag/".to_vec();
    rng.hex(&mut index_key, 24);
    index_key.push(b'/');
    index_key.extend_from_slice(&key);
    index_key.resize(INDEX_KEY_LEN, b'~');
    Txn {
        key,
        index_key,
        body: body(rng),
    }
}

#[derive(Clone, Copy)]
pub struct Header {
    pub create_revision: u64,
    pub version: u64,
}

pub fn decode_header(v: &[u8]) -> Header {
    assert!(v.len() >= HEADER_LEN, "corrupt record");
    Header {
        create_revision: u64::from_be_bytes(v[0..8].try_into().expect("8 bytes")),
        version: u64::from_be_bytes(v[16..24].try_into().expect("8 bytes")),
    }
}

/// 24-byte header (create revision, mod revision, version) + body = 300 bytes.
pub fn encode_record(cur: Option<Header>, rev: u64, body: &[u8]) -> Vec<u8> {
    let (create, version) = match cur {
        Some(h) => (h.create_revision, h.version + 1),
        None => (rev, 1),
    };
    let mut v = Vec::with_capacity(HEADER_LEN + body.len());
    v.extend_from_slice(&create.to_be_bytes());
    v.extend_from_slice(&rev.to_be_bytes());
    v.extend_from_slice(&version.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// The history entry of one revision, encoded like `encode_events`, 400 bytes.
pub fn encode_log(t: &Txn, record: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(LOG_LEN + INDEX_KEY_LEN);
    v.push(0);
    v.extend_from_slice(&record[0..8]);
    v.extend_from_slice(&record[16..24]);
    v.extend_from_slice(&(t.key.len() as u32).to_be_bytes());
    v.extend_from_slice(&t.key);
    v.extend_from_slice(&((record.len() - HEADER_LEN) as u32).to_be_bytes());
    v.extend_from_slice(&record[HEADER_LEN..]);
    v.extend_from_slice(&t.index_key);
    v.truncate(LOG_LEN);
    v
}

/// Record `i` of a bulk load: key and 300-byte value, deterministic in `i`.
pub fn loaded_record(i: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng::new(i ^ 0x5EED);
    let rev = i + 1;
    (obj_key(i), encode_record(None, rev, &body(&mut rng)))
}
