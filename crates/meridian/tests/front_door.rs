//! The node's front door, through real clients against a real `meridian server`: a TLS-only
//! node works with the AWS CLI, boto3, rclone, `meridian kv` and `meridian admin`; every
//! listener holds its limits; one client address cannot starve the others; a shutdown lets an
//! in-flight 100 MiB GET finish.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    Server, TestCert, aws_env_only_ours, expect_success, md5_hex, pattern, require_tool, run_with_timeout, text,
};

const TOOL_TIMEOUT: Duration = Duration::from_secs(180);

fn aws(server: &Server, ca: &Path, home: &Path, args: &[&str]) -> String {
    let bin = require_tool("aws", "pip install awscli");
    let mut cmd = Command::new(bin);
    cmd.arg("--endpoint-url").arg(&server.endpoint).arg("--ca-bundle").arg(ca).args(args);
    aws_env_only_ours(&mut cmd, home);
    cmd.env("AWS_PAGER", "");
    expect_success(&format!("aws {}", args.join(" ")), &run_with_timeout(&mut cmd, TOOL_TIMEOUT))
}

#[test]
fn tls_only_node_serves_the_aws_cli_boto3_rclone_kv_and_admin() {
    let cert = TestCert::new();
    let server = Server::start_tls(&cert);
    assert!(server.endpoint.starts_with("https://"), "{}", server.endpoint);
    assert!(server.admin_url.starts_with("https://"), "{}", server.admin_url);

    // Plain HTTP gets no answer from either listener.
    for addr in [server.addr.clone(), server.admin_url.trim_start_matches("https://").to_string()] {
        let mut plain = TcpStream::connect(&addr).unwrap();
        plain.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        plain.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let _ = plain.read_to_end(&mut got);
        assert!(!text(&got).starts_with("HTTP/"), "plain HTTP answered on {addr}: {}", text(&got));
    }

    // The AWS CLI with --ca-bundle: a multipart upload (9 MiB) and the download of it.
    let home = tempfile::tempdir().unwrap();
    let data = pattern(9 << 20, 11);
    let local = home.path().join("up.bin");
    std::fs::write(&local, &data).unwrap();
    aws(&server, &cert.cert(), home.path(), &["s3", "mb", "s3://tls"]);
    aws(&server, &cert.cert(), home.path(), &["s3", "cp", local.to_str().unwrap(), "s3://tls/up.bin"]);
    let back = home.path().join("back.bin");
    aws(&server, &cert.cert(), home.path(), &["s3", "cp", "s3://tls/up.bin", back.to_str().unwrap()]);
    assert_eq!(md5_hex(&std::fs::read(&back).unwrap()), md5_hex(&data));

    // boto3's whole check script, trusting the node's certificate (urllib too, for presigned URLs).
    let python = require_tool("python3", "install Python 3");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/boto3_check.py");
    let mut cmd = Command::new(python);
    cmd.arg(&script).arg(&server.endpoint);
    aws_env_only_ours(&mut cmd, home.path());
    cmd.env("AWS_CA_BUNDLE", cert.cert()).env("SSL_CERT_FILE", cert.cert()).env("PYTHONUNBUFFERED", "1");
    let out = expect_success("boto3_check.py over TLS", &run_with_timeout(&mut cmd, TOOL_TIMEOUT));
    assert!(out.contains("boto3 checks passed"), "{out}");

    // rclone with --ca-cert: copy a tree up and check it.
    let rclone = require_tool("rclone", "apt-get install rclone");
    let tree = home.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), b"alpha").unwrap();
    std::fs::write(tree.join("sub/b.bin"), pattern(300_000, 3)).unwrap();
    let rclone_run = |args: &[&str]| {
        let mut cmd = common::rclone_command(&rclone, home.path(), &server.endpoint);
        cmd.args(args).arg("--ca-cert").arg(cert.cert());
        let out = run_with_timeout(&mut cmd, TOOL_TIMEOUT);
        (expect_success(&format!("rclone {}", args.join(" ")), &out), text(&out.stderr))
    };
    rclone_run(&["copy", tree.to_str().unwrap(), "meridian:tls/tree"]);
    let (_, log) = rclone_run(&["check", tree.to_str().unwrap(), "meridian:tls/tree"]);
    assert!(log.contains("0 differences found"), "{log}");

    // `meridian admin` and `meridian kv` with --ca-file.
    let meridian = common::binary();
    let admin = |args: &[&str]| {
        let mut cmd = Command::new(&meridian);
        cmd.arg("admin").args(args).arg("--url").arg(&server.admin_url).arg("--ca-file").arg(cert.cert());
        cmd.env("MERIDIAN_ADMIN_TOKEN", common::ADMIN_TOKEN);
        expect_success(&format!("meridian admin {}", args.join(" ")), &run_with_timeout(&mut cmd, TOOL_TIMEOUT))
    };
    admin(&["key", "create", "tls-app"]);
    assert!(admin(&["key", "list"]).contains("tls-app"));
    let kv = |args: &[&str]| {
        let mut cmd = Command::new(&meridian);
        cmd.arg("kv").args(args).args(["--endpoint", &server.endpoint, "--bucket", "tls"]);
        cmd.arg("--ca-file").arg(cert.cert());
        cmd.env("AWS_ACCESS_KEY_ID", common::ACCESS_KEY).env("AWS_SECRET_ACCESS_KEY", common::SECRET_KEY);
        run_with_timeout(&mut cmd, TOOL_TIMEOUT)
    };
    expect_success("meridian kv put", &kv(&["put", "greeting", "hello over tls"]));
    assert_eq!(expect_success("meridian kv get", &kv(&["get", "greeting"])), "hello over tls");
    // Without the CA the same command fails: the certificate is really checked.
    let mut untrusted = Command::new(&meridian);
    untrusted.arg("kv").args(["get", "greeting", "--endpoint", &server.endpoint, "--bucket", "tls"]);
    untrusted.env("AWS_ACCESS_KEY_ID", common::ACCESS_KEY).env("AWS_SECRET_ACCESS_KEY", common::SECRET_KEY);
    untrusted.env_remove("MERIDIAN_CA_FILE").env_remove("SSL_CERT_FILE");
    let out = run_with_timeout(&mut untrusted, TOOL_TIMEOUT);
    assert!(!out.status.success(), "an untrusted certificate was accepted");
}

