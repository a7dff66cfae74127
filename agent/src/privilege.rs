//! Least privilege: `no_new_privs` for the agent and its children, and the
//! signal mask that routes SIGTERM/SIGINT/SIGHUP to one waiting thread.

use nix::sys::signal::{SigSet, Signal};

/// Sets `PR_SET_NO_NEW_PRIVS`: nothing the agent runs can gain privileges
/// through set-uid binaries or file capabilities.
pub fn no_new_privs() {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes no pointers and
    // only changes a flag of the calling process.
    #[allow(unsafe_code)]
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r != 0 {
        log::warn!(
            "could not set no_new_privs: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread (and the threads it
/// starts afterwards) and returns the set for a signal thread to `wait` on.
pub fn block_signals() -> nix::Result<SigSet> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()?;
    Ok(set)
}
