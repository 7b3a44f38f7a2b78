//! A valid, deterministic PNG without an image library: one colour per name, stored with
//! uncompressed deflate blocks (the bytes only need to be real PNG and reproducible).

use sha2::{Digest, Sha256};

const SIDE: u32 = 32;

/// A `SIDE`×`SIDE` RGB PNG whose colour pattern is derived from `seed`.
pub fn avatar(seed: &str) -> Vec<u8> {
    let digest = Sha256::digest(seed.as_bytes());
    let mut raw = Vec::with_capacity(((SIDE * 3 + 1) * SIDE) as usize);
    for y in 0..SIDE {
        raw.push(0); // filter: none
        for x in 0..SIDE {
            let cell = ((x / 8) + (y / 8) * 4) as usize % 8;
            raw.extend_from_slice(&digest[cell * 3..cell * 3 + 3]);
        }
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend_from_slice(&SIDE.to_be_bytes());
    header.extend_from_slice(&SIDE.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    chunk(&mut png, b"IHDR", &header);
    chunk(&mut png, b"IDAT", &zlib_stored(&raw));
    chunk(&mut png, b"IEND", &[]);
    png
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    let length = u32::try_from(data.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&length.to_be_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

/// A zlib stream of stored (uncompressed) deflate blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = data.chunks(0xffff).collect();
    for (i, block) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avatars_are_deterministic_and_differ_by_name() {
        assert_eq!(avatar("aoi"), avatar("aoi"));
        assert_ne!(avatar("aoi"), avatar("cadey"));
        assert!(avatar("aoi").starts_with(b"\x89PNG\r\n\x1a\n"));
    }

    #[test]
    fn checksums_match_known_values() {
        // Adler-32 of "Wikipedia" is 0x11E60398 (RFC 1950's worked example).
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    }
}
