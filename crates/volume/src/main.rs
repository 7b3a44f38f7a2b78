//! `meridian-volume`: the volume commands as a standalone binary (the same commands are
//! available as `meridian volume ...`).

use clap::Parser;
use meridian_volume::cli::{VolumeCommand, run};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "meridian-volume",
    version,
    about = "Block volumes stored as a log of objects in any S3 bucket, served over NBD"
)]
struct Cli {
    #[command(flatten)]
    volume: VolumeCommand,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli.volume).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
