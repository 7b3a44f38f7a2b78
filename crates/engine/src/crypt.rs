//! Encryption at rest (docs/encryption.md, docs/decisions/058-encryption-at-rest.md).
//!
//! Every encrypted blob (and inline object) has its own random 256-bit data key. Its bytes are
//! cut into [`SEAL_CHUNK`] chunks, each sealed with ChaCha20-Poly1305 under that key, the chunk's
//! index as nonce (a key seals one blob only, so nonces never repeat) and, as associated data,
//! the index and whether it is the last chunk (so chunks cannot be reordered or the object cut
//! short unnoticed). A sealed chunk is ciphertext ‖ tag, 16 bytes more than its plaintext; every
//! chunk but the last is full, so a plaintext range maps to whole sealed chunks and a Range read
//! opens only the chunks it returns.
//!
//! The data key is stored wrapped (XChaCha20-Poly1305, random nonce) by a key-encryption key:
//! the node's master key for SSE-S3, a named key of the operator's keyring for SSE-KMS, or the
//! customer's key for SSE-C (which Meridian never stores; only its MD5, as S3 returns it).

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use futures::StreamExt;
use md5::{Digest as _, Md5};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, EngineResult};
use crate::ingest::{Body, BodyError};

/// Plaintext bytes per sealed chunk.
pub const SEAL_CHUNK: u64 = 64 << 10;
/// What sealing adds to each chunk (the Poly1305 tag).
pub const TAG_LEN: u64 = 16;
const WRAP_NONCE: usize = 24;
/// The KMS key SSE-KMS uses when a request names none (AWS's default key's alias).
pub const DEFAULT_KMS_KEY: &str = "aws/s3";

/// A 256-bit key.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    fn random() -> Key {
        Key(rand::random())
    }

    /// 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Key> {
        let bytes = hex::decode(text.trim()).ok()?;
        Some(Key(bytes.try_into().ok()?))
    }
}

/// How an object is encrypted, as its record keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SseMode {
    /// SSE-S3 (`AES256` on the wire): the node's master key wraps the data key.
    S3,
    /// SSE-KMS (`aws:kms`): a named key of the keyring wraps it.
    Kms,
    /// SSE-C: the customer's key wraps it.
    Customer,
}

/// The encryption of a stored object (in its record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    pub mode: SseMode,
    /// The wrapping key's id: a master key id (SSE-S3) or a keyring key name (SSE-KMS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Base64 MD5 of the customer's key (SSE-C), as S3 echoes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_key_md5: Option<String>,
    /// The wrapped data key of an inline or single-blob object (each part of a multipart object
    /// carries its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped_key: Option<String>,
}

impl Encryption {
    /// The same protection without a data key (for an upload or a multipart object's record).
    pub fn without_key(&self) -> Encryption {
        Encryption { wrapped_key: None, ..self.clone() }
    }
}

/// A key sent by the client for SSE-C.
#[derive(Clone)]
pub struct CustomerKey {
    key: Key,
    /// Base64 MD5 of the key.
    pub md5: String,
}

impl std::fmt::Debug for CustomerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CustomerKey(md5 {})", self.md5)
    }
}

impl CustomerKey {
    /// Checks the three SSE-C headers as S3 does: algorithm `AES256`, a base64 256-bit key and
    /// the base64 MD5 of that key.
    pub fn parse(algorithm: Option<&str>, key: Option<&str>, md5: Option<&str>) -> EngineResult<Option<CustomerKey>> {
        let invalid = |m: &str| Err(EngineError::InvalidArgument(m.into()));
        match (algorithm, key, md5) {
            (None, None, None) => return Ok(None),
            (Some(_), Some(_), Some(_)) => {}
            (None, ..) => {
                return invalid(
                    "Requests specifying Server Side Encryption with Customer provided keys must provide a valid encryption algorithm.",
                );
            }
            (_, None, _) => {
                return invalid(
                    "Requests specifying Server Side Encryption with Customer provided keys must provide an appropriate secret key.",
                );
            }
            (_, _, None) => {
                return invalid(
                    "Requests specifying Server Side Encryption with Customer provided keys must provide the client calculated MD5 of the secret key.",
                );
            }
        }
        let (Some(algorithm), Some(key), Some(md5)) = (algorithm, key, md5) else { unreachable!() };
        if algorithm != "AES256" {
            return invalid("The encryption algorithm specified is not supported (SSE-C supports AES256).");
        }
        let Ok(Ok(bytes)) = BASE64.decode(key.trim()).map(<[u8; 32]>::try_from) else {
            return invalid("The secret key was invalid for the specified algorithm.");
        };
        if BASE64.encode(Md5::digest(bytes)) != md5.trim() {
            return invalid("The calculated MD5 hash of the key did not match the hash that was provided.");
        }
        Ok(Some(CustomerKey { key: Key(bytes), md5: md5.trim().to_string() }))
    }
}

