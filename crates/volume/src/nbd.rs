//! An NBD server (fixed newstyle handshake, simple replies) exporting one volume.
//!
//! Options: EXPORT_NAME, ABORT, LIST, INFO and GO (with NBD_INFO_EXPORT, NAME, DESCRIPTION and
//! BLOCK_SIZE); everything else is refused with NBD_REP_ERR_UNSUP. Commands: READ, WRITE,
//! FLUSH, TRIM, WRITE_ZEROES (with FUA / NO_HOLE) and DISC; anything else gets EINVAL.
//!
//! Writes and zeroing are applied to the volume in the order they arrive on a connection (they
//! only touch memory); reads, FLUSH and FUA completions run concurrently and reply out of order,
//! which lets pipelining clients (qemu, nbdcopy, the kernel) keep many requests in flight.

use std::future::Future;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{debug, info, warn};

use crate::error::VolumeError;
use crate::metrics::Request;
use crate::volume::Volume;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const CLIENT_FIXED_NEWSTYLE: u32 = 1;
const CLIENT_NO_ZEROES: u32 = 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
const REP_ERR_INVALID: u32 = (1 << 31) | 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;

const INFO_EXPORT: u16 = 0;
const INFO_NAME: u16 = 1;
const INFO_DESCRIPTION: u16 = 2;
const INFO_BLOCK_SIZE: u16 = 3;

const TF_HAS_FLAGS: u16 = 1;
const TF_READ_ONLY: u16 = 2;
const TF_SEND_FLUSH: u16 = 4;
const TF_SEND_FUA: u16 = 8;
const TF_SEND_TRIM: u16 = 32;
const TF_SEND_WRITE_ZEROES: u16 = 64;
const TF_CAN_MULTI_CONN: u16 = 256;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;

const CMD_FLAG_FUA: u16 = 1;
const CMD_FLAG_NO_HOLE: u16 = 2;

const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

/// Largest READ/WRITE payload (the protocol's recommended maximum block size).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Longest option payload we accept during the handshake.
const MAX_OPTION: u32 = 64 * 1024;
/// Bytes of read data (in KiB permits) a connection may hold in flight.
const INFLIGHT_KIB: u32 = 128 * 1024;

/// What is exported.
#[derive(Clone)]
pub struct Export {
    pub name: String,
    pub description: String,
    pub volume: Arc<Volume>,
    pub read_only: bool,
}

impl Export {
    fn flags(&self) -> u16 {
        let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_CAN_MULTI_CONN;
        if self.read_only {
            f |= TF_READ_ONLY;
        } else {
            f |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES;
        }
        f
    }

    fn matches(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }
}

/// Accepts connections until `shutdown` completes.
pub async fn serve(listener: TcpListener, export: Export, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let (stream, peer) = accepted?;
                let export = export.clone();
                tokio::spawn(async move {
                    debug!(%peer, "nbd connection");
                    match handle(stream, export).await {
                        Ok(()) => debug!(%peer, "nbd connection closed"),
                        Err(e) => info!(%peer, error = %e, "nbd connection ended"),
                    }
                });
            }
        }
    }
}

async fn handle(stream: TcpStream, export: Export) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    // Buffered both ways: a request header and its payload then cost one read syscall, and a
    // burst of replies one write.
    let mut rd = BufReader::with_capacity(256 * 1024, rd);
    let mut wr = BufWriter::with_capacity(256 * 1024, wr);
    if !handshake(&mut rd, &mut wr, &export).await? {
        return Ok(());
    }
    transmission(rd, wr, export).await
}

