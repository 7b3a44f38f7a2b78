//! The embedded store's write-ahead log (`docs/decisions/067-embedded-write-ahead-log.md`).
//!
//! A group commit appends one frame holding every revision it made and `fdatasync`s it before
//! anyone hears of them; redb then commits without syncing. Every so often a durable redb
//! commit (a checkpoint) makes the log's contents redundant and the next frame is written at
//! the start of the file again, over the old ones: the file keeps its size, so a sync flushes
//! data only, never the file's length.
//!
//! A frame is `[payload length: u32][CRC-32 of the payload: u32][payload]`, the payload a run of
//! `[revision: u64][length: u32][the revision's history-log entry]` with consecutive revisions.
//! Reading stops at the first frame that is empty (zeros), torn (short or failing its checksum)
//! or older than the one before it (left from before a checkpoint): none of those was ever
//! acknowledged, or all of it is already in redb.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::{Buf, BufMut, Bytes};
use meridian_common::private_files;

use crate::{MetaError, MetaResult, Revision};

const FRAME_HEADER: usize = 8;
const RECORD_HEADER: usize = 12;
/// Zeros written ahead of the log when it is created, so appends overwrite instead of growing
/// the file.
const PREALLOCATED: u64 = 4 << 20;

/// One revision as logged: its number and its history-log entry (the encoded events).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LoggedRevision {
    pub revision: Revision,
    pub events: Bytes,
}

/// The log file and where the next frame goes.
pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    /// Where the next frame is written: the bytes in use since the last checkpoint.
    end: u64,
}

fn io_error(path: &Path, what: &str, err: std::io::Error) -> MetaError {
    MetaError::Storage(format!("{what} the metadata write-ahead log {}: {err}", path.display()))
}

impl Wal {
    /// Opens (or creates, mode 0600) the log at `path`; returns it with every revision it holds,
    /// oldest first. The next append goes at the start: the caller replays what it needs, then
    /// checkpoints before writing again.
    pub(crate) fn open(path: &Path) -> MetaResult<(Wal, Vec<LoggedRevision>)> {
        let mut file = private_files::file_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io_error(path, "cannot open", e))?;
        let mut contents = Vec::new();
        file.read_to_end(&mut contents).map_err(|e| io_error(path, "cannot read", e))?;
        let revisions = read_frames(&contents).map_err(|detail| {
            MetaError::Storage(format!("the metadata write-ahead log {} is corrupt: {detail}", path.display()))
        })?;
        if (contents.len() as u64) < PREALLOCATED {
            preallocate(&file, contents.len() as u64).map_err(|e| io_error(path, "cannot extend", e))?;
            // A new log's name must survive a crash as surely as the frames written into it.
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            private_files::sync_dir(dir).map_err(|e| io_error(path, "cannot sync the directory of", e))?;
        }
        Ok((Wal { file, path: path.to_path_buf(), end: 0 }, revisions))
    }

    /// Bytes written since the last checkpoint.
    pub(crate) fn len(&self) -> u64 {
        self.end
    }

    /// Writes one frame holding `revisions` (consecutive, oldest first) and syncs it: when this
    /// returns they survive a crash.
    pub(crate) fn append(&mut self, revisions: &[(Revision, &[u8])]) -> MetaResult<()> {
        let payload_len: usize = revisions.iter().map(|(_, events)| RECORD_HEADER + events.len()).sum();
        let mut frame = Vec::with_capacity(FRAME_HEADER + payload_len);
        frame.put_u32(0);
        frame.put_u32(0);
        for (revision, events) in revisions {
            frame.put_u64(*revision);
            frame.put_u32(u32::try_from(events.len()).map_err(|_| self.too_large())?);
            frame.extend_from_slice(events);
        }
        let len = u32::try_from(payload_len).map_err(|_| self.too_large())?;
        let crc = crc32fast::hash(&frame[FRAME_HEADER..]);
        frame[..4].copy_from_slice(&len.to_be_bytes());
        frame[4..8].copy_from_slice(&crc.to_be_bytes());
        self.file.write_all_at(&frame, self.end).map_err(|e| io_error(&self.path, "cannot write", e))?;
        self.file.sync_data().map_err(|e| io_error(&self.path, "cannot sync", e))?;
        self.end += frame.len() as u64;
        Ok(())
    }

    /// Everything logged is now durable in redb: the next frame starts the file again.
    pub(crate) fn checkpointed(&mut self) {
        self.end = 0;
    }

    fn too_large(&self) -> MetaError {
        MetaError::Storage(format!(
            "a group commit is too large for one frame of the metadata write-ahead log {}",
            self.path.display()
        ))
    }
}

/// Writes zeros from `from` up to the preallocated size and syncs them with the file's length.
fn preallocate(file: &File, from: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; (PREALLOCATED - from) as usize];
    file.write_all_at(&zeros, from)?;
    file.sync_all()
}

