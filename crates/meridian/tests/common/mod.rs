//! Test harness: runs the real `meridian` binary on a loopback port and talks to it with real
//! clients. Every server is killed when its handle drops.

#![allow(dead_code)]

pub mod admin;
pub mod aws;
pub mod browser;
pub mod fuse;
pub mod metrics;
pub mod raw;
pub mod wan_cluster;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const ACCESS_KEY: &str = "MERIDIANTESTKEY00001";
pub const SECRET_KEY: &str = "meridian/test/secret/key/0000000000000000";
pub const ADMIN_TOKEN: &str = "meridian-test-admin-token";

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_meridian"))
}

pub struct Server {
    /// In cluster mode: the etcd cluster and the nodes of the other regions.
    _cluster: Option<Box<ClusterContext>>,
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub addr: String,
    /// `http://127.0.0.1:PORT` of the admin API.
    pub admin_url: String,
    /// `127.0.0.1:PORT` of the web edge, when started with `--web-listen`.
    pub web_addr: Option<String>,
    pub data: PathBuf,
    extra_args: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// A fresh server on a fresh data directory.
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// With `MERIDIAN_TEST_CLUSTER=1` the server is a node of a three-region cluster on a fresh
    /// three-member etcd cluster (the other two regions' nodes run alongside), so the same tests
    /// check a clustered node.
    pub fn start_with(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data = tmp.path().join("data");
        if clustered() {
            return Self::start_clustered(tmp, extra);
        }
        let mut server = Self::start_in(&data, extra, None, None);
        server._tmp = Some(tmp);
        server
    }

    fn start_clustered(tmp: tempfile::TempDir, extra: &[&str]) -> Server {
        let etcd = meridian_meta_etcd::testing::EtcdCluster::builder(3)
            .arg("--max-txn-ops=32768")
            .arg("--max-request-bytes=16777216")
            .start();
        let endpoints = etcd.client_endpoints().join(",");
        let peers: Vec<Server> = ["region-b", "region-c"]
            .iter()
            .map(|region| {
                let data = tmp.path().join(region);
                let args = cluster_args(&endpoints, region);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                Server::start_in(&data, &args, None, None)
            })
            .collect();
        let mut args = cluster_args(&endpoints, "region-a");
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut server = Server::start_in(&tmp.path().join("data"), &args, None, None);
        server._tmp = Some(tmp);
        server._cluster = Some(Box::new(ClusterContext { _peers: peers, _etcd: etcd }));
        server
    }

    /// A server on `data`, on the given S3 and admin addresses if any (to come back on the same
    /// ports after a kill).
    pub fn start_in(data: &Path, extra: &[&str], listen: Option<&str>, admin_listen: Option<&str>) -> Server {
        Self::start_command(Self::command(data, extra, listen, admin_listen), data, extra)
    }

    /// A server on `data` on free ports, run with the process umask `umask` (see [`under_umask`]).
    pub fn start_with_umask(umask: &str, data: &Path, extra: &[&str]) -> Server {
        Self::start_command(under_umask(umask, &Self::command(data, extra, None, None)), data, extra)
    }

