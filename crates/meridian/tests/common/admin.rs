//! `meridian admin` from tests: the CLI against a node's admin listener.

use std::process::Command;
use std::time::Duration;

use super::{ADMIN_TOKEN, Server, binary, client_for, run_with_timeout};

/// Runs `meridian admin ...` against the server; returns (exit code, stdout, stderr).
pub fn admin(server: &Server, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(binary());
    cmd.arg("admin").arg("--url").arg(&server.admin_url).arg("--token").arg(ADMIN_TOKEN).args(args);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `meridian admin --json ...`, which must succeed; its JSON answer.
pub fn admin_ok(server: &Server, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, out, err) = admin(server, &all);
    assert_eq!(code, 0, "meridian admin {args:?} failed: {err}");
    serde_json::from_str(&out).expect("admin --json prints JSON")
}

/// A key's credential, as `key create` prints it once.
pub struct Key {
    pub id: String,
    pub secret: String,
}

pub fn create_key(server: &Server, name: &str, can_create: bool) -> Key {
    let mut args = vec!["key", "create", name];
    if can_create {
        args.push("--can-create-buckets");
    }
    let v = admin_ok(server, &args);
    let field = |name: &str| v[name].as_str().expect("key create prints the credential").to_string();
    Key { id: field("access_key_id"), secret: field("secret_access_key") }
}

/// An S3 client of `server` signing with `key`.
pub fn client(server: &Server, key: &Key) -> aws_sdk_s3::Client {
    client_for(&server.endpoint, &key.id, &key.secret)
}
