//! Sessions seen in the process table, for images without login records
//! (or to complete them): an authenticated `sshd` session (the `[priv]`
//! monitor and its `USER@TTY` child), a `dropbear` connection child, a
//! `login` with a shell (from a getty or telnetd), and a root shell or
//! command started with `su`/`sudo`. Pure over a table the caller reads.

use std::collections::HashMap;

use vigil_protocol::body::SessionKind;

/// One process, as far as session detection needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    /// `tty_nr` from `stat` (0: none).
    pub tty: u32,
    /// Start time in clock ticks after boot.
    pub start_ticks: u64,
    /// Real and effective uid (`status`); read only for candidates.
    pub uid: Option<u32>,
    pub euid: Option<u32>,
    /// The command line (process title), read only for sshd processes.
    pub title: String,
}

/// Names of the processes whose uids and titles are worth reading.
pub fn is_candidate(comm: &str) -> bool {
    matches!(
        comm,
        "sshd" | "sshd-session" | "dropbear" | "login" | "su" | "sudo"
    )
}

#[derive(Default)]
pub struct Table {
    pub procs: HashMap<u32, Proc>,
    children: HashMap<u32, Vec<u32>>,
}

impl Table {
    pub fn new(list: Vec<Proc>) -> Table {
        let mut t = Table::default();
        for p in list {
            t.children.entry(p.ppid).or_default().push(p.pid);
            t.procs.insert(p.pid, p);
        }
        for c in t.children.values_mut() {
            c.sort_unstable();
        }
        t
    }

    pub fn children(&self, pid: u32) -> impl Iterator<Item = &Proc> {
        self.children
            .get(&pid)
            .into_iter()
            .flatten()
            .filter_map(|c| self.procs.get(c))
    }

    pub fn get(&self, pid: u32) -> Option<&Proc> {
        self.procs.get(&pid)
    }
}

/// A session found in the table, before names and sockets are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub kind: SessionKind,
    /// The process that owns the session (its pid and start time make the
    /// session's key).
    pub leader: u32,
    /// The process whose socket is the remote peer (remote sessions).
    pub socket_owner: Option<u32>,
    /// Every process that is this session's own (the leader, sshd's user
    /// child, `login`): login records with these pids are this session.
    pub pids: Vec<u32>,
    /// User name when the process title gives it, else resolved from `uid`.
    pub user: Option<String>,
    pub uid: Option<u32>,
    /// The terminal when the title gives it (`notty`), else from `tty`.
    pub terminal: Option<String>,
    pub tty: u32,
    pub process: String,
    pub command: String,
    /// For a privileged session: the invoking process (to find the session
    /// it was started from) and its uid.
    pub invoker: Option<u32>,
    pub by_uid: Option<u32>,
}

fn is_sshd(comm: &str) -> bool {
    comm == "sshd" || comm == "sshd-session"
}

/// `sshd: USER [priv]` -> `USER`.
fn sshd_priv_user(title: &str) -> Option<&str> {
    let t = title.trim_end_matches([' ', '\0']);
    let rest = t
        .strip_prefix("sshd: ")
        .or_else(|| t.strip_prefix("sshd-session: "))?;
    rest.strip_suffix(" [priv]").filter(|u| !u.is_empty())
}

/// `sshd: USER@pts/0` -> (`USER`, `pts/0`).
fn sshd_user_tty(title: &str) -> Option<(&str, &str)> {
    let t = title.trim_end_matches([' ', '\0']);
    let rest = t
        .strip_prefix("sshd: ")
        .or_else(|| t.strip_prefix("sshd-session: "))?;
    let (u, tty) = rest.rsplit_once('@')?;
    (!u.is_empty() && !tty.is_empty() && !tty.contains(' ')).then_some((u, tty))
}

/// The first descendant (breadth first, at most `depth` levels down) that
/// matches.
fn descendant<'a>(
    t: &'a Table,
    pid: u32,
    depth: usize,
    want: &dyn Fn(&Proc) -> bool,
) -> Option<&'a Proc> {
    let mut level = vec![pid];
    for _ in 0..depth {
        let mut next = Vec::new();
        for p in level {
            for c in t.children(p) {
                if want(c) {
                    return Some(c);
                }
                next.push(c.pid);
            }
        }
        level = next;
    }
    None
}

