//! The binary's one logger: stderr, one line per record. Under systemd
//! (`JOURNAL_STREAM` set) each line starts with the journald priority
//! prefix (`<3>` error … `<7>` debug) so the journal keeps the level.
//! Never given keys, signatures or frame contents.

use std::io::Write;

struct Stderr {
    journald: bool,
    max: log::LevelFilter,
}

impl log::Log for Stderr {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.max
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        // Formatted first, written with one call: stderr is unbuffered,
        // and a line in pieces costs a system call per piece.
        let line = if self.journald {
            let p = match r.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            format!("<{p}>{}\n", r.args())
        } else {
            format!(
                "vigil-agent {}: {}\n",
                r.level().as_str().to_ascii_lowercase(),
                r.args()
            )
        };
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger; the level comes from `VIGIL_LOG` (default `info`).
pub fn init() {
    let max = std::env::var("VIGIL_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(log::LevelFilter::Info);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    if log::set_boxed_logger(Box::new(Stderr { journald, max })).is_ok() {
        log::set_max_level(max);
    }
}
