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
