//! The real `vigil-agent` streaming to a test receiver: over TLS 1.3 with a
//! pinned certificate, over plain TCP when explicitly allowed, and over a
//! serial pty pair made by `socat`; with acks, resend after a cut
//! connection, a refused wrong pin, and its identity and configuration
//! checks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vigil_protocol::Body;
use vigil_tests::receiver::{listen, serve, Hostile, Log, Policy, Received};
use vigil_tests::{binary, keygen, rss_kib, tempdir, Agent};

/// Starts the agent streaming over pinned TLS to `server`, with `extra` flags.
fn start_tls(
    dir: &std::path::Path,
    server: &vigil_tests::receiver::Server,
    extra: &[&str],
) -> Agent {
    let mut args = vec![
        "--state-dir",
        dir.to_str().unwrap(),
        "--collector",
        &server.address,
        "--pin",
        &server.pin,
    ];
    args.extend_from_slice(extra);
    Agent::start(&args)
}

/// Frames the agent's log says acks released (`ack N: M frames released`).
fn released(stderr: &str) -> usize {
    stderr
        .lines()
        .filter_map(|l| {
            l.split_once(": ")?
                .1
                .strip_suffix(" frames released")?
                .rsplit(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum()
}

fn samples_in(frames: &[Received]) -> usize {
    frames
        .iter()
        .map(|f| {
            if let Body::Samples(s) = &f.body {
                s.len()
            } else {
                0
            }
        })
        .sum()
}

/// Every sequence number that arrived or that a Gap names, sorted and
/// once each, and how many the Gaps named.
fn covered_by(frames: &[Received]) -> (Vec<u64>, u64) {
    let mut covered: Vec<u64> = frames.iter().map(|f| f.seq).collect();
    let mut gapped = 0;
    for f in frames {
        if let Body::Gap(g) = &f.body {
            for r in &g.ranges {
                covered.extend(r.first..r.first + r.count);
                gapped += r.count;
            }
        }
    }
    covered.sort_unstable();
    covered.dedup();
    (covered, gapped)
}

fn assert_contiguous(frames: &[Received]) {
    let mut seqs: Vec<u64> = frames.iter().map(|f| f.seq).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (0..seqs.len() as u64).collect::<Vec<_>>(),
        "every sequence number once, none missing"
    );
}

#[test]
fn streams_signed_samples_over_pinned_tls_and_stops_cleanly() {
    let dir = tempdir("tls");
    let key = keygen(&dir);
    let server = listen(key, Policy::default(), true);
    let agent = start_tls(&dir, &server, &["--interval-ms", "50", "--batch", "4"]);
    let got = server
        .log
        .wait_for(Duration::from_secs(20), |f| samples_in(f) >= 12);
    let (code, stderr) = agent.stop();
    assert!(got, "samples did not arrive: {stderr}");
    assert_eq!(code, Some(0), "SIGTERM must exit 0: {stderr}");
    let frames = server.log.frames();
    assert!(
        matches!(frames[0].body, Body::Hello(_)),
        "first frame is Hello"
    );
    assert_eq!(frames[0].seq, 0);
    let Body::Hello(h) = &frames[0].body else {
        unreachable!()
    };
    assert!(!h.kernel_release.is_empty() && h.cpus > 0 && !h.interfaces.is_empty());
    assert_contiguous(&frames);
    for f in &frames {
        if let Body::Samples(s) = &f.body {
            assert!(s.len() <= 4);
            for x in s.as_slice() {
                assert!(x.memory.total_kib > 0 && x.interval_ms > 0);
            }
        }
    }
    assert_eq!(
        server
            .log
            .rejected
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert!(released(&stderr) > 0, "acks were applied: {stderr}");
}

#[test]
fn resends_everything_unacked_after_the_connection_is_cut() {
    let dir = tempdir("resend");
    let key = keygen(&dir);
    let server = listen(
        key,
        Policy {
            cut_first_after: Some(3),
            ..Policy::default()
        },
        true,
    );
    let agent = start_tls(&dir, &server, &["--interval-ms", "40", "--batch", "2"]);
    let got = server.log.wait_for(Duration::from_secs(30), |f| {
        f.len() >= 12
            && server
                .log
                .connections
                .load(std::sync::atomic::Ordering::SeqCst)
                >= 2
    });
    let (code, stderr) = agent.stop();
    assert!(got, "no reconnect and resend: {stderr}");
    assert_eq!(code, Some(0));
    assert!(stderr.contains("link lost"), "{stderr}");
    assert_contiguous(&server.log.frames());
}

/// A receiver that stops reading after 5 frames (on its first connection,
/// or with `all` on every one), and a fast agent streaming to it; returns
/// once the receiver has hung.
fn hung_receiver(name: &str, all: bool) -> (vigil_tests::receiver::Server, Agent) {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempdir(name);
    let key = keygen(&dir);
    let server = listen(
        key,
        Policy {
            hang_after: Some(5),
            hang_all: all,
            ..Policy::default()
        },
        true,
    );
    let agent = start_tls(&dir, &server, &["--interval-ms", "20", "--batch", "1"]);
    assert!(
        server
            .log
            .wait_for(Duration::from_secs(30), |_| server.log.hung.load(SeqCst)
                == 1),
        "the receiver never hung"
    );
    (server, agent)
}

/// A hung collector host (its kernel acks until the socket buffers are full,
/// the process reads nothing): the agent's writes stall, it drops the link
/// after `WRITE_TIMEOUT` and delivers everything on a new one.
#[test]
fn a_hung_collector_is_left_and_everything_arrives_on_a_new_connection() {
    use std::sync::atomic::Ordering::SeqCst;
    let (server, agent) = hung_receiver("hung", false);
    let hung_at = Instant::now();
    let reconnected = server.log.wait_for(Duration::from_secs(120), |_| {
        server.log.connections.load(SeqCst) >= 2
    });
    let left_after = hung_at.elapsed();
    // Then the backlog arrives on the second connection.
    let n = server.log.frames().len();
    let caught_up = server
        .log
        .wait_for(Duration::from_secs(60), |f| f.len() >= n + 50);
    let (code, stderr) = agent.stop();
    assert!(
        reconnected,
        "the agent stayed on the hung connection: {stderr}"
    );
    assert!(caught_up, "nothing arrived after the reconnect: {stderr}");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("the collector took nothing for 4 s (hung or overloaded): reconnecting"),
        "{stderr}"
    );
    // Every sequence number arrived, or the queue overflowed while the
    // writes stalled and a Gap names it.
    let frames = server.log.frames();
    let (covered, gapped) = covered_by(&frames);
    let high = covered.last().copied().unwrap_or(0);
    assert_eq!(
        covered,
        (0..=high).collect::<Vec<_>>(),
        "every sequence number arrived or is named by a Gap"
    );
    eprintln!(
        "hung collector left after {left_after:.1?} (writes stall once the socket buffers fill, \
         then 4 s); {} frames arrived, {gapped} named by Gaps (the queue's budget ran out while \
         the writes stalled)",
        frames.len()
    );
}

/// Two collectors: the first hangs (it stops reading; its socket buffers
/// are far from full, so no write stalls), the agent leaves it once it has
/// acknowledged nothing for 15 s and streams to the failover; after
/// `--failback-s` there it tries the first again (which behaves on a new
/// connection). Every sequence number reaches one of the two or a Gap.
#[test]
fn a_hung_collector_is_left_for_the_failover_and_the_first_is_tried_again() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempdir("failover");
    let key = keygen(&dir);
    let first = listen(
        key,
        Policy {
            hang_after: Some(5),
            ..Policy::default()
        },
        true,
    );
    let second = listen(key, Policy::default(), true);
    let agent = start_tls(
        &dir,
        &first,
        &[
            "--interval-ms",
            "500",
            "--batch",
            "1",
            "--failover",
            &second.address,
            "--failover-pin",
            &second.pin,
            "--failback-s",
            "10",
        ],
    );
    let deadline = Duration::from_secs(120);
    assert!(
        first
            .log
            .wait_for(deadline, |_| first.log.hung.load(SeqCst) == 1),
        "the first collector never hung"
    );
    let hung_at = Instant::now();
    let failed_over = second.log.wait_for(deadline, |f| !f.is_empty());
    let failover_took = hung_at.elapsed();
    // Failing back: a second connection to the first collector, and frames
    // on it.
    let on_first = first.log.frames().len();
    let failed_back = first.log.wait_for(deadline, |f| {
        first.log.connections.load(SeqCst) >= 2 && f.len() > on_first
    });
    let (code, stderr) = agent.stop();
    assert!(
        failed_over,
        "nothing reached the failover collector: {stderr}"
    );
    assert!(
        failed_back,
        "the agent never tried the first collector again: {stderr}"
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("no acknowledgement for 15 s")
            && stderr.contains(&format!("trying the collector at {}", second.address)),
        "the agent did not say why it left the first collector: {stderr}"
    );
    assert!(
        stderr.contains("trying the first collector again after 10 s"),
        "{stderr}"
    );
    // Nothing lost between them: every sequence number is at one of the
    // two collectors or named by a Gap.
    let mut frames = first.log.frames();
    frames.extend(second.log.frames());
    let (covered, _) = covered_by(&frames);
    let high = covered.last().copied().unwrap_or(0);
    assert!(high > 10, "too few frames to say anything: {stderr}");
    assert_eq!(
        covered,
        (0..=high).collect::<Vec<_>>(),
        "every sequence number reached a collector or a Gap"
    );
    eprintln!(
        "hung collector left and the failover receiving {failover_took:.1?} after the hang \
         (15 s of ack silence, then one connect)"
    );
}

/// SIGTERM while every connection hangs: the agent stops within its 5 s
/// flush budget (plus its own start-up of the stop), not when the peer
/// lets it.
#[test]
fn sigterm_is_honoured_while_the_collector_hangs() {
    // Kept alive: dropping the server would release the hung connections.
    let (_server, agent) = hung_receiver("hung-stop", true);
    // Let the writes stall for real before asking it to stop.
    std::thread::sleep(Duration::from_secs(6));
    let t = Instant::now();
    let (code, stderr) = agent.stop();
    let took = t.elapsed();
    eprintln!("SIGTERM to exit with a hung collector: {took:.1?}");
    assert_eq!(code, Some(0), "{stderr}");
    // The agent's own bound is 5 s; a loaded machine adds scheduling, not
    // waiting on the peer (which would be for ever).
    assert!(took < Duration::from_secs(30), "took {took:?}: {stderr}");
    assert!(stderr.contains("frames left unacknowledged"), "{stderr}");
}

/// A malicious collector on the first connection (acks for frames never
/// sent, acks going backwards, garbage, 1 MiB without a delimiter), a
/// well-behaved one after it cuts: the agent neither crashes nor loses a
/// frame nor grows.
#[test]
fn a_hostile_collector_cannot_crash_the_agent_lose_frames_or_grow_its_memory() {
    // First a well-behaved collector: the memory to compare with.
    let mut control = None;
    for hostile in [
        None,
        Some(Hostile::AcksAhead),
        Some(Hostile::AcksBackwards),
        Some(Hostile::Garbage),
        Some(Hostile::Huge),
    ] {
        let dir = tempdir(&format!("hostile-{hostile:?}"));
        let key = keygen(&dir);
        // The one acking ahead keeps the connection and reads everything:
        // an ack for a frame it did read is its word; the agent can only
        // refuse acks beyond what it sent.
        let cut = (hostile != Some(Hostile::AcksAhead)).then_some(40);
        let server = listen(
            key,
            Policy {
                cut_first_after: cut,
                hostile_first: hostile,
                ..Policy::default()
            },
            true,
        );
        let agent = start_tls(
            &dir,
            &server,
            &["--interval-ms", "25", "--batch", "1", "--no-sessions"],
        );
        let got = server.log.wait_for(Duration::from_secs(30), |f| {
            f.len() >= 120
                && server
                    .log
                    .connections
                    .load(std::sync::atomic::Ordering::SeqCst)
                    >= if cut.is_some() { 2 } else { 1 }
        });
        let rss = rss_kib(agent.0.id());
        let (code, stderr) = agent.stop();
        assert!(got, "{hostile:?}: the agent did not come back: {stderr}");
        assert_eq!(code, Some(0), "{hostile:?}: {stderr}");
        assert!(
            stderr.contains("0 frames left unacknowledged"),
            "{hostile:?}: {stderr}"
        );
        assert_contiguous(&server.log.frames());
        // Within 10 % (plus 512 KiB of noise) of the well-behaved run.
        let base = *control.get_or_insert(rss);
        assert!(
            rss <= base + base / 10 + 512,
            "{hostile:?}: RSS {rss} KiB against {base} KiB with a well-behaved collector"
        );
        eprintln!(
            "{hostile:?}: {} frames, none lost, RSS {rss} KiB",
            server.log.frames().len()
        );
    }
}

#[test]
fn a_certificate_that_does_not_match_the_pin_is_refused() {
    let dir = tempdir("pin");
    let key = keygen(&dir);
    let server = listen(key, Policy::default(), true);
    let wrong = "00".repeat(32);
    let agent = Agent::start(&[
        "--state-dir",
        dir.to_str().unwrap(),
        "--collector",
        &server.address,
        "--pin",
        &wrong,
        "--interval-ms",
        "50",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    let (code, stderr) = agent.stop();
    assert_eq!(code, Some(0));
    assert!(
        server.log.frames().is_empty(),
        "nothing may be sent to an unpinned collector"
    );
    assert!(stderr.contains("does not match the pinned"), "{stderr}");
}

#[test]
fn plain_tcp_only_when_asked_and_with_a_warning() {
    let dir = tempdir("plain");
    let key = keygen(&dir);
    let server = listen(key, Policy::default(), false);
    let agent = Agent::start(&[
        "--state-dir",
        dir.to_str().unwrap(),
        "--collector",
        &server.address,
        "--insecure-plaintext",
        "--interval-ms",
        "50",
        "--batch",
        "2",
    ]);
    let got = server
        .log
        .wait_for(Duration::from_secs(20), |f| samples_in(f) >= 4);
    let (_, stderr) = agent.stop();
    assert!(got, "{stderr}");
    assert!(stderr.contains("plain TCP without TLS"), "{stderr}");
}

#[test]
fn streams_over_a_serial_pty_pair() {
    let dir = tempdir("serial");
    let key = keygen(&dir);
    let (a, b) = (dir.join("ttyA"), dir.join("ttyB"));
    let mut socat = Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()))
        .stderr(Stdio::null())
        .spawn()
        .expect("socat is needed (apt-get install -y socat)");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(a.exists() && b.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::sync::Arc::new(Log::default());
    {
        let (log, b) = (std::sync::Arc::clone(&log), b.clone());
        std::thread::spawn(move || {
            let port = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&b)
                .expect("open pty");
            serve(port, &key, &log, Policy::default(), false);
        });
    }
    let agent = Agent::start(&[
        "--state-dir",
        dir.to_str().unwrap(),
        "--serial",
        a.to_str().unwrap(),
        "--baud",
        "115200",
        "--interval-ms",
        "50",
        "--batch",
        "3",
    ]);
    let got = log.wait_for(Duration::from_secs(20), |f| samples_in(f) >= 9);
    let (code, stderr) = agent.stop();
    let _ = socat.kill();
    let _ = socat.wait();
    assert!(got, "{stderr}");
    assert_eq!(code, Some(0));
    assert_contiguous(&log.frames());
    assert!(
        released(&stderr) > 0,
        "acks came back over the pty: {stderr}"
    );
}

#[test]
fn keys_are_private_and_never_overwritten() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir("keys");
    let key = keygen(&dir);
    let path = dir.join("device.key");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = Command::new(binary("vigil-agent"))
        .arg("keygen")
        .arg("--state-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    let id = Command::new(binary("vigil-agent"))
        .arg("id")
        .arg("--state-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&id.stdout).to_string();
    assert!(
        text.contains(&vigil_protocol::DeviceId::of(&key).to_string()),
        "{text}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let run = Command::new(binary("vigil-agent"))
        .args([
            "run",
            "--state-dir",
            dir.to_str().unwrap(),
            "--collector",
            "127.0.0.1:9",
            "--insecure-plaintext",
        ])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("readable by group or others"));
}

#[test]
fn bad_configuration_exits_78_naming_the_field() {
    let dir = tempdir("config");
    let cfg = dir.join("agent.toml");
    for (text, field) in [
        (
            "interval_ms = 1000\ncolour = \"blue\"\n[serial]\ndevice = \"/dev/null\"\n",
            "colour",
        ),
        ("batch = 99\n[serial]\ndevice = \"/dev/null\"\n", "batch"),
        ("[collector]\naddress = \"127.0.0.1:9\"\n", "pin_sha256"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let out = Command::new(binary("vigil-agent"))
            .args(["run", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{text}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(field),
            "{text}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_new_listener_is_reported_as_a_socket_change_with_its_process() {
    use vigil_protocol::body::{Change, SocketKind};
    let dir = tempdir("sockets");
    let key = keygen(&dir);
    let server = listen(key, Policy::default(), true);
    let agent = start_tls(
        &dir,
        &server,
        &[
            "--interval-ms",
            "100",
            "--batch",
            "1",
            "--sockets-interval-s",
            "1",
        ],
    );
    let snapshot = server.log.wait_for(Duration::from_secs(20), |f| {
        f.iter()
            .any(|r| matches!(&r.body, Body::Sockets(s) if s.snapshot))
    });
    assert!(snapshot, "no socket snapshot");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let me = std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim()
        .to_string();
    let seen = |change: Change| {
        move |f: &[Received]| {
            f.iter().any(|r| match &r.body {
                Body::Sockets(s) => s.changes.iter().any(|c| {
                    !s.snapshot
                        && c.change == change
                        && c.kind == SocketKind::Listen
                        && c.local.port == port
                }),
                _ => false,
            })
        }
    };
    let added = server
        .log
        .wait_for(Duration::from_secs(20), seen(Change::Added));
    drop(listener);
    let removed = server
        .log
        .wait_for(Duration::from_secs(20), seen(Change::Removed));
    let (_, stderr) = agent.stop();
    assert!(added, "new listener on {port} not reported: {stderr}");
    assert!(removed, "closed listener on {port} not reported");
    let frames = server.log.frames();
    let c = frames
        .iter()
        .find_map(|r| match &r.body {
            Body::Sockets(s) => s
                .changes
                .iter()
                .find(|c| c.local.port == port && c.change == Change::Added)
                .cloned(),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        c.process.as_str(),
        me,
        "owning process resolved from /proc/<pid>/fd"
    );
}

#[test]
fn sighup_reloads_a_good_config_and_keeps_the_running_one_on_a_bad_one() {
    let dir = tempdir("sighup");
    let key = keygen(&dir);
    let server = listen(key, Policy::default(), true);
    let cfg = dir.join("agent.toml");
    let good = |batch: u32| {
        format!(
            "state_dir = \"{}\"\ninterval_ms = 50\nbatch = {batch}\n[collector]\naddress = \"{}\"\npin_sha256 = \"{}\"\n",
            dir.display(),
            server.address,
            server.pin
        )
    };
    std::fs::write(&cfg, good(2)).unwrap();
    let agent = Agent::start(&["--config", cfg.to_str().unwrap()]);
    let pid = Pid::from_raw(agent.0.id() as i32);
    assert!(server
        .log
        .wait_for(Duration::from_secs(20), |f| samples_in(f) >= 4));
    // A broken file: the agent keeps streaming with what it has.
    std::fs::write(&cfg, "batch = \"many\"\n").unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    let before = samples_in(&server.log.frames());
    assert!(
        server
            .log
            .wait_for(Duration::from_secs(20), |f| samples_in(f) >= before + 6),
        "stopped after a bad reload"
    );
    // Nested 100,000 deep (the parser would overflow its stack): refused,
    // and the agent streams on.
    std::fs::write(&cfg, format!("batch = {}", "[".repeat(100_000))).unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    let before = samples_in(&server.log.frames());
    assert!(
        server
            .log
            .wait_for(Duration::from_secs(20), |f| samples_in(f) >= before + 6),
        "stopped after a deeply nested reload"
    );
    // A good file with a larger batch takes effect.
    std::fs::write(&cfg, good(5)).unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    let n = server.log.frames().len();
    let five = server.log.wait_for(Duration::from_secs(20), |f| {
        f[n..]
            .iter()
            .any(|r| matches!(&r.body, Body::Samples(s) if s.len() == 5))
    });
    let (code, stderr) = agent.stop();
    assert_eq!(code, Some(0));
    assert!(
        stderr.contains("keeping the running configuration"),
        "{stderr}"
    );
    assert!(stderr.contains("configuration reloaded"), "{stderr}");
    assert!(stderr.contains("nested deeper than 32"), "{stderr}");
    assert!(five, "the reloaded batch size was not applied: {stderr}");
}