/// Every session the table shows, in pid order.
pub fn find(t: &Table) -> Vec<Found> {
    let mut pids: Vec<u32> = t.procs.keys().copied().collect();
    pids.sort_unstable();
    let mut out = Vec::new();
    for pid in pids {
        let Some(p) = t.get(pid) else { continue };
        let parent = t.get(p.ppid);
        if is_sshd(&p.comm) {
            // The privileged monitor of an authenticated session, with its
            // unprivileged `USER@TTY` child.
            let Some(user) = sshd_priv_user(&p.title) else {
                continue;
            };
            let Some((child, tty)) = t
                .children(pid)
                .find_map(|c| Some((c, sshd_user_tty(&c.title)?)).filter(|_| is_sshd(&c.comm)))
            else {
                continue;
            };
            out.push(Found {
                kind: SessionKind::Remote,
                leader: pid,
                socket_owner: Some(pid),
                pids: vec![pid, child.pid],
                user: Some(user.to_string()),
                uid: child.uid,
                terminal: Some(tty.1.to_string()),
                tty: child.tty,
                process: p.comm.clone(),
                command: String::new(),
                invoker: None,
                by_uid: None,
            });
        } else if p.comm == "dropbear" && parent.is_some_and(|q| q.comm == "dropbear") {
            // A connection child; its own child is the user's shell.
            let Some(shell) = t.children(pid).next() else {
                continue;
            };
            out.push(Found {
                kind: SessionKind::Remote,
                leader: pid,
                socket_owner: Some(pid),
                pids: vec![pid],
                user: None,
                uid: shell.uid,
                terminal: None,
                tty: shell.tty,
                process: "dropbear".into(),
                command: String::new(),
                invoker: None,
                by_uid: None,
            });
        } else if p.comm == "login" {
            let Some(shell) = t.children(pid).next() else {
                continue; // still asking for the password
            };
            let telnet = parent.filter(|q| q.comm.contains("telnetd"));
            out.push(Found {
                kind: if telnet.is_some() {
                    SessionKind::Remote
                } else {
                    SessionKind::Console
                },
                leader: pid,
                socket_owner: telnet.map(|q| q.pid),
                pids: vec![pid],
                user: None,
                uid: shell.uid,
                terminal: None,
                tty: if p.tty != 0 { p.tty } else { shell.tty },
                process: "login".into(),
                command: String::new(),
                invoker: None,
                by_uid: None,
            });
        } else if (p.comm == "su" || p.comm == "sudo")
            && p.euid == Some(0)
            && !parent.is_some_and(|q| q.comm == p.comm)
        {
            // The outermost su/sudo (sudo forks a monitor of itself) with a
            // process running as root below it.
            let not_self = |c: &Proc| c.comm != "su" && c.comm != "sudo" && c.uid == Some(0);
            let Some(root) = descendant(t, pid, 3, &not_self) else {
                continue;
            };
            out.push(Found {
                kind: SessionKind::Privileged,
                leader: pid,
                socket_owner: None,
                pids: vec![pid],
                user: Some("root".into()),
                uid: Some(0),
                terminal: None,
                tty: p.tty,
                process: p.comm.clone(),
                command: root.comm.clone(),
                invoker: Some(p.ppid),
                by_uid: p.uid,
            });
        }
    }
    out
}