    /// The `meridian server` command line of [`Server::start_in`].
    pub fn command(data: &Path, extra: &[&str], listen: Option<&str>, admin_listen: Option<&str>) -> Command {
        let listen = listen.unwrap_or("127.0.0.1:0");
        let admin_listen = admin_listen.unwrap_or("127.0.0.1:0");
        let mut cmd = Command::new(binary());
        cmd.arg("server").arg("--data").arg(data).arg("--listen").arg(listen).arg("--admin-listen").arg(admin_listen);
        cmd.args(extra);
        cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY).env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        cmd.env("MERIDIAN_ADMIN_TOKEN", ADMIN_TOKEN);
        cmd.env("RUST_LOG", std::env::var("MERIDIAN_TEST_LOG").unwrap_or_else(|_| "warn,s3s=off".into()));
        cmd
    }

    /// Starts `cmd` (a `meridian server` command line, e.g. from [`Server::command`]) and waits
    /// for its endpoints.
    pub fn start_command(cmd: Command, data: &Path, extra: &[&str]) -> Server {
        Self::try_start_command(cmd, data, extra).unwrap_or_else(|why| panic!("{why}"))
    }

    /// [`Server::start_command`], or why the server did not come up (it exited, or printed no
    /// endpoints within 30 s; its stderr is the test's).
    pub fn try_start_command(mut cmd: Command, data: &Path, extra: &[&str]) -> Result<Server, String> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn meridian server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                for prefix in ["S3 endpoint: ", "Admin API: ", "Web edge: "] {
                    if let Some(url) = line.strip_prefix(prefix) {
                        let _ = tx.send(url.trim().to_string());
                    }
                }
            }
        });
        let with_web = extra.iter().any(|a| a.starts_with("--web-listen"));
        let mut urls = Vec::new();
        while urls.len() < 2 + usize::from(with_web) {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(url) => urls.push(url),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("meridian server did not print its endpoints within 30s".into());
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().map_or_else(|e| e.to_string(), |s| s.to_string());
                    return Err(format!("meridian server exited before printing its endpoints ({status})"));
                }
            }
        }
        let (endpoint, admin_url) = (urls[0].clone(), urls[1].clone());
        let host_port = |url: &str| url.split_once("://").map_or(url, |(_, rest)| rest).to_string();
        let addr = host_port(&endpoint);
        let web_addr = urls.get(2).map(|url| host_port(url));
        Ok(Server {
            _cluster: None,
            child: Some(child),
            endpoint,
            addr,
            admin_url,
            web_addr,
            data: data.to_path_buf(),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            _tmp: None,
        })
    }

    /// Panics unless the server process is still running (it must never exit on its own).
    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("server started");
        if let Some(status) = child.try_wait().expect("wait for server") {
            panic!("meridian server exited on its own: {status}");
        }
    }

    /// Waits up to `limit` for the server to exit by itself; its exit status, if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("server running")
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data directory and port.
    pub fn restart(&mut self) {
        self.kill9();
        let extra: Vec<&str> = self.extra_args.iter().map(String::as_str).collect();
        let addr = self.addr.clone();
        let admin = self.admin_url.split_once("://").map_or(self.admin_url.as_str(), |(_, rest)| rest).to_string();
        let mut next = Server::start_in(&self.data, &extra, Some(&addr), Some(&admin));
        self.child = next.child.take();
        self.endpoint = next.endpoint.clone();
    }

    /// Resident memory of the server process (current, peak) in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        rss_kib_of(self.pid())
    }

    pub fn client(&self) -> aws_sdk_s3::Client {
        client_for(&self.endpoint, ACCESS_KEY, SECRET_KEY)
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost made now, and its key, as PEM files.
pub struct TestCert {
    dir: tempfile::TempDir,
}

impl TestCert {
    pub fn new() -> TestCert {
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("self-signed certificate");
        std::fs::write(dir.path().join("node.crt"), cert.cert.pem()).expect("write certificate");
        std::fs::write(dir.path().join("node.key"), cert.signing_key.serialize_pem()).expect("write key");
        TestCert { dir }
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("node.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("node.key")
    }

    pub fn cert_str(&self) -> String {
        self.cert().to_str().expect("UTF-8 temp path").to_string()
    }
}

impl Server {
    /// A fresh TLS-only server (S3 and admin listeners) with `cert`.
    pub fn start_tls(cert: &TestCert) -> Server {
        let (c, k) = (cert.cert_str(), cert.key().to_str().expect("UTF-8 temp path").to_string());
        Server::start_with(&["--tls-cert", &c, "--tls-key", &k])
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What a clustered test server needs alive beside it. Dropped after the server: peers first,
/// then etcd.
pub struct ClusterContext {
    _peers: Vec<Server>,
    _etcd: meridian_meta_etcd::testing::EtcdCluster,
}

/// Whether tests run against a node of a three-region cluster (`MERIDIAN_TEST_CLUSTER=1`).
/// Resident memory of process `pid` (current `VmRSS`, peak `VmHWM`) in KiB.
pub fn rss_kib_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

pub fn clustered() -> bool {
    std::env::var("MERIDIAN_TEST_CLUSTER").is_ok_and(|v| v == "1")
}

pub const CLUSTER_TOKEN: &str = "meridian-test-cluster-token";

/// Flags of a node in `region` of the test cluster.
pub fn cluster_args(etcd_endpoints: &str, region: &str) -> Vec<String> {
    vec![
        "--etcd".into(),
        etcd_endpoints.into(),
        "--region".into(),
        region.into(),
        "--cluster-token".into(),
        CLUSTER_TOKEN.into(),
    ]
}

pub fn client_for(endpoint: &str, access: &str, secret: &str) -> aws_sdk_s3::Client {
    let creds = aws_credential_types::Credentials::new(access, secret, None, None, "meridian-tests");
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// The S3 error code of an SDK error, e.g. "NoSuchKey".
pub fn error_code<E, R>(err: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    match err {
        aws_sdk_s3::error::SdkError::ServiceError(e) => e.err().code().unwrap_or("<no code>").to_string(),
        other => format!("<not a service error: {other:?}>"),
    }
}

/// The HTTP status of an SDK error.
pub fn error_status<E, R: std::fmt::Debug>(
    err: &aws_sdk_s3::error::SdkError<E, aws_smithy_runtime_api::http::Response<R>>,
) -> u16 {
    match err {
        aws_sdk_s3::error::SdkError::ServiceError(e) => e.raw().status().as_u16(),
        _ => 0,
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A keyring file (owner-only) in `dir` with a master key and the KMS key `app`, for a server
/// started with `--sse-keyring` (docs/encryption.md).
pub fn sse_keyring(dir: &Path) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("keyring");
    let text = format!("master m1 {}\nkms app {}\n", "a1".repeat(32), "b2".repeat(32));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).expect("keyring");
    std::io::Write::write_all(&mut file, text.as_bytes()).expect("keyring written");
    path
}

/// An SSE-C key: (base64 key, base64 MD5 of the key).
pub fn customer_key(byte: u8) -> (String, String) {
    use base64::Engine as _;
    use md5::Digest;
    let b64 = base64::engine::general_purpose::STANDARD;
    (b64.encode([byte; 32]), b64.encode(md5::Md5::digest([byte; 32])))
}

/// Plaintext that is easy to find on disk: a marker repeated, then pattern bytes.
pub fn secret_body(len: usize, seed: u64) -> Vec<u8> {
    let mut body = SECRET_MARKER.repeat(len / SECRET_MARKER.len() / 2);
    body.extend(pattern(len - body.len(), seed));
    body
}

pub const SECRET_MARKER: &[u8] = b"MERIDIAN-SSE-PLAINTEXT-MARKER-7f3a;";

/// Every file under `root` that contains `needle`.
pub fn files_containing(root: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if std::fs::read(&path).is_ok_and(|data| data.windows(needle.len()).any(|w| w == needle)) {
                found.push(path);
            }
        }
    }
    found
}

/// How a test object is written, sealed with one of the SSE modes (docs/encryption.md) or not;
/// SSE-KMS uses the key `app` of [`sse_keyring`], SSE-C [`customer_key`]`(7)`.
#[derive(Clone, Copy, Debug)]
pub enum Sealing {
    SseS3,
    SseKms,
    SseC,
    Plain,
}

impl Sealing {
    /// The request headers asking for it on a PUT.
    pub fn put_headers(self) -> Vec<(&'static str, String)> {
        match self {
            Sealing::SseS3 => vec![("x-amz-server-side-encryption", "AES256".into())],
            Sealing::SseKms => vec![
                ("x-amz-server-side-encryption", "aws:kms".into()),
                ("x-amz-server-side-encryption-aws-kms-key-id", "app".into()),
            ],
            Sealing::SseC => self.get_headers(),
            Sealing::Plain => Vec::new(),
        }
    }

    /// What a PUT's response says of it: (`x-amz-server-side-encryption`, the SSE-C algorithm).
    pub fn answered(self) -> (Option<&'static str>, Option<&'static str>) {
        match self {
            Sealing::SseS3 => (Some("AES256"), None),
            Sealing::SseKms => (Some("aws:kms"), None),
            Sealing::SseC => (None, Some("AES256")),
            Sealing::Plain => (None, None),
        }
    }

    /// The request headers a GET needs: the customer's key for SSE-C, nothing otherwise.
    pub fn get_headers(self) -> Vec<(&'static str, String)> {
        let Sealing::SseC = self else { return Vec::new() };
        let (key, md5) = customer_key(7);
        vec![
            ("x-amz-server-side-encryption-customer-algorithm", "AES256".into()),
            ("x-amz-server-side-encryption-customer-key", key),
            ("x-amz-server-side-encryption-customer-key-md5", md5),
        ]
    }
}

pub fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(data))
}

pub async fn body_bytes(out: aws_sdk_s3::operation::get_object::GetObjectOutput) -> Vec<u8> {
    out.body.collect().await.expect("read body").into_bytes().to_vec()
}

/// `cmd` (program, arguments and environment) run through `sh` with the process umask set to
/// `umask` first; `exec` keeps the process id. With `000` every file gets exactly the mode its
/// program asks for, so a test sees modes the program set, not ones the umask hid.
pub fn under_umask(umask: &str, cmd: &Command) -> Command {
    let mut wrapped = Command::new("sh");
    wrapped.arg("-c").arg(format!("umask {umask} && exec \"$0\" \"$@\"")).arg(cmd.get_program());
    wrapped.args(cmd.get_args());
    for (name, value) in cmd.get_envs() {
        match value {
            Some(value) => wrapped.env(name, value),
            None => wrapped.env_remove(name),
        };
    }
    wrapped
}

/// Moves `cmd`'s wall clock by `skew` (libfaketime's format: `+6s`, `-4s`) by preloading
/// libfaketime (Debian package `faketime`) into it — not through the `faketime` tool, which
/// forks, so that killing the child kills the program. Monotonic clocks are left alone.
pub fn under_faketime(skew: &str, mut cmd: Command) -> Command {
    require_tool("faketime", "apt-get install faketime");
    let library = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|dir| dir.path().join("faketime/libfaketimeMT.so.1"))
        .find(|path| path.is_file())
        .expect("libfaketimeMT.so.1 is not under /usr/lib/*/faketime: install the Debian package faketime");
    cmd.env("LD_PRELOAD", library).env("FAKETIME", skew).env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    cmd
}