/// What a write asks for.
#[derive(Clone, Debug)]
pub enum Protection {
    S3,
    Kms { key_id: Option<String> },
    Customer(CustomerKey),
}

/// A bucket's default encryption (PutBucketEncryption).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketEncryption {
    pub mode: SseMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

/// The node's keys: master keys (the current one wraps new SSE-S3 data keys; the others only
/// unwrap older ones) and the named keys SSE-KMS requests may use.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    masters: BTreeMap<String, Key>,
    current: Option<String>,
    kms: BTreeMap<String, Key>,
}

/// A keyring file or variable that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("keyring line {line}: {why}")]
pub struct KeyringError {
    pub line: usize,
    pub why: String,
}

impl Keyring {
    /// Parses the keyring's text: one key per line, `master <id> <64 hex digits>` or
    /// `kms <name> <64 hex digits>`, `#` comments; `current <id>` names the master key that
    /// wraps new data keys (default: the last master line).
    pub fn parse(text: &str) -> Result<Keyring, KeyringError> {
        let mut ring = Keyring::default();
        let mut current = None;
        for (n, line) in text.lines().enumerate() {
            let err = |why: &str| KeyringError { line: n + 1, why: why.into() };
            let words: Vec<&str> = line.split('#').next().unwrap_or("").split_whitespace().collect();
            match words.as_slice() {
                [] => {}
                ["current", id] => current = Some(id.to_string()),
                [kind @ ("master" | "kms"), id, hex] => {
                    let valid = id.len() <= 256 && id.bytes().all(|b| b.is_ascii_graphic());
                    let key = Key::from_hex(hex).filter(|_| valid).ok_or_else(|| {
                        err("a key is 64 hex digits (e.g. from `openssl rand -hex 32`) after a printable id")
                    })?;
                    let set = if *kind == "master" { &mut ring.masters } else { &mut ring.kms };
                    if set.insert(id.to_string(), key).is_some() {
                        return Err(err(&format!("{kind} key {id:?} is defined twice")));
                    }
                    if *kind == "master" {
                        ring.current = Some(id.to_string());
                    }
                }
                _ => return Err(err("expected `master <id> <hex>`, `kms <name> <hex>` or `current <id>`")),
            }
        }
        if let Some(id) = current {
            if !ring.masters.contains_key(&id) {
                return Err(KeyringError { line: 0, why: format!("`current {id}` names no master key") });
            }
            ring.current = Some(id);
        }
        Ok(ring)
    }

    /// A keyring of one master key (the `MERIDIAN_SSE_MASTER_KEY` variable), id `env`.
    pub fn with_master(id: &str, key: Key) -> Keyring {
        let mut ring = Keyring::default();
        ring.masters.insert(id.into(), key);
        ring.current = Some(id.into());
        ring
    }

    /// Adds the master and named keys of `other`; its current master key becomes current.
    pub fn merge(&mut self, other: Keyring) -> Result<(), KeyringError> {
        for (id, key) in other.masters {
            if self.masters.insert(id.clone(), key).is_some() {
                return Err(KeyringError { line: 0, why: format!("master key {id:?} is defined twice") });
            }
        }
        self.kms.extend(other.kms);
        if other.current.is_some() {
            self.current = other.current;
        }
        Ok(())
    }

    pub fn current_master(&self) -> Option<&str> {
        self.current.as_deref()
    }

    pub fn kms_names(&self) -> impl Iterator<Item = &str> {
        self.kms.keys().map(String::as_str)
    }

