//! Sessions on the device — remote logins, console logins, root shells and
//! commands started with `su`/`sudo` — as signed security events. Three
//! sources, whichever the image has: the process table (`procs`), the
//! current login records (`utmp`) and the login history (`wtmp`, followed
//! for sessions shorter than one read and for records that vanish). A
//! `Tracker` merges them into one set of open sessions and reports what
//! opened and closed since its last read.

pub mod procs;
pub mod utmp;
pub mod wtmp;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use heapless::String as HString;
use vigil_protocol::body::{
    Addr, Endpoint, LogTamper, Session, SessionEvent, SessionKind, SessionSource,
};

use crate::sample::sockets::{comm_from_stat, parse_row};
use crate::sample::Issue;
use procs::{Found, Proc, Table};
use utmp::Record;

/// Most processes looked at in one read; more is an issue.
const MAX_PROCS: usize = 65_536;
/// Most sessions tracked at once (open, pending, from wtmp).
const MAX_SESSIONS: usize = 1024;
/// Largest utmp file read (it holds current logins only).
const MAX_UTMP: u64 = 1 << 20;

fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn hs<const N: usize>(s: &str) -> HString<N> {
    let mut out = HString::new();
    for c in s.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

fn under(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

/// uid -> user name from `etc/passwd`, re-read when it changes.
#[derive(Default)]
struct Passwd {
    stamp: Option<std::time::SystemTime>,
    names: HashMap<u32, String>,
}

impl Passwd {
    fn refresh(&mut self, root: &Path) {
        let p = root.join("etc/passwd");
        let m = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
        if m == self.stamp && m.is_some() {
            return;
        }
        self.stamp = m;
        self.names = std::fs::read_to_string(&p)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let uid = f.nth(1)?.parse().ok()?;
                Some((uid, name.to_string()))
            })
            .collect();
    }

    fn name(&self, uid: Option<u32>) -> String {
        uid.map(|u| self.names.get(&u).cloned().unwrap_or_else(|| u.to_string()))
            .unwrap_or_default()
    }
}

/// `stat` of the processes a scan has seen before, by pid: the fields a
/// session is found by (parent, name, terminal, start).
pub type StatCache = HashMap<u32, Proc>;

