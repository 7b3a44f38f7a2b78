//! `meridian kv ...`: the KV API on the command line.
//!
//! Results go to stdout (values raw, revisions and tokens as bare numbers, `--json` for
//! structured output, NDJSON for watch); messages and errors go to stderr. Exit codes:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | error (server unreachable, authentication, bucket missing, lock not held, ...) |
//! | 2 | usage: bad flags or input the server refused as invalid (HTTP 400) |
//! | 3 | aborted: version mismatch (`--if-version`/`--if-absent`), lock contended (`put --transaction`, `lock`), fence rejected |
//! | 4 | not found: `get` of a missing or expired key, `owner` of a lock nobody holds |
//!
//! The binary wires [`KvArgs`] in as `meridian kv` and calls [`main`].

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;

use crate::{BatchOp, Client, Credentials, DEFAULT_ENDPOINT, DeleteOptions, Error, Fence, PutOptions, Transaction};

/// Exit codes of `meridian kv`.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Any error not listed below.
    pub const ERROR: u8 = 1;
    /// Bad usage or invalid input.
    pub const USAGE: u8 = 2;
    /// A condition did not hold: version mismatch, lock contended, fence rejected.
    pub const ABORTED: u8 = 3;
    /// The key does not exist (get) or the lock is not held (owner).
    pub const NOT_FOUND: u8 = 4;
}

const EXIT_CODES: &str = "\
Exit codes: 0 ok; 1 error; 2 usage or invalid input; 3 aborted (version mismatch, lock contended, \
fence rejected); 4 not found (get of a missing key, owner of a free lock).

Durations: 500ms, 90s, 5m, 2h, 7d (fractions allowed: 1.5s).";

/// `meridian kv`: global settings and the operation.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct KvArgs {
    /// Meridian endpoint.
    #[arg(long, env = "MERIDIAN_ENDPOINT", default_value = DEFAULT_ENDPOINT, global = true, help_heading = "Connection")]
    pub endpoint: String,
    /// Bucket holding the keys (required).
    #[arg(long, env = "MERIDIAN_BUCKET", global = true, help_heading = "Connection")]
    pub bucket: Option<String>,
    /// Access key id.
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true, global = true, help_heading = "Connection")]
    pub access_key: Option<String>,
    /// Secret access key.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true, global = true, help_heading = "Connection")]
    pub secret_key: Option<String>,
    /// CA certificates (PEM) to trust, besides the system's, for an https:// endpoint.
    #[arg(long, env = "MERIDIAN_CA_FILE", global = true, help_heading = "Connection")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Region used in signatures.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1", global = true, help_heading = "Connection")]
    pub region: String,
    /// Per-request timeout (lock waits are added to it).
    #[arg(long, default_value = "60s", value_parser = duration_arg, global = true, help_heading = "Connection")]
    pub timeout: Duration,
    /// The operation.
    #[command(subcommand)]
    pub command: KvCommand,
}