/// Every file and directory under `root` (itself included, symbolic links skipped) with its
/// permission bits.
pub fn modes_under(root: &Path) -> Vec<(PathBuf, std::fs::FileType, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                pending.push(entry.expect("dir entry").path());
            }
        }
        if !meta.file_type().is_symlink() {
            found.push((path, meta.file_type(), meta.permissions().mode() & 0o7777));
        }
    }
    found
}

/// Panics unless every directory under `root` is 0700 and every file 0600; returns how many
/// files there are.
pub fn assert_owner_only(root: &Path) -> usize {
    let all = modes_under(root);
    let wrong: Vec<String> = all
        .iter()
        .filter(|(_, kind, mode)| *mode != if kind.is_dir() { 0o700 } else { 0o600 })
        .map(|(path, _, mode)| format!("{} {mode:04o}", path.display()))
        .collect();
    assert!(wrong.is_empty(), "open to other users under {}:\n{}", root.display(), wrong.join("\n"));
    all.iter().filter(|(_, kind, _)| kind.is_file()).count()
}

/// Finds a command on PATH or fails the test with how to get it: a missing tool must never
/// turn into a silent pass.
pub fn require_tool(name: &str, how: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|p| p.is_file()));
    found.unwrap_or_else(|| panic!("required tool `{name}` is not installed: {how} (scripts/test.sh installs it)"))
}

