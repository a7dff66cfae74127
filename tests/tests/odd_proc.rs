//! The real agent sampling a /proc that fights back: 100,000 sockets,
//! processes named with newlines, parentheses, 4 KiB of text or bytes that
//! are not UTF-8, stat files empty or cut short, and processes vanishing
//! and appearing while it reads. The tree is built by the test (`--root`),
//! its counters copied from this machine's /proc; a churn thread rewrites
//! it for as long as the agent runs. The agent must keep streaming, bound
//! what it reads, say what it left out, and stay small.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vigil_protocol::Body;
use vigil_tests::receiver::{listen, Policy};
use vigil_tests::{keygen, rss_kib, tempdir, Agent};

const SOCKETS: usize = 100_000;
const PROCS: u32 = 2_000;
/// Resident memory the agent may not pass while reading this tree.
const RSS_BOUND_KIB: u64 = 32 * 1024;

/// A `/proc/net/tcp` of `n` sockets: 500 listeners, the rest established
/// connections to distinct remote hosts; one garbage line; `salt` changes
/// the remotes so that two versions differ everywhere.
fn tcp_table(n: usize, salt: usize) -> String {
    let mut s = String::from(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
    );
    for i in 0..n {
        let inode = 100_000 + i;
        if i < 500 {
            let port = 10_000 + i;
            writeln!(s, "{i:4}: 00000000:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0 100 0 0 10 0").unwrap();
        } else {
            let host = (i + salt * 7919) as u32;
            let remote =
                u32::from_ne_bytes([10, (host >> 16) as u8, (host >> 8) as u8, host as u8]);
            writeln!(s, "{i:4}: 0200000A:C350 {remote:08X}:01BB 01 00000000:00000000 00:00000000 00000000  1000        0 {inode} 1 0 20 4 30 10 -1").unwrap();
        }
    }
    s.push_str("garbage that is not a socket line\n");
    s
}

/// `/proc/<pid>/stat` with `name` as the command (bytes, as the kernel
/// prints it) and enough fields after it.
fn stat(pid: u32, name: &[u8]) -> Vec<u8> {
    let mut v = format!("{pid} (").into_bytes();
    v.extend_from_slice(name);
    v.extend_from_slice(
        format!(") S 1 {pid} {pid} 0 -1 4194560 100 0 0 0 1 1 0 0 20 0 1 0 {} 1000000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n", 1000 + pid)
            .as_bytes(),
    );
    v
}

/// The odd names, by turn.
fn name(i: u32) -> Vec<u8> {
    match i % 10 {
        0 => b"a\nb".to_vec(),
        1 => b"x) (y".to_vec(),
        2 => b") S 1 2 3 (".to_vec(),
        3 => vec![b'A'; 4096],
        4 => vec![0xff, 0xfe, b'(', 0x80],
        5 => b"sshd".to_vec(),
        6 => "séance 🩺".as_bytes().to_vec(),
        7 => b"".to_vec(),
        8 => b"kworker/0:1-events".to_vec(),
        _ => format!("svc{i}").into_bytes(),
    }
}

/// Writes process `pid` (the `i`th) into `proc/`: some whole, some with an
/// empty or cut stat, some with no stat at all (vanished mid-way), some
/// whose `fd` is a file; each owns a few of the sockets.
fn write_process(proc: &Path, pid: u32, i: u32) {
    let dir = proc.join(pid.to_string());
    let _ = std::fs::create_dir_all(dir.join("fd"));
    let n = name(i);
    match i % 13 {
        0 => {} // vanished: the directory without its files
        1 => std::fs::write(dir.join("stat"), b"").unwrap(),
        2 => std::fs::write(dir.join("stat"), format!("{pid} (cut")).unwrap(),
        _ => std::fs::write(dir.join("stat"), stat(pid, &n)).unwrap(),
    }
    let mut comm = n.clone();
    comm.push(b'\n');
    std::fs::write(dir.join("comm"), comm).unwrap();
    std::fs::write(dir.join("status"), "Name:\tx\nUid:\t0\t0\t0\t0\n").unwrap();
    let mut cmdline = n;
    cmdline.extend_from_slice(b"\0--flag\0");
    std::fs::write(dir.join("cmdline"), cmdline).unwrap();
    if i % 17 == 0 {
        let _ = std::fs::remove_dir_all(dir.join("fd"));
        std::fs::write(dir.join("fd"), b"not a directory").unwrap();
    } else {
        for k in 0..3u32 {
            let inode = 100_000 + (i * 50 + k) as usize % SOCKETS;
            let _ = std::os::unix::fs::symlink(
                format!("socket:[{inode}]"),
                dir.join("fd").join(k.to_string()),
            );
        }
        let _ = std::os::unix::fs::symlink("/dev/null", dir.join("fd").join("9"));
    }
}

/// A root whose counters are this machine's and whose processes and
/// sockets are the odd ones.
fn odd_root(root: &Path) {
    let proc = root.join("proc");
    std::fs::create_dir_all(proc.join("net")).unwrap();
    for f in [
        "stat",
        "meminfo",
        "loadavg",
        "uptime",
        "diskstats",
        "net/dev",
    ] {
        std::fs::write(
            proc.join(f),
            std::fs::read(Path::new("/proc").join(f)).unwrap(),
        )
        .unwrap();
    }
    std::fs::write(proc.join("net/tcp"), tcp_table(SOCKETS, 0)).unwrap();
    std::fs::write(proc.join("net/tcp6"), tcp_table(0, 0)).unwrap();
    std::fs::write(
        proc.join("net/udp"),
        "  sl  local_address rem_address   st\n   0: 00000000:0202 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 99 2 0 0\n",
    )
    .unwrap();
    for i in 0..PROCS {
        write_process(&proc, 1000 + i, i);
    }
}