/// The operations of `meridian kv`.
#[derive(Debug, clap::Subcommand)]
pub enum KvCommand {
    /// Print a key's value (raw bytes) on stdout.
    Get {
        /// The key.
        key: String,
        /// Print {key, value, revision, ttl_remaining_ms, expires_at_ms} as JSON instead (binary
        /// values as value_base64).
        #[arg(long)]
        json: bool,
    },
    /// Write a value; prints the key's new version (revision).
    Put(PutArgs),
    /// Delete a key (fine if absent); prints the revision of the delete.
    Delete {
        /// The key.
        key: String,
        /// Only if the key is at this version.
        #[arg(long = "if-version", value_name = "N")]
        if_version: Option<u64>,
        /// Fence the delete with this lock's token (with --fence).
        #[arg(long, value_name = "LOCK", requires = "fence")]
        fence_lock: Option<String>,
        /// The fencing token (with --fence-lock).
        #[arg(long, value_name = "TOKEN", requires = "fence_lock")]
        fence: Option<u64>,
    },
    /// List keys under a prefix: key, version, size, TTL left (tab-separated).
    Ls {
        /// Key prefix (default: all keys).
        prefix: Option<String>,
        /// Start after this key.
        #[arg(long)]
        after: Option<String>,
        /// At most this many keys (one page, at most 1000); without it, every key is listed.
        #[arg(long)]
        limit: Option<usize>,
        /// Print {entries, next_after} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take a named lock; prints its fencing token.
    Lock {
        /// Lock name: 1-256 characters from A-Z a-z 0-9 . _ - / :
        name: String,
        /// How long the lock is held unless renewed.
        #[arg(long, value_parser = duration_arg)]
        ttl: Duration,
        /// Who takes it (shown to others by `owner`), e.g. a machine id.
        #[arg(long)]
        owner: String,
        /// Wait up to this long if someone else holds it (default: fail at once, exit code 3).
        #[arg(long, value_parser = wait_arg, default_value = "0")]
        wait: Duration,
        /// Print the lock as JSON {name, owner, token, expires_at_ms}.
        #[arg(long)]
        json: bool,
    },
    /// Extend a lock you hold.
    Renew {
        /// Lock name.
        name: String,
        /// The token `lock` printed.
        #[arg(long)]
        token: u64,
        /// New TTL, from now.
        #[arg(long, value_parser = duration_arg)]
        ttl: Duration,
        /// Print the lock as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Release a lock you hold.
    Release {
        /// Lock name.
        name: String,
        /// The token `lock` printed.
        #[arg(long)]
        token: u64,
    },
    /// Print who holds a lock (exit code 4 if nobody).
    Owner {
        /// Lock name.
        name: String,
        /// Print the lock as JSON {name, owner, token, expires_at_ms}.
        #[arg(long)]
        json: bool,
    },
    /// Stream changes under a prefix as NDJSON until Ctrl-C; reconnects by itself.
    Watch {
        /// Key prefix (default: all keys).
        prefix: Option<String>,
        /// First revision to replay (inclusive); default: from now on.
        #[arg(long)]
        since: Option<u64>,
    },
    /// Apply a JSON batch of puts and deletes atomically; prints its revision.
    ///
    /// The file holds {"ops": [...]} or just [...], each op {"op": "put", "key": K, "value": V |
    /// "value_base64": B64, "if_revision": N, "ttl": "90s"} or {"op": "delete", "key": K,
    /// "if_revision": N}.
    Batch {
        /// The JSON file, or - for stdin.
        file: String,
    },
    /// Measure put, get, CAS and watch latency against a server.
    Bench(crate::bench::BenchArgs),
}

/// `meridian kv put`.
#[derive(Debug, clap::Args)]
pub struct PutArgs {
    /// The key.
    pub key: String,
    /// The value; - reads stdin.
    #[arg(conflicts_with = "file")]
    pub value: Option<String>,
    /// Read the value from a file.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Expire after this long (500ms, 90s, 5m, 2h, 7d).
    #[arg(long, value_parser = duration_arg, conflicts_with = "expires")]
    pub ttl: Option<Duration>,
    /// Expire at this instant: RFC 3339 (2030-01-01T00:00:00Z) or Unix milliseconds.
    #[arg(long, value_parser = instant_arg)]
    pub expires: Option<SystemTime>,
    /// Only if the key is at this version (0: only if absent). Exit code 3 otherwise.
    #[arg(long = "if-version", value_name = "N")]
    pub if_version: Option<u64>,
    /// Only if the key does not exist. Exit code 3 otherwise.
    #[arg(long, conflicts_with = "if_version")]
    pub if_absent: bool,
    /// Fence the write with this lock's token (with --fence). Exit code 3 if a newer token
    /// was granted.
    #[arg(long, value_name = "LOCK", requires = "fence")]
    pub fence_lock: Option<String>,
    /// The fencing token `lock` printed (with --fence-lock).
    #[arg(long, value_name = "TOKEN", requires = "fence_lock")]
    pub fence: Option<u64>,
    /// put_transaction: hold the key's global lock while writing; exit code 3 at once if
    /// another writer holds it.
    #[arg(long, conflicts_with = "fence_lock")]
    pub transaction: bool,
    /// With --transaction: wait up to this long for the key's lock instead of failing at once.
    #[arg(long, value_parser = wait_arg, requires = "transaction")]
    pub wait: Option<Duration>,
    /// With --transaction: the lock frees itself after this long if the writer dies.
    #[arg(long, value_parser = duration_arg, requires = "transaction")]
    pub lock_ttl: Option<Duration>,
}

fn duration_arg(text: &str) -> Result<Duration, String> {
    crate::parse_duration(text)
}

fn wait_arg(text: &str) -> Result<Duration, String> {
    meridian_kv_types::parse_wait(text)
        .map_err(|_| format!("invalid wait {text:?}: 0 or {}", meridian_kv_types::DURATION_HELP))
}

fn instant_arg(text: &str) -> Result<SystemTime, String> {
    if let Ok(ms) = text.trim().parse::<u64>() {
        return Ok(UNIX_EPOCH + Duration::from_millis(ms));
    }
    let t = time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("invalid instant {text:?}: use RFC 3339 (2030-01-01T00:00:00Z) or Unix milliseconds"))?;
    Ok(SystemTime::from(t))
}

/// A failure of one command: the exit code and what to tell the user.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Failure { code, message: message.into() }
    }
}

