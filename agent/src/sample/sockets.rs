//! `/proc/net/{tcp,tcp6,udp,udp6}` and `/proc/<pid>/fd`: the socket table
//! with owning processes, reduced to what a baseline cares about —
//! listeners, outbound endpoints (remote address and port, process) and
//! inbound peers (local listening port, remote address, process) — and the
//! changes between two tables. Ephemeral ports are dropped so a new
//! connection to a known endpoint is not a change. Bounded: at most
//! `MAX_ENTRIES` distinct entries are tracked; more is an issue.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use vigil_protocol::body::{Addr, Change, Endpoint, Proto, SocketChange, SocketKind};

use super::Issue;

pub use super::socket_row::{Row, MAX_ENTRIES};
/// Longest /proc/net line read.
const MAX_LINE: u64 = 512;

fn endpoint(s: &str) -> Option<Endpoint> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // Each 32-bit word is printed as the host-order value of the
    // network-order bytes: native byte order gives the bytes back.
    let word = |h: &str| u32::from_str_radix(h, 16).ok().map(u32::to_ne_bytes);
    let addr = match addr.len() {
        8 => Addr::V4(word(addr)?),
        32 => {
            let mut b = [0u8; 16];
            for (i, chunk) in b.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(addr.get(i * 8..i * 8 + 8)?)?);
            }
            Addr::V6(b)
        }
        _ => return None,
    };
    Some(Endpoint { addr, port })
}

/// Parses one data line; `None` for the header or a malformed line.
pub fn parse_row(line: &str) -> Option<Row> {
    let mut f = line.split_ascii_whitespace();
    let _sl = f.next()?.strip_suffix(':')?;
    let local = endpoint(f.next()?)?;
    let remote = endpoint(f.next()?)?;
    let state = u8::from_str_radix(f.next()?, 16).ok()?;
    let _queues = f.next()?;
    let _timer = f.next()?;
    let _retr = f.next()?;
    let uid = f.next()?.parse().ok()?;
    let _timeout = f.next()?;
    let inode = f.next()?.parse().ok()?;
    Some(Row {
        local,
        remote,
        state,
        uid,
        inode,
    })
}

/// The process name between the first `(` and the last `)` of
/// `/proc/<pid>/stat` (names may contain spaces and parentheses).
pub fn comm_from_stat(stat: &str) -> Option<&str> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    stat.get(open + 1..close)
}

/// A socket as the baseline sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    pub kind: u8, // 0 listen, 1 outbound, 2 inbound (ordering only)
    pub proto: u8,
    pub local: (Vec<u8>, u16),
    pub remote: Option<(Vec<u8>, u16)>,
    pub uid: u32,
    pub process: String,
}

fn addr_bytes(a: &Addr) -> Vec<u8> {
    match a {
        Addr::V4(b) => b.to_vec(),
        Addr::V6(b) => b.to_vec(),
    }
}

fn to_addr(b: &[u8]) -> Addr {
    match b.len() {
        4 => Addr::V4(b.try_into().unwrap_or([0; 4])),
        _ => Addr::V6(b.try_into().unwrap_or([0; 16])),
    }
}

fn unspecified(e: &Endpoint) -> bool {
    match e.addr {
        Addr::V4(b) => b == [0; 4],
        Addr::V6(b) => b == [0; 16],
    }
}

const TCP_ESTABLISHED: u8 = 0x01;
/// A connection attempt not answered yet: outbound, like the connection
/// it may become (a scan of hosts that do not answer shows only as this).
const TCP_SYN_SENT: u8 = 0x02;
const TCP_LISTEN: u8 = 0x0a;
const UDP_UNCONNECTED: u8 = 0x07;

/// Reduces rows to entries. `names` maps socket inode to process name.
pub fn entries(rows: &[(Proto, Row)], names: &HashMap<u64, String>) -> BTreeSet<Entry> {
    let listening: BTreeSet<(u8, u16)> = rows
        .iter()
        .filter(|(p, r)| is_listen(*p, r))
        .map(|(p, r)| (proto_code(*p), r.local.port))
        .collect();
    let listener_names: HashMap<(u8, u16), &String> = rows
        .iter()
        .filter(|(p, r)| is_listen(*p, r))
        .filter_map(|(p, r)| Some(((proto_code(*p), r.local.port), names.get(&r.inode)?)))
        .collect();
    let mut out = BTreeSet::new();
    for (p, r) in rows {
        let mut process = names.get(&r.inode).cloned().unwrap_or_default();
        if process.is_empty() && !is_listen(*p, r) {
            // An accepted connection belongs (almost always) to its listener's process.
            if let Some(n) = listener_names.get(&(proto_code(*p), r.local.port)) {
                process = (*n).clone();
            }
        }
        let pc = proto_code(*p);
        let e = if is_listen(*p, r) {
            Entry {
                kind: 0,
                proto: pc,
                local: (addr_bytes(&r.local.addr), r.local.port),
                remote: None,
                uid: r.uid,
                process,
            }
        } else if (r.state == TCP_ESTABLISHED || r.state == TCP_SYN_SENT || *p == Proto::Udp)
            && !unspecified(&r.remote)
        {
            // An attempt is always ours; an established one may be inbound.
            if r.state != TCP_SYN_SENT && listening.contains(&(pc, r.local.port)) {
                // Inbound: our listener, their address; their port is ephemeral.
                Entry {
                    kind: 2,
                    proto: pc,
                    local: (addr_bytes(&r.local.addr), r.local.port),
                    remote: Some((addr_bytes(&r.remote.addr), 0)),
                    uid: r.uid,
                    process,
                }
            } else {
                // Outbound: their endpoint; our port is ephemeral.
                Entry {
                    kind: 1,
                    proto: pc,
                    local: (addr_bytes(&r.local.addr), 0),
                    remote: Some((addr_bytes(&r.remote.addr), r.remote.port)),
                    uid: r.uid,
                    process,
                }
            }
        } else {
            continue; // closing, time-wait: no longer a connection
        };
        if out.len() >= MAX_ENTRIES {
            break;
        }
        out.insert(e);
    }
    out
}

