//! Vendor access, end to end with a real sshd: Debian's `openssh-server`
//! (key-only, `UsePAM no`) runs in a device namespace beside the real
//! agent; the collector runs in a hospital namespace whose access policy
//! lets user `vigil-vendor` in from the vendor's jump host (10.78.1.5, a
//! hospital address) during windows opened with `access open`. The test
//! opens a window, logs in from the jump host and runs `sudo -i sleep 30`,
//! and meanwhile logs in from an "Internet" host (203.0.113.20); once the
//! agent has reported the vendor's sessions open, the hospital closes the
//! window by hand (`access close`), so the root command outlasts it. Every
//! step waits on the event before it, so a loaded machine only makes it
//! slower (the window is not a wall-clock race). Then: both sessions are in
//! `access --json` with the right user, source and duration; the root
//! command is noted and tied to the jump-host session; the Internet
//! session is outside policy, and its alert and the Internet-inbound alert
//! name each other; the long session raised an overstay.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::collector::Collector;
use vigil_tests::netns::{self, Net, Plan};
use vigil_tests::{keygen, tempdir, Agent};

const DEVICE: &str = "10.78.0.2";
const HOSPITAL: &str = "10.78.0.1";
const JUMP: &str = "10.78.1.5";
const INTERNET: &str = "203.0.113.20";
const USER: &str = "vigil-vendor";
const SUDOERS: &str = "/etc/sudoers.d/vigil-test-vendor";

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The vendor's account on the device: key-only (the password field `*`
/// matches no password but is not "locked"), passwordless sudo. Removed on
/// drop, with anything else this test changed on the machine.
struct Vendor {
    made_utmp: bool,
}

impl Vendor {
    fn create(pubkey: &Path) -> Result<Vendor, String> {
        if run(Command::new("id").arg(USER)).is_err() {
            run(Command::new("useradd").args(["-m", "-s", "/bin/bash", USER]))?;
        }
        run(Command::new("usermod").args(["-p", "*", USER]))?;
        let home = PathBuf::from(format!("/home/{USER}/.ssh"));
        std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
        std::fs::copy(pubkey, home.join("authorized_keys")).map_err(|e| e.to_string())?;
        run(Command::new("chown").args(["-R", USER, &format!("/home/{USER}")]))?;
        std::fs::write(SUDOERS, format!("{USER} ALL=(ALL) NOPASSWD: ALL\n"))
            .map_err(|e| e.to_string())?;
        run(Command::new("chmod").args(["0440", SUDOERS]))?;
        // sshd records logins in utmp only if the file exists; a booted
        // system's init creates it, this test machine may not have.
        let made_utmp = !Path::new("/var/run/utmp").exists();
        if made_utmp {
            std::fs::write("/var/run/utmp", b"").map_err(|e| e.to_string())?;
        }
        std::fs::create_dir_all("/run/sshd").map_err(|e| e.to_string())?;
        Ok(Vendor { made_utmp })
    }
}

impl Drop for Vendor {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(SUDOERS);
        let _ = Command::new("pkill").args(["-KILL", "-u", USER]).status();
        let _ = Command::new("userdel").args(["-r", USER]).output();
        if self.made_utmp {
            let _ = std::fs::remove_file("/var/run/utmp");
        }
    }
}

fn missing_tools() -> Option<String> {
    let missing: Vec<&str> = [
        "/usr/sbin/sshd",
        "/usr/bin/ssh",
        "/usr/bin/sudo",
        "/usr/sbin/useradd",
    ]
    .into_iter()
    .filter(|p| !Path::new(p).exists())
    .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} not installed (apt-get install -y openssh-server openssh-client sudo)",
            missing.join(", ")
        )
    })
}

