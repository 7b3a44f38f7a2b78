//! `meridian bench`: a load generator for any S3 endpoint.
//!
//! It speaks only S3 with SigV4 (header auth, `UNSIGNED-PAYLOAD`) over
//! plain HTTP/1.1 keep-alive connections, one per worker, so it is cheap
//! enough to share a small machine with the server it measures. Besides S3
//! endpoints it can drive two ceilings with the same workloads: plain files
//! on a disk (`--target files:DIR`) and an in-process HTTP server that
//! stores nothing (`--target null-http`).
//!
//! ```text
//! meridian bench --endpoint http://127.0.0.1:9000 --bucket b --create-bucket \
//!     --workload get --size 4KiB --objects 1000 --concurrency 32 --duration 30s
//! ```

#![warn(missing_docs)]

pub mod files;
pub mod nullhttp;
pub mod report;
pub mod s3;
pub mod sigv4;
pub mod spec;
mod workload;

pub use report::{OpKind, OpReport, Report};
pub use spec::{DurationArg, SizeSpec, Weights};

use std::path::PathBuf;
use std::str::FromStr;

/// Which workload to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// PUT new objects.
    Put,
    /// GET prepared objects at random.
    Get,
    /// HEAD prepared objects at random.
    Head,
    /// DELETE prepared objects, each once.
    Delete,
    /// LIST pages of `--list-max-keys` keys at random points of the prepared keys.
    List,
    /// A weighted mix (`--weights`, default 45% get, 15% put, 30% head, 10% delete).
    Mixed,
    /// Multipart uploads of `--size` objects in `--part-size` parts.
    Multipart,
}

impl Workload {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Head => "head",
            Workload::Delete => "delete",
            Workload::List => "list",
            Workload::Mixed => "mixed",
            Workload::Multipart => "multipart",
        }
    }
}

/// What to drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// An S3 endpoint (`--endpoint`).
    S3,
    /// Plain files under a directory: the disk ceiling.
    Files(PathBuf),
    /// An in-process HTTP server that stores nothing: the HTTP ceiling.
    NullHttp,
}

impl FromStr for TargetSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "s3" {
            Ok(TargetSpec::S3)
        } else if s == "null-http" {
            Ok(TargetSpec::NullHttp)
        } else if let Some(dir) = s.strip_prefix("files:") {
            if dir.is_empty() {
                return Err("files target needs a directory: files:/path/to/dir".into());
            }
            Ok(TargetSpec::Files(PathBuf::from(dir)))
        } else {
            Err(format!("unknown target {s:?}: use s3, files:DIR or null-http"))
        }
    }
}

