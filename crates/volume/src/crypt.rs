//! Client-side encryption of a volume (see docs/volumes.md, "Encryption").
//!
//! Every object of an encrypted volume except its manifest is sealed before it leaves the
//! process. Its bytes are cut into 4 KiB chunks, each sealed with XChaCha20-Poly1305 under a
//! fresh random 192-bit nonce (random nonces of that size never repeat in practice, however much
//! is written under one key), with the volume id, the object's key relative to the volume and
//! the chunk's index as associated data, so a chunk cannot be moved to another object or
//! position unnoticed. A sealed chunk is nonce ‖ ciphertext ‖ tag: 40 bytes more than its
//! plaintext. Every chunk but the last is full, so a byte range of the plaintext maps to whole
//! sealed chunks and range reads of log objects stay range reads.

use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::error::{Result, StoreError, VolumeError};
use crate::format::Layout;
use crate::store::{Fetched, KeyState, Listed, ObjectStore, PutCondition};

/// The `cipher` recorded in the manifest of an encrypted volume.
pub const CIPHER: &str = "xchacha20poly1305-4k";
const CHUNK: usize = 4096;
const NONCE: usize = 24;
const OVERHEAD: usize = NONCE + 16;
const SEALED_CHUNK: u64 = (CHUNK + OVERHEAD) as u64;
/// What the manifest's key check seals, so a wrong key is refused before any object is read.
const KEY_CHECK: &[u8] = b"meridian volume key check";

/// A volume's 256-bit key.
pub struct VolumeKey {
    aead: XChaCha20Poly1305,
}

impl std::fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VolumeKey(..)")
    }
}

impl VolumeKey {
    pub fn from_bytes(key: &[u8; 32]) -> Self {
        Self { aead: XChaCha20Poly1305::new(key.into()) }
    }

    /// Reads a key file: 64 hex digits (surrounding whitespace ignored), readable by its owner
    /// only.
    pub fn from_file(path: &Path) -> Result<Self> {
        let shown = path.display();
        let meta = std::fs::metadata(path)
            .map_err(|e| VolumeError::Crypto(format!("cannot read the key file {shown}: {e}")))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(VolumeError::Crypto(format!(
                "the key file {shown} is open to other users; run `chmod 600 {shown}`"
            )));
        }
        let text =
            std::fs::read(path).map_err(|e| VolumeError::Crypto(format!("cannot read the key file {shown}: {e}")))?;
        let key = parse_hex_key(text.trim_ascii()).ok_or_else(|| {
            VolumeError::Crypto(format!(
                "the key file {shown} must hold 32 bytes as 64 hex digits (e.g. from `openssl rand -hex 32`)"
            ))
        })?;
        Ok(Self::from_bytes(&key))
    }

    fn seal_chunk(&self, aad: &[u8], plain: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        let nonce: [u8; NONCE] = rand::random();
        let sealed = self
            .aead
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
            .map_err(|_| std::io::Error::other("sealing a chunk failed"))?;
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(())
    }

    fn open_chunk(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < OVERHEAD {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE);
        self.aead.decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad }).ok()
    }

    /// The manifest's key check for volume `volume_id`: [`KEY_CHECK`] sealed, in hex.
    pub fn check(&self, volume_id: &str) -> Result<String> {
        let mut out = Vec::new();
        self.seal_chunk(volume_id.as_bytes(), KEY_CHECK, &mut out)?;
        Ok(out.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Whether this is the key whose [`Self::check`] is `check`.
    pub fn verify(&self, volume_id: &str, check: &str) -> bool {
        parse_hex(check.as_bytes())
            .and_then(|sealed| self.open_chunk(volume_id.as_bytes(), &sealed))
            .is_some_and(|plain| plain == KEY_CHECK)
    }
}

fn parse_hex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()).collect()
}

fn parse_hex_key(text: &[u8]) -> Option<[u8; 32]> {
    parse_hex(text)?.try_into().ok()
}

/// Stored size of an object whose plaintext is `plain` bytes.
pub fn sealed_len(plain: u64) -> u64 {
    plain + plain.div_ceil(CHUNK as u64) * OVERHEAD as u64
}

/// Plaintext size of a stored object of `sealed` bytes.
pub fn plain_len(sealed: u64) -> u64 {
    sealed.saturating_sub(sealed.div_ceil(SEALED_CHUNK) * OVERHEAD as u64)
}