/// Reads the process table, then uids and titles of the session candidates
/// and their children only.
///
/// `stat` is read for processes new since the last scan (`cache`), for the
/// parents and grandparents of new ones, and for the candidates and their
/// children and grandchildren; the rest keep what the last scan read. Every
/// kind of session `procs::find` knows becomes one only when a process gets
/// a child (sshd's monitor forks the user's process, `login`, `su` and
/// `sudo` fork the shell or command, dropbear forks per connection), so a
/// process that exec'd into a candidate without a child yet is read again
/// when that child appears. A pid reused within one scan interval keeps its
/// old entry until it is a parent or a candidate: only `stat` fields are
/// cached, uids and titles are read afresh.
pub fn read_table(root: &Path, cache: &mut StatCache, issues: &mut Vec<Issue>) -> Table {
    let proc_dir = root.join("proc");
    let Ok(dir) = std::fs::read_dir(&proc_dir) else {
        issues.push(Issue::new("/proc", "not readable: no process sessions"));
        cache.clear();
        return Table::default();
    };
    let read_stat = |pid: u32| {
        // A process that exits between the listing and the read is gone:
        // not an issue.
        let stat = std::fs::read_to_string(proc_dir.join(pid.to_string()).join("stat")).ok()?;
        parse_stat(pid, &stat)
    };
    let mut list = Vec::new();
    let mut new_parents = Vec::new();
    let mut cached = Vec::new();
    for e in dir.filter_map(Result::ok) {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if list.len() >= MAX_PROCS {
            issues.push(Issue::new(
                "/proc",
                format!("more than {MAX_PROCS} processes: the rest not looked at for sessions"),
            ));
            break;
        }
        // Taken out of the cache (what is left there has exited), so each
        // process is copied once per scan, back into it below.
        match cache.remove(&pid) {
            Some(p) => {
                list.push(p);
                cached.push(true);
            }
            None => {
                if let Some(p) = read_stat(pid) {
                    new_parents.push(p.ppid);
                    list.push(p);
                    cached.push(false);
                }
            }
        }
    }
    let parents: HashMap<u32, u32> = list.iter().map(|p| (p.pid, p.ppid)).collect();
    let grand: Vec<u32> = new_parents
        .iter()
        .filter_map(|pp| parents.get(pp).copied())
        .collect();
    let mut again: std::collections::HashSet<u32> = new_parents.into_iter().chain(grand).collect();
    again.extend(interesting(&list, &parents));
    let mut gone = Vec::new();
    for (i, p) in list.iter_mut().enumerate() {
        if again.contains(&p.pid) && cached.get(i).copied().unwrap_or(false) {
            match read_stat(p.pid) {
                Some(fresh) => *p = fresh,
                None => gone.push(i),
            }
        }
    }
    for i in gone.into_iter().rev() {
        list.swap_remove(i);
    }
    cache.clear();
    cache.extend(list.iter().map(|p| (p.pid, p.clone())));
    // Parents may have changed in the second reads: recomputed.
    let parents: HashMap<u32, u32> = list.iter().map(|p| (p.pid, p.ppid)).collect();
    let wanted = interesting(&list, &parents);
    for p in list.iter_mut().filter(|p| wanted.contains(&p.pid)) {
        let dir = root.join("proc").join(p.pid.to_string());
        if let Ok(status) = std::fs::read_to_string(dir.join("status")) {
            if let Some(l) = status.lines().find(|l| l.starts_with("Uid:")) {
                let mut f = l.split_ascii_whitespace().skip(1);
                p.uid = f.next().and_then(|v| v.parse().ok());
                p.euid = f.next().and_then(|v| v.parse().ok());
            }
        }
        if p.comm.starts_with("sshd") {
            if let Ok(c) = std::fs::read(dir.join("cmdline")) {
                let c = c.get(..c.len().min(256)).unwrap_or(&[]);
                p.title = String::from_utf8_lossy(c).replace('\0', " ");
            }
        }
    }
    Table::new(list)
}

/// Candidates, their children and grandchildren (sudo's monitor).
fn interesting(list: &[Proc], parents: &HashMap<u32, u32>) -> std::collections::HashSet<u32> {
    let cand: std::collections::HashSet<u32> = list
        .iter()
        .filter(|p| procs::is_candidate(&p.comm))
        .map(|p| p.pid)
        .collect();
    list.iter()
        .filter(|p| {
            cand.contains(&p.pid)
                || cand.contains(&p.ppid)
                || parents.get(&p.ppid).is_some_and(|g| cand.contains(g))
        })
        .map(|p| p.pid)
        .collect()
}

/// `pid (comm) S ppid pgrp session tty_nr ... starttime(22)`.
pub fn parse_stat(pid: u32, stat: &str) -> Option<Proc> {
    let comm = comm_from_stat(stat)?.to_string();
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = after.split_ascii_whitespace().collect();
    // Fields after the name, numbered from 3 (state).
    let field = |n: usize| f.get(n - 3).copied();
    Some(Proc {
        pid,
        ppid: field(4)?.parse().ok()?,
        comm,
        tty: field(7)?
            .parse::<i64>()
            .ok()
            .and_then(|t| u32::try_from(t).ok())?,
        start_ticks: field(22)?.parse().ok()?,
        ..Proc::default()
    })
}

