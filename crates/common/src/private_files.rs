//! Owner-only files and directories: the one place that says how Meridian creates the files that
//! hold data or secrets (a node's data directory, a volume's cache directory) and how it checks
//! that nobody else can read them. Modes are set explicitly, never left to the process umask
//! (a umask can only take bits away from these).

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every directory Meridian creates for data.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file Meridian creates for data.
pub const FILE_MODE: u32 = 0o600;
/// Permission bits for the group and others: none may be set.
const OTHERS: u32 = 0o077;

/// Creates `dir` (and any missing parent) with mode 0700; an existing directory is left as is
/// (see [`check_private_dir`]).
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Makes the entries of `dir` durable (files created or renamed in it): an fsync of the
/// directory itself.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Options that create files with mode 0600 (add `.write(true).create_new(true)` etc.).
pub fn file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// A file or directory that the group or others may use.
#[derive(Debug, thiserror::Error)]
pub enum NotPrivate {
    #[error(
        "{path} is {access} by other users (mode {mode:04o}); it must be the owner's alone. Run: chmod -R go-rwx {root}"
    )]
    Open { path: PathBuf, root: PathBuf, mode: u32, access: &'static str },
    #[error("cannot check the permissions of {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
}

/// Checks that `dir` and every entry directly in it (files and subdirectories; symbolic links
/// are skipped) give the group and others no access. One level only: the directories Meridian
/// creates below are made 0700, so nobody else can reach their files anyway, and a data
/// directory may hold millions of blobs.
pub fn check_private_dir(dir: &Path) -> Result<(), NotPrivate> {
    check_one(dir, dir)?;
    let entries = std::fs::read_dir(dir).map_err(|error| NotPrivate::Io { path: dir.to_path_buf(), error })?;
    for entry in entries {
        let entry = entry.map_err(|error| NotPrivate::Io { path: dir.to_path_buf(), error })?;
        check_one(&entry.path(), dir)?;
    }
    Ok(())
}

/// Checks that a file of secrets (a key file) gives the group and others no access.
pub fn check_private_file(path: &Path) -> Result<(), NotPrivate> {
    check_one(path, path)
}

fn check_one(path: &Path, root: &Path) -> Result<(), NotPrivate> {
    let meta = std::fs::symlink_metadata(path).map_err(|error| NotPrivate::Io { path: path.to_path_buf(), error })?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & OTHERS == 0 {
        return Ok(());
    }
    let access = match (mode & 0o044 != 0, mode & 0o022 != 0) {
        (true, true) => "readable and writable",
        (true, false) => "readable",
        _ => "writable or usable",
    };
    Err(NotPrivate::Open { path: path.to_path_buf(), root: root.to_path_buf(), mode, access })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_owner_only_files_and_directories_whatever_the_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        create_dir_all(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("f");
        file_options().write(true).create_new(true).open(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        check_private_dir(&dir).unwrap();
    }

    #[test]
    fn an_open_directory_or_file_names_the_chmod_to_run() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = check_private_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("readable by other users (mode 0755)"), "{err}");
        assert!(err.contains(&format!("chmod -R go-rwx {}", dir.display())), "{err}");

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let file = dir.join("meta.redb");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = check_private_dir(&dir).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{} is readable and writable", file.display())), "{err}");
        assert!(err.contains(&format!("chmod -R go-rwx {}", dir.display())), "{err}");
    }
}