/// Command-line arguments of `meridian bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// S3 endpoint, `http://HOST:PORT` or `https://HOST:PORT` (path-style addressing; HTTPS
    /// trusts the system's roots and the CA file named by `MERIDIAN_CA_FILE`).
    #[arg(long, env = "MERIDIAN_BENCH_ENDPOINT")]
    pub endpoint: Option<String>,
    /// What to drive: `s3` (the endpoint), `files:DIR` (plain files, the disk
    /// ceiling) or `null-http` (an in-process server that stores nothing).
    #[arg(long, default_value = "s3", value_parser = TargetSpec::from_str)]
    pub target: TargetSpec,
    /// Bucket to use.
    #[arg(long, default_value = "meridian-bench")]
    pub bucket: String,
    /// Access key id.
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub access_key: Option<String>,
    /// Secret access key.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Region used in signatures.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Workload.
    #[arg(long, value_enum, default_value = "mixed")]
    pub workload: Workload,
    /// Object size, fixed (`4KiB`) or a log-uniform range (`1KiB..1MiB`).
    #[arg(long, default_value = "4KiB", value_parser = SizeSpec::from_str)]
    pub size: SizeSpec,
    /// Objects to prepare for get/head/delete/list/mixed.
    #[arg(long, default_value_t = 1000)]
    pub objects: u64,
    /// Concurrent requests (one connection each).
    #[arg(long, short = 'c', default_value_t = 32)]
    pub concurrency: usize,
    /// How long to measure (`30s`, `2m`). Defaults to 10s unless `--ops` is given.
    #[arg(long, value_parser = DurationArg::from_str)]
    pub duration: Option<DurationArg>,
    /// Stop after this many operations (with `--duration`, whichever comes first).
    #[arg(long)]
    pub ops: Option<u64>,
    /// Objects to prepare, if not `--objects`.
    #[arg(long)]
    pub prepare_objects: Option<u64>,
    /// put workload: write only these many keys, shared by every worker (1: all workers
    /// overwrite one hot key), instead of a new key per PUT.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub put_keys: Option<u64>,
    /// Concurrency of the prepare phase (default: the larger of --concurrency and 16).
    #[arg(long)]
    pub prepare_concurrency: Option<usize>,
    /// Weights of the mixed workload, e.g. `get=45,put=15,head=30,delete=10`.
    #[arg(long, value_parser = Weights::from_str)]
    pub weights: Option<Weights>,
    /// Part size of the multipart workload.
    #[arg(long, default_value = "8MiB", value_parser = spec::parse_size)]
    pub part_size: u64,
    /// Keys per LIST page.
    #[arg(long, default_value_t = 1000)]
    pub list_max_keys: u32,
    /// Per-operation timeout.
    #[arg(long, default_value = "60s", value_parser = DurationArg::from_str)]
    pub timeout: DurationArg,
    /// Key prefix; defaults to `meridian-bench/RUNID/`.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Create the bucket first (and delete it afterwards unless --keep).
    #[arg(long)]
    pub create_bucket: bool,
    /// Keep the objects (and bucket) the run created.
    #[arg(long)]
    pub keep: bool,
    /// Print the report as JSON on stdout (no progress bar).
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// A label for the report, e.g. the server's name.
    #[arg(long)]
    pub label: Option<String>,
    /// Sample RSS and CPU of this server process (Linux /proc) during the run.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Send the measured GETs and HEADs unsigned to this web server (`GET URL/BUCKET/KEY`)
    /// instead of the S3 endpoint: Meridian's web edge with a site mounted at `/BUCKET`, or any
    /// static file server. Objects are still prepared (and removed) through `--endpoint`.
    #[arg(long)]
    pub read_endpoint: Option<String>,
    /// Also write every prepared object to `DIR/BUCKET/KEY`, so that a static file server
    /// rooted at DIR serves the same bytes at the same paths.
    #[arg(long)]
    pub mirror_dir: Option<PathBuf>,
    /// The objects exist already (an earlier run with `--keep`, the same `--prefix` and
    /// `--objects`): skip preparing them.
    #[arg(long)]
    pub prepared: bool,
    /// Ask for server-side encryption on every PUT (`AES256` for SSE-S3, `aws:kms`): sent as
    /// `x-amz-server-side-encryption`.
    #[arg(long)]
    pub sse: Option<String>,
}

impl BenchArgs {
    /// Defaults for library use: the same values as the command line.
    pub fn new(target: TargetSpec, workload: Workload) -> Self {
        Self {
            endpoint: None,
            target,
            bucket: "meridian-bench".into(),
            access_key: None,
            secret_key: None,
            region: "us-east-1".into(),
            workload,
            size: SizeSpec::Fixed(4096),
            objects: 1000,
            concurrency: 32,
            duration: None,
            ops: None,
            prepare_objects: None,
            prepare_concurrency: None,
            weights: None,
            part_size: 8 << 20,
            list_max_keys: 1000,
            timeout: DurationArg(std::time::Duration::from_secs(60)),
            prefix: None,
            create_bucket: false,
            keep: false,
            json: false,
            no_progress: true,
            label: None,
            server_pid: None,
            read_endpoint: None,
            mirror_dir: None,
            prepared: false,
            sse: None,
            put_keys: None,
        }
    }
}

/// Why a run could not be done (individual operation failures are counted
/// in the report instead).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A flag combination that cannot work.
    #[error("invalid arguments: {0}")]
    Args(String),
    /// The endpoint could not be parsed or resolved.
    #[error("{0}")]
    Endpoint(String),
    /// Setting up the target (bucket, directory, null server) failed.
    #[error("setting up the target failed: {0}")]
    Setup(String),
    /// The unmeasured prepare phase failed, so the numbers would be meaningless.
    #[error("prepare phase failed: {0}")]
    Prepare(String),
    /// Local I/O.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs one benchmark and returns its report. Progress goes to stderr
/// (only on a terminal); the caller prints the report.
pub async fn run(args: BenchArgs) -> Result<Report, BenchError> {
    workload::run(args).await
}

/// Runs the tool as a command: prints the report (a table, or JSON with `--json`) and returns
/// the exit status. Shared by `meridian bench` and `meridian-bench`.
pub fn cli_main(args: BenchArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    let json = args.json;
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meridian-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("meridian-bench: cannot encode the report: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.to_table());
            }
            if report.total.ops == 0 {
                eprintln!("meridian-bench: no operation succeeded");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meridian-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
