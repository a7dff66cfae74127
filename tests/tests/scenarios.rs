//! Scenario tests with real traffic between network namespaces this test
//! makes (`ip netns`, veth): a device namespace running the real agent, a
//! hospital namespace with the real collector, a PACS service and an "EHR
//! workstation" listening on 445 and 3389, a file server that never
//! answers (a blackhole route), and an "Internet" host on a
//! TEST-NET-3 address (203.0.113.10). After an approved baseline of benign
//! activity, a benign replay of the same length must raise nothing, and
//! each attack must raise its alert within two sample intervals of the
//! device (1 s). Only addresses inside these namespaces are used.
//! Everything runs in one test so nothing else loads the machine meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::collector::{now_ms, Collector};
use vigil_tests::netns::{self, in_ns, Net, Plan};
use vigil_tests::{keygen, tempdir, Agent};

/// The agent's sampling and socket-table interval in this test.
const INTERVAL_MS: u64 = 1000;
/// Baseline and benign replay, each.
const PHASE: Duration = Duration::from_secs(35);

const DEVICE: &str = "10.77.0.2";
const HOSPITAL: &str = "10.77.0.1";
const EHR: &str = "10.77.1.5";
/// A file server that never answers (a blackhole route in the hospital).
const SILENT: &str = "10.77.1.6";
const INTERNET: &str = "203.0.113.10";

/// A service in `ns` on `addr`: accepts, reads until the peer closes.
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

/// From `ns`, connects to `to`, sends `bytes`, holds the connection open
/// for `hold`, then closes.
fn connect(ns: &str, to: &str, bytes: usize, hold: Duration) -> JoinHandle<()> {
    let to: SocketAddr = to.parse().unwrap();
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
        let chunk = vec![0x5au8; 65536];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        thread::sleep(hold);
    })
}

/// From `ns`, tries to connect to `to` for up to `patience` (nobody answers).
fn attempt(ns: &str, to: &str, patience: Duration) -> JoinHandle<()> {
    let to: SocketAddr = to.parse().unwrap();
    in_ns(ns, move || {
        assert!(
            TcpStream::connect_timeout(&to, patience).is_err(),
            "{to} answered"
        );
    })
}

/// The benign workload of the device, the same in the baseline and the
/// replay: a PACS upload every 3 s, a workstation query to the device's
/// DICOM port every 5 s, an admin CLI poll every second.
fn benign(net: &Net, c: &Collector, how_long: Duration) {
    let start = Instant::now();
    let mut tick = 0u64;
    let mut workers = Vec::new();
    while start.elapsed() < how_long {
        if tick % 3 == 0 {
            workers.push(connect(
                &net.dev,
                &format!("{HOSPITAL}:11112"),
                10_240,
                Duration::from_millis(1500),
            ));
        }
        if tick % 5 == 0 {
            workers.push(connect(
                &net.hosp,
                &format!("{DEVICE}:104"),
                512,
                Duration::from_millis(1000),
            ));
        }
        let _ = c.devices();
        tick += 1;
        let next = Duration::from_secs(tick);
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
    }
    for w in workers {
        w.join().unwrap();
    }
}

fn alerts(c: &Collector) -> Vec<Value> {
    c.alerts()
}