/// A node whose listeners have short, testable limits.
fn limited_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("limits.toml");
    std::fs::write(&config, "header_read_timeout_ms = 3000\nidle_timeout_secs = 2\n").unwrap();
    let server = Server::start_with(&["--config", config.to_str().unwrap()]);
    // The config file is read at start; the directory may go.
    drop(dir);
    server
}

/// Writes `request` and reads until the answer's head is complete, the peer closes or 15 s
/// pass: the status code (if any) and how long that took.
fn exchange(addr: &str, request: &[u8]) -> (Option<u16>, Duration) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    stream.write_all(request).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if got.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    (text(&got).split_whitespace().nth(1).and_then(|s| s.parse().ok()), started.elapsed())
}

/// Sends a request head one byte every 300 ms until the server closes the connection (at most
/// 15 s); how long it kept it.
fn trickle_head(addr: &str) -> Duration {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let started = Instant::now();
    let head = b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ".iter().chain(std::iter::repeat(&b'a'));
    let mut buf = [0u8; 1024];
    for byte in head {
        if stream.write_all(&[*byte]).is_err() || started.elapsed() > Duration::from_secs(15) {
            break;
        }
        match stream.read(&mut buf) {
            Ok(_) => break,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    started.elapsed()
}

#[test]
fn every_listener_holds_its_limits() {
    let server = limited_server();
    let admin = server.admin_url.trim_start_matches("http://").to_string();
    for addr in [server.addr.as_str(), admin.as_str()] {
        let mut head = String::from("GET / HTTP/1.1\r\nhost: x\r\n");
        for i in 0..200 {
            head.push_str(&format!("x-h{i}: v\r\n"));
        }
        head.push_str("\r\n");
        assert_eq!(exchange(addr, head.as_bytes()).0, Some(431), "too many headers on {addr}");

        // A head trickled a byte every 300 ms (never idle) is cut off at the 3 s header time.
        let waited = trickle_head(addr);
        assert!(
            waited > Duration::from_millis(2500) && waited < Duration::from_secs(6),
            "{addr}: cut after {waited:?}"
        );

        // An idle keep-alive connection is closed after 2 s.
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        stream.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 8192];
        let n = stream.read(&mut buf).unwrap();
        assert!(text(&buf[..n]).starts_with("HTTP/1.1 "), "{addr}: {}", text(&buf[..n]));
        let closed = loop {
            match stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) => break e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut,
            }
        };
        assert!(closed, "idle connection on {addr} still open after 15 s");
        let idle = started.elapsed();
        assert!(
            idle >= Duration::from_millis(1500) && idle < Duration::from_millis(2900),
            "{addr}: closed after {idle:?}"
        );
    }
}

