//! The durable position of a migration: every source object up to `after` (in listing order) has
//! been copied, found already present, or reported as failed. Written atomically (temporary
//! file, fsync, rename, fsync of the directory), owner-only, at most once a second and at the end.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// At most this many failures are kept by name; `failed` still counts all of them.
const FAILURES_KEPT: usize = 1000;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    /// `endpoint/bucket/prefix` of the source, so a checkpoint is never resumed against another.
    pub source: String,
    /// `endpoint/bucket` of the destination.
    pub destination: String,
    /// The last source key handled, in listing order; `None` before the first.
    pub after: Option<String>,
    /// Source objects handled (copied, already present or failed).
    pub passed: u64,
    pub copied: u64,
    pub copied_bytes: u64,
    /// Objects the destination already held with the same size and ETag (not copied again).
    pub present: u64,
    pub present_bytes: u64,
    pub failed: u64,
    /// The first failures, with the reason.
    pub failures: Vec<Failure>,
    /// The whole listing was handled.
    pub finished: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Failure {
    pub key: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read the checkpoint {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("the checkpoint {path} is not a migration checkpoint: {error}")]
    Parse { path: PathBuf, error: serde_json::Error },
    #[error("the checkpoint {path} belongs to the migration of {found}, not {wanted}; give another --checkpoint file")]
    Mismatch { path: PathBuf, found: String, wanted: String },
    #[error("cannot write the checkpoint {path}: {error}")]
    Write { path: PathBuf, error: std::io::Error },
}

impl Checkpoint {
    /// The checkpoint at `path` for this source and destination: the saved one if there is an
    /// unfinished one, else a fresh one (a finished migration run again starts a new pass).
    pub fn load(path: &Path, source: &str, destination: &str) -> Result<Checkpoint, CheckpointError> {
        let fresh = Checkpoint { source: source.into(), destination: destination.into(), ..Default::default() };
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(fresh),
            Err(error) => return Err(CheckpointError::Read { path: path.into(), error }),
        };
        let saved: Checkpoint =
            serde_json::from_slice(&text).map_err(|error| CheckpointError::Parse { path: path.into(), error })?;
        if saved.source != source || saved.destination != destination {
            let found = format!("{} to {}", saved.source, saved.destination);
            let wanted = format!("{source} to {destination}");
            return Err(CheckpointError::Mismatch { path: path.into(), found, wanted });
        }
        Ok(if saved.finished { fresh } else { saved })
    }

    pub fn record_failure(&mut self, key: &str, reason: String) {
        self.failed += 1;
        if self.failures.len() < FAILURES_KEPT {
            self.failures.push(Failure { key: key.into(), reason });
        }
    }

    /// Writes the checkpoint durably: a crash leaves the previous one or this one.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let fail = |error| CheckpointError::Write { path: path.into(), error };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let text = serde_json::to_vec_pretty(self).map_err(|e| fail(std::io::Error::other(e)))?;
        let mut file = meridian_common::private_files::file_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(fail)?;
        file.write_all(&text).and_then(|()| file.sync_all()).map_err(fail)?;
        std::fs::rename(&tmp, path).map_err(fail)?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_saved_checkpoint_resumes_and_a_finished_one_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut cp = Checkpoint::load(&path, "src", "dst").unwrap();
        assert_eq!(cp.after, None);
        cp.after = Some("k1".into());
        cp.passed = 1;
        cp.record_failure("k0", "gone".into());
        cp.save(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(Checkpoint::load(&path, "src", "dst").unwrap(), cp);
        let err = Checkpoint::load(&path, "other", "dst").unwrap_err();
        assert!(err.to_string().contains("belongs to the migration of src to dst"), "{err}");
        cp.finished = true;
        cp.save(&path).unwrap();
        assert_eq!(Checkpoint::load(&path, "src", "dst").unwrap().passed, 0);
    }
}
