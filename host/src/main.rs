//! The `kiln` binary: parse, dispatch, print the error chain.

use clap::Parser;

fn main() -> std::process::ExitCode {
    kiln::cli::init_logging();
    let cli = kiln::cli::Cli::parse();
    match cli.execute() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
