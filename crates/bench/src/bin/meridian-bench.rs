//! Stand-alone `meridian-bench`: the same tool as `meridian bench`, for
//! driving any S3 endpoint without the server binary.

use clap::Parser;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "meridian-bench",
    version,
    about = "Load generator for any S3 endpoint"
)]
struct Cli {
    #[command(flatten)]
    args: meridian_bench::BenchArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.args.json;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meridian-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(meridian_bench::run(cli.args)) {
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