    /// Makes a data key for a new object and its record's [`Encryption`].
    pub fn new_data_key(&self, protection: &Protection) -> EngineResult<(Encryption, DataKey)> {
        let (mode, key_id, md5, kek) = match protection {
            Protection::S3 => {
                let id = self.current.clone().ok_or_else(|| {
                    EngineError::InvalidArgument(
                        "server-side encryption (AES256) is not available: this node has no master key (see docs/encryption.md)"
                            .into(),
                    )
                })?;
                let kek = self.masters[&id].clone();
                (SseMode::S3, Some(id), None, kek)
            }
            Protection::Kms { key_id } => {
                let name = key_id.clone().unwrap_or_else(|| DEFAULT_KMS_KEY.into());
                let kek = self.kms_key(&name)?.clone();
                (SseMode::Kms, Some(name), None, kek)
            }
            Protection::Customer(customer) => {
                (SseMode::Customer, None, Some(customer.md5.clone()), customer.key.clone())
            }
        };
        let data = DataKey::random();
        let wrapped = wrap(&kek, &data.key, mode);
        Ok((Encryption { mode, key_id, customer_key_md5: md5, wrapped_key: Some(wrapped) }, data))
    }

    /// Wraps another data key for an object already protected as `encryption` (a part of a
    /// multipart upload).
    pub fn new_part_key(
        &self,
        encryption: &Encryption,
        customer: Option<&CustomerKey>,
    ) -> EngineResult<(String, DataKey)> {
        let kek = self.wrapping_key(encryption, customer)?;
        let data = DataKey::random();
        Ok((wrap(&kek, &data.key, encryption.mode), data))
    }

    fn kms_key(&self, name: &str) -> EngineResult<&Key> {
        // AWS accepts a key's ARN too; its last path element is the name here.
        let short = name.rsplit_once(":key/").map_or(name, |(_, n)| n);
        let short = short.strip_prefix("alias/").unwrap_or(short);
        self.kms.get(short).ok_or_else(|| EngineError::KmsKeyNotFound(name.to_string()))
    }

    /// The key that wraps `encryption`'s data keys, checking a customer key against it.
    fn wrapping_key(&self, encryption: &Encryption, customer: Option<&CustomerKey>) -> EngineResult<Key> {
        check_customer_key(encryption, customer)?;
        let id = encryption.key_id.as_deref().unwrap_or("");
        match encryption.mode {
            SseMode::S3 => {
                self.masters.get(id).cloned().ok_or_else(|| {
                    EngineError::KeyUnavailable(format!("master key {id:?} is not in this node's keyring"))
                })
            }
            SseMode::Kms => self.kms_key(id).cloned(),
            SseMode::Customer => customer.map(|c| c.key.clone()).ok_or(EngineError::CustomerKeyRequired),
        }
    }

    /// Unwraps a data key of an object protected as `encryption`.
    pub fn unwrap(
        &self,
        encryption: &Encryption,
        wrapped: &str,
        customer: Option<&CustomerKey>,
    ) -> EngineResult<DataKey> {
        let kek = self.wrapping_key(encryption, customer)?;
        unwrap(&kek, wrapped, encryption.mode).ok_or_else(|| match encryption.mode {
            SseMode::Customer => EngineError::AccessDenied("the SSE-C key does not open this object".into()),
            _ => EngineError::KeyUnavailable(format!(
                "the data key does not open under {:?} key {:?}",
                encryption.mode,
                encryption.key_id.as_deref().unwrap_or("")
            )),
        })
    }

    /// Wraps `wrapped` (under `encryption`'s key) again under the current master key, for
    /// rotation; `None` when it already is.
    pub fn rewrap(&self, encryption: &Encryption, wrapped: &str) -> EngineResult<Option<(String, String)>> {
        let Some(current) = self.current.clone() else { return Ok(None) };
        if encryption.mode != SseMode::S3 || encryption.key_id.as_deref() == Some(current.as_str()) {
            return Ok(None);
        }
        let data = self.unwrap(encryption, wrapped, None)?;
        Ok(Some((current.clone(), wrap(&self.masters[&current], &data.key, SseMode::S3))))
    }
}

/// Whether a request's SSE-C key (or its absence) fits an object's encryption, as S3 checks it.
pub fn check_customer_key(encryption: &Encryption, customer: Option<&CustomerKey>) -> EngineResult<()> {
    match (encryption.mode, customer) {
        (SseMode::Customer, None) => Err(EngineError::CustomerKeyRequired),
        (SseMode::Customer, Some(key)) if encryption.customer_key_md5.as_deref() != Some(key.md5.as_str()) => {
            Err(EngineError::AccessDenied("the SSE-C key does not match the object's key".into()))
        }
        (SseMode::Customer, Some(_)) => Ok(()),
        (_, Some(_)) => {
            Err(EngineError::InvalidRequest("The encryption parameters are not applicable to this object.".into()))
        }
        (_, None) => Ok(()),
    }
}

