//! Helpers shared by the integration tests: external tools that must exist (tests fail loudly
//! naming the package when one is missing, never pass silently).

#![allow(dead_code, clippy::unwrap_used)]

use std::process::Command;

/// Debian package providing each tool the tests use.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "qemu-io" | "qemu-img" | "qemu-nbd" => "qemu-utils",
        "nbdinfo" | "nbdcopy" | "nbdfuse" | "nbdsh" => "libnbd-bin",
        "mkfs.ext4" | "debugfs" | "e2fsck" => "e2fsprogs",
        "fuse2fs" => "fuse2fs",
        "fio" => "fio",
        "fusermount3" => "fuse3",
        _ => "(unknown package)",
    }
}

/// Panics with install instructions if `tool` is not on PATH.
pub fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(found, "required tool `{tool}` is missing: install it with `apt-get install -y {}`", package_of(tool));
}

/// Runs a tool to completion off the async runtime; panics with its output on failure.
pub async fn run_tool(tool: &str, args: &[&str]) -> String {
    require(tool);
    let (tool, args): (String, Vec<String>) = (tool.to_string(), args.iter().map(|s| s.to_string()).collect());
    tokio::task::spawn_blocking(move || run_blocking(&tool, &args)).await.unwrap()
}

pub fn run_blocking(tool: &str, args: &[String]) -> String {
    require(tool);
    let out = Command::new(tool).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{tool} {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    // qemu-io reports pattern mismatches on stdout but still exits 0.
    assert!(
        !stdout.contains("Pattern verification failed") && !stdout.contains("failed:"),
        "{tool} {args:?} reported a failure:\n{stdout}\n{stderr}"
    );
    stdout + &stderr
}

/// A volume served over NBD in process on a loopback port, as export "disk".
pub struct Server {
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    pub vol: std::sync::Arc<meridian_volume::Volume>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Opens the volume at `layout` for writing and serves it; `dir` (holding the cache) lives
    /// as long as the server.
    pub async fn start(
        store: std::sync::Arc<dyn meridian_volume::store::ObjectStore>,
        layout: meridian_volume::format::Layout,
        cfg: meridian_volume::WriterConfig,
        dir: Option<tempfile::TempDir>,
    ) -> Self {
        use meridian_volume::nbd::{self, Export};
        let vol = meridian_volume::Volume::open(store, layout, cfg).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let export =
            Export { name: "disk".into(), description: "test disk".into(), volume: vol.clone(), read_only: false };
        let task = tokio::spawn(async move {
            nbd::serve(listener, export, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self { addr, stop: Some(tx), task, vol, _dir: dir }
    }

    pub fn url(&self) -> String {
        format!("nbd://{}/disk", self.addr)
    }

    /// Stops serving and closes the volume cleanly (flush, checkpoint, lease released).
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task).await.unwrap();
        self.vol.close().await.unwrap();
    }
}
