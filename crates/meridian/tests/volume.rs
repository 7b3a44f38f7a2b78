//! `meridian volume` end to end: the real `meridian server` on a loopback port as the bucket,
//! the real `meridian volume serve` as the NBD server, and real NBD clients (qemu-io, qemu-img,
//! nbdinfo, nbdcopy, nbdfuse) plus e2fsprogs and fuse2fs. Missing tools fail the test with the
//! package to install.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::fuse::{Mount, is_mountpoint};
use common::{ACCESS_KEY, SECRET_KEY, Server, TestCert, rss_kib_of, run_with_timeout};
use rand::{Rng, RngCore, SeedableRng};

const MIB: u64 = 1 << 20;
const BUCKET: &str = "volumes";

// ---- harness --------------------------------------------------------------------------------

/// Runs qemu-io on raw `url` with one `-c` per command.
fn qemu_io(url: &str, cmds: &[&str]) -> String {
    let mut args = vec!["-f", "raw", url];
    for c in cmds {
        args.extend(["-c", c]);
    }
    tool("qemu-io", &args)
}

/// Debian package for each external tool.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "qemu-io" | "qemu-img" | "qemu-nbd" => "qemu-utils",
        "nbdinfo" | "nbdcopy" | "nbdfuse" => "libnbd-bin",
        "mkfs.ext4" | "debugfs" | "e2fsck" => "e2fsprogs",
        "fuse2fs" => "fuse2fs",
        _ => "(see docs/volumes.md)",
    }
}

fn require(tool: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let install = match tool {
        "moto_server" => "python3 -m pip install 'moto[server]'".to_string(),
        _ => format!("apt-get install -y {}", package_of(tool)),
    };
    assert!(ok, "required tool `{tool}` is missing: install it with `{install}` (scripts/test.sh does)");
}

/// The path of an external tool, failing the test with the package to install.
fn tool_path(name: &str) -> PathBuf {
    common::require_tool(name, &format!("apt-get install -y {}", package_of(name)))
}

/// Runs an external tool; panics with its output unless it succeeds.
fn tool(name: &str, args: &[&str]) -> String {
    require(name);
    let out = Command::new(name).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{name} {args:?} failed: {}\n{text}", out.status);
    // qemu-io prints pattern mismatches but exits 0 on some versions.
    assert!(!text.contains("Pattern verification failed"), "{name} {args:?}: {text}");
    text
}

/// One S3 server with a `volumes` bucket and a cache directory for volume writers.
struct Env {
    s3: Server,
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let s3 = Server::start();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(s3.client().create_bucket().bucket(BUCKET).send()).expect("create bucket");
        Env { s3, tmp: tempfile::tempdir().unwrap() }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        volume_command(&self.s3.endpoint, &self.tmp.path().join("cache"), args)
    }

    /// Runs `meridian volume ARGS`, returning its output whatever the exit status.
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs `meridian volume ARGS` and panics unless it succeeds; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "meridian volume {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An owner-only key file holding `hex`; returns its path.
    fn key_file(&self, name: &str, hex: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, hex).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.to_str().unwrap().to_string()
    }

    fn create(&self, name: &str, size: &str, extra: &[&str]) {
        let mut args = vec!["create", name, "--size", size];
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    fn serve(&self, name: &str, extra: &[&str]) -> Serve {
        self.serve_command(self.serve_cmd(name, extra), name)
    }

    fn serve_cmd(&self, name: &str, extra: &[&str]) -> Command {
        let mut args = vec!["serve", name, "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        self.cmd(&args)
    }

    /// Starts a `meridian volume serve` command line and waits for its NBD address.
    fn serve_command(&self, cmd: Command, name: &str) -> Serve {
        let (child, rx) = spawn_lines(cmd);
        wait_serving(child, &rx, name)
    }
}

/// `meridian volume ARGS` against the S3 service at `endpoint` (bucket `volumes`, the test
/// credentials), with its cache directory at `cache`.
fn volume_command(endpoint: &str, cache: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(common::binary());
    c.arg("volume")
        .args(args)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("MERIDIAN_VOLUME_BUCKET", BUCKET)
        .env("MERIDIAN_VOLUME_CACHE", cache)
        .env("RUST_LOG", std::env::var("MERIDIAN_TEST_LOG").unwrap_or_else(|_| "warn".into()))
        // Only what a test passes decides which certificates are trusted.
        .env_remove("MERIDIAN_CA_FILE")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    c
}

/// Spawns a command whose stdout lines arrive on the returned channel.
fn spawn_lines(mut cmd: Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Waits (60 s at most) for a spawned `serve` to print its NBD address.
fn wait_serving(mut child: Child, rx: &mpsc::Receiver<String>, name: &str) -> Serve {
    {
        // The metrics line, if any, comes before the NBD one.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut metrics_addr = None;
        let url = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains(" on nbd://") => {
                    break line[line.find(" on nbd://").unwrap() + 4..].trim().to_string();
                }
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("meridian volume: metrics on http://") {
                        metrics_addr = Some(url.trim_end_matches("/metrics").to_string());
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("meridian volume serve {name} did not start within 60s");
                }
            }
        };
        let addr = url.trim_start_matches("nbd://").split('/').next().unwrap().to_string();
        Serve { child: Some(child), url, addr, metrics_addr }
    }
}

impl Env {
    /// Sum of object sizes under the volume's log/ prefix.
    fn log_bytes(&self, name: &str) -> u64 {
        self.list(&format!("{name}/log/")).iter().map(|(_, size)| size).sum()
    }

    /// Keys and sizes of the bucket's objects under `prefix`.
    fn list(&self, prefix: &str) -> Vec<(String, u64)> {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let client = self.s3.client();
        rt.block_on(async {
            let mut out = Vec::new();
            let mut token = None;
            loop {
                let resp = client
                    .list_objects_v2()
                    .bucket(BUCKET)
                    .prefix(prefix)
                    .set_continuation_token(token)
                    .send()
                    .await
                    .unwrap();
                out.extend(
                    resp.contents().iter().map(|o| (o.key().unwrap_or("").to_string(), o.size().unwrap_or(0) as u64)),
                );
                match resp.next_continuation_token() {
                    Some(t) => token = Some(t.to_string()),
                    None => return out,
                }
            }
        })
    }