fn proto_err(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

async fn opt_reply(wr: &mut BufWriter<OwnedWriteHalf>, opt: u32, kind: u32, data: &[u8]) -> std::io::Result<()> {
    wr.write_u64(OPT_REPLY_MAGIC).await?;
    wr.write_u32(opt).await?;
    wr.write_u32(kind).await?;
    wr.write_u32(data.len() as u32).await?;
    wr.write_all(data).await?;
    wr.flush().await
}

/// Runs option haggling; true means "enter transmission".
async fn handshake(
    rd: &mut BufReader<OwnedReadHalf>,
    wr: &mut BufWriter<OwnedWriteHalf>,
    export: &Export,
) -> std::io::Result<bool> {
    wr.write_u64(NBDMAGIC).await?;
    wr.write_u64(IHAVEOPT).await?;
    wr.write_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).await?;
    wr.flush().await?;
    let client = rd.read_u32().await?;
    if client & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(proto_err(format!("unknown client flags {client:#x}")));
    }
    let no_zeroes = client & CLIENT_NO_ZEROES != 0;
    loop {
        if rd.read_u64().await? != IHAVEOPT {
            return Err(proto_err("bad option magic"));
        }
        let opt = rd.read_u32().await?;
        let len = rd.read_u32().await?;
        if len > MAX_OPTION {
            return Err(proto_err(format!("option {opt} of {len} bytes is too long")));
        }
        let mut data = vec![0u8; len as usize];
        rd.read_exact(&mut data).await?;
        match opt {
            OPT_EXPORT_NAME => {
                if !export.matches(&data) {
                    // EXPORT_NAME has no error reply: the protocol says to close.
                    return Err(proto_err("unknown export requested with EXPORT_NAME"));
                }
                wr.write_u64(export.volume.size()).await?;
                wr.write_u16(export.flags()).await?;
                if !no_zeroes {
                    wr.write_all(&[0u8; 124]).await?;
                }
                wr.flush().await?;
                return Ok(true);
            }
            OPT_ABORT => {
                // Best effort: the client may already have gone.
                let _ = opt_reply(wr, opt, REP_ACK, &[]).await;
                return Ok(false);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    opt_reply(wr, opt, REP_ERR_INVALID, b"LIST takes no data").await?;
                    continue;
                }
                let mut d = (export.name.len() as u32).to_be_bytes().to_vec();
                d.extend_from_slice(export.name.as_bytes());
                d.extend_from_slice(export.description.as_bytes());
                opt_reply(wr, opt, REP_SERVER, &d).await?;
                opt_reply(wr, opt, REP_ACK, &[]).await?;
            }
            OPT_INFO | OPT_GO => {
                if info_or_go(wr, opt, &data, export).await? && opt == OPT_GO {
                    return Ok(true);
                }
            }
            _ => {
                opt_reply(wr, opt, REP_ERR_UNSUP, b"option not supported").await?;
            }
        }
    }
}

/// Answers INFO/GO; true when the export was accepted.
async fn info_or_go(
    wr: &mut BufWriter<OwnedWriteHalf>,
    opt: u32,
    data: &[u8],
    export: &Export,
) -> std::io::Result<bool> {
    let parsed = (|| {
        let name_len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
        let name = data.get(4..4 + name_len)?;
        let rest = data.get(4 + name_len..)?;
        let n = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
        let reqs = rest.get(2..)?;
        if reqs.len() != n * 2 {
            return None;
        }
        let reqs: Vec<u16> = reqs.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
        Some((name.to_vec(), reqs))
    })();
    let Some((name, reqs)) = parsed else {
        opt_reply(wr, opt, REP_ERR_INVALID, b"malformed INFO/GO request").await?;
        return Ok(false);
    };
    if !export.matches(&name) {
        let msg =
            format!("no export named {:?}; this server exports {:?}", String::from_utf8_lossy(&name), export.name);
        opt_reply(wr, opt, REP_ERR_UNKNOWN, msg.as_bytes()).await?;
        return Ok(false);
    }
    let mut info = INFO_EXPORT.to_be_bytes().to_vec();
    info.extend_from_slice(&export.volume.size().to_be_bytes());
    info.extend_from_slice(&export.flags().to_be_bytes());
    opt_reply(wr, opt, REP_INFO, &info).await?;
    // Sent even when not requested (allowed): 4 KiB is what we prefer, but any byte alignment
    // works through read-modify-write.
    let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    bs.extend_from_slice(&1u32.to_be_bytes());
    bs.extend_from_slice(&4096u32.to_be_bytes());
    bs.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
    opt_reply(wr, opt, REP_INFO, &bs).await?;
    if reqs.contains(&INFO_NAME) {
        let mut d = INFO_NAME.to_be_bytes().to_vec();
        d.extend_from_slice(export.name.as_bytes());
        opt_reply(wr, opt, REP_INFO, &d).await?;
    }
    if reqs.contains(&INFO_DESCRIPTION) {
        let mut d = INFO_DESCRIPTION.to_be_bytes().to_vec();
        d.extend_from_slice(export.description.as_bytes());
        opt_reply(wr, opt, REP_INFO, &d).await?;
    }
    opt_reply(wr, opt, REP_ACK, &[]).await?;
    Ok(true)
}