/// For objects read without SSE-C headers: refuses those that need them.
pub fn check_plain_read(encryption: Option<&Encryption>, customer: Option<&CustomerKey>) -> EngineResult<()> {
    match encryption {
        Some(encryption) => check_customer_key(encryption, customer),
        None if customer.is_some() => {
            Err(EngineError::InvalidRequest("The encryption parameters are not applicable to this object.".into()))
        }
        None => Ok(()),
    }
}

fn wrap(kek: &Key, data: &Key, mode: SseMode) -> String {
    let nonce: [u8; WRAP_NONCE] = rand::random();
    let mut out = data.0.to_vec();
    let aad = wrap_context(mode);
    let tag = XChaCha20Poly1305::new((&kek.0).into())
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), aad, &mut out)
        .expect("sealing 32 bytes cannot fail");
    let mut sealed = nonce.to_vec();
    sealed.extend_from_slice(&out);
    sealed.extend_from_slice(&tag);
    BASE64.encode(sealed)
}

fn unwrap(kek: &Key, wrapped: &str, mode: SseMode) -> Option<DataKey> {
    let sealed = BASE64.decode(wrapped).ok()?;
    if sealed.len() != WRAP_NONCE + 32 + TAG_LEN as usize {
        return None;
    }
    let (nonce, rest) = sealed.split_at(WRAP_NONCE);
    let (cipher, tag) = rest.split_at(32);
    let mut key = cipher.to_vec();
    XChaCha20Poly1305::new((&kek.0).into())
        .decrypt_in_place_detached(XNonce::from_slice(nonce), wrap_context(mode), &mut key, Tag::from_slice(tag))
        .ok()?;
    Some(DataKey::from(Key(key.try_into().ok()?)))
}

fn wrap_context(mode: SseMode) -> &'static [u8] {
    match mode {
        SseMode::S3 => b"meridian sse data key: s3",
        SseMode::Kms => b"meridian sse data key: kms",
        SseMode::Customer => b"meridian sse data key: customer",
    }
}

/// The key one blob's chunks are sealed under (AES-256-GCM, aws-lc's assembly: decision 058).
#[derive(Clone)]
pub struct DataKey {
    key: Key,
    cipher: Arc<LessSafeKey>,
}

impl From<Key> for DataKey {
    fn from(key: Key) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, &key.0).expect("AES-256-GCM takes a 32-byte key");
        DataKey { cipher: Arc::new(LessSafeKey::new(unbound)), key }
    }
}

impl DataKey {
    fn random() -> DataKey {
        DataKey::from(Key::random())
    }

    /// The ETag of an SSE-C or SSE-KMS object: not the plaintext's MD5 (which would let anyone
    /// who can list confirm a guess of the content) but a digest of it under the data key.
    pub fn keyed_etag(&self, md5: &[u8; 16]) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::new().chain_update(self.key.0).chain_update(md5).finalize();
        hex::encode(&digest[..16])
    }

    /// Each chunk index is sealed once under a data key (a new key for every blob and part), so
    /// the index is a nonce that never repeats.
    fn seal(&self, index: u64, last: bool, chunk: &mut BytesMut) {
        let tag = self
            .cipher
            .seal_in_place_separate_tag(nonce(index), Aad::from(chunk_aad(index, last)), chunk)
            .expect("sealing a chunk of at most 64 KiB cannot fail");
        chunk.extend_from_slice(tag.as_ref());
    }

    /// Opens the sealed chunk at `in_out[sealed_at..]` and moves its plaintext to the front of
    /// `in_out`; returns the plaintext's length.
    fn open_within(&self, index: u64, last: bool, in_out: &mut [u8], sealed_at: usize) -> Result<usize, ()> {
        let aad = Aad::from(chunk_aad(index, last));
        self.cipher.open_within(nonce(index), aad, in_out, sealed_at..).map(|plain| plain.len()).map_err(|_| ())
    }
}