/// Rewrites the tree until `stop`: processes vanish and new ones appear,
/// the socket table is replaced by one that differs everywhere, the
/// counters move.
fn churn(root: PathBuf, stop: Arc<AtomicBool>, rounds: Arc<AtomicUsize>) {
    let proc = root.join("proc");
    let mut round = 0usize;
    while !stop.load(Ordering::SeqCst) {
        round += 1;
        let base = 1000 + (round as u32 % 50) * 40;
        for k in 0..40 {
            let _ = std::fs::remove_dir_all(proc.join((base + k).to_string()));
        }
        for k in 0..40 {
            write_process(&proc, 100_000 + round as u32 * 40 + k, round as u32 + k);
        }
        if round % 10 == 0 {
            let tmp = proc.join("net/tcp.new");
            std::fs::write(&tmp, tcp_table(SOCKETS, round)).unwrap();
            std::fs::rename(tmp, proc.join("net/tcp")).unwrap();
            for f in ["stat", "meminfo", "net/dev", "diskstats"] {
                let _ = std::fs::write(
                    proc.join(f),
                    std::fs::read(Path::new("/proc").join(f)).unwrap(),
                );
            }
        }
        rounds.store(round, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn odd_and_huge_proc_trees_never_stop_the_samplers() {
    let dir = tempdir("odd-proc");
    let root = dir.join("root");
    let t = Instant::now();
    odd_root(&root);
    eprintln!(
        "built the tree ({SOCKETS} sockets, {PROCS} processes) in {:?}",
        t.elapsed()
    );
    // A name the kernel could never print but a file can hold.
    assert!(std::fs::read(root.join("proc/1003/stat"))
        .unwrap()
        .windows(4096)
        .any(|w| w.iter().all(|&b| b == b'A')));

    let key = keygen(&dir.join("agent"));
    let server = listen(key, Policy::default(), true);
    let (stop, rounds) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let churner = {
        let (root, stop, rounds) = (root.clone(), Arc::clone(&stop), Arc::clone(&rounds));
        std::thread::spawn(move || churn(root, stop, rounds))
    };
    let mut agent = Agent::start(&[
        "--state-dir",
        dir.join("agent").to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "--collector",
        &server.address,
        "--pin",
        &server.pin,
        "--interval-ms",
        "100",
        "--batch",
        "5",
        "--sockets-interval-s",
        "1",
        "--sessions-interval-s",
        "1",
    ]);
    let pid = agent.0.id();
    let mut peak = 0;
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            agent.0.try_wait().unwrap().is_none(),
            "the agent exited on the odd tree"
        );
        peak = peak.max(rss_kib(pid));
    }
    stop.store(true, Ordering::SeqCst);
    churner.join().unwrap();
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");

    let frames = server.log.frames();
    let count = |f: fn(&Body) -> usize| frames.iter().map(|r| f(&r.body)).sum::<usize>();
    let samples = count(|b| match b {
        Body::Samples(s) => s.len(),
        _ => 0,
    });
    let socket_frames = count(|b| usize::from(matches!(b, Body::Sockets(_))));
    let changes = count(|b| match b {
        Body::Sockets(s) => s.changes.len(),
        _ => 0,
    });
    let named: std::collections::BTreeSet<String> = frames
        .iter()
        .filter_map(|r| match &r.body {
            Body::Sockets(s) => Some(s.changes.iter().map(|c| c.process.to_string())),
            _ => None,
        })
        .flatten()
        .collect();
    eprintln!(
        "{} rounds of churn; the agent sent {samples} samples, {socket_frames} socket frames ({changes} changes), peak RSS {peak} KiB; owners seen: {:?}",
        rounds.load(Ordering::SeqCst),
        named.iter().take(8).collect::<Vec<_>>()
    );
    for l in log.lines().filter(|l| !l.contains(" debug: ")).take(30) {
        eprintln!("  agent: {}", &l[..l.len().min(200)]);
    }
    // It kept sampling: 20 s at 100 ms, less start-up and slow reads.
    assert!(samples >= 100, "only {samples} samples");
    // It read the socket tables (bounded) and sent what changed.
    assert!(
        socket_frames >= 5 && changes >= 4096,
        "{socket_frames} frames, {changes} changes"
    );
    // No frame refused, none missing: the socket changes that did not fit
    // the queue waited for room instead.
    assert!(!log.contains("not queued"), "a frame was refused");
    let mut seqs: Vec<u64> = frames.iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs,
        (0..seqs.len() as u64).collect::<Vec<_>>(),
        "a hole in the sequence"
    );
    // It says what it left out, rather than silently.
    assert!(
        log.contains("sockets: the rest ignored"),
        "no word on the sockets left out:\n{}",
        &log[..log.len().min(4000)]
    );
    assert!(
        log.contains("unreadable lines"),
        "the garbage line went unsaid"
    );
    // Owners were found despite the odd names, and kept to the wire's size.
    assert!(
        named.iter().any(|n| n == "a\nb" || n == "x) (y"),
        "{named:?}"
    );
    assert!(named.iter().all(|n| n.len() <= 32));
    assert!(peak <= RSS_BOUND_KIB, "peak RSS {peak} KiB");
}