fn is_listen(p: Proto, r: &Row) -> bool {
    match p {
        Proto::Tcp => r.state == TCP_LISTEN,
        Proto::Udp => r.state == UDP_UNCONNECTED && unspecified(&r.remote) && r.local.port != 0,
    }
}

fn proto_code(p: Proto) -> u8 {
    match p {
        Proto::Tcp => 0,
        Proto::Udp => 1,
    }
}

/// What changed from `old` to `new`: removals first, then additions.
pub fn diff(old: &BTreeSet<Entry>, new: &BTreeSet<Entry>) -> Vec<(Change, Entry)> {
    let removed = old.difference(new).map(|e| (Change::Removed, e.clone()));
    let added = new.difference(old).map(|e| (Change::Added, e.clone()));
    removed.chain(added).collect()
}

/// Applies changes that were reported to the table they were made against.
pub fn apply(table: &mut BTreeSet<Entry>, changes: &[(Change, Entry)]) {
    for (c, e) in changes {
        match c {
            Change::Added => table.insert(e.clone()),
            Change::Removed => table.remove(e),
        };
    }
}

/// The changes from `old` to `new` as wire records.
pub fn changes(old: &BTreeSet<Entry>, new: &BTreeSet<Entry>) -> Vec<SocketChange> {
    diff(old, new).iter().map(|(c, e)| record(*c, e)).collect()
}

/// Every entry as `Added` (a snapshot).
pub fn snapshot(all: &BTreeSet<Entry>) -> Vec<SocketChange> {
    all.iter().map(|e| record(Change::Added, e)).collect()
}

/// One change as the wire carries it.
pub fn record(change: Change, e: &Entry) -> SocketChange {
    let process = super::fit(&e.process);
    SocketChange {
        change,
        kind: match e.kind {
            0 => SocketKind::Listen,
            1 => SocketKind::Outbound,
            _ => SocketKind::Inbound,
        },
        proto: if e.proto == 0 { Proto::Tcp } else { Proto::Udp },
        local: Endpoint {
            addr: to_addr(&e.local.0),
            port: e.local.1,
        },
        remote: e.remote.as_ref().map(|(a, p)| Endpoint {
            addr: to_addr(a),
            port: *p,
        }),
        uid: e.uid,
        process,
    }
}

/// Socket inode -> process name, kept between reads: the costly walk over
/// every process's file descriptors runs only when a socket appears whose
/// owner is not known yet.
pub type Owners = HashMap<u64, String>;

