//! Sessions: the login-record parser on real files made on this machine
//! (by OpenSSH's sshd and by util-linux's `utmpdump -r`, see
//! `testdata/sessions/README.md`) and on crafted corrupt ones, and the
//! tracker over a fake root whose process table, socket table and login
//! records the test writes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::Write;
use std::path::{Path, PathBuf};

use vigil_agent::sessions::utmp::{self, Layout, Record};
use vigil_agent::sessions::Tracker;
use vigil_protocol::body::{Addr, SessionEvent, SessionKind, SessionSource, TamperKind};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/sessions")
            .join(name),
    )
    .unwrap()
}

#[test]
fn wtmp_written_by_openssh() {
    let b = fixture("wtmp.openssh");
    assert_eq!(utmp::detect(&b), Layout::Time32);
    let (r, bad, partial) = utmp::parse(&b, Layout::Time32);
    assert_eq!((r.len(), bad, partial), (2, 0, 0));
    assert_eq!(r[0].kind, utmp::USER_PROCESS);
    assert_eq!(
        (r[0].user.as_str(), r[0].line.as_str()),
        ("vigiltest", "pts/0")
    );
    assert_eq!(r[0].host, "127.0.0.1");
    assert_eq!(r[0].addr, Some(Addr::V4([127, 0, 0, 1])));
    assert_eq!(r[0].time_s, 1_796_124_918); // 2026-12-01T11:35:18Z
    assert_eq!(r[1].kind, utmp::DEAD_PROCESS);
    assert_eq!(r[1].pid, r[0].pid);
    assert_eq!(r[1].time_s, 1_796_124_920);
}

#[test]
fn utmp_written_by_utmpdump() {
    let b = fixture("utmp.util-linux");
    let (r, bad, _) = utmp::parse(&b, utmp::detect(&b));
    assert_eq!(bad, 0);
    let kinds: Vec<(i16, u32, &str, &str)> = r
        .iter()
        .map(|r| (r.kind, r.pid, r.user.as_str(), r.line.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (utmp::BOOT_TIME, 0, "reboot", "~"),
            (utmp::LOGIN_PROCESS, 412, "LOGIN", "ttyS0"),
            (utmp::USER_PROCESS, 733, "root", "tty1"),
            (utmp::USER_PROCESS, 1207, "vendor", "pts/1"),
            (utmp::USER_PROCESS, 1388, "vendor", "pts/2"),
            (utmp::DEAD_PROCESS, 1100, "", "pts/0"),
        ]
    );
    assert_eq!(r[3].addr, Some(Addr::V4([10, 20, 0, 5])));
    let v6: std::net::Ipv6Addr = "2001:db8::5".parse().unwrap();
    assert_eq!(r[4].addr, Some(Addr::V6(v6.octets())));
    assert_eq!(r[4].host, "jump.example");
}

#[test]
fn corrupt_and_64_bit_time_files() {
    // Cut mid-record: the whole records decode, the tail is counted.
    let b = fixture("utmp.util-linux");
    let (r, bad, partial) = utmp::parse(&b[..1000], Layout::Time32);
    assert_eq!((r.len(), bad, partial), (2, 0, 1000 - 768));
    // Garbage in the middle: one bad record, the rest still decode.
    let mut g = b.clone();
    g[384..768].fill(0xa5);
    let (r, bad, _) = utmp::parse(&g, Layout::Time32);
    assert_eq!((r.len(), bad), (5, 1));
    // The same records in the 64-bit time layout are recognised as such.
    let (orig, _, _) = utmp::parse(&b, Layout::Time32);
    let wide: Vec<u8> = orig
        .iter()
        .flat_map(|r| utmp::encode(r, Layout::Time64))
        .collect();
    assert_eq!(utmp::detect(&wide), Layout::Time64);
    assert_eq!(utmp::parse(&wide, Layout::Time64).0, orig);
    // Random bytes never panic.
    let noise: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let l = utmp::detect(&noise);
    let _ = utmp::parse(&noise, l);
}

/// A fake root: /proc entries, the socket table, passwd, login records.
struct Root(PathBuf);

