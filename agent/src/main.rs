//! `vigil-agent`: the on-device agent. This build carries the wire format
//! (`vigil-protocol`) and the command-line shape; samplers, the signed stream
//! and manifest checks arrive with their issues (see README, "Status").
//! Must never depend on the collector.

use std::process::ExitCode;

const USAGE: &str = "\
vigil-agent: Vigil's on-device security agent

usage: vigil-agent <command>

commands:
  --version    print the agent and wire-format versions
  --help       print this help

Samplers, keys, the signed stream and manifest checks are not in this
build yet (README, \"Status\").";

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
                "vigil-agent {} (wire format {})",
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
            eprintln!("vigil-agent: unknown command `{other}`\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