/// A store that seals every object of one volume but its manifest on the way out and opens
/// them on the way in. A fork's store also opens its ancestors' objects (which it reads up to
/// its fork point): each object is sealed under the volume it belongs to.
pub struct EncryptedStore {
    inner: Arc<dyn ObjectStore>,
    key: Arc<VolumeKey>,
    /// During a key rotation, the key being retired: objects written before the rotation that
    /// GC has not re-sealed yet open under it (see [`ObjectStore::reseal`]).
    retiring: Option<Arc<VolumeKey>>,
    /// The volume itself first, then its ancestors.
    volumes: Vec<Sealed>,
}

/// A volume whose objects a store seals: its root, manifest key and id.
struct Sealed {
    root: String,
    manifest: String,
    volume_id: String,
}

impl EncryptedStore {
    pub fn new(inner: Arc<dyn ObjectStore>, key: Arc<VolumeKey>, layout: &Layout, volume_id: &str) -> Self {
        Self { inner, key, retiring: None, volumes: vec![Sealed::new(layout, volume_id)] }
    }

    /// Also opens chunks sealed under `old`, the key a rotation in progress retires. Everything
    /// is still sealed under the current key.
    pub fn with_retiring_key(mut self, old: Arc<VolumeKey>) -> Self {
        self.retiring = Some(old);
        self
    }

    /// Also opens the objects of `layout`, an ancestor of this (forked) volume, sealed under
    /// the same key.
    pub fn with_ancestor(mut self, layout: &Layout, volume_id: &str) -> Self {
        self.volumes.push(Sealed::new(layout, volume_id));
        self
    }

    fn is_manifest(&self, key: &str) -> bool {
        self.volumes.iter().any(|v| v.manifest == key)
    }

    fn aad(&self, key: &str, chunk: u64) -> Vec<u8> {
        let (volume_id, rel) = self
            .volumes
            .iter()
            .find_map(|v| key.strip_prefix(&v.root).map(|rel| (&v.volume_id, rel)))
            .unwrap_or((&self.volumes[0].volume_id, key));
        let mut aad = Vec::with_capacity(volume_id.len() + rel.len() + 10);
        aad.extend_from_slice(volume_id.as_bytes());
        aad.push(0);
        aad.extend_from_slice(rel.as_bytes());
        aad.push(0);
        aad.extend_from_slice(&chunk.to_be_bytes());
        aad
    }

    fn seal(&self, key: &str, plain: &[u8]) -> std::io::Result<Bytes> {
        let mut out = Vec::with_capacity(sealed_len(plain.len() as u64) as usize);
        for (i, chunk) in (0u64..).zip(plain.chunks(CHUNK)) {
            self.key.seal_chunk(&self.aad(key, i), chunk, &mut out)?;
        }
        Ok(Bytes::from(out))
    }

    /// Opens sealed chunks `first..` of `key`, under the current key or else the retiring one.
    fn open(&self, key: &str, sealed: &[u8], first: u64) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(sealed.len());
        for (i, chunk) in (first..).zip(sealed.chunks(SEALED_CHUNK as usize)) {
            let aad = self.aad(key, i);
            let plain = self
                .key
                .open_chunk(&aad, chunk)
                .or_else(|| self.retiring.as_ref().and_then(|old| old.open_chunk(&aad, chunk)))
                .ok_or_else(|| StoreError::Backend {
                    key: key.to_string(),
                    message: format!(
                        "chunk {i} fails authentication with this volume's key: the object was altered or \
                         written with another key"
                    ),
                })?;
            out.extend_from_slice(&plain);
        }
        Ok(out)
    }

    /// Whether the first chunk of `raw` (an object's stored bytes from its start) is sealed
    /// under the current key. An empty object has no chunk and counts as current.
    fn first_chunk_is_current(&self, key: &str, raw: &[u8]) -> bool {
        raw.is_empty() || self.key.open_chunk(&self.aad(key, 0), &raw[..raw.len().min(SEALED_CHUNK as usize)]).is_some()
    }

    /// Seals the file at `path` into a temporary file beside it, chunk by chunk.
    fn seal_file(&self, key: &str, path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let out = tempfile::Builder::new().prefix("sealed-").tempfile_in(dir)?;
        let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
        let mut writer = BufWriter::with_capacity(1 << 20, out.as_file());
        let (mut buf, mut sealed) = (vec![0u8; CHUNK], Vec::with_capacity(SEALED_CHUNK as usize));
        for i in 0u64.. {
            let n = read_full(&mut reader, &mut buf)?;
            if n == 0 {
                break;
            }
            sealed.clear();
            self.key.seal_chunk(&self.aad(key, i), &buf[..n], &mut sealed)?;
            writer.write_all(&sealed)?;
        }
        writer.flush()?;
        drop(writer);
        Ok(out)
    }

    async fn read_range(&self, key: &str, start: u64, len: u64, exact: bool) -> Result<Bytes, StoreError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let first = start / CHUNK as u64;
        let last = (start + len - 1) / CHUNK as u64;
        let raw = self.inner.get_range_upto(key, first * SEALED_CHUNK, (last - first + 1) * SEALED_CHUNK).await?;
        let plain = Bytes::from(self.open(key, &raw, first)?);
        let skip = (start - first * CHUNK as u64) as usize;
        let end = (skip + len as usize).min(plain.len());
        if exact && end - skip.min(end) != len as usize {
            return Err(StoreError::Backend {
                key: key.to_string(),
                message: format!("asked for {len} bytes at {start}, the object ends first"),
            });
        }
        Ok(plain.slice(skip.min(end)..end))
    }
}

