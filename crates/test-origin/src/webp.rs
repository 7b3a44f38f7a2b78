//! A valid, deterministic lossless WebP (VP8L) without an image library: one solid colour,
//! which VP8L codes with five one-symbol prefix codes and no pixel bits at all (so browsers
//! really decode what the sticker "resizer" answers as `image/webp`).

use sha2::{Digest, Sha256};

/// Width and height of the WebP stickers (not the PNG's, so a page can tell which it got).
pub const SIDE: u32 = 24;

/// A `SIDE`×`SIDE` WebP of one opaque colour derived from `seed`.
pub fn solid(seed: &str) -> Vec<u8> {
    let digest = Sha256::digest(seed.as_bytes());
    let mut bits = Bits::default();
    bits.push(SIDE - 1, 14);
    bits.push(SIDE - 1, 14);
    bits.push(0, 1); // alpha not used
    bits.push(0, 3); // version 0
    bits.push(0, 1); // no transform
    bits.push(0, 1); // no colour cache
    bits.push(0, 1); // no meta prefix codes
    // Green, red, blue, alpha, distance: each a simple code with its one symbol in 8 bits.
    for symbol in [digest[1], digest[0], digest[2], 0xff, 0] {
        bits.push(0b101, 3); // simple code, one symbol, 8-bit symbol
        bits.push(u32::from(symbol), 8);
    }
    let mut data = vec![0x2f];
    data.extend_from_slice(&bits.bytes);
    riff(&data)
}

/// The RIFF container around one `VP8L` chunk.
fn riff(chunk: &[u8]) -> Vec<u8> {
    let padded = chunk.len() + chunk.len() % 2;
    let chunk_len = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
    let riff_len = u32::try_from(4 + 8 + padded).unwrap_or(u32::MAX);
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&riff_len.to_le_bytes());
    out.extend_from_slice(b"WEBPVP8L");
    out.extend_from_slice(&chunk_len.to_le_bytes());
    out.extend_from_slice(chunk);
    out.resize(8 + 4 + 8 + padded, 0);
    out
}

/// A bit stream written least significant bit first, as VP8L reads it.
#[derive(Default)]
struct Bits {
    bytes: Vec<u8>,
    used: u32,
}

impl Bits {
    fn push(&mut self, value: u32, count: u32) {
        for i in 0..count {
            if self.used.is_multiple_of(8) {
                self.bytes.push(0);
            }
            if value >> i & 1 == 1
                && let Some(last) = self.bytes.last_mut()
            {
                *last |= 1 << (self.used % 8);
            }
            self.used += 1;
        }
    }
}