impl Root {
    fn new() -> Root {
        let d = std::env::temp_dir().join(format!(
            "vigil-sessions-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("proc")).unwrap();
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::create_dir_all(d.join("var/run")).unwrap();
        std::fs::create_dir_all(d.join("var/log")).unwrap();
        std::fs::write(d.join("proc/stat"), "cpu 1 2 3 4\nbtime 1800000000\n").unwrap();
        std::fs::write(
            d.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nvendor:x:1001:1001::/home/vendor:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.join("var/log/wtmp"), b"").unwrap();
        Root(d)
    }

    /// A process: `stat` (started 1000 + pid ticks after boot), `status`
    /// uids, title.
    #[allow(clippy::too_many_arguments)]
    fn proc(&self, pid: u32, ppid: u32, comm: &str, uid: u32, euid: u32, title: &str, tty: u32) {
        let p = self.0.join("proc").join(pid.to_string());
        std::fs::create_dir_all(p.join("fd")).unwrap();
        std::fs::write(
            p.join("stat"),
            format!(
                "{pid} ({comm}) S {ppid} {pid} {pid} {tty} 0 0 0 0 0 0 0 0 0 0 20 0 1 0 {} 0 0\n",
                1000 + pid
            ),
        )
        .unwrap();
        std::fs::write(
            p.join("status"),
            format!("Name:\t{comm}\nUid:\t{uid}\t{euid}\t{euid}\t{euid}\n"),
        )
        .unwrap();
        std::fs::write(p.join("cmdline"), format!("{title}\0")).unwrap();
    }

    fn socket(&self, pid: u32, inode: u64, tcp_line: &str) {
        let p = self.0.join("proc").join(pid.to_string());
        std::os::unix::fs::symlink(format!("socket:[{inode}]"), p.join("fd/3")).unwrap();
        std::fs::create_dir_all(p.join("net")).unwrap();
        std::fs::write(
            p.join("net/tcp"),
            format!("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n{tcp_line}\n"),
        )
        .unwrap();
    }

    fn kill(&self, pid: u32) {
        std::fs::remove_dir_all(self.0.join("proc").join(pid.to_string())).unwrap();
    }

    fn wtmp(&self, records: &[Record]) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.0.join("var/log/wtmp"))
            .unwrap();
        for r in records {
            f.write_all(&utmp::encode(r, Layout::Time32)).unwrap();
        }
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rec(kind: i16, pid: u32, line: &str, user: &str, t: u64, addr: Option<[u8; 4]>) -> Record {
    Record {
        kind,
        pid,
        line: line.into(),
        user: user.into(),
        host: addr
            .map(|a| std::net::Ipv4Addr::from(a).to_string())
            .unwrap_or_default(),
        time_s: t,
        addr: addr.map(Addr::V4),
    }
}

fn opened(events: &[SessionEvent]) -> Vec<&vigil_protocol::body::Session> {
    events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Opened(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn closed(events: &[SessionEvent]) -> Vec<(&vigil_protocol::body::Session, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Closed { session, ended_s } => Some((session, *ended_s)),
            _ => None,
        })
        .collect()
}

#[test]
fn tracker_over_a_fake_root() {
    let root = Root::new();
    // sshd: the [priv] monitor 481 holds the connection from 10.20.0.5:50054
    // (0500140A:C386 in /proc/net/tcp order); its user child 483 started
    // `sudo -i`, whose monitor 485 runs a root shell 486.
    root.proc(1, 0, "init", 0, 0, "/sbin/init", 0);
    root.proc(
        476,
        1,
        "sshd",
        0,
        0,
        "sshd: /usr/sbin/sshd [listener] 0 of 10-100 startups",
        0,
    );
    root.proc(481, 476, "sshd", 0, 0, "sshd: vendor [priv]", 0);
    root.socket(
        481,
        777,
        "   0: 0200140A:0016 0500140A:C386 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 20 4 0 10 -1",
    );
    root.proc(483, 481, "sshd", 1001, 1001, "sshd: vendor@pts/0", 0);
    root.proc(484, 483, "sudo", 1001, 0, "sudo -i", 136 << 8);
    root.proc(485, 484, "sudo", 0, 0, "sudo -i", (136 << 8) | 1);
    root.proc(486, 485, "bash", 0, 0, "-bash", (136 << 8) | 1);
    let cfg = vigil_agent::config::Sessions::default();
    let mut t = Tracker::new(&root.0, &cfg);
    let mut issues = Vec::new();

    let r = t.poll(1_800_000_100, &mut issues);
    assert!(r.snapshot);
    let o = opened(&r.events);
    assert_eq!(o.len(), 2, "{:#?}", r.events);
    let ssh = o.iter().find(|s| s.kind == SessionKind::Remote).unwrap();
    assert_eq!(
        (ssh.user.as_str(), ssh.uid, ssh.terminal.as_str()),
        ("vendor", Some(1001), "pts/0")
    );
    let peer = ssh.remote.unwrap();
    assert_eq!((peer.addr, peer.port), (Addr::V4([10, 20, 0, 5]), 50054));
    assert_eq!((ssh.process.as_str(), ssh.pid), ("sshd", 481));
    // btime plus the leader's 1,481 ticks (14.81 s), to the nearest second.
    assert_eq!(ssh.started_s, 1_800_000_015);
    assert_eq!(ssh.source, SessionSource::Processes);
    let root_sh = o
        .iter()
        .find(|s| s.kind == SessionKind::Privileged)
        .unwrap();
    assert_eq!((root_sh.user.as_str(), root_sh.uid), ("root", Some(0)));
    assert_eq!(
        (root_sh.process.as_str(), root_sh.command.as_str()),
        ("sudo", "bash")
    );
    assert_eq!(
        (root_sh.by_user.as_str(), root_sh.parent),
        ("vendor", Some(ssh.key))
    );
    assert_eq!(root_sh.terminal, "pts/0");

    // Nothing changed: nothing to say.
    let r = t.poll(1_800_000_105, &mut issues);
    assert!(!r.snapshot && r.events.is_empty(), "{:#?}", r.events);

    // A session shorter than one read, seen only in wtmp; and sshd's own
    // login record of the session above (pid 481), which is not news.
    root.wtmp(&[
        rec(
            utmp::USER_PROCESS,
            481,
            "pts/0",
            "vendor",
            1_800_000_014,
            Some([10, 20, 0, 5]),
        ),
        rec(
            utmp::USER_PROCESS,
            900,
            "pts/5",
            "vendor",
            1_800_000_200,
            Some([10, 20, 0, 9]),
        ),
        rec(utmp::DEAD_PROCESS, 900, "pts/5", "", 1_800_000_203, None),
    ]);
    let r = t.poll(1_800_000_210, &mut issues);
    let (o, c) = (opened(&r.events), closed(&r.events));
    assert_eq!((o.len(), c.len()), (1, 1), "{:#?}", r.events);
    assert_eq!(
        (o[0].pid, o[0].source, o[0].kind),
        (900, SessionSource::Wtmp, SessionKind::Remote)
    );
    assert_eq!(o[0].uid, Some(1001));
    assert_eq!(
        o[0].remote.map(|e| (e.addr, e.port)),
        Some((Addr::V4([10, 20, 0, 9]), 0))
    );
    assert_eq!((c[0].0.key, c[0].1), (o[0].key, 1_800_000_203));

    // The root shell ends: closed at the time of the read.
    for pid in [486, 485, 484] {
        root.kill(pid);
    }
    let r = t.poll(1_800_000_300, &mut issues);
    let c = closed(&r.events);
    assert_eq!(c.len(), 1, "{:#?}", r.events);
    assert_eq!(
        (c[0].0.kind, c[0].1),
        (SessionKind::Privileged, 1_800_000_300)
    );

    // A login record of a daemon the process table does not know.
    root.proc(950, 1, "mgmtd", 0, 0, "mgmtd", 0);
    let mut u = Vec::new();
    u.extend(utmp::encode(
        &rec(
            utmp::USER_PROCESS,
            950,
            "pts/7",
            "vendor",
            1_800_000_310,
            Some([10, 20, 0, 7]),
        ),
        Layout::Time32,
    ));
    // A stale record of a process that is gone: ignored.
    u.extend(utmp::encode(
        &rec(
            utmp::USER_PROCESS,
            4242,
            "pts/8",
            "vendor",
            1_700_000_000,
            None,
        ),
        Layout::Time32,
    ));
    // The record sudo (use_pty) writes for the terminal it opens inside a
    // session: not a login of its own.
    root.proc(960, 483, "sudo", 1001, 0, "sudo -i sleep 30", 0);
    u.extend(utmp::encode(
        &rec(
            utmp::USER_PROCESS,
            960,
            "pts/9",
            "vendor",
            1_800_000_311,
            Some([10, 20, 0, 5]),
        ),
        Layout::Time32,
    ));
    std::fs::write(root.0.join("var/run/utmp"), &u).unwrap();
    let r = t.poll(1_800_000_320, &mut issues);
    let o = opened(&r.events);
    assert_eq!(o.len(), 1, "{:#?}", r.events);
    assert_eq!(
        (o[0].pid, o[0].source, o[0].process.as_str()),
        (950, SessionSource::Utmp, "mgmtd")
    );

    // Records vanish from wtmp: a finding, once.
    let w = std::fs::read(root.0.join("var/log/wtmp")).unwrap();
    std::fs::write(root.0.join("var/log/wtmp"), &w[..384]).unwrap();
    let r = t.poll(1_800_000_330, &mut issues);
    let tampered: Vec<_> = r
        .events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::LogTampered(l) => Some(l),
            _ => None,
        })
        .collect();
    assert_eq!(tampered.len(), 1, "{:#?}", r.events);
    assert_eq!(tampered[0].kind, TamperKind::Truncated);
    assert_eq!(
        (tampered[0].expected_len, tampered[0].actual_len),
        (3 * 384, 384)
    );
    assert!(tampered[0].path.ends_with("var/log/wtmp"));
    assert!(t.poll(1_800_000_340, &mut issues).events.is_empty());