/// Opens up to `count` connections from 127.0.0.1 that send half a request head and stall.
fn flood(addr: &str, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        match TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)) {
            Ok(mut stream) => {
                let _ = stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-half");
                held.push(stream);
            }
            Err(_) => break,
        }
    }
    held
}

/// A request from 127.0.0.2: its status and how long the answer took.
fn get_from_another_address(addr: &str, path: &str) -> (Option<u16>, Duration) {
    let target: SocketAddr = addr.parse().unwrap();
    let started = Instant::now();
    // std cannot bind a source address before connecting: a tokio socket can.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let status = runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 2], 0))).unwrap();
        let mut stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(target)).await.ok()?.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await.ok()?.ok()?;
        text(&got).split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok())
    });
    (status, started.elapsed())
}

#[test]
fn five_thousand_half_open_requests_from_one_address_do_not_starve_another() {
    let server = Server::start();
    let admin = server.admin_url.trim_start_matches("http://").to_string();
    for (addr, path) in [(server.addr.as_str(), "/"), (admin.as_str(), "/health")] {
        let flooding = Instant::now();
        let held = flood(addr, 5000);
        eprintln!("{addr}: {} half-open connections in {:?}", held.len(), flooding.elapsed());
        assert!(held.len() >= 4000, "{addr}: opened only {} connections", held.len());
        let (status, took) = get_from_another_address(addr, path);
        assert!(status.is_some_and(|s| s != 503), "{addr}: another address got {status:?}");
        assert!(took < Duration::from_secs(1), "{addr}: another address answered after {took:?}");
        drop(held);
    }
}

#[test]
fn shutdown_lets_an_inflight_100_mib_get_finish() {
    let mut server = Server::start();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let s3 = server.client();
    let data = pattern(100 << 20, 5);
    let expected = md5_hex(&data);
    runtime.block_on(async {
        s3.create_bucket().bucket("drain").send().await.unwrap();
        s3.put_object().bucket("drain").key("big").body(data.into()).send().await.unwrap();
    });
    drop(s3);
    let s3 = server.client();
    let (len, md5) = runtime.block_on(async {
        let out = s3.get_object().bucket("drain").key("big").send().await.unwrap();
        let mut body = out.body;
        let mut hasher = md5::Md5::default();
        let mut len = 0usize;
        let mut signalled = false;
        while let Some(chunk) = body.try_next().await.unwrap() {
            use md5::Digest as _;
            hasher.update(&chunk);
            len += chunk.len();
            if !signalled && len > (4 << 20) {
                // SIGTERM mid-body: the node stops accepting but lets this response finish.
                let status = Command::new("kill").arg("-TERM").arg(server.pid().to_string()).status().unwrap();
                assert!(status.success());
                signalled = true;
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert!(
                    std::net::TcpStream::connect_timeout(&server.addr.parse().unwrap(), Duration::from_secs(1))
                        .is_err(),
                    "still accepting connections after SIGTERM"
                );
            }
            // A slow reader, so the transfer is still going when the signal lands.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        use md5::Digest as _;
        (len, hex::encode(hasher.finalize()))
    });
    assert_eq!(len, 100 << 20, "the in-flight GET was cut off");
    assert_eq!(md5, expected);
    assert!(server.wait_exit(Duration::from_secs(30)).is_some_and(|s| s.success()), "the node did not exit cleanly");
}