    fn get_object(&self, key: &str) -> Vec<u8> {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let client = self.s3.client();
        rt.block_on(async {
            let out = client.get_object().bucket(BUCKET).key(key).send().await.unwrap();
            out.body.collect().await.unwrap().into_bytes().to_vec()
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// A running `meridian volume serve`; killed with SIGKILL on drop.
struct Serve {
    child: Option<Child>,
    url: String,
    addr: String,
    /// `host:port` of `--metrics-listen`, when given.
    metrics_addr: Option<String>,
}

impl Serve {
    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: flush, checkpoint, release the lease. Panics if it does not exit cleanly.
    fn stop(mut self) {
        let mut c = self.child.take().unwrap();
        let pid = c.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                assert!(status.success(), "serve exited with {status}");
                return;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("serve did not stop within 60s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A minimal blocking NBD client (fixed newstyle, OPT_GO, simple replies, one request at a
/// time), so tests know exactly which writes were acknowledged.
struct Nbd {
    s: TcpStream,
    next: u64,
}

impl Nbd {
    fn connect(addr: &str, name: &str) -> std::io::Result<Nbd> {
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello)?;
        s.write_all(&3u32.to_be_bytes())?;
        let mut opt = Vec::new();
        opt.extend_from_slice(&0x49484156454F5054u64.to_be_bytes());
        opt.extend_from_slice(&7u32.to_be_bytes());
        opt.extend_from_slice(&(4 + name.len() as u32 + 2).to_be_bytes());
        opt.extend_from_slice(&(name.len() as u32).to_be_bytes());
        opt.extend_from_slice(name.as_bytes());
        opt.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&opt)?;
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h)?;
            let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
            let mut d = vec![0u8; len as usize];
            s.read_exact(&mut d)?;
            match kind {
                1 => break,
                3 => continue,
                _ => return Err(std::io::Error::other(format!("GO refused: {kind:#x}"))),
            }
        }
        Ok(Nbd { s, next: 1 })
    }

    /// Appends one request to `out`, returning its handle.
    fn encode(&mut self, out: &mut Vec<u8>, cmd: u16, off: u64, len: u32, payload: &[u8]) -> u64 {
        let handle = self.next;
        self.next += 1;
        out.extend_from_slice(&0x25609513u32.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&cmd.to_be_bytes());
        out.extend_from_slice(&handle.to_be_bytes());
        out.extend_from_slice(&off.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(payload);
        handle
    }

    /// Reads one simple reply header: (handle, error).
    fn reply(&mut self) -> std::io::Result<(u64, u32)> {
        let mut rep = [0u8; 16];
        self.s.read_exact(&mut rep)?;
        Ok((u64::from_be_bytes(rep[8..16].try_into().unwrap()), u32::from_be_bytes(rep[4..8].try_into().unwrap())))
    }

    fn request(&mut self, cmd: u16, off: u64, len: u32, payload: &[u8]) -> std::io::Result<u32> {
        let mut r = Vec::with_capacity(28 + payload.len());
        let handle = self.encode(&mut r, cmd, off, len, payload);
        self.s.write_all(&r)?;
        let (got, err) = self.reply()?;
        assert_eq!(got, handle);
        Ok(err)
    }

    /// Sends all `writes` (offset, data) at once, then checks every reply (in any order).
    fn write_pipelined(&mut self, writes: &[(u64, &[u8])]) -> std::io::Result<()> {
        let mut r = Vec::new();
        let first = self.next;
        for (off, data) in writes {
            self.encode(&mut r, 1, *off, data.len() as u32, data);
        }
        self.s.write_all(&r)?;
        for _ in writes {
            let (handle, err) = self.reply()?;
            assert!((first..self.next).contains(&handle), "unexpected reply handle {handle}");
            if err != 0 {
                return Err(std::io::Error::other(format!("write error {err}")));
            }
        }
        Ok(())
    }

    fn write(&mut self, off: u64, data: &[u8]) -> std::io::Result<()> {
        match self.request(1, off, data.len() as u32, data)? {
            0 => Ok(()),
            e => Err(std::io::Error::other(format!("write error {e}"))),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.request(3, 0, 0, &[])? {
            0 => Ok(()),
            e => Err(std::io::Error::other(format!("flush error {e}"))),
        }
    }

    fn read(&mut self, off: u64, len: u32) -> std::io::Result<Vec<u8>> {
        let err = self.request(0, off, len, &[])?;
        assert_eq!(err, 0, "read error");
        let mut d = vec![0u8; len as usize];
        self.s.read_exact(&mut d)?;
        Ok(d)
    }
}

fn random_file(path: &Path, bytes: u64, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..bytes / MIB {
        rng.fill_bytes(&mut buf);
        f.write_all(&buf).unwrap();
    }
    f.flush().unwrap();
}

fn same_files(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) =
        (BufReader::new(std::fs::File::open(a).unwrap()), BufReader::new(std::fs::File::open(b).unwrap()));
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let na = fa.read(&mut ba).unwrap();
        let mut nb = 0;
        while nb < na {
            let n = fb.read(&mut bb[nb..na]).unwrap();
            if n == 0 {
                return false;
            }
            nb += n;
        }
        if na == 0 {
            return fb.read(&mut bb).unwrap() == 0;
        }
        if ba[..na] != bb[..na] {
            return false;
        }
    }
}

// ---- tests ----------------------------------------------------------------------------------

/// The first data object after one 8 KiB write, parsed by hand as the seed 004 header.
#[test]
fn volume_format_first_object_parses_by_hand() {
    let env = Env::new();
    env.create("fmt", "64MiB", &[]);
    let srv = env.serve("fmt", &[]);
    tool("qemu-io", &["-f", "raw", &srv.url, "-c", "write -P 0x5a 1M 8k", "-c", "flush"]);
    srv.stop();
    // Object 1 is the writer's fence: a bare header whose first entry ends the list.
    let fence = env.get_object("fmt/log/0000000000000001");
    assert_eq!(fence.len(), 12 * 1024);
    assert_eq!(&fence[8..12], &[0, 0, 0, 0]);
    let obj = env.get_object("fmt/log/0000000000000002");
    assert_eq!(obj.len(), 12 * 1024 + 8192, "header + 8 KiB of data");
    let entry = |i: usize| {
        (
            u64::from_be_bytes(obj[i * 12..i * 12 + 8].try_into().unwrap()),
            u32::from_be_bytes(obj[i * 12 + 8..i * 12 + 12].try_into().unwrap()),
        )
    };
    assert_eq!(entry(0), (1 << 20, 8192), "one entry: address 1 MiB, 8 KiB");
    assert_eq!(entry(1).1, 0, "a zero length ends the list");
    assert!(obj[12 * 1024..].iter().all(|&b| b == 0x5a), "data after the header");
}

#[test]
fn volume_qemu_pattern_survives_restart() {
    let env = Env::new();
    env.create("q", "256MiB", &[]);
    let srv = env.serve("q", &[]);
    let info = tool("qemu-img", &["info", "-f", "raw", &srv.url]);
    assert!(info.contains("268435456"), "{info}");
    let nbdinfo = tool("nbdinfo", &[&srv.url]);
    assert!(nbdinfo.contains("block_size_preferred: 4096"), "{nbdinfo}");
    tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            &srv.url,
            "-c",
            "write -P 0x11 0 16M",
            "-c",
            "write -P 0x22 100M 3M",
            "-c",
            "write -P 0x33 5000 10000",
            "-c",
            "write -z 8M 1M",
            "-c",
            "flush",
            "-c",
            "read -P 0x11 0 5000",
            "-c",
            "read -P 0x33 5000 10000",
            "-c",
            "read -P 0x22 100M 3M",
            "-c",
            "read -P 0 8M 1M",
        ],
    );
    // Kill without a clean shutdown: only what FLUSH covered is guaranteed, and it was all.
    let mut srv = srv;
    srv.kill9();
    let srv = env.serve("q", &[]);
    tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            &srv.url,
            "-c",
            "read -P 0x11 0 5000",
            "-c",
            "read -P 0x33 5000 10000",
            "-c",
            "read -P 0x11 15000 7M",
            "-c",
            "read -P 0 8M 1M",
            "-c",
            "read -P 0x11 9M 7M",
            "-c",
            "read -P 0x22 100M 3M",
            "-c",
            "read -P 0 200M 1M",
        ],
    );
    srv.stop();
}

