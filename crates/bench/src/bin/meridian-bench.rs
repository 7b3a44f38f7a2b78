//! Stand-alone `meridian-bench`: the same tool as `meridian bench`, for
//! driving any S3 endpoint without the server binary.

use clap::Parser;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "meridian-bench", version, about = "Load generator for any S3 endpoint")]
struct Cli {
    #[command(flatten)]
    args: meridian_bench::BenchArgs,
}

fn main() -> ExitCode {
    meridian_bench::cli_main(Cli::parse().args)
}
