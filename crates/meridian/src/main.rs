//! The `meridian` command: one binary for the server and every tool around it.

mod config;
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
    Server(server::ServerArgs),
    /// Load-test any S3 endpoint (Meridian or another) and report ops/s, MiB/s and latencies.
    Bench(Box<meridian_bench::BenchArgs>),
    /// The KV API: get, put (CAS, TTL, put_transaction), delete, ls, locks, watch, batch.
    Kv(Box<meridian_client::cli::KvArgs>),
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Server(args) => server::run(args).map(|()| std::process::ExitCode::SUCCESS),
        Command::Bench(args) => Ok(meridian_bench::cli_main(*args)),
        Command::Kv(args) => Ok(meridian_client::cli::main(*args)),
    }
}
