//! `meridian-test-origin`: the test origin app as a process (benchmarks, trying the edge by
//! hand). It serves until killed.

use clap::Parser;
use meridian_test_origin::{OriginConfig, TestOrigin};

#[derive(Parser)]
#[command(about = "The origin app the edge's tests and benchmarks use")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// This instance's id (what `fly-replay: instance=` names).
    #[arg(long, default_value = "origin-1")]
    instance: String,
    /// This instance's region.
    #[arg(long, default_value = "local")]
    region: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let origin = TestOrigin::start_on(listener, OriginConfig { instance: args.instance, region: args.region })?;
    println!("origin {} listening on {}", origin.instance(), origin.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
