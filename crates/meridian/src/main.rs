//! The `meridian` command: one binary for the server and every tool around it.

mod config;
mod log_writer;
mod metrics;
mod notify;
mod server;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "meridian", version, about = "A self-hostable, globally distributed S3-compatible object store", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node. With no flags: data in ./meridian-data, S3 on http://127.0.0.1:9400.
    Server(Box<server::ServerArgs>),
    /// Load-test any S3 endpoint (Meridian or another) and report ops/s, MiB/s and latencies.
    Bench(Box<meridian_bench::BenchArgs>),
    /// Manage access keys, bucket permissions and public buckets (through a node's admin API).
    Admin(meridian_admin::cli::AdminArgs),
    /// Regions and nodes of the cluster: health, measured replication lag, cache use.
    Cluster(meridian_admin::cli::ClusterArgs),
    /// Block volumes stored as a log of objects in any S3 bucket, served over NBD.
    Volume(Box<meridian_volume::cli::VolumeCommand>),
    /// The KV API: get, put (CAS, TTL, put_transaction), delete, ls, locks, watch, batch.
    Kv(Box<meridian_client::cli::KvArgs>),
    /// Copy a whole bucket from any S3 service into a Meridian bucket: parallel, resumable
    /// (--checkpoint), verified, with a final report of anything it could not copy.
    Migrate(Box<meridian_migrate::MigrateArgs>),
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Server(args) => server::run(*args).map(|()| std::process::ExitCode::SUCCESS),
        Command::Bench(args) => Ok(meridian_bench::cli_main(*args)),
        Command::Admin(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            Ok(runtime.block_on(meridian_admin::cli::run(args)))
        }
        Command::Cluster(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            Ok(runtime.block_on(meridian_admin::cli::run_cluster(args)))
        }
        Command::Volume(cmd) => volume(*cmd),
        Command::Kv(args) => Ok(meridian_client::cli::main(*args)),
        Command::Migrate(args) => Ok(meridian_migrate::cli_main(*args)),
    }
}

/// Runs a `meridian volume` command on its own runtime, logging to stderr (RUST_LOG sets the
/// level; stdout is kept for the command's output).
fn volume(cmd: meridian_volume::cli::VolumeCommand) -> anyhow::Result<std::process::ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    // Volume errors are written for people ("volume is being served by ..."): print them as
    // they are, without anyhow's debug chain and backtrace.
    match runtime.block_on(meridian_volume::cli::run(cmd)) {
        Ok(()) => Ok(std::process::ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(std::process::ExitCode::FAILURE)
        }
    }
}