/// nbdcopy a random image in and out; byte-for-byte equal after a restart in between.
#[test]
fn heavy_volume_nbdcopy_round_trip() {
    let size: u64 = std::env::var("MERIDIAN_VOLUME_COPY_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024) * MIB;
    let env = Env::new();
    env.create("big", &format!("{size}"), &[]);
    let input = env.path("in.img");
    let output = env.path("out.img");
    random_file(&input, size, 42);
    let srv = env.serve("big", &[]);
    tool("nbdcopy", &[input.to_str().unwrap(), &srv.url]);
    srv.stop();
    let srv = env.serve("big", &[]);
    tool("nbdcopy", &[&srv.url, output.to_str().unwrap()]);
    srv.stop();
    assert!(same_files(&input, &output), "image differs after the round trip");
    // Offline export (disaster recovery) gives the same bytes.
    let exported = env.path("export.img");
    env.ok(&["export", "big", "--output", exported.to_str().unwrap()]);
    assert!(same_files(&input, &exported), "export differs");
}

/// mkfs.ext4 on the device through nbdfuse, files written through fuse2fs and checked with
/// debugfs and e2fsck, on the live device and on an exported image.
#[test]
fn volume_ext4_through_nbdfuse() {
    for t in ["nbdfuse", "mkfs.ext4", "debugfs", "e2fsck", "fuse2fs"] {
        require(t);
    }
    let env = Env::new();
    env.create("fs", "256MiB", &[]);
    let srv = env.serve("fs", &[]);
    let mnt = env.path("nbd");
    std::fs::create_dir_all(&mnt).unwrap();
    let dev = mnt.join("disk");
    let devs = dev.to_str().unwrap().to_string();
    let nbd_mount = Mount::start(&tool_path("nbdfuse"), &[&devs, &srv.url], &mnt, || {
        std::fs::metadata(&dev).map(|m| m.len()).unwrap_or(0) == 256 * MIB
    });
    tool("mkfs.ext4", &["-q", "-F", &devs]);
    // Mount the filesystem with fuse2fs and write ordinary files through it.
    let fsdir = env.path("fs");
    std::fs::create_dir_all(&fsdir).unwrap();
    let ext4 =
        Mount::start(&tool_path("fuse2fs"), &["-f", &devs, fsdir.to_str().unwrap(), "-o", "fakeroot"], &fsdir, || {
            is_mountpoint(&fsdir)
        });
    let mut files = Vec::new();
    for i in 0..20u64 {
        let len = 1000 + (i as usize) * 37_000;
        let mut data = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(i).fill_bytes(&mut data);
        std::fs::write(fsdir.join(format!("file{i}.bin")), &data).unwrap();
        files.push(data);
    }
    ext4.finish();
    let check = |image: &str| {
        let fsck = tool("e2fsck", &["-fn", image]);
        assert!(fsck.contains("31/"), "e2fsck: {fsck}");
        for (i, data) in files.iter().enumerate() {
            let out = env.path(&format!("dump{i}"));
            tool("debugfs", &["-R", &format!("dump /file{i}.bin {}", out.display()), image]);
            assert!(std::fs::read(&out).unwrap() == *data, "file{i} differs in {image}");
        }
    };
    check(&devs);
    nbd_mount.finish();
    srv.stop();
    let image = env.path("fs.img");
    env.ok(&["export", "fs", "--output", image.to_str().unwrap()]);
    check(image.to_str().unwrap());
}

/// Writes acknowledged in one run of the crash test, and how many of them a FLUSH covered.
#[derive(Default)]
struct RunWrites {
    writes: Vec<(u64, u64)>, // (sector, stamp), in order
    flushed: usize,
}

fn stamps(disk: &[u8]) -> Vec<u64> {
    disk.chunks(4096).map(|b| u64::from_be_bytes(b[..8].try_into().unwrap())).collect()
}

/// `found` must be `base` with the first k writes applied, for some k covering every flushed one.
fn check_prefix(run: u64, base: &[u64], w: &RunWrites, found: &[u64]) {
    let mut model = base.to_vec();
    for k in 0..=w.writes.len() {
        if k >= w.flushed && model == found {
            return;
        }
        if let Some(&(s, stamp)) = w.writes.get(k) {
            model[s as usize] = stamp;
        }
    }
    panic!(
        "run {run}: the disk is not a prefix of the {} writes that includes the {} flushed ones",
        w.writes.len(),
        w.flushed
    );
}

/// Sequence-stamped writes, `kill -9` of serve at a random moment, restart: every write acked by
/// a FLUSH is there and the disk is exactly a prefix of the write history.
#[test]
fn heavy_volume_crash_kill9_leaves_a_prefix() {
    const SECTORS: u64 = 512;
    let runs: u64 = std::env::var("MERIDIAN_VOLUME_CRASH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let env = Env::new();
    env.create("crash", &format!("{}", SECTORS * 4096), &["--object-size", "64KiB"]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(2024);
    let mut base = vec![0u64; SECTORS as usize];
    let mut last = RunWrites::default();
    let mut total_writes = 0;
    for run in 0..=runs {
        // Small journals make cuts of several objects (commit units) that are uploading when
        // the kill lands; the default one only cuts on FLUSH.
        let journal = ["64KiB", "192KiB", "512KiB", "8GiB"][run as usize % 4];
        let mut srv = env.serve("crash", &["--uploads", "4", "--gc-interval", "0", "--journal-size", journal]);
        let mut nbd = Nbd::connect(&srv.addr, "crash").unwrap();
        let found = stamps(&nbd.read(0, (SECTORS * 4096) as u32).unwrap());
        check_prefix(run, &base, &last, &found);
        if run == runs {
            drop(nbd);
            srv.stop();
            break;
        }
        base = found;
        last = RunWrites::default();
        let kill_after = Duration::from_millis(rng.random_range(5..400));
        let start = Instant::now();
        let mut stamp = (run + 1) << 32;
        let mut block = vec![0u8; 4096];
        while start.elapsed() < kill_after {
            let sector = rng.random_range(0..SECTORS);
            stamp += 1;
            block[..8].copy_from_slice(&stamp.to_be_bytes());
            nbd.write(sector * 4096, &block).unwrap();
            last.writes.push((sector, stamp));
            if rng.random_ratio(1, 20) {
                nbd.flush().unwrap();
                last.flushed = last.writes.len();
            }
        }
        // Send one more write without waiting: the kill lands while it is in flight.
        let sector = rng.random_range(0..SECTORS);
        stamp += 1;
        block[..8].copy_from_slice(&stamp.to_be_bytes());
        let mut req = Vec::new();
        req.extend_from_slice(&0x25609513u32.to_be_bytes());
        req.extend_from_slice(&[0, 0, 0, 1]);
        req.extend_from_slice(&u64::MAX.to_be_bytes());
        req.extend_from_slice(&(sector * 4096).to_be_bytes());
        req.extend_from_slice(&4096u32.to_be_bytes());
        req.extend_from_slice(&block);
        nbd.s.write_all(&req).unwrap();
        last.writes.push((sector, stamp));
        total_writes += last.writes.len();
        srv.kill9();
    }
    assert!(total_writes > runs as usize * 5, "too few writes to mean anything");
}

#[test]
fn volume_snapshot_export_and_rollback() {
    let env = Env::new();
    env.create("snap", "64MiB", &[]);
    let srv = env.serve("snap", &[]);
    tool("qemu-io", &["-f", "raw", &srv.url, "-c", "write -P 0xa1 0 64M", "-c", "flush"]);
    let out = env.ok(&["snapshot", "snap", "--label", "first"]);
    assert!(out.contains("snapshot first"), "{out}");
    let at_first = env.path("first-device.img");
    tool("nbdcopy", &[&srv.url, at_first.to_str().unwrap()]);
    tool("qemu-io", &["-f", "raw", &srv.url, "-c", "write -P 0xb2 1M 2M", "-c", "flush"]);
    env.ok(&["snapshot", "snap", "--label", "second"]);
    let dup = env.run(&["snapshot", "snap", "--label", "second"]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    // Export while the writer runs equals what the device read at the snapshot.
    let exported = env.path("first-export.img");
    env.ok(&["export", "snap", "--at", "first", "--output", exported.to_str().unwrap()]);
    assert!(same_files(&at_first, &exported), "export at snapshot differs from device read");
    // Rollback needs the writer gone; while it runs it is refused.
    let busy = env.run(&["rollback", "snap", "--to", "first"]);
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("being served by"));
    srv.stop();
    let unknown = env.run(&["rollback", "snap", "--to", "nope"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no snapshot named"));
    env.ok(&["rollback", "snap", "--to", "first"]);
    let srv = env.serve("snap", &[]);
    tool("qemu-io", &["-f", "raw", &srv.url, "-c", "read -P 0xa1 0 64M"]);
    srv.stop();
    env.ok(&["rollback", "snap", "--to", "second"]);
    let srv = env.serve("snap", &[]);
    tool("qemu-io", &["-f", "raw", &srv.url, "-c", "read -P 0xb2 1M 2M", "-c", "read -P 0xa1 3M 1M"]);
    srv.stop();
    let list = env.ok(&["snapshots", "snap"]);
    assert!(list.contains("first") && list.contains("second"), "{list}");
    // A fork at a snapshot starts as that disk, copies nothing, and diverges on its own.
    let out = env.ok(&["fork", "snap@first", "copy"]);
    assert!(out.contains("forked snap@first into copy"), "{out}");
    assert_eq!(env.log_bytes("copy"), 0, "a fork copies no data");
    let srv = env.serve("copy", &[]);
    tool("qemu-io", &["-f", "raw", &srv.url, "-c", "read -P 0xa1 0 64M", "-c", "write -P 0xc3 0 1M", "-c", "flush"]);
    srv.stop();
    let srv = env.serve("snap", &[]);
    tool("qemu-io", &["-f", "raw", &srv.url, "-c", "read -P 0xa1 0 1M", "-c", "read -P 0xb2 1M 2M"]);
    srv.stop();
    let missing = env.run(&["fork", "snap@nope", "other"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no snapshot named"));
}

#[test]
fn volume_encrypted_bucket_holds_no_plaintext_and_refuses_wrong_keys() {
    let env = Env::new();
    let (key, wrong) = (env.key_file("key", &"5e".repeat(32)), env.key_file("wrong", &"5f".repeat(32)));
    let out = env.ok(&["create", "sec", "--size", "16MiB", "--encryption-key-file", &key]);
    assert!(out.contains("encrypted"), "{out}");
    for (args, want) in [
        (vec!["serve", "sec", "--listen", "127.0.0.1:0"], "is encrypted: pass its key with --encryption-key-file"),
        (vec!["serve", "sec", "--listen", "127.0.0.1:0", "--encryption-key-file", &wrong], "does not match"),
        (vec!["export", "sec", "--output", "/dev/null"], "is encrypted"),
        (vec!["export", "sec", "--output", "/dev/null", "--encryption-key-file", &wrong], "does not match"),
    ] {
        let out = env.run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{args:?}: {err}");
    }
    let marker = b"MERIDIAN-SECRET-TEXT-19";
    let text: Vec<u8> = marker.iter().copied().cycle().take(1 << 20).collect();
    let src = env.path("text");
    std::fs::write(&src, &text).unwrap();
    let srv = env.serve("sec", &["--encryption-key-file", &key]);
    let write = format!("write -s {} 2M 1M", src.display());
    tool("qemu-io", &["-f", "raw", &srv.url, "-c", &write, "-c", "flush"]);
    env.ok(&["snapshot", "sec", "--label", "s1", "--encryption-key-file", &key]);
    srv.stop();
    let objects = env.list("sec/");
    assert!(objects.iter().any(|(k, _)| k.contains("/checkpoint/")), "{objects:?}");
    for (k, _) in &objects {
        let body = env.get_object(k);
        let hit = body.windows(marker.len()).any(|w| w == marker) || body.windows(8).any(|w| w == b"MRDNVLOG");
        assert!(!hit, "{k} holds plaintext");
    }
    let image = env.path("sec.img");
    env.ok(&["export", "sec", "--at", "s1", "--output", image.to_str().unwrap(), "--encryption-key-file", &key]);
    let disk = std::fs::read(&image).unwrap();
    assert!(disk[2 << 20..3 << 20] == text[..], "export with the key reads the text back");

    // A fork needs the key and reads the source's sealed data through it.
    for (extra, want) in [(vec![], "--encryption-key-file"), (vec!["--encryption-key-file", &wrong], "does not match")]
    {
        let out = env.run(&[&["fork", "sec@s1", "sec2"][..], &extra].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "fork {extra:?}: {err}");
    }
    env.ok(&["fork", "sec@s1", "sec2", "--encryption-key-file", &key]);
    let fork = env.serve("sec2", &["--encryption-key-file", &key]);
    tool("qemu-io", &["-f", "raw", &fork.url, "-c", "read -P 0 0 2M"]);
    let mut nbd = Nbd::connect(&fork.addr, "sec2").unwrap();
    assert!(nbd.read(2 << 20, 1 << 20).unwrap() == text, "the fork reads the source's text");
    drop(nbd);
    fork.stop();
}

/// `rotate-key` through the CLI: both keys needed until `gc` has sealed every object again,
/// then `serve` and `export` with the new key alone read the data back, the old key alone is
/// refused as retired, and the bucket holds no plaintext.
#[test]
fn volume_key_rotation_through_the_cli() {
    let env = Env::new();
    let (old, new) = (env.key_file("old", &"7a".repeat(32)), env.key_file("new", &"7b".repeat(32)));
    env.ok(&["create", "rot", "--size", "8MiB", "--encryption-key-file", &old]);
    let marker = b"MERIDIAN-ROTATED-TEXT-19";
    let text: Vec<u8> = marker.iter().copied().cycle().take(1 << 20).collect();
    let src = env.path("text");
    std::fs::write(&src, &text).unwrap();
    let srv = env.serve("rot", &["--encryption-key-file", &old]);
    tool("qemu-io", &["-f", "raw", &srv.url, "-c", &format!("write -s {} 1M 1M", src.display()), "-c", "flush"]);
    srv.stop();

    let out = env.ok(&["rotate-key", "rot", "--encryption-key-file", &old, "--new-key-file", &new]);
    assert!(out.contains("key generation 2"), "{out}");
    let both = ["--encryption-key-file", &new, "--old-key-file", &old];
    for (args, want) in [
        (vec!["serve", "rot", "--listen", "127.0.0.1:0", "--encryption-key-file", &new], "--old-key-file"),
        (vec!["export", "rot", "--output", "/dev/null", "--encryption-key-file", &old], "retired key"),
    ] {
        let out = env.run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{args:?}: {err}");
    }
    let out = env.ok(&[&["inspect", "rot"][..], &both].concat());
    assert!(out.contains("rotating from generation 1"), "{out}");
    let out = env.ok(&[&["gc", "rot", "--grace", "0s"][..], &both].concat());
    assert!(out.contains("key rotation complete"), "{out}");
    let out = env.ok(&["inspect", "rot", "--encryption-key-file", &new]);
    assert!(out.contains("the old key (generation 1) is no longer needed"), "{out}");

    let srv = env.serve("rot", &["--encryption-key-file", &new]);
    let mut nbd = Nbd::connect(&srv.addr, "rot").unwrap();
    assert!(nbd.read(1 << 20, 1 << 20).unwrap() == text, "serve with the new key alone");
    drop(nbd);
    srv.stop();
    let image = env.path("rot.img");
    env.ok(&["export", "rot", "--output", image.to_str().unwrap(), "--encryption-key-file", &new]);
    assert!(std::fs::read(&image).unwrap()[1 << 20..2 << 20] == text[..], "export with the new key alone");
    let out = env.run(&["serve", "rot", "--listen", "127.0.0.1:0", "--encryption-key-file", &old]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("retired key (generation 1)"), "{err}");
    for (k, _) in env.list("rot/") {
        let body = env.get_object(&k);
        assert!(!body.windows(marker.len()).any(|w| w == marker), "{k} holds plaintext");
    }
}

/// Waits (30 s at most) for a line containing `what` from a spawned command.
fn wait_line(rx: &mpsc::Receiver<String>, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains(what) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line with {what:?} within 30s: {e}"),
        }
    }
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
}

/// A standby `serve` waits while the writer lives and takes over when it dies (kill -9) or
/// stops renewing (SIGSTOP past its TTL), serving everything up to the last FLUSH; the paused
/// writer, once resumed, refuses the write it is sent.
#[test]
fn volume_standby_takes_over_and_fences_the_old_writer() {
    let env = Env::new();
    env.create("ha", "16MiB", &[]);
    let ttl = ["--lease-ttl", "3s"];
    let first = env.serve("ha", &ttl);
    tool("qemu-io", &["-f", "raw", &first.url, "-c", "write -P 0xa1 0 2M", "-c", "flush"]);
    // Same host, same cache directory: each process keeps its own map file there.
    let (child, rx) = spawn_lines(env.serve_cmd("ha", &["--lease-ttl", "3s", "--standby"]));
    let line = wait_line(&rx, "standing by");
    assert!(line.contains("epoch 1"), "{line}");
    // The writer dies without a word: the standby takes over and has every flushed write.
    let mut first = first;
    first.kill9();
    let second = wait_serving(child, &rx, "ha");
    tool("qemu-io", &["-f", "raw", &second.url, "-c", "read -P 0xa1 0 2M", "-c", "write -P 0xb2 2M 1M", "-c", "flush"]);

    // Now pause the new writer past its lease; a third standby takes over.
    let mut old = Nbd::connect(&second.addr, "ha").unwrap();
    old.write(3 << 20, &[0xc3; 4096]).unwrap();
    old.flush().unwrap();
    let (child, rx) = spawn_lines(env.serve_cmd("ha", &["--lease-ttl", "3s", "--standby"]));
    wait_line(&rx, "standing by");
    signal(second.pid(), "-STOP");
    let paused = Instant::now();
    let third = wait_serving(child, &rx, "ha");
    assert!(paused.elapsed() >= Duration::from_secs(2), "took over a live lease after {:?}", paused.elapsed());
    signal(second.pid(), "-CONT");
    // The resumed writer refuses what it is sent (or is already gone): nothing is acknowledged.
    let write = old.write(4 << 20, &[0xd4; 4096]);
    assert!(write.is_err(), "the fenced writer acknowledged a write");
    qemu_io(&third.url, &["read -P 0xa1 0 2M", "read -P 0xb2 2M 1M", "read -P 0xc3 3M 4k", "read -P 0 4M 4k"]);
    third.stop();
}

/// "Any S3": a volume on moto's S3 server, which Meridian did not write: create (with the
/// bucket), serve, writes, zeroes and trims, a second writer refused (conditional PUTs), a
/// restart that keeps every flushed write, a snapshot and an export.
#[test]
fn volume_on_moto_server() {
    require("moto_server");
    let moto = meridian_s3_client::testing::Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let run = |args: &[&str]| {
        let out = volume_command(&moto.endpoint, &cache, args).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let ok = |args: &[&str]| {
        let (success, text) = run(args);
        assert!(success, "meridian volume {args:?} on moto failed:\n{text}");
        text
    };
    ok(&["create", "m", "--size", "32MiB", "--object-size", "1MiB", "--create-bucket"]);
    let serve = |name: &str| {
        let (child, rx) =
            spawn_lines(volume_command(&moto.endpoint, &cache, &["serve", name, "--listen", "127.0.0.1:0"]));
        wait_serving(child, &rx, name)
    };
    let srv = serve("m");
    let writes = ["write -P 0x5a 0 8M", "write -P 0x6b 1000 5000", "write -z 2M 1M", "discard 4M 1M", "flush"];
    qemu_io(&srv.url, &writes);
    let (refused, text) = run(&["serve", "m", "--listen", "127.0.0.1:0"]);
    assert!(!refused && text.contains("being served by"), "a second writer on moto: {text}");
    ok(&["snapshot", "m", "--label", "one"]);
    srv.stop();
    let srv = serve("m");
    let reads = [
        "read -P 0x5a 0 1000",
        "read -P 0x6b 1000 5000",
        "read -P 0x5a 6000 2000000",
        "read -P 0 2M 1M",
        "read -P 0x5a 3M 1M",
        "read -P 0 4M 1M",
        "read -P 0x5a 5M 3M",
    ];
    qemu_io(&srv.url, &reads);
    let image = tmp.path().join("m.img");
    let device = tmp.path().join("device.img");
    tool("nbdcopy", &[&srv.url, device.to_str().unwrap()]);
    srv.stop();
    ok(&["export", "m", "--at", "one", "--output", image.to_str().unwrap()]);
    assert!(same_files(&image, &device), "export from moto differs from what NBD read");
}

#[test]
fn volume_second_writer_is_refused() {
    let env = Env::new();
    env.create("one", "16MiB", &[]);
    let srv = env.serve("one", &[]);
    let second = env.run(&["serve", "one", "--listen", "127.0.0.1:0"]);
    assert!(!second.status.success(), "second serve started");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("being served by") && err.contains(&format!(":{} (nbd://{})", srv.pid(), srv.addr)),
        "refusal must name the holder: {err}"
    );
    let inspect = env.ok(&["inspect", "one"]);
    assert!(inspect.contains("active"), "{inspect}");
    srv.stop();
    // After a clean stop the lease is released and the next writer starts at once.
    let srv = env.serve("one", &[]);
    srv.stop();
}

/// Random overwrites with background GC: the bucket stays within 1.5x of the live data.
#[test]
fn heavy_volume_gc_bounds_the_bucket() {
    const SIZE: u64 = 32 * MIB;
    let env = Env::new();
    env.create("gc", &format!("{SIZE}"), &["--object-size", "256KiB"]);
    let srv = env.serve("gc", &["--gc-interval", "1", "--gc-grace", "1"]);
    let mut nbd = Nbd::connect(&srv.addr, "gc").unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut block = vec![0u8; 65536];
    for i in 0..SIZE / 65536 {
        rng.fill_bytes(&mut block);
        nbd.write(i * 65536, &block).unwrap();
    }
    for i in 0..(8 * SIZE / 16384) {
        let off = rng.random_range(0..SIZE / 16384) * 16384;
        rng.fill_bytes(&mut block[..16384]);
        nbd.write(off, &block[..16384]).unwrap();
        if i % 512 == 0 {
            nbd.flush().unwrap();
        }
    }
    nbd.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut bytes = env.log_bytes("gc");
    while bytes as f64 > 1.5 * SIZE as f64 {
        assert!(Instant::now() < deadline, "log still {bytes} bytes for {SIZE} live after 90s");
        std::thread::sleep(Duration::from_millis(500));
        bytes = env.log_bytes("gc");
    }
    let read_back = nbd.read(0, 4096).unwrap();
    assert_eq!(read_back.len(), 4096);
    drop(nbd);
    srv.stop();
}

#[test]
fn volume_cli_rejects_bad_input() {
    let env = Env::new();
    let bad = env.run(&["create", "v", "--size", "1000"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("multiple of 4096"));
    let bad = env.run(&["create", "v", "--size", "10XB"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown unit"));
    let bad = env.run(&["create", "a/b", "--size", "1GiB"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid volume name"));
    env.create("v", "1GiB", &[]);
    let dup = env.run(&["create", "v", "--size", "1GiB"]);
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let missing = env.run(&["serve", "nope", "--listen", "127.0.0.1:0"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));
    let shrink = env.run(&["resize", "v", "--size", "512MiB"]);
    assert!(String::from_utf8_lossy(&shrink.stderr).contains("--allow-shrink"));
    env.ok(&["resize", "v", "--size", "2GiB"]);
    let inspect = env.ok(&["inspect", "v"]);
    assert!(inspect.contains("2 GiB"), "{inspect}");
}

/// A volume in a bucket of a TLS-only node, over https: trusted through --ca-file or
/// MERIDIAN_CA_FILE; without them the certificate is refused at once; a bad CA file is named.
#[test]
fn volume_over_https_with_ca_file() {
    let cert = TestCert::new();
    let env = Env { s3: Server::start_tls(&cert), tmp: tempfile::tempdir().unwrap() };
    assert!(env.s3.endpoint.starts_with("https://"), "{}", env.s3.endpoint);
    let ca = cert.cert_str();

    let started = Instant::now();
    let untrusted = run_with_timeout(
        &mut env.cmd(&["create", "tls", "--size", "64MiB", "--create-bucket"]),
        Duration::from_secs(120),
    );
    let err = String::from_utf8_lossy(&untrusted.stderr);
    assert!(!untrusted.status.success(), "an untrusted certificate was accepted");
    assert!(err.contains("TLS") && err.contains("certificate"), "no certificate error: {err}");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}: {err}", started.elapsed());

    let garbage = env.path("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
    let bad = env.run(&["inspect", "tls", "--ca-file", garbage.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("CA file") && err.contains("garbage.pem"), "{err}");

    env.ok(&["create", "tls", "--size", "64MiB", "--create-bucket", "--ca-file", &ca]);
    let srv = env.serve("tls", &["--ca-file", &ca]);
    tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            &srv.url,
            "-c",
            "write -P 0x5c 0 8M",
            "-c",
            "write -P 0x3d 20M 1M",
            "-c",
            "flush",
            "-c",
            "read -P 0x5c 0 8M",
            "-c",
            "read -P 0x3d 20M 1M",
        ],
    );
    srv.stop();

    // Export after the writer stopped, trusting the node through the environment variable.
    let image = env.path("tls.img");
    let out = env.cmd(&["export", "tls", "--output", image.to_str().unwrap()]).env("MERIDIAN_CA_FILE", &ca).output();
    let out = out.unwrap();
    assert!(out.status.success(), "export failed: {}", String::from_utf8_lossy(&out.stderr));
    let disk = std::fs::read(&image).unwrap();
    assert_eq!(disk.len() as u64, 64 * MIB);
    let (a, b) = ((8 * MIB) as usize, (20 * MIB) as usize);
    assert!(disk[..a].iter().all(|&x| x == 0x5c), "first 8 MiB");
    assert!(disk[a..b].iter().all(|&x| x == 0), "the gap reads as zeros");
    assert!(disk[b..b + MIB as usize].iter().all(|&x| x == 0x3d), "1 MiB at 20 MiB");
    assert!(disk[b + MIB as usize..].iter().all(|&x| x == 0), "the rest reads as zeros");
}

/// The cache directory holds the disk's data: created 0700 with files 0600 even under umask 000,
/// and a directory open to others is refused (before the lease is taken) with the chmod to run.
#[test]
fn volume_cache_dir_is_owner_only() {
    let env = Env::new();
    env.create("private", "16MiB", &[]);
    let cache = env.tmp.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
    let refused = run_with_timeout(&mut env.serve_cmd("private", &[]), Duration::from_secs(60));
    assert!(!refused.status.success(), "serve started on an open cache directory");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("readable by other users (mode 0755)"), "{err}");
    assert!(err.contains(&format!("chmod -R go-rwx {}", cache.display())), "{err}");
    assert!(env.ok(&["inspect", "private"]).contains("writer      none"), "the refused serve took the lease");

    std::fs::remove_dir(&cache).unwrap();
    let srv = env.serve_command(common::under_umask("000", &env.serve_cmd("private", &[])), "private");
    let mut nbd = Nbd::connect(&srv.addr, "private").unwrap();
    let block = vec![7u8; 65536];
    for i in 0..16 {
        nbd.write(i * 65536, &block).unwrap();
    }
    nbd.flush().unwrap();
    assert_eq!(nbd.read(0, 4096).unwrap(), block[..4096]);
    // The journal is an unnamed temporary file (mode 0600, never visible); the extent map is not.
    assert!(common::assert_owner_only(&cache) >= 1, "the extent map is missing from the cache directory");
    drop(nbd);
    srv.stop();
    common::assert_owner_only(&cache);
}

/// `GET /metrics` of a served volume: the exposition text.
fn scrape(srv: &Serve) -> String {
    let addr = srv.metrics_addr.as_deref().expect("serve was given --metrics-listen");
    let got = common::raw::send(addr, "GET", "/metrics", &[], b"");
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    got.text()
}

/// The value of one series (`name{labels}` exactly as exposed); 0 when absent.
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// `volume serve --metrics-listen`: NBD requests by operation and result, bytes, flush time,
/// dirty journal bytes and lease renewals move by exactly what the client did; promtool
/// accepts the exposition.
#[test]
fn volume_serve_metrics_count_nbd_io() {
    let promtool = common::require_tool("promtool", "apt-get install prometheus");
    let env = Env::new();
    env.create("metered", "16MiB", &[]);
    let srv = env.serve("metered", &["--metrics-listen", "127.0.0.1:0", "--lease-ttl", "3s"]);
    let requests = |text: &str, op: &str, result: &str| {
        series(text, &format!("meridian_volume_nbd_requests_total{{op=\"{op}\",result=\"{result}\"}}"))
    };
    let before = scrape(&srv);
    assert_eq!(requests(&before, "write", "ok"), 0.0);

    let mut nbd = Nbd::connect(&srv.addr, "metered").unwrap();
    let block = vec![5u8; 65536];
    for i in 0..8 {
        nbd.write(i * 65536, &block).unwrap();
    }
    assert_eq!(nbd.read(0, 4096).unwrap(), block[..4096]);
    assert_eq!(nbd.read(65536, 4096).unwrap(), block[..4096]);
    assert_eq!(nbd.read(0, 65536).unwrap(), block);
    assert_eq!(nbd.request(4, MIB, 4096, &[]).unwrap(), 0, "trim");
    assert_eq!(nbd.request(6, 2 * MIB, 8192, &[]).unwrap(), 0, "write zeroes");
    assert_eq!(nbd.request(0, 16 * MIB, 4096, &[]).unwrap(), 22, "a read past the end is refused");
    let dirty = scrape(&srv);
    assert!(series(&dirty, "meridian_volume_journal_dirty_bytes") >= 8.0 * 65536.0, "{dirty}");
    nbd.flush().unwrap();

    let after = scrape(&srv);
    for (op, result, count) in [
        ("write", "ok", 8.0),
        ("read", "ok", 3.0),
        ("read", "error", 1.0),
        ("trim", "ok", 1.0),
        ("write_zeroes", "ok", 1.0),
        ("flush", "ok", 1.0),
    ] {
        assert_eq!(requests(&after, op, result), count, "{op} {result}:\n{after}");
    }
    assert_eq!(series(&after, "meridian_volume_nbd_request_duration_seconds_count{op=\"write\"}"), 8.0);
    assert_eq!(series(&after, "meridian_volume_nbd_written_bytes_total"), 8.0 * 65536.0);
    assert_eq!(series(&after, "meridian_volume_nbd_read_bytes_total"), 4096.0 * 2.0 + 65536.0);
    assert_eq!(series(&after, "meridian_volume_flush_duration_seconds_count"), 1.0);
    assert!(series(&after, "meridian_volume_flush_duration_seconds_sum") > 0.0);
    assert_eq!(series(&after, "meridian_volume_journal_dirty_bytes"), 0.0, "everything is durable after FLUSH");
    assert_eq!(series(&after, "meridian_volume_upload_queue_units"), 0.0);
    drop(nbd);

    // A real client: qemu-io writes 1 MiB more and flushes.
    tool("qemu-io", &["-f", "raw", "-c", "write -P 7 4M 1M", "-c", "flush", &srv.url]);
    // The lease (3 s TTL) is renewed every second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let last = loop {
        let text = scrape(&srv);
        if series(&text, "meridian_volume_lease_renewals_total{result=\"ok\"}") >= 1.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "no lease renewal counted within 10 s:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(series(&last, "meridian_volume_nbd_written_bytes_total") >= 8.0 * 65536.0 + MIB as f64, "{last}");
    assert_eq!(series(&last, "meridian_volume_lease_renewals_total{result=\"failed\"}"), 0.0);

    let mut check = Command::new(promtool);
    check.args(["check", "metrics"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = check.spawn().unwrap();
    child.stdin.take().unwrap().write_all(last.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{last}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(common::raw::send(srv.metrics_addr.as_deref().unwrap(), "GET", "/other", &[], b"").status, 404);
    srv.stop();
}

/// The memory bar: `serve`'s RSS while and after a 16 GiB volume is written in random order,
/// touching every page of its extent map, stays under 96 MiB (the measure): both the
/// peak (`VmHWM`) and the RSS after the writes are asserted. (Before `serve` fixed glibc's mmap
/// and trim thresholds, `allocator` in meridian-volume, both varied between runs with upload
/// timing: RSS after 37.6 to 96.9 MiB, peak 69.5 to 97.0 MiB; since, 38.8–39.3 and 62.6–63.1 MiB.)
///
/// Exactly what happens: the volume (4 KiB sectors, one 8-byte map entry each) is cut into
/// regions of `MERIDIAN_VOLUME_MEMORY_REGION_KIB` KiB (default 128: 131,072 regions); the regions
/// are visited in a random permutation and one 4 KiB block at a random sector of each is written
/// (32 writes pipelined per batch), so every 4 KiB page of the map (512 sectors, 2 MiB of disk)
/// is written 16 times, in random order, with 131,072 separate extents and 512 MiB of data.
/// After a FLUSH, the peak (`VmHWM`) and current (`VmRSS`) RSS of the `serve` process are read
/// from /proc. `MERIDIAN_VOLUME_MEMORY_REGION_KIB=4` writes every 4 KiB block of the volume
/// (16 GiB uploaded: by hand, several minutes). A sample of regions is read back.
#[test]
fn heavy_volume_memory_bar_16gib_random_fill() {
    const SIZE: u64 = 16 << 30;
    const BAR_KIB: u64 = 96 * 1024;
    let region_kib: u64 =
        std::env::var("MERIDIAN_VOLUME_MEMORY_REGION_KIB").ok().and_then(|v| v.parse().ok()).unwrap_or(128);
    assert!(
        region_kib >= 4 && region_kib.is_multiple_of(4),
        "MERIDIAN_VOLUME_MEMORY_REGION_KIB must be a multiple of 4"
    );
    let region = region_kib * 1024;
    let regions = SIZE / region;
    let env = Env::new();
    env.create("big", "16GiB", &[]);
    let srv = env.serve("big", &[]);
    let mut nbd = Nbd::connect(&srv.addr, "big").unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    let mut order: Vec<u64> = (0..regions).collect();
    rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
    let sector_in = |r: u64, salt: u64| (r.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt) % (region / 4096);
    let block_of = |r: u64| -> Vec<u8> { (0..512).flat_map(|_| (r + 1).to_le_bytes()).collect() };
    let started = Instant::now();
    for batch in order.chunks(32) {
        let blocks: Vec<(u64, Vec<u8>)> =
            batch.iter().map(|&r| (r * region + sector_in(r, 19) * 4096, block_of(r))).collect();
        let writes: Vec<(u64, &[u8])> = blocks.iter().map(|(o, b)| (*o, b.as_slice())).collect();
        nbd.write_pipelined(&writes).unwrap();
    }
    nbd.flush().unwrap();
    let (rss, peak) = rss_kib_of(srv.pid());
    eprintln!(
        "memory bar: {regions} random 4 KiB writes over 16 GiB in {:.1}s; serve RSS {} KiB, peak {} KiB",
        started.elapsed().as_secs_f64(),
        rss,
        peak
    );
    assert!(rss < BAR_KIB, "serve RSS {rss} KiB after the writes, over the {BAR_KIB} KiB bar (peak {peak} KiB)");
    assert!(peak < BAR_KIB, "serve's peak RSS {peak} KiB during the writes, over the {BAR_KIB} KiB bar");
    for &r in order.iter().step_by((regions / 256).max(1) as usize) {
        let base = r * region;
        let at = sector_in(r, 19) * 4096;
        assert_eq!(nbd.read(base + at, 4096).unwrap(), block_of(r), "region {r}");
        if at > 0 {
            assert_eq!(nbd.read(base, 4096).unwrap(), vec![0u8; 4096], "region {r}: unwritten block");
        }
    }
    drop(nbd);
    srv.stop();
}
