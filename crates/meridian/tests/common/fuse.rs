//! FUSE daemons in tests (nbdfuse, fuse2fs, s3fs): run in the foreground, unmounted and reaped
//! on drop, so a failing test leaves no mount behind. Without /dev/fuse the test fails and says
//! so: a FUSE test never passes by skipping.

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Mount {
    dir: PathBuf,
    child: Option<Child>,
}

impl Mount {
    /// Starts `program` (a path from [`super::require_tool`]) and waits until `ready`.
    pub fn start(program: &Path, args: &[&str], dir: &Path, ready: impl Fn() -> bool) -> Mount {
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: this test needs FUSE (run it where /dev/fuse exists, e.g. a container started with --device /dev/fuse)"
        );
        let mut child =
            Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{} exited with {status} before mounting {}", program.display(), dir.display());
            }
            assert!(Instant::now() < deadline, "{} did not mount {}", program.display(), dir.display());
            std::thread::sleep(Duration::from_millis(100));
        }
        Mount { dir: dir.to_path_buf(), child: Some(child) }
    }

    /// Unmounts and waits for the daemon to finish writing back (fuse2fs writes the superblock
    /// on exit, s3fs uploads what is still open).
    pub fn finish(mut self) {
        let out = Command::new("umount").arg(&self.dir).output().unwrap();
        assert!(out.status.success(), "umount {}: {}", self.dir.display(), String::from_utf8_lossy(&out.stderr));
        let status = self.child.take().unwrap().wait().unwrap();
        assert!(status.success(), "FUSE daemon exited with {status}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("umount").arg(&self.dir).output();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn is_mountpoint(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == dir.to_str()))
        .unwrap_or(false)
}
