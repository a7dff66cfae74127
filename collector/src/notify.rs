//! The systemd service protocol (sd_notify(3)): `READY=1` once the
//! listeners are up, `WATCHDOG=1` while the archive writer makes progress,
//! `STOPPING=1` on the way out. A datagram to `$NOTIFY_SOCKET` (a path, or
//! `@name` in the abstract namespace); without it (not under systemd, or
//! `Type=simple`), nothing is sent. Depends on nothing else here.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` to the service manager, if there is one; whether it went.
pub fn send(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return false;
    };
    let path = path.to_string_lossy().into_owned();
    let sent = if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = &sent {
        log::warn!("cannot notify the service manager at {path}: {e}");
    }
    sent.is_ok()
}

/// How often systemd wants `WATCHDOG=1` (`WatchdogSec=`), when it wants
/// it from this process.
pub fn watchdog() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}
