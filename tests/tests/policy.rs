//! Network policy from an approved baseline (`vigil-collector policy`),
//! checked by the tools that will read it: every golden output of the
//! generators (`collector/testdata/policy/`) is accepted by `nft -c` and
//! by `yanglint` against the MUD and ACL YANG modules, and broken copies
//! are not; and, in network namespaces with the real agent and collector,
//! the ruleset made from a live baseline, loaded on the gateway, lets the
//! approved flows through and drops and counts an unapproved one in each
//! direction. Only addresses inside the namespaces are used.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::collector::Collector;
use vigil_tests::netns::{self, in_ns, Net, Plan};
use vigil_tests::{keygen, tempdir, yang, Agent};

const DEVICE: &str = "10.83.0.2";
const HOSPITAL: &str = "10.83.0.1";
const INTERNET: &str = "203.0.113.40";

fn golden() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../collector/testdata/policy")
}

fn nft_check(file: &Path) -> Result<(), String> {
    let out = Command::new("nft")
        .arg("-c")
        .arg("-f")
        .arg(file)
        .output()
        .map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Root (nft and namespaces need it), nft and yanglint with the modules.
fn tools() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err(
            "nft and network namespaces need root (run the tests as root, as CI does)".into(),
        );
    }
    Command::new("nft")
        .arg("--version")
        .output()
        .map_err(|e| format!("nft (Debian's nftables): {e}"))?;
    yang::available().map(|_| ())
}