/// A reply on its way to the socket; the permit bounds buffered read data.
struct Reply {
    handle: u64,
    error: u32,
    data: Option<crate::store::Parts>,
    _permit: Option<OwnedSemaphorePermit>,
}

/// The operation label of a command, for the metrics.
fn op_name(cmd: u16) -> &'static str {
    match cmd {
        CMD_READ => "read",
        CMD_WRITE => "write",
        CMD_FLUSH => "flush",
        CMD_TRIM => "trim",
        CMD_WRITE_ZEROES => "write_zeroes",
        _ => "other",
    }
}

/// Records a request answered with `error` (0: success) `started` ago.
fn record(vol: &Volume, cmd: u16, error: u32, started: Instant) {
    let result = if error == 0 { "ok" } else { "error" };
    vol.metrics().request(Request { op: op_name(cmd), result }, started.elapsed());
}

fn errno(e: &VolumeError) -> u32 {
    match e {
        VolumeError::OutOfRange { .. } | VolumeError::Invalid(_) => EINVAL,
        _ => EIO,
    }
}

/// Replies carrying at least this much data are written past the buffer (no copy into it).
const DIRECT_REPLY_BYTES: usize = 64 * 1024;
/// Slices per vectored write (the kernel refuses more than IOV_MAX, 1,024).
const SLICES_PER_WRITE: usize = 256;

