//! `vigil-collector`: the hospital-side collector. Parses the command line
//! (`cli`) and runs one command; maps errors to the exit codes (0 ok, 1
//! findings, 2 usage or runtime error, 78 bad configuration). Never
//! depends on the agent.

use std::process::ExitCode;

/// `println!` for command output: a closed pipe (`| head`) ends the
/// command quietly instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {
        $crate::print_line(format_args!($($t)*))
    };
}

fn print_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if writeln!(std::io::stdout().lock(), "{args}").is_err() {
        std::process::exit(0);
    }
}

mod access;
mod alert;
mod cli;
mod clock;
mod config;
mod detect;
mod ingest;
mod logger;
mod metrics;
mod notify;
mod policy;
mod serve;
mod sink;
mod store;

use cli::Exit;

fn main() -> ExitCode {
    logger::init();
    // Everything the collector creates (the archive and its WAL, the TLS
    // key, file sinks) is its own alone, whatever umask it was started with.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let cli = cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<Exit>() {
            Some(Exit::Findings) => ExitCode::from(1),
            Some(Exit::Config(m)) => {
                eprintln!("vigil-collector: bad configuration: {m}");
                ExitCode::from(78)
            }
            Some(Exit::Usage(m)) => {
                eprintln!("vigil-collector: {m}\n(see vigil-collector --help)");
                ExitCode::from(2)
            }
            None => {
                eprintln!("vigil-collector: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}
