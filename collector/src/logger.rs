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
        let mut err = std::io::stderr().lock();
        let _ = if self.journald {
            let p = match r.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(err, "<{p}>{}", r.args())
        } else {
            writeln!(
                err,
                "vigil-collector {}: {}",
                r.level().as_str().to_ascii_lowercase(),
                r.args()
            )
        };
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