/// Waits for a new alert (id above `after`) whose rule starts with `rule`
/// (a whole rule id, or a prefix) and that satisfies `pred`; returns it.
fn wait_alert(c: &Collector, after: i64, rule: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(a) = alerts(c).into_iter().find(|a| {
            a["id"].as_i64().unwrap_or(0) > after
                && a["rule"].as_str().is_some_and(|r| r.starts_with(rule))
                && pred(a)
        }) {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "no {rule} alert within 15 s; alerts: {:#?}\ncollector log:\n{}",
            alerts(c),
            c.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn max_id(c: &Collector) -> i64 {
    alerts(c)
        .iter()
        .filter_map(|a| a["id"].as_i64())
        .max()
        .unwrap_or(0)
}

/// How long after `start_ms` the device saw what the alert is about.
fn delay(a: &Value, start_ms: u64) -> i64 {
    let at = a["evidence"]["seen_at_ms"]
        .as_u64()
        .or_else(|| a["evidence"]["sample_time_ms"].as_u64())
        .unwrap_or_else(|| panic!("no device time in {a:#}"));
    at as i64 - start_ms as i64
}

#[test]
fn attacks_raise_their_alerts_within_two_intervals_and_benign_replay_raises_none() {
    if !nix::unistd::geteuid().is_root() {
        return vigil_tests::cannot_run(
            "network namespaces need root (run the tests as root, as CI does)",
        );
    }
    let net = match Net::create(&Plan {
        tag: "vg",
        device: DEVICE,
        hospital: HOSPITAL,
        hospital_hosts: &[EHR],
        blackholes: &[SILENT],
        internet: INTERNET,
    }) {
        Ok(n) => n,
        Err(e) => {
            return vigil_tests::cannot_run(&format!(
                "cannot create network namespaces here ({e})"
            ));
        }
    };
    let dir = tempdir("scenarios");
    let stop = Arc::new(AtomicBool::new(false));
    // The hospital: PACS, the EHR workstation (SMB, RDP); the Internet host.
    serve(&net.hosp, &format!("{HOSPITAL}:11112"), &stop);
    serve(&net.hosp, &format!("{EHR}:445"), &stop);
    serve(&net.hosp, &format!("{EHR}:3389"), &stop);
    serve(&net.inet, &format!("{INTERNET}:8443"), &stop);
    // The device's own DICOM listener.
    serve(&net.dev, "0.0.0.0:104", &stop);

    // The device namespace shares the test machine's disks: their I/O (and
    // the I/O stall it causes) is the machine's, not the device's, so it is
    // learned and shown but not alerted on. A file, as a hospital would
    // have, read by `serve` and by the CLI alike.
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
        &[
            "--interval-ms",
            &INTERVAL_MS.to_string(),
            "--batch",
            "1",
            "--sockets-interval-s",
            "1",
        ],
    );
    let agent = Agent::spawn_logged(cmd, &dir.join("agent.log"));
    assert!(
        c.wait_for(Duration::from_secs(20), |c| c
            .device(&vigil_protocol::DeviceId::of(&key).to_string())
            .is_some_and(|d| d["frames_received"].as_u64().unwrap_or(0) > 2)),
        "the agent in the device namespace never reached the collector:\n{}",
        std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
    );

    // Acceptance testing: benign activity, then a person closes and approves.
    benign(&net, &c, PHASE);
    for step in ["close", "approve"] {
        let out = c.cli(&["baseline", step, "scanner"]);
        assert!(
            out.status.success(),
            "baseline {step}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
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
    assert_eq!(shown["phase"], "monitoring");
    let learned_metric = |m: &str| {
        shown["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["metric"] == m)
    };
    assert!(
        learned_metric("cpu.busy") && learned_metric(&format!("net.{}.tx_bytes", net.veth_dev)),
        "{shown:#}"
    );
    for m in shown["metrics"].as_array().unwrap() {
        let k = m["metric"].as_str().unwrap();
        let unwatched = k.starts_with("disk.") || k == "psi.io" || k == "cpu.iowait";
        assert_eq!(m["alerted"], !unwatched, "{m:#}");
    }
    let endpoints = |k: &str| -> Vec<String> {
        shown[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["endpoint"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(
        endpoints("listeners").contains(&"tcp/104".to_string()),
        "{shown:#}"
    );
    assert!(
        endpoints("outbound").contains(&format!("tcp {HOSPITAL}:11112")),
        "{shown:#}"
    );
    assert!(
        endpoints("outbound").contains(&format!("tcp {HOSPITAL}:7443")),
        "{shown:#}"
    );
    assert!(
        endpoints("inbound")
            .iter()
            .any(|e| e.starts_with(&format!("tcp {HOSPITAL} -> 104"))),
        "{shown:#}"
    );

    // The approved baseline as a MUD file the network team can load: valid
    // against the MUD and ACL YANG models, with the device's flows in it.
    let mud = c.cli(&["policy", "scanner", "--format", "mud"]);
    assert!(
        mud.status.success(),
        "{}",
        String::from_utf8_lossy(&mud.stderr)
    );
    let mud_file = dir.join("scanner.mud.json");
    std::fs::write(&mud_file, &mud.stdout).unwrap();
    let doc: Value = serde_json::from_slice(&mud.stdout).unwrap();
    let aces = doc["ietf-access-control-list:acls"]["acl"].to_string();
    for port in ["11112", "7443", "104"] {
        assert!(
            aces.contains(&format!("\"port\":{port}")),
            "no ACE for port {port}: {doc:#}"
        );
    }
    match vigil_tests::yang::available() {
        Ok(_) => vigil_tests::yang::validate_mud(&mud_file).unwrap(),
        Err(why) => vigil_tests::cannot_run(&why),
    }

    // The same benign activity again, as long: nothing may be raised.
    let approved = max_id(&c);
    benign(&net, &c, PHASE);
    let raised: Vec<Value> = alerts(&c)
        .into_iter()
        .filter(|a| a["id"].as_i64().unwrap_or(0) > approved)
        .collect();
    assert!(
        raised.is_empty(),
        "benign replay raised alerts: {raised:#?}"
    );

    let mut report = Vec::new();
    let mut check = |what: &str, a: &Value, start: u64| {
        let d = delay(a, start);
        report.push(format!(
            "{what}: {} after {d} ms",
            a["rule"].as_str().unwrap()
        ));
        // A sustained shift is a rolling mean of 24 samples by design: it
        // may take that window to fire; everything else, two intervals.
        let intervals = if a["rule"] == "baseline.metric-shift" {
            26
        } else {
            2
        };
        assert!(
            d <= intervals * INTERVAL_MS as i64,
            "{what}: the device saw it {d} ms after it began, more than {intervals} {INTERVAL_MS} ms intervals: {a:#}"
        );
    };

    // Lateral movement: SMB, then RDP, to the EHR workstation.
    for port in [445, 3389] {
        let (after, start) = (max_id(&c), now_ms());
        let w = connect(
            &net.dev,
            &format!("{EHR}:{port}"),
            100,
            Duration::from_secs(3),
        );
        let a = wait_alert(&c, after, "network.lateral-movement", |a| {
            a["evidence"]["remote"] == format!("{EHR}:{port}")
        });
        check(&format!("connection to {EHR}:{port}"), &a, start);
        w.join().unwrap();
    }

    // An SMB connection attempt nobody answers (a scan): SYN-SENT only.
    // A second host on the same port is the same sweep: the SMB alert is
    // updated (not a new one) and lists both hosts.
    let start = now_ms();
    let w = attempt(&net.dev, &format!("{SILENT}:445"), Duration::from_secs(3));
    let a = wait_alert(&c, 0, "network.lateral-movement", |a| {
        a["evidence"]["remote"] == format!("{SILENT}:445")
    });
    check(&format!("unanswered attempt to {SILENT}:445"), &a, start);
    assert_eq!(
        a["evidence"]["targets"],
        serde_json::json!([EHR, SILENT]),
        "{a:#}"
    );
    assert_eq!(a["count"], 2, "{a:#}");
    w.join().unwrap();

    // An inbound connection from the Internet host.
    let (after, start) = (max_id(&c), now_ms());
    let w = connect(
        &net.inet,
        &format!("{DEVICE}:104"),
        100,
        Duration::from_secs(3),
    );
    let a = wait_alert(&c, after, "network.internet-inbound", |a| {
        a["evidence"]["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with(INTERNET))
    });
    check("inbound from the Internet", &a, start);
    w.join().unwrap();

    // A new telnet-like listener on 23.
    let (after, start) = (max_id(&c), now_ms());
    let telnet = Arc::new(AtomicBool::new(false));
    serve(&net.dev, "0.0.0.0:23", &telnet);
    let a = wait_alert(&c, after, "network.new-listener", |a| {
        a["evidence"]["listener"] == "tcp/23"
    });
    check("new listener on 23", &a, start);
    let a = wait_alert(&c, after, "service.insecure-listener", |a| {
        a["evidence"]["listener"] == "tcp/23"
    });
    check("cleartext service on 23", &a, start);
    telnet.store(true, Relaxed);

    // A sustained CPU burn on every core.
    let (after, start) = (max_id(&c), now_ms());
    let burn = Arc::new(AtomicBool::new(false));
    let burners: Vec<_> = (0..thread::available_parallelism().map_or(2, |n| n.get()))
        .map(|_| {
            let b = Arc::clone(&burn);
            thread::spawn(move || {
                let mut x = 0u64;
                while !b.load(Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                x
            })
        })
        .collect();
    // Either CPU detector of the frozen baseline: a deviation (the burn
    // beyond the learned peaks) or, when other work on this machine's
    // shared CPUs put the learned peaks near 100 % during the baseline, a
    // sustained shift (the flat burn far above the learned means).
    let a = wait_alert(&c, after, "baseline.metric-", |a| {
        a["evidence"]["metric"] == "cpu.busy"
            && matches!(
                a["rule"].as_str(),
                Some("baseline.metric-deviation" | "baseline.metric-shift")
            )
    });
    check("CPU burn", &a, start);
    burn.store(true, Relaxed);
    for b in burners {
        b.join().unwrap();
    }

    // A burst of egress to a new destination.
    let (after, start) = (max_id(&c), now_ms());
    let w = connect(
        &net.dev,
        &format!("{INTERNET}:8443"),
        64 << 20,
        Duration::from_secs(3),
    );
    let tx = format!("net.{}.tx_bytes", net.veth_dev);
    let a = wait_alert(&c, after, "network.egress-volume", |a| {
        a["evidence"]["metric"] == tx
    });
    check("egress burst", &a, start);
    // The socket table follows the bytes: the same alert then names the
    // new destination.
    let dest = format!("tcp {INTERNET}:8443");
    wait_alert(&c, after, "network.egress-volume", |a| {
        a["evidence"]["recent_outbound"]
            .as_array()
            .is_some_and(|d| d.iter().any(|e| *e == dest))
    });
    let a = wait_alert(&c, after, "network.new-outbound", |a| {
        a["evidence"]["remote"] == format!("{INTERNET}:8443")
    });
    check("new outbound destination", &a, start);
    w.join().unwrap();

    for line in &report {
        println!("scenario: {line}");
    }
    stop.store(true, Relaxed);
    let _ = agent.stop();
    assert_eq!(c.stop(), Some(0));
}
