//! `vigil-collector`: the hospital-side collector. This build carries the
//! wire format (`vigil-protocol`) and the command-line shape; ingest, the
//! archive, alerts and the admin CLI arrive with their issues (see README,
//! "Status"). Must never depend on the agent.

use std::process::ExitCode;

const USAGE: &str = "\
vigil-collector: Vigil's hospital-side collector

usage: vigil-collector <command>

commands:
  --version    print the collector and wire-format versions
  --help       print this help

Ingest, enrollment, the SQLite archive, alerts and the admin CLI are not in
this build yet (README, \"Status\").";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["--version" | "-V"] => {
            println!(
                "vigil-collector {} (wire format {})",
                env!("CARGO_PKG_VERSION"),
                vigil_protocol::VERSION
            );
            ExitCode::SUCCESS
        }
        ["--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        [] => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
        [other, ..] => {
            eprintln!("vigil-collector: unknown command `{other}`\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