    // A new tracker (agent restart) reports what is open as a snapshot,
    // with the same keys.
    let ssh_key = ssh.key;
    let mut t2 = Tracker::new(&root.0, &cfg);
    let r = t2.poll(1_800_000_400, &mut issues);
    assert!(r.snapshot);
    let keys: Vec<u64> = opened(&r.events).iter().map(|s| s.key).collect();
    assert!(keys.contains(&ssh_key), "{:#?}", r.events);
    assert!(issues.is_empty(), "{issues:?}");
}

/// The tracker reads `stat` again only for new processes, their parents
/// and the candidates: a shell that became `su` by exec, with no child yet,
/// is found the scan its root child appears in, and the scan's listing is
/// the sample's process count.
#[test]
fn a_process_that_execs_into_su_is_found_when_its_child_appears() {
    let root = Root::new();
    root.proc(1, 0, "init", 0, 0, "/sbin/init", 0);
    root.proc(600, 1, "bash", 1001, 1001, "-bash", 136 << 8);
    root.proc(700, 1, "cron", 0, 0, "cron", 0);
    let cfg = vigil_agent::config::Sessions::default();
    let mut t = Tracker::new(&root.0, &cfg);
    let mut issues = Vec::new();
    let r = t.poll(1_800_000_100, &mut issues);
    assert!(opened(&r.events).is_empty(), "{:#?}", r.events);
    assert_eq!(t.processes(), Some(3));

    // `exec su -`: the same pid, now su with euid 0, asking for a password.
    root.proc(600, 1, "su", 1001, 0, "su -", 136 << 8);
    let r = t.poll(1_800_000_105, &mut issues);
    assert!(opened(&r.events).is_empty(), "{:#?}", r.events);

    // The password taken: su forks the root shell.
    root.proc(601, 600, "bash", 0, 0, "-bash", 136 << 8);
    root.kill(700);
    let r = t.poll(1_800_000_110, &mut issues);
    let o = opened(&r.events);
    assert_eq!(o.len(), 1, "{:#?}", r.events);
    assert_eq!(o[0].kind, SessionKind::Privileged);
    assert_eq!(o[0].process.as_str(), "su");
    assert_eq!(t.processes(), Some(3), "init, su, its shell");
    assert!(issues.is_empty(), "{issues:?}");
}