/// Writes `header` and `parts` to the socket with vectored writes, after what the buffer holds.
async fn write_direct(
    wr: &mut BufWriter<OwnedWriteHalf>,
    header: &[u8],
    parts: &[bytes::Bytes],
) -> std::io::Result<()> {
    wr.flush().await?;
    let socket = wr.get_mut();
    let mut slices: Vec<IoSlice<'_>> =
        std::iter::once(header).chain(parts.iter().map(|p| &p[..])).map(IoSlice::new).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = socket.write_vectored(&rest[..rest.len().min(SLICES_PER_WRITE)]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

async fn write_replies(
    mut wr: BufWriter<OwnedWriteHalf>,
    mut rx: mpsc::UnboundedReceiver<Reply>,
) -> std::io::Result<()> {
    while let Some(r) = rx.recv().await {
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        header[4..8].copy_from_slice(&r.error.to_be_bytes());
        header[8..].copy_from_slice(&r.handle.to_be_bytes());
        match &r.data {
            Some(d) if d.len() >= DIRECT_REPLY_BYTES => write_direct(&mut wr, &header, d.parts()).await?,
            data => {
                wr.write_all(&header).await?;
                for part in data.iter().flat_map(|d| d.parts()) {
                    wr.write_all(part).await?;
                }
            }
        }
        drop(r);
        if rx.is_empty() {
            wr.flush().await?;
        }
    }
    wr.flush().await
}

async fn transmission(
    mut rd: BufReader<OwnedReadHalf>,
    wr: BufWriter<OwnedWriteHalf>,
    export: Export,
) -> std::io::Result<()> {
    let (tx, rx) = mpsc::unbounded_channel::<Reply>();
    let writer = tokio::spawn(write_replies(wr, rx));
    let budget = Arc::new(Semaphore::new(INFLIGHT_KIB as usize));
    let vol = export.volume.clone();
    let size = vol.size();
    let result = loop {
        let mut hdr = [0u8; 28];
        if let Err(e) = rd.read_exact(&mut hdr).await {
            break Err(e);
        }
        let magic = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        if magic != REQUEST_MAGIC {
            break Err(proto_err(format!("bad request magic {magic:#x}")));
        }
        let flags = u16::from_be_bytes([hdr[4], hdr[5]]);
        let cmd = u16::from_be_bytes([hdr[6], hdr[7]]);
        let handle = u64::from_be_bytes(hdr[8..16].try_into().unwrap_or_default());
        let offset = u64::from_be_bytes(hdr[16..24].try_into().unwrap_or_default());
        let len = u32::from_be_bytes([hdr[24], hdr[25], hdr[26], hdr[27]]);
        let started = Instant::now();
        let reply = |error: u32| {
            record(&vol, cmd, error, started);
            Reply { handle, error, data: None, _permit: None }
        };
        // A WRITE's payload must be consumed whatever we answer, or the stream desyncs.
        let payload = if cmd == CMD_WRITE {
            if len > MAX_PAYLOAD {
                break Err(proto_err(format!("write of {len} bytes exceeds the maximum")));
            }
            let mut p = vec![0u8; len as usize];
            if let Err(e) = rd.read_exact(&mut p).await {
                break Err(e);
            }
            Some(p)
        } else {
            None
        };
        if cmd == CMD_DISC {
            break Ok(());
        }
        let allowed = match cmd {
            CMD_WRITE | CMD_TRIM => CMD_FLAG_FUA,
            CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
            _ => 0,
        };
        let in_range = offset.checked_add(u64::from(len)).is_some_and(|e| e <= size);
        let verdict = match cmd {
            _ if flags & !allowed != 0 => Some(EINVAL),
            CMD_READ | CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES if len == 0 => Some(EINVAL),
            CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES if export.read_only => Some(EPERM),
            CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES if !in_range => Some(ENOSPC),
            CMD_READ if !in_range || len > MAX_PAYLOAD => Some(EINVAL),
            CMD_READ | CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES | CMD_FLUSH => None,
            _ => Some(EINVAL),
        };
        if let Some(err) = verdict {
            debug!(cmd, flags, offset, len, err, "refused request");
            let _ = tx.send(reply(err));
            continue;
        }
        match cmd {
            CMD_READ => {
                let permit = match budget.clone().acquire_many_owned(len.div_ceil(1024).max(1)).await {
                    Ok(p) => p,
                    Err(_) => break Ok(()),
                };
                let (vol, tx) = (vol.clone(), tx.clone());
                tokio::spawn(async move {
                    let r = match vol.read_parts(offset, u64::from(len)).await {
                        Ok(data) => {
                            vol.metrics().read(data.len() as u64);
                            Reply { handle, error: 0, data: Some(data), _permit: Some(permit) }
                        }
                        Err(e) => {
                            warn!(offset, len, error = %e, "read failed");
                            Reply { handle, error: errno(&e), data: None, _permit: None }
                        }
                    };
                    record(&vol, cmd, r.error, started);
                    let _ = tx.send(r);
                });
            }
            CMD_FLUSH => spawn_flush(&vol, &tx, handle, cmd, started),
            _ => {
                let res = match cmd {
                    CMD_WRITE => vol.write(offset, payload.as_deref().unwrap_or(&[])).await,
                    CMD_TRIM => vol.trim(offset, u64::from(len)).await,
                    _ => vol.write_zeroes(offset, u64::from(len)).await,
                };
                if res.is_ok() && cmd == CMD_WRITE {
                    vol.metrics().written(u64::from(len));
                }
                match res {
                    Err(e) => {
                        warn!(cmd, offset, len, error = %e, "write failed");
                        let _ = tx.send(reply(errno(&e)));
                    }
                    Ok(()) if flags & CMD_FLAG_FUA != 0 => spawn_flush(&vol, &tx, handle, cmd, started),
                    Ok(()) => {
                        let _ = tx.send(reply(0));
                    }
                }
            }
        }
    };
    // Let in-flight requests finish and their replies drain before closing.
    drop(tx);
    let drained = writer.await.map_err(std::io::Error::other)?;
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => drained,
        other => other.and(drained),
    }
}

/// FLUSH (and FUA, after the write of `cmd`): reply once everything written before it is
/// durable in the bucket.
fn spawn_flush(vol: &Arc<Volume>, tx: &mpsc::UnboundedSender<Reply>, handle: u64, cmd: u16, started: Instant) {
    let (vol, tx) = (vol.clone(), tx.clone());
    tokio::spawn(async move {
        let error = match vol.flush().await {
            Ok(()) => 0,
            Err(e) => {
                warn!(error = %e, "flush failed");
                EIO
            }
        };
        record(&vol, cmd, error, started);
        let _ = tx.send(Reply { handle, error, data: None, _permit: None });
    });
}