type CmdResult = Result<(), Failure>;

/// Runs `meridian kv` on its own runtime; returns the exit code.
pub fn main(args: KvArgs) -> ExitCode {
    let runtime = match &args.command {
        KvCommand::Bench(_) | KvCommand::Watch { .. } => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()
        }
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    };
    match runtime {
        Ok(rt) => rt.block_on(run(args)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(exit::ERROR)
        }
    }
}

/// Runs `meridian kv` on the current runtime; returns the exit code.
pub async fn run(args: KvArgs) -> ExitCode {
    match execute(args).await {
        Ok(()) => ExitCode::from(exit::OK),
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("{}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

fn client(args: &KvArgs) -> Result<Client, Failure> {
    let bucket = args
        .bucket
        .as_deref()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| Failure::new(exit::USAGE, "error: no bucket: pass --bucket NAME or set MERIDIAN_BUCKET"))?;
    let (key, secret) = match (&args.access_key, &args.secret_key) {
        (Some(k), Some(s)) if !k.is_empty() && !s.is_empty() => (k, s),
        _ => {
            return Err(Failure::new(
                exit::USAGE,
                "error: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the key `meridian server` \
                 printed) or pass --access-key and --secret-key",
            ));
        }
    };
    let tls = meridian_http::ClientTls::new(args.ca_file.as_deref())
        .map_err(|e| Failure::new(exit::USAGE, format!("error: --ca-file: {e}")))?;
    let client = Client::with_tls(&args.endpoint, bucket, Credentials::new(key, secret), &tls)
        .map_err(|e| Failure::new(exit::USAGE, format!("error: {e}")))?;
    Ok(client.with_region(&args.region).with_timeout(Some(args.timeout)))
}

/// Turns a client error into an exit code and a message that says what to do.
fn failure(err: Error, endpoint: &str) -> Failure {
    match err {
        Error::VersionMismatch { message, .. } => {
            Failure::new(exit::ABORTED, format!("aborted: {message} (read the key again, then retry)"))
        }
        Error::LockContended { message, .. } => Failure::new(
            exit::ABORTED,
            format!("aborted: {message} (retry later, or pass --wait DURATION to wait for it)"),
        ),
        Error::FenceRejected { message } => Failure::new(
            exit::ABORTED,
            format!("aborted: {message} (another holder took the lock: this writer must stop)"),
        ),
        Error::LockNotHeld { message } => {
            Failure::new(exit::ERROR, format!("error: {message} (it expired or was taken over: take it again)"))
        }
        Error::Transport(message) => {
            let hint = if message.contains("onnection refused") || message.contains("dns error") {
                format!(" (is `meridian server` running at {endpoint}? pass --endpoint or set MERIDIAN_ENDPOINT)")
            } else {
                String::new()
            };
            Failure::new(exit::ERROR, format!("error: {message}{hint}"))
        }
        Error::Service { status: 400, code, message } => {
            Failure::new(exit::USAGE, format!("error: the server refused the request: {message} ({code})"))
        }
        Error::Service { status: 403, code, message } => Failure::new(
            exit::ERROR,
            format!(
                "error: access denied: {message} ({code}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY against the \
                 key `meridian server` printed"
            ),
        ),
        Error::InvalidInput(message) => Failure::new(exit::USAGE, format!("error: {message}")),
        other => Failure::new(exit::ERROR, format!("error: {other}")),
    }
}

fn stdout_write(bytes: &[u8]) -> CmdResult {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        // `| head`: the reader is gone; not an error of ours.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::new(exit::OK, "")),
        Err(e) => Err(Failure::new(exit::ERROR, format!("error: cannot write to stdout: {e}"))),
    }
}

fn println_out(line: &str) -> CmdResult {
    stdout_write(format!("{line}\n").as_bytes())
}

fn json_line(value: &impl serde::Serialize) -> CmdResult {
    let text = serde_json::to_string(value)
        .map_err(|e| Failure::new(exit::ERROR, format!("error: cannot encode JSON: {e}")))?;
    println_out(&text)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

async fn execute(args: KvArgs) -> CmdResult {
    let kv = client(&args)?;
    let endpoint = args.endpoint.clone();
    let fail = |e: Error| failure(e, &endpoint);
    match args.command {
        KvCommand::Get { key, json } => {
            let Some(entry) = kv.get(&key).await.map_err(fail)? else {
                return Err(Failure::new(
                    exit::NOT_FOUND,
                    format!("not found: key {key:?} does not exist (or expired)"),
                ));
            };
            if !json {
                return stdout_write(&entry.value);
            }
            let mut out = serde_json::json!({
                "key": key,
                "revision": entry.revision,
                "ttl_remaining_ms": entry.ttl_remaining.map(|d| d.as_millis() as u64),
                "expires_at_ms": entry.expires_at_ms,
            });
            match std::str::from_utf8(&entry.value) {
                Ok(text) => out["value"] = text.into(),
                Err(_) => out["value_base64"] = base64::engine::general_purpose::STANDARD.encode(&entry.value).into(),
            }
            json_line(&out)
        }
        KvCommand::Put(put) => {
            let value = read_value(&put)?;
            let options = PutOptions {
                if_revision: put.if_version,
                if_absent: put.if_absent,
                ttl: put.ttl,
                expires_at: put.expires,
                fence: match (put.fence_lock, put.fence) {
                    (Some(lock), Some(token)) => Some(Fence { lock, token }),
                    _ => None,
                },
                transaction: put
                    .transaction
                    .then(|| Transaction { wait: put.wait.unwrap_or(Duration::ZERO), lock_ttl: put.lock_ttl }),
                ..PutOptions::default()
            };
            let revision = kv.put_with(&put.key, value, &options).await.map_err(fail)?;
            println_out(&revision.to_string())
        }
        KvCommand::Delete { key, if_version, fence_lock, fence } => {
            let options = DeleteOptions {
                if_revision: if_version,
                fence: match (fence_lock, fence) {
                    (Some(lock), Some(token)) => Some(Fence { lock, token }),
                    _ => None,
                },
            };
            let revision = kv.delete_with(&key, &options).await.map_err(fail)?;
            println_out(&revision.to_string())
        }
        KvCommand::Ls { prefix, after, limit, json } => {
            let prefix = prefix.unwrap_or_default();
            let (entries, next_after) = match limit {
                Some(limit) => {
                    let page = kv.list(&prefix, after.as_deref(), limit).await.map_err(fail)?;
                    (page.entries, page.next_after)
                }
                None if after.is_none() => (kv.list_all(&prefix).await.map_err(fail)?, None),
                None => {
                    let mut all = Vec::new();
                    let mut after = after;
                    loop {
                        let page = kv.list(&prefix, after.as_deref(), 1000).await.map_err(fail)?;
                        all.extend(page.entries);
                        match page.next_after {
                            Some(next) => after = Some(next),
                            None => break,
                        }
                    }
                    (all, None)
                }
            };
            if json {
                json_line(&serde_json::json!({ "entries": entries, "next_after": next_after }))?;
            } else {
                let now = now_ms();
                let mut text = String::new();
                for e in &entries {
                    let ttl = match e.expires_at_ms {
                        Some(at) => format!("{:.3}s", (at - now).max(0) as f64 / 1000.0),
                        None => "-".into(),
                    };
                    text.push_str(&format!("{}\t{}\t{}\t{}\n", e.key, e.revision, e.size, ttl));
                }
                stdout_write(text.as_bytes())?;
            }
            if let Some(next) = next_after {
                eprintln!("more keys follow: continue with --after {next:?}");
            }
            Ok(())
        }
        KvCommand::Lock { name, ttl, owner, wait, json } => {
            let lock = kv.lock(&name, &owner, ttl, wait).await.map_err(fail)?;
            if json { json_line(&lock) } else { println_out(&lock.token.to_string()) }
        }
        KvCommand::Renew { name, token, ttl, json } => {
            let lock = kv.renew(&name, token, ttl).await.map_err(fail)?;
            if json { json_line(&lock) } else { Ok(()) }
        }
        KvCommand::Release { name, token } => kv.release(&name, token).await.map_err(fail),
        KvCommand::Owner { name, json } => match kv.owner(&name).await.map_err(fail)? {
            Some(lock) if json => json_line(&lock),
            Some(lock) => println_out(&lock.owner),
            None => Err(Failure::new(exit::NOT_FOUND, format!("not held: nobody holds lock {name:?}"))),
        },
        KvCommand::Watch { prefix, since } => watch(&kv, prefix.unwrap_or_default(), since, &endpoint).await,
        KvCommand::Batch { file } => {
            let text = if file == "-" {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .map_err(|e| Failure::new(exit::ERROR, format!("error: cannot read stdin: {e}")))?;
                buf
            } else {
                std::fs::read(&file)
                    .map_err(|e| Failure::new(exit::USAGE, format!("error: cannot read batch file {file}: {e}")))?
            };
            let ops = parse_batch(&text).map_err(|m| Failure::new(exit::USAGE, format!("error: {m}")))?;
            let revision = kv.batch(ops).await.map_err(fail)?;
            println_out(&revision.to_string())
        }
        KvCommand::Bench(bench) => crate::bench::run(&kv, &bench).await.map_err(|e| match e {
            crate::bench::BenchError::Client(e) => fail(e),
            crate::bench::BenchError::Other(m) => Failure::new(exit::ERROR, format!("error: {m}")),
        }),
    }
}

fn read_value(put: &PutArgs) -> Result<Bytes, Failure> {
    match (&put.value, &put.file) {
        (Some(v), None) if v == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| Failure::new(exit::ERROR, format!("error: cannot read stdin: {e}")))?;
            Ok(Bytes::from(buf))
        }
        (Some(v), None) => Ok(Bytes::from(v.clone())),
        (None, Some(path)) => std::fs::read(path)
            .map(Bytes::from)
            .map_err(|e| Failure::new(exit::USAGE, format!("error: cannot read {}: {e}", path.display()))),
        _ => Err(Failure::new(exit::USAGE, "error: no value: give VALUE, --file FILE, or - to read stdin")),
    }
}