/// The name of a `tty_nr` (`pts/3`, `ttyS0`, `tty1`, `ttyAMA0`, ...).
pub fn tty_name(tty_nr: u32) -> String {
    if tty_nr == 0 {
        return String::new();
    }
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    match major {
        136..=143 => format!("pts/{}", (major - 136) * 256 + minor),
        4 if minor < 64 => format!("tty{minor}"),
        4 => format!("ttyS{}", minor - 64),
        5 if minor == 1 => "console".into(),
        204 if minor >= 64 => format!("ttyAMA{}", minor - 64),
        207 if minor >= 16 => format!("ttymxc{}", minor - 16),
        188 => format!("ttyUSB{minor}"),
        166 => format!("ttyACM{minor}"),
        _ => format!("tty({major}:{minor})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, ppid: u32, comm: &str, uid: u32, euid: u32, title: &str) -> Proc {
        Proc {
            pid,
            ppid,
            comm: comm.into(),
            tty: 0,
            start_ticks: u64::from(pid) * 10,
            uid: Some(uid),
            euid: Some(euid),
            title: title.into(),
        }
    }

    /// The tree OpenSSH 9.2 and sudo 1.9 make for `ssh -t host sudo -i sleep 3`
    /// (as `ps` showed it on Debian 12).
    fn ssh_sudo() -> Table {
        let pad = " ".repeat(40);
        Table::new(vec![
            p(1, 0, "init", 0, 0, ""),
            p(
                476,
                1,
                "sshd",
                0,
                0,
                "sshd: /usr/sbin/sshd -f cfg [listener] 0 of 10-100 startups",
            ),
            p(481, 476, "sshd", 0, 0, &format!("sshd: vendor [priv]{pad}")),
            p(483, 481, "sshd", 1001, 1001, "sshd: vendor@pts/0"),
            p(484, 483, "sudo", 1001, 0, "sudo -i sleep 3"),
            p(485, 484, "sudo", 0, 0, "sudo -i sleep 3"),
            p(486, 485, "sleep", 0, 0, "sleep 3"),
            // Not sessions: a connection before authentication, a notty
            // session's pieces without [priv] parent.
            p(490, 476, "sshd", 0, 0, "sshd: [accepted]"),
            p(491, 490, "sshd", 105, 105, "sshd: [net]"),
        ])
    }

    #[test]
    fn an_ssh_session_and_the_root_command_it_started() {
        let t = ssh_sudo();
        let f = find(&t);
        assert_eq!(f.len(), 2, "{f:#?}");
        let ssh = &f[0];
        assert_eq!(ssh.kind, SessionKind::Remote);
        assert_eq!((ssh.leader, ssh.socket_owner), (481, Some(481)));
        assert_eq!(ssh.pids, [481, 483]);
        assert_eq!(ssh.user.as_deref(), Some("vendor"));
        assert_eq!(ssh.uid, Some(1001));
        assert_eq!(ssh.terminal.as_deref(), Some("pts/0"));
        let sudo = &f[1];
        assert_eq!(sudo.kind, SessionKind::Privileged);
        assert_eq!(sudo.leader, 484, "the outer sudo, not its monitor");
        assert_eq!(sudo.command, "sleep");
        assert_eq!((sudo.invoker, sudo.by_uid), (Some(483), Some(1001)));
    }

    #[test]
    fn sudo_to_another_user_and_a_pending_login_are_not_sessions() {
        let t = Table::new(vec![
            p(10, 1, "sudo", 1000, 0, ""),
            p(11, 10, "bash", 1002, 1002, ""),
            p(20, 1, "login", 0, 0, ""),
            p(30, 1, "su", 1000, 1000, ""), // not set-uid: failed
            p(31, 30, "bash", 0, 0, ""),
        ]);
        assert!(find(&t).is_empty(), "{:#?}", find(&t));
    }

    #[test]
    fn console_telnet_and_dropbear_sessions() {
        let mut login = p(20, 1, "login", 0, 0, "");
        login.tty = (4 << 8) | 64; // ttyS0
        let t = Table::new(vec![
            login,
            p(21, 20, "sh", 0, 0, ""),
            p(30, 1, "in.telnetd", 0, 0, ""),
            p(31, 30, "login", 0, 0, ""),
            p(32, 31, "sh", 1000, 1000, ""),
            p(40, 1, "dropbear", 0, 0, ""),
            p(41, 40, "dropbear", 0, 0, ""),
            p(42, 41, "ash", 1001, 1001, ""),
        ]);
        let f = find(&t);
        let kinds: Vec<_> = f
            .iter()
            .map(|f| (f.leader, f.kind, f.uid, f.socket_owner))
            .collect();
        assert_eq!(
            kinds,
            [
                (20, SessionKind::Console, Some(0), None),
                (31, SessionKind::Remote, Some(1000), Some(30)),
                (41, SessionKind::Remote, Some(1001), Some(41)),
            ]
        );
        assert_eq!(tty_name(f[0].tty), "ttyS0");
    }

    #[test]
    fn tty_names() {
        assert_eq!(tty_name(0), "");
        assert_eq!(tty_name(136 << 8), "pts/0");
        assert_eq!(tty_name((137 << 8) | 5), "pts/261");
        assert_eq!(tty_name((4 << 8) | 1), "tty1");
        assert_eq!(tty_name((204 << 8) | 64), "ttyAMA0");
        assert_eq!(tty_name((136 << 8) | (1 << 20)), "pts/256");
    }
}