/// Runs a command with stdin closed, collecting its output. If it is still running after
/// `timeout`, its whole process group is killed and the test fails with what it printed.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> std::process::Output {
    use std::io::Read;
    use std::os::unix::process::CommandExt;

    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = reader(Box::new(child.stdout.take().expect("stdout")));
    let stderr = reader(Box::new(child.stderr.take().expect("stderr")));
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            // The child leads its own process group: end it and anything it started.
            let _ = Command::new("kill").arg("-KILL").arg(format!("-{}", child.id())).status();
            let _ = child.kill();
            let _ = child.wait();
            let out = stdout.join().unwrap_or_default();
            let err = stderr.join().unwrap_or_default();
            panic!(
                "{cmd:?} did not finish within {timeout:?} and was killed\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Clears every `AWS_*` variable of `cmd` and sets only the test credentials, region and empty
/// config files under `home` (no profile, session token or endpoint override may apply).
pub fn aws_env_only_ours(cmd: &mut Command, home: &Path) {
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(&var);
        }
    }
    cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", home.join("no-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("no-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true");
}

/// rclone with one S3 remote, `meridian:`, pointing at `endpoint` with the test credentials,
/// configured entirely through the environment. rclone's S3 client reads `AWS_*` variables too
/// (`AWS_CA_BUNDLE` even breaks it on plain HTTP), so those and any `RCLONE_*` of the caller are
/// removed: only these settings apply.
pub fn rclone_command(bin: &Path, home: &Path, endpoint: &str) -> Command {
    let mut cmd = Command::new(bin);
    for (var, _) in std::env::vars_os() {
        let name = var.to_string_lossy();
        if name.starts_with("AWS_") || name.starts_with("RCLONE_") {
            cmd.env_remove(&var);
        }
    }
    cmd.env("RCLONE_CONFIG", home.join("rclone.conf"))
        .env("RCLONE_CONFIG_MERIDIAN_TYPE", "s3")
        .env("RCLONE_CONFIG_MERIDIAN_PROVIDER", "Other")
        .env("RCLONE_CONFIG_MERIDIAN_ENV_AUTH", "false")
        .env("RCLONE_CONFIG_MERIDIAN_ACCESS_KEY_ID", ACCESS_KEY)
        .env("RCLONE_CONFIG_MERIDIAN_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("RCLONE_CONFIG_MERIDIAN_ENDPOINT", endpoint)
        .env("RCLONE_CONFIG_MERIDIAN_REGION", "us-east-1")
        .env("RCLONE_CONFIG_MERIDIAN_FORCE_PATH_STYLE", "true");
    cmd
}

/// A tool's output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Fails with everything the tool printed unless it succeeded; its stdout otherwise.
pub fn expect_success(what: &str, out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}