impl Sealed {
    fn new(layout: &Layout, volume_id: &str) -> Self {
        Self { root: layout.root().to_string(), manifest: layout.manifest(), volume_id: volume_id.to_string() }
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[async_trait]
impl ObjectStore for EncryptedStore {
    async fn put(&self, key: &str, body: Bytes, cond: PutCondition) -> Result<String, StoreError> {
        if self.is_manifest(key) {
            return self.inner.put(key, body, cond).await;
        }
        self.inner.put(key, self.seal(key, &body)?, cond).await
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<String, StoreError> {
        let sealed = self.seal_file(key, path)?;
        self.inner.put_file(key, sealed.path()).await
    }

    async fn get(&self, key: &str) -> Result<Fetched, StoreError> {
        let f = self.inner.get(key).await?;
        if self.is_manifest(key) {
            return Ok(f);
        }
        Ok(Fetched { data: Bytes::from(self.open(key, &f.data, 0)?), etag: f.etag })
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        self.read_range(key, start, len, true).await
    }

    async fn get_range_upto(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        self.read_range(key, start, len, false).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let mut listed = self.inner.list(prefix).await?;
        for o in listed.iter_mut().filter(|o| !self.is_manifest(&o.key)) {
            o.size = plain_len(o.size);
        }
        Ok(listed)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }

    async fn key_state(&self, key: &str) -> Result<KeyState, StoreError> {
        if self.is_manifest(key) {
            return Ok(KeyState::Current);
        }
        let raw = match self.inner.get_range_upto(key, 0, SEALED_CHUNK).await {
            Ok(raw) => raw,
            Err(StoreError::NotFound(_)) => return Ok(KeyState::Gone),
            Err(e) => return Err(e),
        };
        Ok(if self.first_chunk_is_current(key, &raw) { KeyState::Current } else { KeyState::Retiring })
    }

    /// Objects are written whole under one key, so the first chunk tells which. One under the
    /// retiring key is opened and sealed again under the current key, replaced only if it is
    /// still the version read (a writer replacing it meanwhile already sealed it anew).
    async fn reseal(&self, key: &str) -> Result<KeyState, StoreError> {
        if self.is_manifest(key) {
            return Ok(KeyState::Current);
        }
        let f = match self.inner.get(key).await {
            Ok(f) => f,
            Err(StoreError::NotFound(_)) => return Ok(KeyState::Gone),
            Err(e) => return Err(e),
        };
        if self.first_chunk_is_current(key, &f.data) {
            return Ok(KeyState::Current);
        }
        let plain = self.open(key, &f.data, 0)?;
        match self.inner.put(key, self.seal(key, &plain)?, PutCondition::IfMatch(f.etag)).await {
            Ok(_) => Ok(KeyState::Retiring),
            Err(StoreError::PreconditionFailed(_) | StoreError::NotFound(_)) => Ok(KeyState::Gone),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_map_both_ways() {
        for plain in [1u64, 44, 4095, 4096, 4097, 12 * 1024, 12 * 1024 + (4 << 20)] {
            assert_eq!(plain_len(sealed_len(plain)), plain, "{plain}");
        }
    }

    #[test]
    fn key_check_and_hex() {
        let key = VolumeKey::from_bytes(&[7; 32]);
        let check = key.check("vol-a").unwrap();
        assert!(key.verify("vol-a", &check));
        assert!(!key.verify("vol-b", &check), "bound to the volume");
        assert!(!VolumeKey::from_bytes(&[8; 32]).verify("vol-a", &check));
        assert!(!key.verify("vol-a", "zz"));
        assert_eq!(parse_hex_key(&[b'a'; 64]), Some([0xaa; 32]));
        assert_eq!(parse_hex_key(&[b'a'; 62]), None);
        assert_eq!(parse_hex_key(&[b'g'; 64]), None);
    }
}