/// The established TCP peer of one of `pid`'s sockets, from its own
/// network namespace's tables.
fn peer_of(root: &Path, pid: u32) -> Option<Endpoint> {
    let dir = root.join("proc").join(pid.to_string());
    let inodes: Vec<u64> = std::fs::read_dir(dir.join("fd"))
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|fd| {
            let t = std::fs::read_link(fd.path()).ok()?;
            t.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    if inodes.is_empty() {
        return None;
    }
    for table in ["net/tcp", "net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(dir.join(table)) else {
            continue;
        };
        for row in text.lines().filter_map(parse_row) {
            if row.state == 0x01 && inodes.contains(&row.inode) {
                return Some(row.remote);
            }
        }
    }
    None
}

/// An IPv4-mapped IPv6 peer is reported as the IPv4 address it is.
fn unmapped(e: Endpoint) -> Endpoint {
    match e.addr {
        Addr::V6(b) if b.get(..12) == Some(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]) => {
            Endpoint {
                addr: Addr::V4([b[12], b[13], b[14], b[15]]),
                port: e.port,
            }
        }
        _ => e,
    }
}

fn remote_host(r: &Record) -> bool {
    r.addr.is_some() || !(r.host.is_empty() || r.host.starts_with(':'))
}

/// Follows the sessions of one device.
pub struct Tracker {
    root: PathBuf,
    utmp: PathBuf,
    wtmp: wtmp::Follower,
    /// Sessions reported open, by key.
    open: BTreeMap<u64, Session>,
    /// Sessions known only from wtmp, open until their logout record.
    from_wtmp: BTreeMap<u64, (u32, Session)>,
    /// wtmp logins no other source explained yet: (record, reads waited).
    pending: Vec<(Record, u8)>,
    /// Logout times from wtmp by pid, kept for a few reads.
    dead: HashMap<u32, (u64, u8)>,
    /// Remote peers already resolved, by session key.
    peers: HashMap<u64, Endpoint>,
    passwd: Passwd,
    /// The last scan's `stat` of every process (see `read_table`).
    stats: StatCache,
    /// Processes the last scan listed.
    processes: Option<u64>,
    clk_tck: u64,
    /// The kernel's boot time, Unix milliseconds (see `boot_time_ms`).
    boot_time_ms: Option<u64>,
    first: bool,
}

/// `/proc/uptime`'s first field (seconds since boot, two decimals) in
/// milliseconds.
fn uptime_ms(text: &str) -> Option<u64> {
    let first = text.split_ascii_whitespace().next()?;
    let (secs, frac) = first.split_once('.').unwrap_or((first, "0"));
    let secs: u64 = secs.parse().ok()?;
    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(3).collect();
    let ms: u64 = frac.parse().ok()?;
    secs.checked_mul(1000)?.checked_add(ms)
}

/// What one read found.
pub struct Report {
    /// First read of this agent process: `events` opens every session.
    pub snapshot: bool,
    pub events: Vec<SessionEvent>,
}

impl Tracker {
    pub fn new(root: &Path, cfg: &crate::config::Sessions) -> Tracker {
        Tracker {
            root: root.to_path_buf(),
            utmp: under(root, &cfg.utmp),
            wtmp: wtmp::Follower::at_end(&under(root, &cfg.wtmp)),
            open: BTreeMap::new(),
            from_wtmp: BTreeMap::new(),
            pending: Vec::new(),
            dead: HashMap::new(),
            peers: HashMap::new(),
            passwd: Passwd::default(),
            stats: StatCache::new(),
            processes: None,
            // USER_HZ: 100 on every architecture Linux runs on today.
            clk_tck: 100,
            boot_time_ms: None,
            first: true,
        }
    }

