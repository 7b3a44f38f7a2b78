//! The NBD server, in process over the in-memory store: handshake and command edge cases with
//! a hand-written client, plus qemu-io and nbdinfo talking to it. (Full-stack tests against a
//! real S3 server and the real binary are in `tests/nbd_s3.rs`.)

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::sync::Arc;

use common::Server;
use meridian_volume::format::Layout;
use meridian_volume::manage;
use meridian_volume::{MemStore, WriterConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: u64 = 1 << 20;

/// A volume "disk" of `size` bytes in a fresh in-memory bucket, served over NBD.
async fn start_server(size: u64) -> Server {
    let store = Arc::new(MemStore::new());
    let layout = Layout::new("", "disk").unwrap();
    manage::create(store.as_ref(), &layout, "disk", size, 1 << 20).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = WriterConfig::new(dir.path().join("cache"), "test".into());
    Server::start(store, layout, cfg, Some(dir)).await
}

/// Connects and completes the fixed-newstyle greeting; returns the stream.
async fn greet(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(s.read_u64().await.unwrap(), 0x4e42444d41474943);
    assert_eq!(s.read_u64().await.unwrap(), 0x49484156454F5054);
    let flags = s.read_u16().await.unwrap();
    assert_eq!(flags & 3, 3, "fixed newstyle and no zeroes");
    s.write_u32(3).await.unwrap();
    s
}

async fn send_opt(s: &mut TcpStream, opt: u32, data: &[u8]) {
    s.write_u64(0x49484156454F5054).await.unwrap();
    s.write_u32(opt).await.unwrap();
    s.write_u32(data.len() as u32).await.unwrap();
    s.write_all(data).await.unwrap();
}

/// Reads one option reply: (reply type, data).
async fn read_rep(s: &mut TcpStream, opt: u32) -> (u32, Vec<u8>) {
    assert_eq!(s.read_u64().await.unwrap(), 0x0003e889045565a9);
    assert_eq!(s.read_u32().await.unwrap(), opt);
    let kind = s.read_u32().await.unwrap();
    let len = s.read_u32().await.unwrap();
    let mut d = vec![0u8; len as usize];
    s.read_exact(&mut d).await.unwrap();
    (kind, d)
}

fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

async fn request(s: &mut TcpStream, flags: u16, cmd: u16, handle: u64, off: u64, len: u32) {
    let mut r = Vec::new();
    r.extend_from_slice(&0x25609513u32.to_be_bytes());
    r.extend_from_slice(&flags.to_be_bytes());
    r.extend_from_slice(&cmd.to_be_bytes());
    r.extend_from_slice(&handle.to_be_bytes());
    r.extend_from_slice(&off.to_be_bytes());
    r.extend_from_slice(&len.to_be_bytes());
    s.write_all(&r).await.unwrap();
}

async fn simple_reply(s: &mut TcpStream) -> (u32, u64) {
    assert_eq!(s.read_u32().await.unwrap(), 0x67446698);
    let err = s.read_u32().await.unwrap();
    (err, s.read_u64().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_options_and_refusals() {
    let srv = start_server(16 * MIB).await;
    let mut s = greet(srv.addr).await;
    // LIST names the export.
    send_opt(&mut s, 3, &[]).await;
    let (kind, d) = read_rep(&mut s, 3).await;
    assert_eq!(kind, 2);
    assert_eq!(&d[4..8], b"disk");
    assert_eq!(read_rep(&mut s, 3).await.0, 1);
    // Unsupported options are refused with NBD_REP_ERR_UNSUP, and haggling continues.
    for opt in [5u32, 8, 9, 10, 11, 99] {
        send_opt(&mut s, opt, &[]).await;
        assert_eq!(read_rep(&mut s, opt).await.0, (1 << 31) | 1, "option {opt}");
    }
    // INFO on an unknown export: NBD_REP_ERR_UNKNOWN.
    send_opt(&mut s, 6, &go_data("other", &[])).await;
    assert_eq!(read_rep(&mut s, 6).await.0, (1 << 31) | 6);
    // Malformed GO: NBD_REP_ERR_INVALID.
    send_opt(&mut s, 7, &[0, 0, 0, 9, b'x']).await;
    assert_eq!(read_rep(&mut s, 7).await.0, (1 << 31) | 3);
    // GO with block size info.
    send_opt(&mut s, 7, &go_data("disk", &[3, 1])).await;
    let mut saw_export = false;
    let mut saw_bs = false;
    loop {
        let (kind, d) = read_rep(&mut s, 7).await;
        if kind == 1 {
            break;
        }
        assert_eq!(kind, 3);
        match u16::from_be_bytes([d[0], d[1]]) {
            0 => {
                saw_export = true;
                assert_eq!(u64::from_be_bytes(d[2..10].try_into().unwrap()), 16 * MIB);
                let flags = u16::from_be_bytes([d[10], d[11]]);
                assert_eq!(flags & (1 | 4 | 8 | 32 | 64), 1 | 4 | 8 | 32 | 64);
            }
            3 => {
                saw_bs = true;
                assert_eq!(u32::from_be_bytes(d[6..10].try_into().unwrap()), 4096);
            }
            _ => {}
        }
    }
    assert!(saw_export && saw_bs);
    // Transmission: write, read back, unknown command, bad flag, out of range.
    request(&mut s, 0, 1, 1, 4096, 5).await;
    s.write_all(b"hello").await.unwrap();
    assert_eq!(simple_reply(&mut s).await, (0, 1));
    request(&mut s, 0, 0, 2, 4096, 5).await;
    assert_eq!(simple_reply(&mut s).await, (0, 2));
    let mut got = [0u8; 5];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello");
    request(&mut s, 0, 5, 3, 0, 4096).await; // CACHE: not advertised
    assert_eq!(simple_reply(&mut s).await, (22, 3));
    request(&mut s, 0, 7, 4, 0, 4096).await; // BLOCK_STATUS: not negotiated
    assert_eq!(simple_reply(&mut s).await, (22, 4));
    request(&mut s, 4, 0, 5, 0, 4096).await; // DF flag without structured replies
    assert_eq!(simple_reply(&mut s).await, (22, 5));
    request(&mut s, 0, 0, 6, 16 * MIB, 4096).await; // read past the end
    assert_eq!(simple_reply(&mut s).await, (22, 6));
    request(&mut s, 0, 6, 7, 16 * MIB - 4096, 8192).await; // zeroes past the end
    assert_eq!(simple_reply(&mut s).await, (28, 7));
    request(&mut s, 1, 1, 8, 0, 4096).await; // FUA write
    s.write_all(&[7u8; 4096]).await.unwrap();
    assert_eq!(simple_reply(&mut s).await, (0, 8));
    request(&mut s, 0, 3, 9, 0, 0).await; // FLUSH
    assert_eq!(simple_reply(&mut s).await, (0, 9));
    request(&mut s, 0, 2, 10, 0, 0).await; // DISC
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());

    // EXPORT_NAME with the right name enters transmission (no zero padding negotiated).
    let mut s = greet(srv.addr).await;
    send_opt(&mut s, 1, b"disk").await;
    assert_eq!(s.read_u64().await.unwrap(), 16 * MIB);
    let _flags = s.read_u16().await.unwrap();
    request(&mut s, 0, 0, 1, 4096, 5).await;
    assert_eq!(simple_reply(&mut s).await, (0, 1));
    let mut got = [0u8; 5];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello");
    // ABORT is acknowledged and the connection closes.
    let mut s = greet(srv.addr).await;
    send_opt(&mut s, 2, &[]).await;
    assert_eq!(read_rep(&mut s, 2).await.0, 1);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_and_nbdinfo_interoperate() {
    let srv = start_server(64 * MIB).await;
    let url = srv.url();
    let info = common::run_tool("nbdinfo", &["--json", &url]).await;
    assert!(info.contains("\"export-size\": 67108864"), "{info}");
    assert!(info.contains("\"block_size_preferred\": 4096"), "{info}");
    // Pattern writes at odd offsets and sizes (read-modify-write), then verified reads.
    common::run_tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            &url,
            "-c",
            "write -P 0xab 0 3M",
            "-c",
            "write -P 0xcd 1000 5000",
            "-c",
            "write -z 2M 64k",
            "-c",
            "flush",
            "-c",
            "read -P 0xab 0 1000",
            "-c",
            "read -P 0xcd 1000 5000",
            "-c",
            "read -P 0xab 6000 100000",
            "-c",
            "read -P 0 2M 64k",
            "-c",
            "discard 0 1M",
            "-c",
            "read -P 0 0 1M",
        ],
    )
    .await;
    srv.stop().await;
}
