//! The on-disk format of a cache entry, and the CRC32C helpers it is built from.
//!
//! An entry file is the chunk's bytes followed by a footer:
//!
//! ```text
//! [chunk bytes: chunk_len]
//! [CRC32C of each 64 KiB block of the chunk: u32 LE * n_blocks]   (the last block may be short)
//! [trailer, 40 bytes:
//!     magic "MRDNCC01" | chunk_start u64 LE | chunk_len u64 LE | chunk_crc u32 LE
//!     | block_size u32 LE | n_blocks u32 LE | footer_crc u32 LE]
//! ```
//!
//! `footer_crc` is the CRC32C of every footer byte before it. The file length is implied by
//! `chunk_len`, so a file cut short (a torn write after a crash: cache files are not fsynced) or
//! one whose footer is damaged is rejected before any byte is served; a byte flipped in the data
//! is caught by its block's CRC before that block is served.

use crc_fast::CrcAlgorithm::Crc32Iscsi;

/// Granularity of verification on read: a read checks (and so reads) whole blocks.
pub(crate) const BLOCK: u64 = 64 << 10;
const MAGIC: [u8; 8] = *b"MRDNCC01";
pub(crate) const TRAILER_LEN: u64 = 40;

/// CRC32C (Castagnoli, as in iSCSI and S3's `x-amz-checksum-crc32c`) of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(data)
}

/// Bytes of footer after a chunk of `chunk_len` bytes.
pub(crate) fn footer_len(chunk_len: u64) -> u64 {
    chunk_len.div_ceil(BLOCK) * 4 + TRAILER_LEN
}

/// Size on disk of the entry of a chunk of `chunk_len` bytes.
pub(crate) fn entry_len(chunk_len: u64) -> u64 {
    chunk_len + footer_len(chunk_len)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Footer {
    pub chunk_start: u64,
    pub chunk_len: u64,
    pub chunk_crc: u32,
    pub block_crcs: Vec<u32>,
}

impl Footer {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.block_crcs.len() * 4 + TRAILER_LEN as usize);
        for crc in &self.block_crcs {
            out.extend_from_slice(&crc.to_le_bytes());
        }
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.chunk_start.to_le_bytes());
        out.extend_from_slice(&self.chunk_len.to_le_bytes());
        out.extend_from_slice(&self.chunk_crc.to_le_bytes());
        out.extend_from_slice(&(BLOCK as u32).to_le_bytes());
        out.extend_from_slice(&(self.block_crcs.len() as u32).to_le_bytes());
        let crc = crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses a footer (exactly the footer's bytes) and checks its own consistency.
    pub fn decode(bytes: &[u8]) -> Result<Footer, String> {
        let len = bytes.len();
        if (len as u64) < TRAILER_LEN {
            return Err(format!("footer of {len} bytes is shorter than the trailer"));
        }
        let (body, stored) = bytes.split_at(len - 4);
        let crc = crc32c(body);
        if crc.to_le_bytes() != stored {
            return Err("footer checksum does not match".into());
        }
        let trailer = &bytes[len - TRAILER_LEN as usize..];
        if trailer[..8] != MAGIC {
            return Err("not a cache entry (bad magic)".into());
        }
        let chunk_start = u64_at(trailer, 8);
        let chunk_len = u64_at(trailer, 16);
        let chunk_crc = u32_at(trailer, 24);
        let block_size = u32_at(trailer, 28);
        let n_blocks = u32_at(trailer, 32) as u64;
        if u64::from(block_size) != BLOCK {
            return Err(format!("block size {block_size} is not {BLOCK}"));
        }
        if n_blocks != chunk_len.div_ceil(BLOCK) || n_blocks * 4 + TRAILER_LEN != len as u64 {
            return Err(format!("{n_blocks} block checksums do not fit a chunk of {chunk_len} bytes"));
        }
        let block_crcs = body[..n_blocks as usize * 4].chunks_exact(4).map(|b| u32_at(b, 0)).collect();
        Ok(Footer { chunk_start, chunk_len, chunk_crc, block_crcs })
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(buf)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(buf)
}

/// Running CRC32C of a chunk and of each of its [`BLOCK`]-sized blocks, fed as bytes arrive.
pub(crate) struct BlockHasher {
    block: crc_fast::Digest,
    fill: u64,
    block_crcs: Vec<u32>,
    chunk_crc: u64,
    total: u64,
}

impl BlockHasher {
    pub fn new() -> Self {
        BlockHasher {
            block: crc_fast::Digest::new(Crc32Iscsi),
            fill: 0,
            block_crcs: Vec::new(),
            chunk_crc: 0,
            total: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        while !data.is_empty() {
            let take = ((BLOCK - self.fill) as usize).min(data.len());
            self.block.update(&data[..take]);
            self.fill += take as u64;
            data = &data[take..];
            if self.fill == BLOCK {
                self.end_block();
            }
        }
    }

    fn end_block(&mut self) {
        let crc = self.block.finalize_reset();
        self.block_crcs.push(crc as u32);
        self.chunk_crc = crc_fast::checksum_combine(Crc32Iscsi, self.chunk_crc, crc, self.fill);
        self.fill = 0;
    }

    /// The chunk's CRC32C and its block CRCs.
    pub fn finish(mut self) -> (u32, Vec<u32>) {
        if self.fill > 0 {
            self.end_block();
        }
        (self.chunk_crc as u32, self.block_crcs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
    }

    #[test]
    fn block_hasher_matches_one_shot_crcs_for_any_split() {
        for len in [0usize, 1, 1000, BLOCK as usize, BLOCK as usize + 1, 5 * BLOCK as usize - 7] {
            let data = pattern(len);
            for piece in [1usize, 999, 4096, 70_000] {
                let mut hasher = BlockHasher::new();
                for part in data.chunks(piece) {
                    hasher.update(part);
                }
                let (crc, blocks) = hasher.finish();
                assert_eq!(crc, crc32c(&data), "len {len} piece {piece}");
                let expected: Vec<u32> = data.chunks(BLOCK as usize).map(crc32c).collect();
                assert_eq!(blocks, expected);
            }
        }
    }

    #[test]
    fn footer_round_trips_and_rejects_damage() {
        let footer = Footer {
            chunk_start: 8 << 20,
            chunk_len: 3 * BLOCK + 5,
            chunk_crc: 0xdead_beef,
            block_crcs: vec![1, 2, 3, 4],
        };
        let bytes = footer.encode();
        assert_eq!(bytes.len() as u64, footer_len(footer.chunk_len));
        assert_eq!(Footer::decode(&bytes).unwrap(), footer);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(Footer::decode(&bad).is_err(), "flip at {i} accepted");
        }
        assert!(Footer::decode(&bytes[1..]).is_err());
        assert!(Footer::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Footer::decode(&[]).is_err());
    }
}