    /// The boot time as exactly as the kernel tells it. On the live system
    /// (root `/`): the wall clock now minus `/proc/uptime`, both to 10 ms,
    /// so a session's start (boot time plus its leader's start in clock
    /// ticks, 10 ms) is known to about 20 ms, where `btime` in `/proc/stat`
    /// is whole seconds (up to 1 s early). Under another root (a copied
    /// /proc) the clock is not that system's, so `btime` it is.
    fn boot_time_ms(root: &Path) -> u64 {
        let btime_ms = || {
            std::fs::read_to_string(root.join("proc/stat"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("btime "))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
                .unwrap_or(0)
                .saturating_mul(1000)
        };
        if root != Path::new("/") {
            return btime_ms();
        }
        let uptime_ms = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| uptime_ms(&s));
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| u64::try_from(d.as_millis()).ok());
        match (now_ms, uptime_ms) {
            (Some(now), Some(up)) if now > up => now - up,
            _ => btime_ms(),
        }
    }

    /// The peer of a session's socket, looked up once it is found.
    fn peer(&mut self, key: u64, owner: u32) -> Option<Endpoint> {
        if let Some(p) = self.peers.get(&key) {
            return Some(*p);
        }
        let p = peer_of(&self.root, owner).map(unmapped)?;
        self.peers.insert(key, p);
        Some(p)
    }

    /// How many processes the last `poll` found (the sample's count).
    pub fn processes(&self) -> Option<u64> {
        self.processes
    }

    fn alive(&self, pid: u32) -> bool {
        self.root.join("proc").join(pid.to_string()).exists()
    }

    /// Reads every source once and reports the changes.
    pub fn poll(&mut self, now_s: u64, issues: &mut Vec<Issue>) -> Report {
        let mut events = Vec::new();
        // wtmp first: a login it shows and the process table does not yet
        // is given one more read to appear there.
        let w = self.wtmp.poll();
        if let Some(t) = w.tamper {
            events.push(SessionEvent::LogTampered(LogTamper {
                path: hs(&self.wtmp.path().to_string_lossy()),
                kind: t.kind,
                expected_len: t.expected_len,
                actual_len: t.actual_len,
            }));
        }
        if w.bad > 0 {
            issues.push(Issue::new(
                "wtmp",
                format!("{} records do not decode", w.bad),
            ));
        }
        self.dead.retain(|_, (_, age)| {
            *age += 1;
            *age <= 3
        });
        for r in &w.records {
            match r.kind {
                utmp::USER_PROCESS if self.pending.len() < MAX_SESSIONS => {
                    self.pending.push((r.clone(), 0));
                }
                utmp::DEAD_PROCESS => {
                    self.dead.insert(r.pid, (r.time_s, 0));
                }
                _ => {}
            }
        }

        self.passwd.refresh(&self.root);
        let table = read_table(&self.root, &mut self.stats, issues);
        self.processes = (!table.procs.is_empty()).then_some(table.procs.len() as u64);
        // The boot time does not change while the agent runs: read once.
        let boot_ms = *self
            .boot_time_ms
            .get_or_insert_with(|| Self::boot_time_ms(&self.root));
        let mut current: BTreeMap<u64, Session> = BTreeMap::new();
        let mut by_pid: HashMap<u32, u64> = HashMap::new();
        let found = procs::find(&table);
        // Logins first, so a privileged session can name the one it was
        // started from.
        let (privileged, logins): (Vec<&Found>, Vec<&Found>) = found
            .iter()
            .partition(|f| f.kind == SessionKind::Privileged);
        for f in logins.into_iter().chain(privileged) {
            let Some(leader) = table.get(f.leader) else {
                continue;
            };
            let key = fnv(&[
                b"p",
                &f.leader.to_le_bytes(),
                &leader.start_ticks.to_le_bytes(),
            ]);
            let remote = match f.socket_owner {
                None => None,
                Some(owner) => self.peer(key, owner),
            };
            let parent = f.invoker.and_then(|mut pid| {
                for _ in 0..32 {
                    if let Some(k) = by_pid.get(&pid) {
                        return Some(*k);
                    }
                    pid = table.get(pid)?.ppid;
                }
                None
            });
            let s = Session {
                key,
                kind: f.kind,
                user: hs(&f.user.clone().unwrap_or_else(|| self.passwd.name(f.uid))),
                uid: f.uid,
                terminal: hs(&f.terminal.clone().unwrap_or_else(|| procs::tty_name(f.tty))),
                remote,
                process: hs(&f.process),
                pid: f.leader,
                command: hs(&f.command),
                parent,
                by_user: hs(&if f.by_uid.is_some() {
                    self.passwd.name(f.by_uid)
                } else {
                    String::new()
                }),
                // To the nearest second (the wire's unit), not truncated.
                started_s: boot_ms
                    .saturating_add(leader.start_ticks.saturating_mul(1000) / self.clk_tck)
                    .saturating_add(500)
                    / 1000,
                source: SessionSource::Processes,
            };
            for p in &f.pids {
                by_pid.insert(*p, key);
            }
            current.insert(key, s);
        }

        // utmp: details for the sessions above, and sessions of daemons the
        // process table does not recognise.
        for r in self.read_utmp(issues) {
            if r.kind != utmp::USER_PROCESS || !self.alive(r.pid) {
                continue; // stale record of a session that crashed
            }
            if let Some(s) = by_pid.get(&r.pid).and_then(|k| current.get_mut(k)) {
                if s.remote.is_none() && s.kind == SessionKind::Remote {
                    s.remote = r.addr.map(|addr| Endpoint { addr, port: 0 });
                }
                if s.terminal.is_empty() {
                    s.terminal = hs(&r.line);
                }
                continue;
            }
            let comm = table.get(r.pid).map(|p| p.comm.clone()).or_else(|| {
                let stat = std::fs::read_to_string(under(
                    &self.root,
                    Path::new(&format!("/proc/{}/stat", r.pid)),
                ))
                .ok()?;
                parse_stat(r.pid, &stat).map(|p| p.comm)
            });
            // sudo (with use_pty) and su write a record for the terminal
            // they open inside a session: not a login. The escalation is
            // the privileged session found from the processes.
            if matches!(comm.as_deref(), Some("sudo" | "su")) {
                continue;
            }
            let key = fnv(&[
                b"u",
                &r.pid.to_le_bytes(),
                r.line.as_bytes(),
                &r.time_s.to_le_bytes(),
            ]);
            let remote = self
                .peer(key, r.pid)
                .or(r.addr.map(|addr| Endpoint { addr, port: 0 }));
            let comm = comm.unwrap_or_default();
            by_pid.insert(r.pid, key);
            current.insert(
                key,
                self.record_session(key, &r, remote, &comm, SessionSource::Utmp),
            );
        }

        // wtmp logins nobody else explains: a session shorter than a read,
        // or one of a daemon without processes or utmp we know.
        let pending = std::mem::take(&mut self.pending);
        for (r, age) in pending {
            if by_pid.contains_key(&r.pid) {
                continue;
            }
            let key = fnv(&[
                b"w",
                &r.pid.to_le_bytes(),
                r.line.as_bytes(),
                &r.time_s.to_le_bytes(),
            ]);
            let remote = r.addr.map(|addr| Endpoint { addr, port: 0 });
            let s = self.record_session(key, &r, remote, "", SessionSource::Wtmp);
            if let Some((end, _)) = self.dead.get(&r.pid) {
                events.push(SessionEvent::Opened(s.clone()));
                events.push(SessionEvent::Closed {
                    session: s,
                    ended_s: *end,
                });
            } else if age == 0 {
                self.pending.push((r, 1));
            } else if self.from_wtmp.len() < MAX_SESSIONS {
                self.from_wtmp.insert(key, (r.pid, s));
            }
        }
        let dead = &self.dead;
        let root = &self.root;
        self.from_wtmp.retain(|_, (pid, _)| {
            !dead.contains_key(pid) && root.join("proc").join(pid.to_string()).exists()
        });
        for (k, (_, s)) in &self.from_wtmp {
            current.entry(*k).or_insert_with(|| s.clone());
        }
        if current.len() > MAX_SESSIONS {
            issues.push(Issue::new(
                "sessions",
                format!("more than {MAX_SESSIONS} open sessions: the rest not tracked"),
            ));
            while current.len() > MAX_SESSIONS {
                current.pop_last();
            }
        }

        let snapshot = std::mem::replace(&mut self.first, false);
        for (k, s) in &self.open {
            if !current.contains_key(k) {
                let ended_s = self
                    .dead
                    .get(&s.pid)
                    .map_or(now_s, |(t, _)| *t)
                    .max(s.started_s);
                events.push(SessionEvent::Closed {
                    session: s.clone(),
                    ended_s,
                });
            }
        }
        for (k, s) in &current {
            if !self.open.contains_key(k) {
                events.push(SessionEvent::Opened(s.clone()));
            }
        }
        self.peers.retain(|k, _| current.contains_key(k));
        self.open = current;
        Report { snapshot, events }
    }

    fn record_session(
        &self,
        key: u64,
        r: &Record,
        remote: Option<Endpoint>,
        comm: &str,
        source: SessionSource,
    ) -> Session {
        let uid = self
            .passwd
            .names
            .iter()
            .find(|(_, n)| **n == r.user)
            .map(|(u, _)| *u);
        Session {
            key,
            kind: if remote_host(r) {
                SessionKind::Remote
            } else {
                SessionKind::Console
            },
            user: hs(&r.user),
            uid,
            terminal: hs(&r.line),
            remote,
            process: hs(comm),
            pid: r.pid,
            command: HString::new(),
            parent: None,
            by_user: HString::new(),
            started_s: r.time_s,
            source,
        }
    }

    fn read_utmp(&self, issues: &mut Vec<Issue>) -> Vec<Record> {
        use std::io::Read;
        let Ok(f) = std::fs::File::open(&self.utmp) else {
            return Vec::new(); // many minimal images have none
        };
        let mut b = Vec::new();
        if f.take(MAX_UTMP).read_to_end(&mut b).is_err() {
            return Vec::new();
        }
        let (records, bad, _) = utmp::parse(&b, utmp::detect(&b));
        if bad > 0 {
            issues.push(Issue::new("utmp", format!("{bad} records do not decode")));
        }
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_is_read_to_the_millisecond() {
        assert_eq!(uptime_ms("350735.47 234388.90\n"), Some(350_735_470));
        assert_eq!(uptime_ms("12.5 1.0"), Some(12_500));
        assert_eq!(uptime_ms("7 1"), Some(7_000));
        assert_eq!(uptime_ms(""), None);
        assert_eq!(uptime_ms("x.1 2"), None);
    }

    #[test]
    fn the_live_boot_time_is_btime_to_within_a_second_but_finer() {
        let exact = Tracker::boot_time_ms(Path::new("/"));
        let btime_s: u64 = std::fs::read_to_string("/proc/stat")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // btime is the same instant truncated to whole seconds (a clock
        // step between the two reads aside: allow one more second).
        let diff = exact.abs_diff(btime_s * 1000);
        assert!(diff < 2_000, "boot {exact} ms, btime {btime_s} s");
    }

    #[test]
    fn stat_lines_with_odd_names() {
        let p = parse_stat(
            7,
            "7 (a) b (c)) S 1 7 7 34816 7 4194560 0 0 0 0 0 0 0 0 20 0 1 0 5555 0 0",
        )
        .unwrap();
        assert_eq!(
            (p.comm.as_str(), p.ppid, p.tty, p.start_ticks),
            ("a) b (c)", 1, 34816, 5555)
        );
        assert!(parse_stat(1, "1 (x) S 0").is_none());
    }

    #[test]
    fn keys_depend_on_every_part() {
        assert_ne!(fnv(&[b"ab", b"c"]), fnv(&[b"a", b"bc"]));
        assert_ne!(
            fnv(&[b"p", &1u32.to_le_bytes()]),
            fnv(&[b"u", &1u32.to_le_bytes()])
        );
    }
}
