//! What a baseline knows about itself, on a live device in network
//! namespaces (the real agent at 1 s, the real collector): a baseline of
//! 75 s is reported as low confidence in `baseline show` and when it is
//! approved; the same benign workload after approval raises no metric
//! alert; and a process holding about half of one core, inside the
//! learned range (the baseline saw a short burst above it) but far above
//! the learned typical level, is raised. Only addresses inside these
//! namespaces are used. One test, so nothing else of the suite loads the
//! machine's CPUs meanwhile (the device namespace shares them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::collector::Collector;
use vigil_tests::netns::{self, in_ns, Net, Plan};
use vigil_tests::{keygen, tempdir, Agent};

const DEVICE: &str = "10.79.0.2";
const HOSPITAL: &str = "10.79.0.1";
const INTERNET: &str = "203.0.113.30";
const LEARN: Duration = Duration::from_secs(75);
const BENIGN: Duration = Duration::from_secs(120);
const HOLD: Duration = Duration::from_secs(90);

/// A PACS service in the hospital: accepts, reads until the peer closes.
fn serve(ns: &str, addr: &str, stop: &Arc<AtomicBool>) {
    let (addr, stop) = (addr.parse::<SocketAddr>().unwrap(), Arc::clone(stop));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    in_ns(ns, move || {
        let l = TcpListener::bind(addr).unwrap();
        l.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        while !stop.load(Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    thread::spawn(move || {
                        s.set_nonblocking(false).unwrap();
                        let mut buf = vec![0u8; 65536];
                        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

/// The device's benign workload: a 10 KiB PACS upload every 3 s.
fn benign(net: &Net, how_long: Duration) {
    let start = Instant::now();
    let to: SocketAddr = format!("{HOSPITAL}:11112").parse().unwrap();
    let mut tick = 0u32;
    while start.elapsed() < how_long {
        if tick % 3 == 0 {
            in_ns(&net.dev, move || {
                let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
                s.write_all(&[0x5a; 10_240]).unwrap();
            })
            .join()
            .unwrap();
        }
        tick += 1;
        if let Some(wait) = Duration::from_secs(u64::from(tick)).checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
    }
}

/// Busy on one core for `busy` out of every `period`, until `stop`.
fn hold_cpu(busy: Duration, period: Duration, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let mut x = 0u64;
        while !stop.load(Relaxed) {
            let t = Instant::now();
            while t.elapsed() < busy {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            if let Some(rest) = period.checked_sub(t.elapsed()) {
                thread::sleep(rest);
            }
        }
        x
    })
}

fn metric_alerts(c: &Collector, after: i64) -> Vec<Value> {
    c.alerts()
        .into_iter()
        .filter(|a| a["id"].as_i64().unwrap_or(0) > after)
        .filter(|a| {
            a["rule"]
                .as_str()
                .is_some_and(|r| r.starts_with("baseline.metric-"))
        })
        .collect()
}

fn max_id(c: &Collector) -> i64 {
    c.alerts()
        .iter()
        .filter_map(|a| a["id"].as_i64())
        .max()
        .unwrap_or(0)
}

#[test]
fn a_short_baseline_says_so_and_a_held_level_inside_its_range_is_raised() {
    if !nix::unistd::geteuid().is_root() {
        return vigil_tests::cannot_run(
            "network namespaces need root (run the tests as root, as CI does)",
        );
    }
    let net = match Net::create(&Plan {
        tag: "vl",
        device: DEVICE,
        hospital: HOSPITAL,
        hospital_hosts: &[],
        blackholes: &[],
        internet: INTERNET,
    }) {
        Ok(n) => n,
        Err(e) => {
            return vigil_tests::cannot_run(&format!(
                "cannot create network namespaces here ({e})"
            ));
        }
    };
    let dir = tempdir("levels");
    let stop = Arc::new(AtomicBool::new(false));
    serve(&net.hosp, &format!("{HOSPITAL}:11112"), &stop);
    // As in the scenario test: the namespace shares the machine's disks,
    // whose I/O is not the device's.
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        "[detect]\nunwatched_metrics = [\"disk.*\", \"psi.io\", \"cpu.iowait\"]\n",
    )
    .unwrap();
    let hosp_exec = ["ip", "netns", "exec", net.hosp.as_str()];
    let c = Collector::start_with(
        &hosp_exec,
        &dir.join("collector"),
        &[
            "--listen",
            &format!("{HOSPITAL}:7443"),
            "--baseline-period-s",
            "86400",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let key = keygen(&dir.join("agent"));
    c.enroll(&key, "scanner", "CT-1");
    let cmd = netns::agent(
        &net.dev,
        &dir.join("agent"),
        &format!("{HOSPITAL}:7443"),
        c.pin.as_deref().unwrap(),
        &["--interval-ms", "1000", "--batch", "1"],
    );
    let agent = Agent::spawn_logged(cmd, &dir.join("agent.log"));
    let id = vigil_protocol::DeviceId::of(&key).to_string();
    assert!(
        c.wait_for(Duration::from_secs(20), |c| c
            .device(&id)
            .is_some_and(|d| d["frames_received"].as_u64().unwrap_or(0) > 2)),
        "the agent never reached the collector:\n{}",
        std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
    );

    // Acceptance testing: 75 s of benign work with one short burst of a
    // whole core, so the learned range reaches above what comes later.
    let burst = Arc::new(AtomicBool::new(false));
    let learning = thread::spawn({
        let burst = Arc::clone(&burst);
        move || {
            thread::sleep(LEARN / 2);
            let b = hold_cpu(
                Duration::from_millis(100),
                Duration::from_millis(100),
                Arc::clone(&burst),
            );
            thread::sleep(Duration::from_millis(1500));
            burst.store(true, Relaxed);
            b.join().unwrap();
        }
    });
    benign(&net, LEARN);
    learning.join().unwrap();
    let out = c.cli(&["baseline", "close", "scanner"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(
        &c.cli(&[
            "baseline",
            "show",
            "scanner",
            "--json",
            "--config",
            config.to_str().unwrap(),
        ])
        .stdout,
    )
    .unwrap();
    let cpu = shown["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "cpu.busy")
        .cloned()
        .unwrap_or_else(|| panic!("cpu.busy not learned: {shown:#}"));
    assert_eq!(cpu["confidence"], "low", "{cpu:#}");
    assert!(cpu["samples"].as_u64().unwrap() < 200, "{cpu:#}");
    let learned_max = cpu["max"].as_f64().unwrap();
    let learned_median = cpu["median"].as_f64().unwrap();
    let approve = c.cli(&["baseline", "approve", "scanner"]);
    assert!(approve.status.success());
    let said = String::from_utf8_lossy(&approve.stdout);
    assert!(
        said.contains("cpu.busy: low confidence"),
        "approval does not say the baseline is short: {said}"
    );

    // The same benign work, longer than the baseline: no metric alert.
    let approved = max_id(&c);
    benign(&net, BENIGN);
    let raised = metric_alerts(&c, approved);
    assert!(raised.is_empty(), "benign work raised: {raised:#?}");

    // About half of one core, held: inside the learned range (the burst),
    // far above the learned median.
    let cpus = thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let half_core = 50.0 / cpus;
    assert!(
        learned_max > learned_median + half_core,
        "the burst did not reach the learned range (max {learned_max}, median {learned_median})"
    );
    let (after, start) = (max_id(&c), Instant::now());
    let hold = Arc::new(AtomicBool::new(false));
    let holder = hold_cpu(
        Duration::from_millis(50),
        Duration::from_millis(100),
        Arc::clone(&hold),
    );
    let mut found = None;
    while start.elapsed() < HOLD {
        if let Some(a) = metric_alerts(&c, after).into_iter().find(|a| {
            a["evidence"]["metric"] == "cpu.busy" || a["evidence"]["metric"] == "cpu.user"
        }) {
            found = Some(a);
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    hold.store(true, Relaxed);
    holder.join().unwrap();
    let a = found.unwrap_or_else(|| {
        panic!(
            "half a core held for {HOLD:?} raised nothing; alerts: {:#?}\ncollector log:\n{}",
            c.alerts(),
            c.log()
        )
    });
    eprintln!(
        "held level raised {} after {:?}: {} / {}",
        a["rule"],
        start.elapsed(),
        a["evidence"]["detector"],
        a["evidence"]["seen"]
    );
    assert_ne!(
        a["rule"], "baseline.metric-deviation",
        "a single value left the learned range: the burst was not above the held level"
    );
    stop.store(true, Relaxed);
    drop(agent);
}