async fn watch(kv: &Client, prefix: String, since: Option<u64>, endpoint: &str) -> CmdResult {
    let mut events = kv.watch_resumable(&prefix, since).await.map_err(|e| failure(e, endpoint))?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let item = tokio::select! {
            item = events.next() => item,
            _ = &mut ctrl_c => return Ok(()),
        };
        match item {
            None => return Ok(()),
            Some(Ok(event)) => json_line(&event)?,
            Some(Err(e)) if e.is_transport() => eprintln!("watch: {e}; reconnecting"),
            Some(Err(e)) => return Err(failure(e, endpoint)),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum BatchFile {
    Wrapped { ops: Vec<meridian_kv_types::BatchEntry> },
    Bare(Vec<meridian_kv_types::BatchEntry>),
}

/// Parses a batch file.
fn parse_batch(text: &[u8]) -> Result<Vec<BatchOp>, String> {
    let file: BatchFile = serde_json::from_slice(text).map_err(|e| {
        format!(
            "malformed batch file: {e} (expected {{\"ops\": [{{\"op\": \"put\", \"key\": \"k\", \"value\": \"v\"}}]}})"
        )
    })?;
    let entries = match file {
        BatchFile::Wrapped { ops } | BatchFile::Bare(ops) => ops,
    };
    if entries.is_empty() {
        return Err("the batch has no operations".into());
    }
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| entry.into_op().map_err(|m| format!("operation {}: {m}", i + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Top {
        #[command(subcommand)]
        cmd: Cmd,
    }
    #[derive(clap::Subcommand)]
    enum Cmd {
        Kv(KvArgs),
    }

    fn parse(args: &[&str]) -> Result<KvArgs, clap::Error> {
        let mut all = vec!["meridian", "kv"];
        all.extend_from_slice(args);
        Top::try_parse_from(all).map(|t| match t.cmd {
            Cmd::Kv(a) => a,
        })
    }

    #[test]
    fn flags_parse_and_conflict() {
        let a = parse(&["--bucket", "b", "put", "k", "v", "--ttl", "1.5s", "--if-version", "7"]).unwrap();
        let KvCommand::Put(p) = a.command else { panic!("put") };
        assert_eq!((p.ttl, p.if_version), (Some(Duration::from_millis(1500)), Some(7)));
        assert!(parse(&["put", "k", "v", "--ttl", "5 parsecs"]).is_err());
        assert!(parse(&["put", "k", "v", "--fence", "abc", "--fence-lock", "l"]).is_err());
        assert!(parse(&["put", "k", "v", "--fence", "3"]).is_err(), "fence needs its lock");
        assert!(parse(&["put", "k", "v", "--if-version", "x"]).is_err());
        assert!(parse(&["put", "k", "v", "--if-version", "1", "--if-absent"]).is_err());
        assert!(parse(&["put", "k", "v", "--wait", "2s"]).is_err(), "--wait needs --transaction");
        assert!(parse(&["put", "k", "v", "--transaction", "--wait", "2s"]).is_ok());
        assert!(parse(&["lock", "n", "--ttl", "30s"]).is_err(), "owner is required");
        assert!(parse(&["put", "k", "--expires", "2030-01-01T00:00:00Z"]).is_ok());
        assert!(parse(&["put", "k", "--expires", "tomorrow"]).is_err());
        assert!(parse(&["get", "k", "--bucket", "b"]).is_ok(), "global flags after the subcommand");
    }

    #[test]
    fn batch_files() {
        let ops = parse_batch(
            br#"{"ops":[{"op":"put","key":"a","value":"1","ttl":"2s"},{"op":"delete","key":"b","if_revision":3}]}"#,
        )
        .unwrap();
        assert_eq!(ops, vec![BatchOp::put("a", "1").ttl(Duration::from_secs(2)), BatchOp::delete("b").if_revision(3)]);
        assert_eq!(parse_batch(br#"[{"op":"put","key":"a","value_base64":"AAE="}]"#).unwrap().len(), 1);
        assert!(parse_batch(br#"[{"op":"put","key":"a"}]"#).unwrap_err().contains("exactly one of value"));
        assert!(
            parse_batch(br#"[{"op":"put","key":"a","value":"v","ttl":"5 parsecs"}]"#).unwrap_err().contains("parsecs")
        );
        assert!(parse_batch(br#"[{"op":"upsert","key":"a"}]"#).unwrap_err().contains("operation 1: unknown batch op"));
        assert!(parse_batch(b"[]").is_err());
        assert!(parse_batch(b"{").unwrap_err().contains("malformed"));
    }
}