#[test]
fn golden_policies_are_accepted_by_nft_and_yanglint_and_broken_copies_are_not() {
    if let Err(why) = tools() {
        return vigil_tests::cannot_run(&why);
    }
    let dir = tempdir("policy-golden");
    let mut seen = 0;
    for e in std::fs::read_dir(golden()).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        if name.ends_with(".nft") {
            nft_check(&path).unwrap_or_else(|e| panic!("nft -c {name}: {e}"));
            // A rule that cannot parse is refused: the check can fail.
            let broken = dir.join(&name);
            std::fs::write(
                &broken,
                text.replace("established,related", "established,relatd"),
            )
            .unwrap();
            assert!(nft_check(&broken).is_err(), "nft -c took a broken {name}");
            seen += 1;
        } else if name.ends_with(".mud.json") {
            yang::validate_mud(&path).unwrap();
            let doc: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(doc["ietf-mud:mud"]["mud-version"], 1);
            assert_eq!(
                doc["ietf-mud:mud"]["extensions"],
                serde_json::json!(["vigil-approval"])
            );
            // A policy naming an ACL that is not there, and a version out
            // of range, are refused by the YANG model.
            let mut bad = doc.clone();
            bad["ietf-mud:mud"]["from-device-policy"]["access-lists"]["access-list"][0]["name"] =
                "no-such-acl".into();
            let broken = dir.join(format!("leafref-{name}"));
            std::fs::write(&broken, bad.to_string()).unwrap();
            assert!(
                yang::validate_mud(&broken).is_err(),
                "{name}: a dangling ACL name passed"
            );
            let broken = dir.join(format!("version-{name}"));
            let mut bad = doc.clone();
            bad["ietf-mud:mud"]["mud-version"] = 300.into();
            std::fs::write(&broken, bad.to_string()).unwrap();
            assert!(
                yang::validate_mud(&broken).is_err(),
                "{name}: mud-version 300 passed"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 6, "three policies, each as a ruleset and a MUD file");
}

/// Accepts on `addr` inside `ns` and echoes what it reads, until `stop`.
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
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 || s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

/// From `ns`: connects to `to` within `patience`, writes and reads back
/// one line, holds the connection `hold`. Whether it got its echo.
fn exchange(ns: &str, to: &str, patience: Duration, hold: Duration) -> bool {
    let to: SocketAddr = to.parse().unwrap();
    in_ns(ns, move || {
        let Ok(mut s) = TcpStream::connect_timeout(&to, patience) else {
            return false;
        };
        s.set_read_timeout(Some(patience)).unwrap();
        let mut back = [0u8; 6];
        let ok = s.write_all(b"hello\n").is_ok()
            && s.read_exact(&mut back).is_ok()
            && &back == b"hello\n";
        thread::sleep(hold);
        ok
    })
    .join()
    .unwrap()
}

fn policy(c: &Collector, args: &[&str]) -> (i32, String, String) {
    let mut a = vec!["policy"];
    a.extend_from_slice(args);
    let out = c.cli(&a);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Packets counted by the table's rules whose comment contains `what`.
fn dropped(ns: &str, table: &str) -> u64 {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "nft", "-j", "list", "table", "inet", table,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .flat_map(|r| r["expr"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.get("counter").and_then(|c| c["packets"].as_u64()))
        .sum()
}

#[test]
fn a_ruleset_from_a_live_baseline_passes_the_approved_flows_and_drops_the_rest() {
    if let Err(why) = tools() {
        return vigil_tests::cannot_run(&why);
    }
    let net = match Net::create(&Plan {
        tag: "vp",
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
    let dir = tempdir("policy-live");
    let stop = Arc::new(AtomicBool::new(false));
    // The vendor's update server (443) and another service (8443) on the
    // Internet host; the device's vendor port (2222) and a port nobody
    // uses while it learns (2323).
    serve(&net.inet, &format!("{INTERNET}:443"), &stop);
    serve(&net.inet, &format!("{INTERNET}:8443"), &stop);
    serve(&net.dev, "0.0.0.0:2222", &stop);
    serve(&net.dev, "0.0.0.0:2323", &stop);
    let hosp_exec = ["ip", "netns", "exec", net.hosp.as_str()];
    let c = Collector::start_with(
        &hosp_exec,
        &dir.join("collector"),
        &[
            "--listen",
            &format!("{HOSPITAL}:7443"),
            "--baseline-period-s",
            "86400",
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
            "1000",
            "--batch",
            "1",
            "--sockets-interval-s",
            "1",
        ],
    );
    let _agent = Agent::spawn_logged(cmd, &dir.join("agent.log"));
    let id = vigil_protocol::DeviceId::of(&key).to_string();
    let frames = |c: &Collector| {
        c.device(&id)
            .and_then(|d| d["frames_received"].as_u64())
            .unwrap_or(0)
    };
    assert!(
        c.wait_for(Duration::from_secs(20), |c| frames(c) > 2),
        "the agent never reached the collector:\n{}",
        std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
    );

    // While learning there is no policy to make.
    let (code, _, err) = policy(&c, &["scanner", "--format", "nftables"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("still learning"), "{err}");
    let (code, _, err) = policy(&c, &["scanner", "--format", "pf"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("pf") && err.contains("nftables"), "{err}");

    // Acceptance testing: the device fetches updates, the vendor logs in,
    // until the baseline has seen both.
    let learned = |c: &Collector| -> Value {
        serde_json::from_slice(&c.cli(&["baseline", "show", "scanner", "--json"]).stdout)
            .unwrap_or(Value::Null)
    };
    let has = |v: &Value, set: &str, endpoint: &str| {
        v[set]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["endpoint"] == endpoint))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(exchange(
            &net.dev,
            &format!("{INTERNET}:443"),
            Duration::from_secs(5),
            Duration::from_millis(2500)
        ));
        assert!(exchange(
            &net.inet,
            &format!("{DEVICE}:2222"),
            Duration::from_secs(5),
            Duration::from_millis(2500)
        ));
        let v = learned(&c);
        if has(&v, "outbound", &format!("tcp {INTERNET}:443"))
            && has(&v, "inbound", &format!("tcp {INTERNET} -> 2222"))
            && has(&v, "listeners", "tcp/2323")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the baseline never saw the flows: {v:#}"
        );
    }
    for step in ["close", "approve"] {
        let out = c.cli(&["baseline", step, "scanner"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The neutral JSON and the MUD file say the same.
    let (code, json, err) = policy(&c, &["scanner", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["default"], "deny");
    assert_eq!(doc["addresses"], serde_json::json!([DEVICE]), "{doc:#}");
    let flow = |dir: &str, remote: &str, port: u16| {
        doc["flows"].as_array().unwrap().iter().any(|f| {
            f["direction"] == dir
                && f["remote"] == remote
                && f["port"] == port
                && f["protocol"] == "tcp"
        })
    };
    assert!(flow("outbound", &format!("{INTERNET}/32"), 443), "{doc:#}");
    assert!(flow("inbound", &format!("{INTERNET}/32"), 2222), "{doc:#}");
    assert!(
        !flow("outbound", &format!("{INTERNET}/32"), 8443),
        "{doc:#}"
    );
    assert!(
        doc["not_expressed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["entry"] == "listener tcp/2323"),
        "{doc:#}"
    );
    let (code, mud, err) = policy(
        &c,
        &[
            "scanner",
            "--format",
            "mud",
            "--mud-url",
            "https://vendor.example/ct-1.json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let mud_file = dir.join("scanner.mud.json");
    std::fs::write(&mud_file, &mud).unwrap();
    yang::validate_mud(&mud_file).unwrap();
    assert!(
        mud.contains("\"port\": 443") && mud.contains("\"port\": 2222"),
        "{mud}"
    );
    assert!(mud.contains("\"approved-by\""), "{mud}");

    // Before the policy, the gateway forwards everything.
    assert!(exchange(
        &net.dev,
        &format!("{INTERNET}:8443"),
        Duration::from_secs(5),
        Duration::ZERO
    ));
    assert!(exchange(
        &net.inet,
        &format!("{DEVICE}:2323"),
        Duration::from_secs(5),
        Duration::ZERO
    ));

    let (code, ruleset, err) = policy(&c, &["scanner", "--format", "nftables"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("listener tcp/2323"), "{err}");
    let file = dir.join("scanner.nft");
    std::fs::write(&file, &ruleset).unwrap();
    nft_check(&file).unwrap();
    let table = ruleset
        .lines()
        .find_map(|l| l.strip_prefix("table inet ").filter(|t| !t.ends_with('{')))
        .unwrap()
        .to_string();
    let load = Command::new("ip")
        .args(["netns", "exec", &net.hosp, "nft", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        load.status.success(),
        "{}",
        String::from_utf8_lossy(&load.stderr)
    );
    assert_eq!(dropped(&net.hosp, &table), 0);

    // Approved: the update server, the vendor's login.
    assert!(
        exchange(
            &net.dev,
            &format!("{INTERNET}:443"),
            Duration::from_secs(5),
            Duration::ZERO
        ),
        "the approved outbound flow was blocked:\n{ruleset}"
    );
    assert!(
        exchange(
            &net.inet,
            &format!("{DEVICE}:2222"),
            Duration::from_secs(5),
            Duration::ZERO
        ),
        "the approved inbound flow was blocked:\n{ruleset}"
    );
    // Not approved: dropped (a drop is silence, so the connect times out),
    // and counted.
    assert!(
        !exchange(
            &net.dev,
            &format!("{INTERNET}:8443"),
            Duration::from_secs(2),
            Duration::ZERO
        ),
        "an unapproved outbound flow passed:\n{ruleset}"
    );
    let after_out = dropped(&net.hosp, &table);
    assert!(after_out > 0, "the outbound drop was not counted");
    assert!(
        !exchange(
            &net.inet,
            &format!("{DEVICE}:2323"),
            Duration::from_secs(2),
            Duration::ZERO
        ),
        "an unapproved inbound flow passed:\n{ruleset}"
    );
    assert!(
        dropped(&net.hosp, &table) > after_out,
        "the inbound drop was not counted"
    );
    // Loading it again replaces the table (counters start over).
    let again = Command::new("ip")
        .args(["netns", "exec", &net.hosp, "nft", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(dropped(&net.hosp, &table), 0);
    // The agent's own link to the collector on the gateway is untouched.
    let before = frames(&c);
    assert!(
        c.wait_for(Duration::from_secs(20), |c| frames(c) > before + 2),
        "the agent stopped reaching the collector under the policy"
    );
    stop.store(true, Relaxed);
}