/// The revisions of every valid frame from the start of `contents`; `Err` only for damage a torn
/// write cannot explain (a frame whose checksum holds but whose contents do not parse, or a gap
/// between revisions).
fn read_frames(mut contents: &[u8]) -> Result<Vec<LoggedRevision>, String> {
    let mut out: Vec<LoggedRevision> = Vec::new();
    while contents.len() >= FRAME_HEADER {
        let len = u32::from_be_bytes([contents[0], contents[1], contents[2], contents[3]]) as usize;
        let crc = u32::from_be_bytes([contents[4], contents[5], contents[6], contents[7]]);
        let Some(payload) = contents.get(FRAME_HEADER..FRAME_HEADER + len) else {
            break; // torn: its end was never written
        };
        if len == 0 || crc32fast::hash(payload) != crc {
            break; // never written, or torn
        }
        let frame = parse_payload(payload)?;
        let Some(first) = frame.first() else {
            return Err("a frame holds no revision".into());
        };
        if let Some(last) = out.last() {
            if first.revision <= last.revision {
                break; // left from before the last checkpoint
            }
            if first.revision != last.revision + 1 {
                return Err(format!("revisions {} to {} are missing", last.revision + 1, first.revision - 1));
            }
        }
        out.extend(frame);
        contents = &contents[FRAME_HEADER + len..];
    }
    Ok(out)
}

fn parse_payload(mut payload: &[u8]) -> Result<Vec<LoggedRevision>, String> {
    let mut out: Vec<LoggedRevision> = Vec::new();
    while payload.has_remaining() {
        if payload.remaining() < RECORD_HEADER {
            return Err("a frame ends inside a record header".into());
        }
        let revision = payload.get_u64();
        let len = payload.get_u32() as usize;
        if payload.remaining() < len {
            return Err(format!("revision {revision} is longer than its frame"));
        }
        if let Some(previous) = out.last()
            && revision != previous.revision + 1
        {
            return Err(format!("revision {revision} follows {} in one frame", previous.revision));
        }
        out.push(LoggedRevision { revision, events: Bytes::copy_from_slice(&payload[..len]) });
        payload.advance(len);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(revision: Revision, events: &str) -> LoggedRevision {
        LoggedRevision { revision, events: Bytes::copy_from_slice(events.as_bytes()) }
    }

    /// A new log in a directory of its own (kept alive by the caller) and its path.
    fn new_log() -> (tempfile::TempDir, PathBuf, Wal) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (wal, found) = Wal::open(&path).unwrap();
        assert!(found.is_empty());
        (dir, path, wal)
    }

    fn append(wal: &mut Wal, revisions: &[(Revision, &str)]) {
        let records: Vec<(Revision, &[u8])> = revisions.iter().map(|(r, e)| (*r, e.as_bytes())).collect();
        wal.append(&records).unwrap();
    }

    #[test]
    fn frames_read_back_in_order_and_the_file_is_owner_only() {
        let (_dir, path, mut wal) = new_log();
        append(&mut wal, &[(1, "a"), (2, "bb")]);
        append(&mut wal, &[(3, "")]);
        drop(wal);
        let (_, found) = Wal::open(&path).unwrap();
        assert_eq!(found, vec![logged(1, "a"), logged(2, "bb"), logged(3, "")]);
        private_files::check_private_file(&path).unwrap();
    }

    #[test]
    fn a_torn_last_frame_is_dropped_and_nothing_before_it() {
        let (_dir, path, mut wal) = new_log();
        append(&mut wal, &[(1, "first")]);
        let torn_at = wal.len();
        append(&mut wal, &[(2, "second"), (3, "third")]);
        drop(wal);
        // The second frame's last bytes never reached the disk.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0, 0, 0], torn_at + 20).unwrap();
        let (_, found) = Wal::open(&path).unwrap();
        assert_eq!(found, vec![logged(1, "first")]);
    }

    #[test]
    fn frames_left_from_before_a_checkpoint_are_not_read() {
        let (_dir, path, mut wal) = new_log();
        append(&mut wal, &[(1, "a")]);
        append(&mut wal, &[(2, "b")]);
        append(&mut wal, &[(3, "c")]);
        wal.checkpointed();
        // As long as frame 1: frames 2 and 3 follow it whole, checksums and all.
        append(&mut wal, &[(4, "d")]);
        drop(wal);
        let (_, found) = Wal::open(&path).unwrap();
        assert_eq!(found, vec![logged(4, "d")]);
    }

    #[test]
    fn a_gap_between_frames_is_refused_as_corruption() {
        let (_dir, path, mut wal) = new_log();
        append(&mut wal, &[(1, "a")]);
        append(&mut wal, &[(3, "c")]);
        drop(wal);
        let err = Wal::open(&path).err().unwrap().to_string();
        assert!(err.contains("revisions 2 to 2 are missing"), "{err}");
    }
}