/// `ssh` from namespace `ns` (bound to `from`) to the device, running `cmd`
/// with a terminal.
fn ssh(ns: &str, from: &str, key: &Path, cmd: &str) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", ns, "ssh", "-tt", "-b", from, "-i"])
        .arg(key)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            &format!("{USER}@{DEVICE}"),
            cmd,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: std::process::Child, what: &str) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what}: ssh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn access(c: &Collector) -> Vec<Value> {
    let out = c.cli(&["access", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["user"] == USER || s["by_user"] == USER)
        .cloned()
        .collect()
}

#[test]
fn vendor_sessions_are_recorded_checked_against_policy_and_tied_to_the_network_view() {
    if !nix::unistd::geteuid().is_root() {
        return vigil_tests::cannot_run(
            "sshd, users and network namespaces need root (CI runs the tests as root)",
        );
    }
    if let Some(why) = missing_tools() {
        return vigil_tests::cannot_run(&why);
    }
    let net = match Net::create(&Plan {
        tag: "va",
        device: DEVICE,
        hospital: HOSPITAL,
        hospital_hosts: &[JUMP],
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
    let dir = tempdir("access");
    let client_key = dir.join("vendor_key");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&client_key))
    .unwrap();
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(dir.join("host_key")))
    .unwrap();
    let _vendor = Vendor::create(&dir.join("vendor_key.pub")).unwrap();

    // The device: sshd, key-only, on the device's address.
    let sshd_config = dir.join("sshd_config");
    std::fs::write(
        &sshd_config,
        format!(
            "Port 22\nListenAddress {DEVICE}\nHostKey {}\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin no\n\
             UsePAM no\nPidFile {}\n",
            dir.join("host_key").display(),
            dir.join("sshd.pid").display()
        ),
    )
    .unwrap();
    let sshd = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.dev,
            "/usr/sbin/sshd",
            "-D",
            "-e",
            "-f",
        ])
        .arg(&sshd_config)
        .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
        .spawn()
        .unwrap();
    let _sshd = Agent(sshd);

    // The hospital: the collector with the vendor's access policy.
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{HOSPITAL}:7443\"\n\n[access]\ntimezone = \"UTC\"\n\n[[access.policy]]\n\
             device = \"scanner\"\nusers = [\"{USER}\"]\nsources = [\"{JUMP}/32\"]\n"
        ),
    )
    .unwrap();
    let c = Collector::start_with(
        &net.exec(&net.hosp),
        &dir.join("collector"),
        &["--config", config.to_str().unwrap()],
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
            "--sockets-interval-s",
            "1",
            "--sessions-interval-s",
            "1",
        ],
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

    // An access window for the vendor's validation run, audited.
    let out = c.cli(&[
        "access",
        "open",
        "--device",
        "scanner",
        "--for",
        "10m",
        "--reason",
        "acceptance test: vendor validation run",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log: Value = serde_json::from_slice(&c.cli(&["admin-log", "--json"]).stdout).unwrap();
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "access-open"
                && e["detail"]["reason"] == "acceptance test: vendor validation run"),
        "{log:#}"
    );

    // Log in right after the window opens (a start dated up to 2 s before
    // it still counts: `access::START_TOLERANCE_MS`).
    let t0 = Instant::now();
    let jump = ssh(&net.hosp, JUMP, &client_key, "sudo -i sleep 30");
    std::thread::sleep(Duration::from_millis(500));
    let outside = ssh(&net.inet, INTERNET, &client_key, "sleep 4");
    // The vendor's login and root command, reported open and allowed ...
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let s = access(&c);
        let open = |pred: &dyn Fn(&Value) -> bool| s.iter().any(|s| s["open"] == true && pred(s));
        if open(&|s| s["remote"] == JUMP && s["verdict"] == "allowed")
            && open(&|s| s["kind"] == "privileged" && s["verdict"] == "allowed")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the vendor's sessions were not reported open and allowed: {s:#?}\nagent log:\n{}",
            std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // ... then the hospital closes the window while the vendor is still in.
    let out = c.cli(&["access", "close", "--device", "scanner"]);
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("1 access windows closed"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    finish(outside, "from the Internet host");
    let outside_took = t0.elapsed() - Duration::from_millis(500);
    finish(jump, "from the jump host");
    eprintln!(
        "ssh sessions took {:?} (jump host) and {outside_took:?} (Internet host)",
        t0.elapsed()
    );

    // Both closed in the record (the agent reads sessions every second).
    let deadline = Instant::now() + Duration::from_secs(15);
    let sessions = loop {
        let s = access(&c);
        if s.len() >= 3 && s.iter().all(|s| s["open"] == false) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "sessions not all recorded and closed: {s:#?}\nagent log:\n{}\nsshd log:\n{}",
            std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let table = String::from_utf8_lossy(&c.cli(&["access"]).stdout).into_owned();
    eprintln!("access:\n{table}");
    let find = |pred: &dyn Fn(&Value) -> bool| -> &Value {
        sessions
            .iter()
            .find(|s| pred(s))
            .unwrap_or_else(|| panic!("no such session in {sessions:#?}"))
    };
    let from_jump = find(&|s| s["kind"] == "remote" && s["remote"] == JUMP);
    let from_inet = find(&|s| s["kind"] == "remote" && s["remote"] == INTERNET);
    let root = find(&|s| s["kind"] == "privileged");
    let secs = |s: &Value| s["duration_s"].as_u64().unwrap();

    // The jump-host session: allowed by the opened window, right user and
    // source (with the client's port, from sshd's socket), about 30 s.
    assert_eq!(from_jump["user"], USER);
    assert_eq!(from_jump["verdict"], "allowed", "{from_jump:#}");
    assert_eq!(from_jump["process"], "sshd");
    assert!(
        from_jump["remote_port"].as_u64().unwrap() > 1024,
        "{from_jump:#}"
    );
    assert!((29..=40).contains(&secs(from_jump)), "{from_jump:#}");
    // The root command: noted, tied to the jump-host session.
    assert_eq!(
        (root["user"].as_str(), root["by_user"].as_str()),
        (Some("root"), Some(USER))
    );
    assert_eq!(root["started_from"], from_jump["session"], "{root:#}");
    // What runs as root when the agent first sees it: root's login shell
    // (`sudo -i` runs `bash -c 'sleep 30'`), or `sleep` once bash exec'd it.
    assert_eq!(root["process"], "sudo", "{root:#}");
    assert!(
        matches!(root["command"].as_str(), Some("bash" | "sleep")),
        "{root:#}"
    );
    assert!((28..=38).contains(&secs(root)), "{root:#}");
    // The Internet session: outside the policy, about 4 s.
    assert_eq!(from_inet["user"], USER);
    assert_eq!(from_inet["verdict"], "outside-policy", "{from_inet:#}");
    assert!(
        from_inet["violations"][0]
            .as_str()
            .unwrap()
            .contains(&format!("source {INTERNET}")),
        "{from_inet:#}"
    );
    assert!((3..=7).contains(&secs(from_inet)), "{from_inet:#}");

    let alerts = c.alerts();
    let alert = |id: &Value| -> &Value {
        alerts
            .iter()
            .find(|a| &a["id"] == id)
            .unwrap_or_else(|| panic!("alert {id} missing from {alerts:#?}"))
    };
    let rules = |s: &Value| -> Vec<String> {
        s["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| alert(id)["rule"].as_str().unwrap().to_string())
            .collect()
    };
    // The Internet session raised the out-of-policy alert and is tied to
    // the Internet-inbound alert of the same peer; each names the other.
    let inet_rules = rules(from_inet);
    assert!(
        inet_rules.contains(&"access.outside-policy".to_string()),
        "{inet_rules:?}"
    );
    assert!(
        inet_rules.contains(&"network.internet-inbound".to_string()),
        "{inet_rules:?}"
    );
    let linked = |rule: &str| -> &Value {
        from_inet["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(&alert)
            .find(|a| a["rule"] == rule)
            .unwrap()
    };
    let policy_alert = linked("access.outside-policy");
    let inbound = linked("network.internet-inbound");
    assert!(
        policy_alert["evidence"]["network_alerts"]
            .as_array()
            .is_some_and(|l| l.contains(&inbound["id"])),
        "{policy_alert:#}"
    );
    assert!(
        inbound["evidence"]["remote"]
            .as_str()
            .unwrap()
            .contains(INTERNET),
        "{inbound:#}"
    );
    // The jump host is inside the hospital: no Internet alert, no policy alert.
    let jump_rules = rules(from_jump);
    assert!(
        !jump_rules
            .iter()
            .any(|r| r == "access.outside-policy" || r == "network.internet-inbound"),
        "{jump_rules:?}"
    );
    // The root command: an informational alert; both long sessions overstayed.
    assert!(
        rules(root).contains(&"access.root-session".to_string()),
        "{root:#}"
    );
    assert!(
        jump_rules.contains(&"access.overstay".to_string()),
        "{jump_rules:?}"
    );
    assert!(from_jump["overstay"] == true && from_inet["overstay"] == false);

    // Both peers are also in the device's inbound endpoints (it is still
    // baselining: the socket table's inbound peers are being learned).
    let shown: Value =
        serde_json::from_slice(&c.cli(&["baseline", "show", "scanner", "--json"]).stdout).unwrap();
    let inbound_seen: Vec<&str> = shown["inbound"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["endpoint"].as_str())
        .collect();
    for peer in [JUMP, INTERNET] {
        assert!(
            inbound_seen
                .iter()
                .any(|e| e.contains(peer) && e.ends_with("-> 22")),
            "{peer} not among the inbound endpoints {inbound_seen:?}"
        );
    }

    // The readable record names both sources and the reason.
    assert!(
        table.contains(&format!("{INTERNET}:")) && table.contains(&format!("{JUMP}:")),
        "{table}"
    );
    assert!(
        table.contains("outside-policy") && table.contains("is not in the allowed sources"),
        "{table}"
    );
    // CSV for the compliance officer's spreadsheet.
    let csv = String::from_utf8_lossy(&c.cli(&["access", "--csv", "--device", "scanner"]).stdout)
        .into_owned();
    let all: Value =
        serde_json::from_slice(&c.cli(&["access", "--json", "--device", "scanner"]).stdout)
            .unwrap();
    assert_eq!(
        csv.lines().count(),
        1 + all.as_array().unwrap().len(),
        "{csv}"
    );
    assert!(
        csv.starts_with("device,device_name,session,kind,user"),
        "{csv}"
    );
    drop(agent);
}
