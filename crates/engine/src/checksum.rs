//! MD5 (for ETags) and the additional checksums current S3 SDKs send: CRC32, CRC32C, CRC64NVME,
//! SHA1 and SHA256. Values travel base64-encoded, as in the `x-amz-checksum-*` headers.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use md5::Digest as _;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, EngineResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ChecksumAlgorithm {
    Crc32,
    Crc32c,
    Crc64nvme,
    Sha1,
    Sha256,
}

impl ChecksumAlgorithm {
    pub const ALL: [ChecksumAlgorithm; 5] = [
        ChecksumAlgorithm::Crc32,
        ChecksumAlgorithm::Crc32c,
        ChecksumAlgorithm::Crc64nvme,
        ChecksumAlgorithm::Sha1,
        ChecksumAlgorithm::Sha256,
    ];

    /// The name used in `x-amz-checksum-algorithm` and S3 XML.
    pub fn name(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Crc32 => "CRC32",
            ChecksumAlgorithm::Crc32c => "CRC32C",
            ChecksumAlgorithm::Crc64nvme => "CRC64NVME",
            ChecksumAlgorithm::Sha1 => "SHA1",
            ChecksumAlgorithm::Sha256 => "SHA256",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(name))
    }

    fn crc(self) -> Option<crc_fast::CrcAlgorithm> {
        match self {
            ChecksumAlgorithm::Crc32 => Some(crc_fast::CrcAlgorithm::Crc32IsoHdlc),
            ChecksumAlgorithm::Crc32c => Some(crc_fast::CrcAlgorithm::Crc32Iscsi),
            ChecksumAlgorithm::Crc64nvme => Some(crc_fast::CrcAlgorithm::Crc64Nvme),
            _ => None,
        }
    }

    fn digest_len(self) -> usize {
        match self {
            ChecksumAlgorithm::Crc32 | ChecksumAlgorithm::Crc32c => 4,
            ChecksumAlgorithm::Crc64nvme => 8,
            ChecksumAlgorithm::Sha1 => 20,
            ChecksumAlgorithm::Sha256 => 32,
        }
    }

    /// The checksum of `data` in one go.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        let mut hasher = Hasher::new(Some(self));
        hasher.update(data);
        hasher.finish().1.map(|(_, raw)| raw).unwrap_or_default()
    }
}

/// Whether a stored checksum covers the whole object or is a checksum of part checksums.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ChecksumType {
    FullObject,
    Composite,
}

/// A checksum kept with an object or part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredChecksum {
    pub algorithm: ChecksumAlgorithm,
    /// Raw digest bytes, base64 in JSON.
    #[serde(with = "base64_bytes")]
    pub raw: Vec<u8>,
    pub kind: ChecksumType,
    /// For composite checksums: the number of parts (shown as the `-N` suffix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<usize>,
}

impl StoredChecksum {
    /// The header value: base64, with `-N` for composite checksums.
    pub fn header_value(&self) -> String {
        let encoded = BASE64.encode(&self.raw);
        match (self.kind, self.parts) {
            (ChecksumType::Composite, Some(n)) => format!("{encoded}-{n}"),
            _ => encoded,
        }
    }
}

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(raw: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(raw))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        BASE64.decode(text).map_err(serde::de::Error::custom)
    }
}

/// Decodes a base64 checksum header value, checking its length for the algorithm.
pub fn decode_checksum(algorithm: ChecksumAlgorithm, value: &str) -> EngineResult<Vec<u8>> {
    let raw = BASE64.decode(value.trim()).map_err(|_| {
        EngineError::InvalidArgument(format!("the {} checksum is not valid base64: {value:?}", algorithm.name()))
    })?;
    if raw.len() != algorithm.digest_len() {
        return Err(EngineError::InvalidArgument(format!(
            "the {} checksum must be {} bytes, got {}",
            algorithm.name(),
            algorithm.digest_len(),
            raw.len()
        )));
    }
    Ok(raw)
}

enum Running {
    Crc(crc_fast::Digest),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

/// Computes MD5 and at most one additional checksum in a single pass.
pub struct Hasher {
    md5: md5::Md5,
    extra: Option<(ChecksumAlgorithm, Running)>,
}

impl Hasher {
    pub fn new(algorithm: Option<ChecksumAlgorithm>) -> Self {
        let extra = algorithm.map(|a| {
            let running = match (a, a.crc()) {
                (_, Some(crc)) => Running::Crc(crc_fast::Digest::new(crc)),
                (ChecksumAlgorithm::Sha1, None) => Running::Sha1(sha1::Sha1::new()),
                _ => Running::Sha256(sha2::Sha256::new()),
            };
            (a, running)
        });
        Hasher { md5: md5::Md5::new(), extra }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.md5.update(data);
        match &mut self.extra {
            Some((_, Running::Crc(d))) => d.update(data),
            Some((_, Running::Sha1(d))) => d.update(data),
            Some((_, Running::Sha256(d))) => d.update(data),
            None => {}
        }
    }