/// Reads the four tables and the inode owners under `root`.
pub fn read(root: &Path, owners_cache: &mut Owners, issues: &mut Vec<Issue>) -> BTreeSet<Entry> {
    let mut rows = Vec::new();
    // On the live system TCP comes from sock_diag (one kernel walk for both
    // families, only the states we use); /proc is the fallback and the
    // source for a snapshot root.
    let diag = if root == Path::new("/") {
        match super::sock_diag::tcp() {
            Ok(tcp) => {
                rows.extend(tcp.into_iter().map(|r| (Proto::Tcp, r)));
                true
            }
            Err(e) => {
                issues.push(Issue::new(
                    "sock_diag",
                    format!("{e}; reading /proc/net/tcp instead"),
                ));
                false
            }
        }
    } else {
        false
    };
    for (rel, proto) in [
        ("proc/net/tcp", Proto::Tcp),
        ("proc/net/tcp6", Proto::Tcp),
        ("proc/net/udp", Proto::Udp),
        ("proc/net/udp6", Proto::Udp),
    ] {
        if diag && proto == Proto::Tcp {
            continue;
        }
        let Ok(f) = std::fs::File::open(root.join(rel)) else {
            continue;
        }; // no IPv6, no UDP: fine
        let mut r = BufReader::new(f);
        let mut line = String::new();
        let mut bad = 0usize;
        loop {
            line.clear();
            match (&mut r).take(MAX_LINE).read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            match parse_row(&line) {
                Some(row) if rows.len() < MAX_ENTRIES * 4 => rows.push((proto, row)),
                Some(_) => {
                    issues.push(Issue::new(
                        "/proc/net/tcp",
                        format!("more than {} sockets: the rest ignored", MAX_ENTRIES * 4),
                    ));
                    break;
                }
                None if line.trim_start().starts_with("sl") => {}
                None => bad += 1,
            }
        }
        if bad > 0 {
            issues.push(Issue::new(
                "/proc/net",
                format!("{rel}: {bad} unreadable lines"),
            ));
        }
    }
    // Inbound connections are named after their listener, so only an unknown
    // listener or outbound socket makes the (costly) walk over all processes.
    let listening: BTreeSet<(u8, u16)> = rows
        .iter()
        .filter(|(p, r)| is_listen(*p, r))
        .map(|(p, r)| (proto_code(*p), r.local.port))
        .collect();
    let needs_owner = |(p, r): &&(Proto, Row)| {
        r.inode != 0 && (is_listen(*p, r) || !listening.contains(&(proto_code(*p), r.local.port)))
    };
    let unknown = rows
        .iter()
        .filter(needs_owner)
        .any(|(_, r)| !owners_cache.contains_key(&r.inode));
    if unknown {
        *owners_cache = owners(root, &rows, issues);
    }
    entries(&rows, owners_cache)
}

/// Maps socket inodes to process names by reading `/proc/<pid>/fd`. Without
/// CAP_DAC_READ_SEARCH (or CAP_SYS_PTRACE) only the agent's own user's
/// processes are visible: the rest stay unnamed and that is reported once.
fn owners(root: &Path, rows: &[(Proto, Row)], issues: &mut Vec<Issue>) -> HashMap<u64, String> {
    let wanted: std::collections::HashSet<u64> = rows
        .iter()
        .map(|(_, r)| r.inode)
        .filter(|&i| i != 0)
        .collect();
    let mut names = HashMap::new();
    let Ok(procs) = std::fs::read_dir(root.join("proc")) else {
        return names;
    };
    let mut denied = 0usize;
    let mut found = 0usize;
    for p in procs.filter_map(Result::ok) {
        if found == wanted.len() {
            break; // every socket has its owner
        }
        let pid = p.file_name();
        if !pid
            .to_str()
            .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            denied += 1;
            continue;
        };
        let mut name: Option<String> = None;
        for fd in fds.filter_map(Result::ok) {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            let Some(inode) = t
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse().ok())
            else {
                continue;
            };
            if wanted.contains(&inode) {
                let n = name.get_or_insert_with(|| process_name(&p.path()));
                if names.insert(inode, n.clone()).is_none() {
                    found += 1;
                }
            }
        }
    }
    // Sockets nobody could be found for are remembered as unnamed, so they
    // do not trigger a new walk at every read.
    for inode in wanted {
        names.entry(inode).or_default();
    }
    let unnamed = names.values().filter(|n| n.is_empty()).count();
    if denied > 0 && unnamed > 0 {
        issues.push(Issue::new(
            "/proc/<pid>/fd",
            format!("{denied} processes not readable: their sockets have no process name (needs CAP_DAC_READ_SEARCH or CAP_SYS_PTRACE)"),
        ));
    }
    names
}

fn process_name(pid_dir: &Path) -> String {
    if let Ok(c) = std::fs::read_to_string(pid_dir.join("comm")) {
        return c.trim_end_matches('\n').to_string();
    }
    std::fs::read_to_string(pid_dir.join("stat"))
        .ok()
        .and_then(|s| comm_from_stat(&s).map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod live_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::parse_row;

    #[test]
    fn live_table_matches_proc_net_tcp() {
        // Our own listener and an established pair must be there.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_s, _) = l.accept().unwrap();
        let cport = c.local_addr().unwrap().port();
        let rows = crate::sample::sock_diag::tcp().expect("sock_diag");
        assert!(rows
            .iter()
            .any(|r| r.state == 10 && r.local.port == port && r.inode != 0));
        assert!(rows
            .iter()
            .any(|r| r.state == 1 && r.local.port == cport && r.remote.port == port));
        // Listeners agree with /proc/net/tcp{,6} (they do not churn).
        let mut from_proc = std::collections::BTreeSet::new();
        for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
            for line in std::fs::read_to_string(f).unwrap_or_default().lines() {
                if let Some(r) = parse_row(line) {
                    if r.state == 10 {
                        from_proc.insert((format!("{:?}", r.local), r.inode));
                    }
                }
            }
        }
        let from_diag: std::collections::BTreeSet<_> = rows
            .iter()
            .filter(|r| r.state == 10)
            .map(|r| (format!("{:?}", r.local), r.inode))
            .collect();
        assert_eq!(from_diag, from_proc);
    }
}