fn nonce(index: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

fn chunk_aad(index: u64, last: bool) -> [u8; 9] {
    let mut aad = [0u8; 9];
    aad[..8].copy_from_slice(&index.to_be_bytes());
    aad[8] = last as u8;
    aad
}

/// How many bytes `plain` bytes take sealed.
pub fn sealed_len(plain: u64) -> u64 {
    plain + plain.div_ceil(SEAL_CHUNK) * TAG_LEN
}

/// Seals a stream of plaintext into whole chunks as it arrives.
pub struct Sealer {
    key: DataKey,
    index: u64,
    pending: BytesMut,
}

impl Sealer {
    pub fn new(key: DataKey) -> Sealer {
        Sealer { key, index: 0, pending: BytesMut::with_capacity((SEAL_CHUNK + TAG_LEN) as usize) }
    }

    /// Takes plaintext; returns the chunks it completed, sealed. A full chunk is sealed only once
    /// more bytes follow it (until then it may be the last).
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<Bytes>) {
        let full = SEAL_CHUNK as usize;
        while !data.is_empty() {
            if self.pending.len() == full {
                out.push(self.seal_pending(false));
            }
            let take = (full - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
    }

    /// Seals what is left as the last chunk (nothing for an empty object).
    pub fn finish(mut self) -> Option<Bytes> {
        (!self.pending.is_empty()).then(|| self.seal_pending(true))
    }

    fn seal_pending(&mut self, last: bool) -> Bytes {
        let mut chunk = std::mem::replace(&mut self.pending, BytesMut::with_capacity((SEAL_CHUNK + TAG_LEN) as usize));
        self.key.seal(self.index, last, &mut chunk);
        self.index += 1;
        chunk.freeze()
    }
}

/// The sealed byte range (offset, length) holding plaintext `from..from+len` of an object of
/// `size` plaintext bytes, and the index of its first chunk.
pub fn sealed_range(size: u64, from: u64, len: u64) -> (u64, u64, u64) {
    let first = from / SEAL_CHUNK;
    let end_chunk = (from + len).div_ceil(SEAL_CHUNK);
    let start = first * (SEAL_CHUNK + TAG_LEN);
    let end = (end_chunk * (SEAL_CHUNK + TAG_LEN)).min(sealed_len(size));
    (start, end - start, first)
}

/// Opens `sealed` (the chunks from `first_chunk` on of an object of `size` plaintext bytes)
/// and yields plaintext `from..from+len` of the object.
pub fn open_stream(sealed: Body, key: DataKey, size: u64, from: u64, len: u64) -> Body {
    let chunks = size.div_ceil(SEAL_CHUNK);
    let state = OpenState {
        sealed,
        key,
        index: from / SEAL_CHUNK,
        chunks,
        size,
        skip: (from % SEAL_CHUNK) as usize,
        left: len,
        buf: BytesMut::new(),
    };
    Box::pin(futures::stream::try_unfold(state, |mut s| async move {
        if s.left == 0 {
            return Ok(None);
        }
        let plain = s.next_chunk().await?;
        Ok(Some((plain, s)))
    }))
}

struct OpenState {
    sealed: Body,
    key: DataKey,
    index: u64,
    chunks: u64,
    size: u64,
    skip: usize,
    left: u64,
    buf: BytesMut,
}

/// Sealed chunks opened into one piece of the plaintext stream at most (a read chunk's worth:
/// fewer, larger frames for the HTTP layer).
const OPEN_BATCH: usize = meridian_blob::READ_CHUNK / SEAL_CHUNK as usize;

impl OpenState {
    fn sealed_len_of(&self, index: u64) -> usize {
        let plain = if index + 1 == self.chunks { self.size - index * SEAL_CHUNK } else { SEAL_CHUNK };
        (plain + TAG_LEN) as usize
    }

    /// The plaintext of the next sealed chunk and of those after it already buffered (up to
    /// [`OPEN_BATCH`]), opened in place and joined.
    async fn next_chunk(&mut self) -> Result<Bytes, BodyError> {
        while self.buf.len() < self.sealed_len_of(self.index) {
            match self.sealed.next().await {
                Some(piece) => self.buf.extend_from_slice(&piece?),
                None => return Err("the stored object ended before its last sealed chunk".into()),
            }
        }
        let (mut opened, mut plain_len) = (0usize, 0usize);
        for _ in 0..OPEN_BATCH {
            let want = self.sealed_len_of(self.index);
            if self.index == self.chunks || opened + want > self.buf.len() {
                break;
            }
            let last = self.index + 1 == self.chunks;
            let in_out = &mut self.buf[plain_len..opened + want];
            let len =
                self.key.open_within(self.index, last, in_out, opened - plain_len).map_err(|()| -> BodyError {
                    Box::new(EngineError::Corrupt(format!(
                        "sealed chunk {} does not open: the stored bytes were altered",
                        self.index
                    )))
                })?;
            plain_len += len;
            opened += want;
            self.index += 1;
        }
        let mut plain = self.buf.split_to(opened);
        plain.truncate(plain_len);
        let mut plain = plain.freeze().slice(std::mem::take(&mut self.skip)..);
        plain.truncate(self.left.min(plain.len() as u64) as usize);
        self.left -= plain.len() as u64;
        Ok(plain)
    }
}

impl crate::Engine {
    /// The protection a write gets: what it asked for, else its bucket's default, else SSE-S3
    /// when this node encrypts everything.
    pub(crate) fn protection_for(
        &self,
        asked: Option<Protection>,
        bucket: &crate::record::BucketRecord,
    ) -> Option<Protection> {
        asked
            .or_else(|| {
                bucket.encryption.as_ref().map(|default| match default.mode {
                    SseMode::Kms => Protection::Kms { key_id: default.kms_key_id.clone() },
                    SseMode::S3 | SseMode::Customer => Protection::S3,
                })
            })
            .or_else(|| self.config().encrypt_all.then_some(Protection::S3))
    }

    /// Sets (or with `None` removes) a bucket's default encryption; the keys it names must be
    /// in this node's keyring.
    pub async fn set_bucket_encryption(&self, bucket: &str, default: Option<BucketEncryption>) -> EngineResult<()> {
        if let Some(default) = &default {
            let protection = match default.mode {
                SseMode::S3 => Protection::S3,
                SseMode::Kms => Protection::Kms { key_id: default.kms_key_id.clone() },
                SseMode::Customer => {
                    return Err(EngineError::InvalidArgument(
                        "a bucket's default encryption cannot use customer-provided keys".into(),
                    ));
                }
            };
            self.config().keyring.new_data_key(&protection)?;
        }
        self.update_bucket(bucket, |record| {
            record.encryption = default.clone();
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// A bucket's default encryption.
    pub async fn bucket_encryption(&self, bucket: &str) -> EngineResult<Option<BucketEncryption>> {
        Ok(self.bucket(bucket).await?.0.encryption)
    }

    /// A fresh data key for a write protected as `protection` (none: plaintext).
    pub(crate) fn new_sealing(
        &self,
        protection: Option<&Protection>,
    ) -> EngineResult<(Option<Encryption>, Option<DataKey>)> {
        match protection {
            None => Ok((None, None)),
            Some(p) => {
                let (encryption, key) = self.config().keyring.new_data_key(p)?;
                Ok((Some(encryption), Some(key)))
            }
        }
    }

    /// The ETag of freshly written bytes with MD5 `md5`: the MD5 itself, except for SSE-C and
    /// SSE-KMS objects ([`DataKey::keyed_etag`]).
    pub(crate) fn etag_of(encryption: Option<&Encryption>, key: Option<&DataKey>, md5: &[u8; 16]) -> String {
        match (encryption.map(|e| e.mode), key) {
            (Some(SseMode::Customer | SseMode::Kms), Some(key)) => key.keyed_etag(md5),
            _ => hex::encode(md5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal_all(key: &DataKey, data: &[u8], piece: usize) -> Vec<u8> {
        let mut sealer = Sealer::new(key.clone());
        let mut out = Vec::new();
        for part in data.chunks(piece.max(1)) {
            sealer.push(part, &mut out);
        }
        out.extend(sealer.finish());
        out.concat()
    }

    async fn open(key: &DataKey, sealed: &[u8], size: u64, from: u64, len: u64) -> Result<Vec<u8>, BodyError> {
        let (start, slen, _) = sealed_range(size, from, len);
        let body =
            crate::ingest::body_from_bytes(Bytes::copy_from_slice(&sealed[start as usize..(start + slen) as usize]));
        let pieces: Vec<Bytes> =
            futures::TryStreamExt::try_collect(open_stream(body, key.clone(), size, from, len)).await?;
        Ok(pieces.concat())
    }

    #[tokio::test]
    async fn ranges_open_only_their_chunks_and_round_trip() {
        let key = DataKey::random();
        let data: Vec<u8> = (0..(3 * SEAL_CHUNK + 100)).map(|i| (i * 7 % 251) as u8).collect();
        let sealed = seal_all(&key, &data, 10_000);
        assert_eq!(sealed.len() as u64, sealed_len(data.len() as u64));
        assert!(!sealed.windows(64).any(|w| data.windows(64).take(100).any(|d| d == w)));
        let size = data.len() as u64;
        for (from, len) in [(0, size), (5, 10), (SEAL_CHUNK - 3, 6), (3 * SEAL_CHUNK, 100), (size - 1, 1)] {
            let got = open(&key, &sealed, size, from, len).await.unwrap();
            assert_eq!(got, &data[from as usize..(from + len) as usize], "range {from}+{len}");
        }
    }

    #[tokio::test]
    async fn altered_reordered_or_truncated_chunks_fail() {
        let key = DataKey::random();
        let data = vec![7u8; (2 * SEAL_CHUNK) as usize];
        let sealed = seal_all(&key, &data, 4096);
        let size = data.len() as u64;
        let mut flipped = sealed.clone();
        flipped[10] ^= 1;
        assert!(open(&key, &flipped, size, 0, size).await.is_err());
        // The first chunk alone, presented as a whole object of one chunk: not its last chunk.
        let first = &sealed[..(SEAL_CHUNK + TAG_LEN) as usize];
        assert!(open(&key, first, SEAL_CHUNK, 0, SEAL_CHUNK).await.is_err());
        assert!(open(&DataKey::random(), &sealed, size, 0, size).await.is_err());
    }

    #[test]
    fn data_keys_unwrap_only_under_their_key_and_mode() {
        let ring = Keyring::parse(
            "master m1 {k1}\nkms app {k2}\n"
                .replace("{k1}", &"11".repeat(32))
                .replace("{k2}", &"22".repeat(32))
                .as_str(),
        )
        .unwrap();
        let (enc, data) = ring.new_data_key(&Protection::S3).unwrap();
        assert_eq!(enc.key_id.as_deref(), Some("m1"));
        let wrapped = enc.wrapped_key.clone().unwrap();
        assert_eq!(ring.unwrap(&enc, &wrapped, None).unwrap().key.0, data.key.0);
        let as_kms = Encryption { mode: SseMode::Kms, key_id: Some("app".into()), ..enc.clone() };
        assert!(ring.unwrap(&as_kms, &wrapped, None).is_err());
        assert!(matches!(
            ring.new_data_key(&Protection::Kms { key_id: Some("nope".into()) }),
            Err(EngineError::KmsKeyNotFound(_))
        ));
        // Rotation: a new current master key rewraps the old data key.
        let mut rotated = ring.clone();
        rotated.merge(Keyring::parse(&format!("master m2 {}", "33".repeat(32))).unwrap()).unwrap();
        let (id, rewrapped) = rotated.rewrap(&enc, &wrapped).unwrap().unwrap();
        let moved = Encryption { key_id: Some(id), ..enc.clone() };
        assert_eq!(rotated.unwrap(&moved, &rewrapped, None).unwrap().key.0, data.key.0);
    }

    #[test]
    fn customer_keys_are_checked_like_s3() {
        let key = BASE64.encode([9u8; 32]);
        let md5 = BASE64.encode(Md5::digest([9u8; 32]));
        let parsed = CustomerKey::parse(Some("AES256"), Some(&key), Some(&md5)).unwrap().unwrap();
        assert_eq!(parsed.md5, md5);
        assert!(CustomerKey::parse(Some("AES256"), Some(&key), Some(&BASE64.encode([0u8; 16]))).is_err());
        assert!(CustomerKey::parse(Some("AES128"), Some(&key), Some(&md5)).is_err());
        assert!(CustomerKey::parse(Some("AES256"), None, Some(&md5)).is_err());
        assert!(CustomerKey::parse(None, None, None).unwrap().is_none());
        let ring = Keyring::default();
        let (enc, _) = ring.new_data_key(&Protection::Customer(parsed.clone())).unwrap();
        let other_bytes = [8u8; 32];
        let other = CustomerKey { key: Key(other_bytes), md5: BASE64.encode(Md5::digest(other_bytes)) };
        let wrapped = enc.wrapped_key.clone().unwrap();
        assert!(matches!(ring.unwrap(&enc, &wrapped, Some(&other)), Err(EngineError::AccessDenied(_))));
        assert!(matches!(ring.unwrap(&enc, &wrapped, None), Err(EngineError::CustomerKeyRequired)));
        assert!(ring.unwrap(&enc, &wrapped, Some(&parsed)).is_ok());
    }
}