    /// The MD5 and, if requested, the additional checksum's raw bytes.
    pub fn finish(self) -> ([u8; 16], Option<(ChecksumAlgorithm, Vec<u8>)>) {
        let md5: [u8; 16] = self.md5.finalize().into();
        let extra = self.extra.map(|(a, running)| {
            let raw = match running {
                Running::Crc(d) => {
                    let value = d.finalize();
                    if a == ChecksumAlgorithm::Crc64nvme {
                        value.to_be_bytes().to_vec()
                    } else {
                        (value as u32).to_be_bytes().to_vec()
                    }
                }
                Running::Sha1(d) => d.finalize().to_vec(),
                Running::Sha256(d) => d.finalize().to_vec(),
            };
            (a, raw)
        });
        (md5, extra)
    }
}

/// MD5 of `data`, hex.
pub fn md5_hex(data: &[u8]) -> String {
    hex::encode(md5::Md5::digest(data))
}

/// The checksum of a multipart object from its parts' checksums. CRC algorithms combine into a
/// checksum of the whole object when `full_object` is asked for; otherwise (and always for SHA)
/// the result is S3's composite form: the checksum of the concatenated part checksums, `-N`.
pub fn combine_parts(algorithm: ChecksumAlgorithm, parts: &[(Vec<u8>, u64)], full_object: bool) -> StoredChecksum {
    if full_object && let Some(crc) = algorithm.crc() {
        let mut combined: Option<u64> = None;
        for (raw, len) in parts {
            let value = raw.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            combined = Some(match combined {
                None => value,
                Some(acc) => crc_fast::checksum_combine(crc, acc, value, *len),
            });
        }
        let value = combined.unwrap_or(0);
        let raw = if algorithm == ChecksumAlgorithm::Crc64nvme {
            value.to_be_bytes().to_vec()
        } else {
            (value as u32).to_be_bytes().to_vec()
        };
        return StoredChecksum { algorithm, raw, kind: ChecksumType::FullObject, parts: None };
    }
    let concatenated: Vec<u8> = parts.iter().flat_map(|(raw, _)| raw.iter().copied()).collect();
    StoredChecksum {
        algorithm,
        raw: algorithm.digest(&concatenated),
        kind: ChecksumType::Composite,
        parts: Some(parts.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(algorithm: ChecksumAlgorithm, data: &[u8]) -> String {
        BASE64.encode(algorithm.digest(data))
    }

    #[test]
    fn known_vectors() {
        // "123456789" is the standard CRC check input.
        assert_eq!(ChecksumAlgorithm::Crc32.digest(b"123456789"), 0xCBF4_3926u32.to_be_bytes());
        assert_eq!(ChecksumAlgorithm::Crc32c.digest(b"123456789"), 0xE306_9283u32.to_be_bytes());
        assert_eq!(ChecksumAlgorithm::Crc64nvme.digest(b"123456789"), 0xAE8B_1486_0A79_9888u64.to_be_bytes());
        assert_eq!(b64(ChecksumAlgorithm::Sha256, b""), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
        assert_eq!(b64(ChecksumAlgorithm::Sha1, b"abc"), "qZk+NkcGgWq6PiVxeFDCbJzQ2J0=");
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn full_object_crc_equals_crc_of_whole() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for algorithm in [ChecksumAlgorithm::Crc32, ChecksumAlgorithm::Crc32c, ChecksumAlgorithm::Crc64nvme] {
            let parts: Vec<(Vec<u8>, u64)> =
                data.chunks(30_000).map(|c| (algorithm.digest(c), c.len() as u64)).collect();
            let combined = combine_parts(algorithm, &parts, true);
            assert_eq!(combined.raw, algorithm.digest(&data), "{algorithm:?}");
            assert_eq!(combined.header_value(), b64(algorithm, &data));
        }
    }

    #[test]
    fn composite_has_part_count_suffix() {
        let parts = vec![(vec![1, 2, 3, 4], 5), (vec![5, 6, 7, 8], 5)];
        let c = combine_parts(ChecksumAlgorithm::Crc32, &parts, false);
        assert!(c.header_value().ends_with("-2"));
        assert_eq!(c.raw, ChecksumAlgorithm::Crc32.digest(&[1, 2, 3, 4, 5, 6, 7, 8]));
    }

    #[test]
    fn bad_checksum_values_are_rejected() {
        assert!(decode_checksum(ChecksumAlgorithm::Crc32, "not base64!").is_err());
        assert!(decode_checksum(ChecksumAlgorithm::Crc32, "AAAAAAAA").is_err(), "6 bytes is not a CRC32");
        assert!(decode_checksum(ChecksumAlgorithm::Crc32, "AAAAAA==").is_ok());
    }
}
