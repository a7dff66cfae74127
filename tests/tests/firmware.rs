//! What a vendor puts in a firmware image, run for real: `cross/install`
//! into a tree, the init script under BusyBox, the aarch64 agent under
//! qemu streaming to the host collector over loopback TLS, and a Debian
//! arm64 root filesystem (debootstrap) signed as a vendor would sign it and
//! then tampered with. The last two need the static builds: CI makes them
//! with `cargo run -p xtask -- dist` and sets `VIGIL_DIST`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use vigil_tests::collector::{cli, Collector};
use vigil_tests::{binary, dist, tempdir, Agent};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cross/install --destdir ROOT --agent AGENT EXTRA…`.
fn install(root: &Path, agent: &Path, extra: &[&str]) {
    let out = Command::new("sh")
        .arg(workspace().join("cross/install"))
        .args(["--destdir", s(root), "--agent", s(agent)])
        .args(extra)
        .output()
        .unwrap();
    ok(out, "cross/install");
}

/// `cross/install` with the vendor's public key and its two signed manifests.
fn install_signed(root: &Path, agent: &Path, pk: &Path, firmware: &Path, config: &Path) {
    install(
        root,
        agent,
        &[
            "--trust",
            s(pk),
            "--manifest",
            s(firmware),
            "--manifest",
            s(config),
        ],
    );
}

/// The vendor's build host (the host's own agent build): a signing key,
/// then a signed manifest of `class` over `includes` in `root`.
fn vendor_key(dir: &Path) -> (PathBuf, PathBuf) {
    let (sk, pk) = (dir.join("vendor.key"), dir.join("vendor.pub"));
    let out = Command::new(binary("vigil-agent"))
        .args(["manifest", "keygen", "--secret-key", s(&sk)])
        .args(["--public-key", s(&pk)])
        .output()
        .unwrap();
    ok(out, "manifest keygen");
    (sk, pk)
}

fn signed_manifest(sk: &Path, root: &Path, class: &str, includes: &[&str], out: &Path) {
    let mut cmd = Command::new(binary("vigil-agent"));
    cmd.args(["manifest", "build", "--root", s(root), "--class", class])
        .args([
            "--version",
            "1",
            "--issuer",
            "acme-imaging",
            "--model",
            "XR-9",
        ])
        .args(["--out", s(out)]);
    for i in includes {
        cmd.args(["--include", i]);
    }
    ok(cmd.output().unwrap(), "manifest build");
    let sign = Command::new(binary("vigil-agent"))
        .args(["manifest", "sign", "--secret-key", s(sk), s(out)])
        .output()
        .unwrap();
    ok(sign, "manifest sign");
}

/// Replaces `old` by `new` in `text`, failing if `old` is not there: the
/// edits a hospital makes to the installed default configuration.
fn edit(text: &str, old: &str, new: &str) -> String {
    assert!(text.contains(old), "the default agent.toml has no `{old}`");
    text.replacen(old, new, 1)
}

/// The installed `/etc/vigil/agent.toml` as the hospital completes it at
/// acceptance testing, with the paths moved under the test's `root` and
/// `state` (the agent observes `root`; its own files are host paths).
fn device_config(root: &Path, state: &Path, c: &Collector, integrity_s: u64) -> String {
    let text = std::fs::read_to_string(root.join("etc/vigil/agent.toml")).unwrap();
    let text = edit(&text, "root = \"/\"", &format!("root = \"{}\"", s(root)));
    let text = edit(
        &text,
        "state_dir = \"/var/lib/vigil-agent\"",
        &format!("state_dir = \"{}\"", s(state)),
    );
    let text = text.replace("\"/etc/vigil/", &format!("\"{}/etc/vigil/", s(root)));
    let text = edit(&text, "#[collector]\n", "[collector]\n");
    let text = edit(
        &text,
        "#address = \"vigil-collector.hospital.example:7443\"",
        &format!("address = \"{}\"", c.tls.as_deref().unwrap()),
    );
    let text = edit(
        &text,
        "#pin_sha256 = \"3f0c9a…\"",
        &format!("pin_sha256 = \"{}\"", c.pin.as_deref().unwrap()),
    );
    edit(
        &text,
        "interval_s = 3600\n# Hashing",
        &format!("interval_s = {integrity_s}\n# Hashing"),
    )
}

/// The device key line printed by `keygen`/`id`, enrolled in the collector.
fn enroll(cstate: &Path, id_output: &str, name: &str) {
    let key = id_output
        .lines()
        .find_map(|l| l.strip_prefix("key "))
        .expect("key line");
    let out = cli(
        cstate,
        &["enroll", "--key", key, "--name", name, "--model", "XR-9"],
    );
    ok(out, "enroll");
}

/// Whether `pid` is a live process (an exited one not yet reaped by init,
/// a zombie, is not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.starts_with(" Z"))
    })
}

fn alerts_with(c: &Collector, rule: &str, what: &str) -> usize {
    c.alerts()
        .iter()
        .filter(|a| a["rule"] == rule && a.to_string().contains(what))
        .count()
}

#[test]
fn the_init_script_starts_reloads_and_stops_the_installed_agent_under_busybox() {
    let dir = tempdir("initscript");
    let root = dir.join("root");
    install(&root, &binary("vigil-agent"), &[]);
    // The vendor signs what it ships and installs key and manifests.
    let (sk, pk) = vendor_key(&dir);
    let (fw, cfg) = (dir.join("firmware.manifest"), dir.join("config.manifest"));
    signed_manifest(&sk, &root, "firmware", &["/usr/sbin"], &fw);
    signed_manifest(&sk, &root, "config", &["/etc/init.d"], &cfg);
    install_signed(&root, &binary("vigil-agent"), &pk, &fw, &cfg);
    for f in [
        "etc/vigil/trust/vendor.pub",
        "etc/vigil/manifests/firmware.manifest.minisig",
        "etc/vigil/manifests/config.manifest",
    ] {
        assert!(root.join(f).is_file(), "{f} not installed");
    }
    // BusyBox's sh and applets are the whole userland the script gets.
    let bb = dir.join("busybox");
    std::fs::create_dir_all(&bb).unwrap();
    ok(
        Command::new("busybox")
            .args(["--install", "-s", s(&bb)])
            .output()
            .unwrap(),
        "busybox --install",
    );
    let (state, pidfile, log) = (
        dir.join("state"),
        dir.join("agent.pid"),
        dir.join("agent.log"),
    );
    let config = root.join("etc/vigil/agent.toml");
    // Found on the test's PATH; the script itself gets only BusyBox's.
    let busybox = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join("busybox"))
        .find(|p| p.is_file())
        .expect("busybox (apt-get install busybox)");
    let init = |action: &str| {
        Command::new(&busybox)
            .arg("sh")
            .arg(root.join("etc/init.d/vigil-agent"))
            .arg(action)
            .env_clear()
            .env("PATH", &bb)
            .env("VIGIL_DAEMON", root.join("usr/sbin/vigil-agent"))
            .env("VIGIL_CONFIG", &config)
            .env("VIGIL_STATE", &state)
            .env("VIGIL_PIDFILE", &pidfile)
            .env("VIGIL_LOGFILE", &log)
            .env("VIGIL_LOG", "debug")
            .output()
            .unwrap()
    };

    // As shipped, before the hospital names its collector: start creates the
    // device key (first boot) and then refuses, saying why.
    let out = init("start");
    assert!(!out.status.success(), "start without a collector succeeded");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exited at start"),
        "{out:?}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("set [collector] (TCP) or [serial]"),
        "{logged}"
    );
    let key = std::fs::metadata(state.join("device.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );
    assert_eq!(init("status").status.code(), Some(3));

    // Acceptance testing: the collector enrolls the key, the hospital
    // completes the configuration; reinstalling keeps its edit.
    let cstate = dir.join("collector");
    let id = Command::new(root.join("usr/sbin/vigil-agent"))
        .args(["id", "--state-dir", s(&state)])
        .output()
        .unwrap();
    enroll(&cstate, &ok(id, "id"), "xr9-busybox");
    let c = Collector::start(&cstate, &["--listen", "127.0.0.1:0"]);
    let completed = device_config(&root, &state, &c, 3600);
    std::fs::write(&config, &completed).unwrap();
    install(&root, &binary("vigil-agent"), &[]);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), completed);

    let out = init("start");
    let said = ok(out, "start");
    assert!(said.contains("started (pid "), "{said}");
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The pid file names the agent itself, not a wrapper shell.
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        root.join("usr/sbin/vigil-agent")
    );
    assert!(
        c.wait_for(Duration::from_secs(30), |c| c
            .devices()
            .iter()
            .any(
                |d| d["name"] == "xr9-busybox" && d["frames_received"].as_u64() > Some(0)
            )),
        "{:#?}\n{}",
        c.devices(),
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(ok(init("start"), "second start").contains("already running"));
    let status = init("status");
    assert_eq!(status.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&status.stdout).contains(&format!("running (pid {pid})")));

    ok(init("reload"), "reload");
    assert!(
        c.wait_for(Duration::from_secs(10), |_| std::fs::read_to_string(&log)
            .unwrap()
            .contains("SIGHUP: configuration reloaded")),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(ok(init("stop"), "stop").contains("stopped"));
    assert!(!running(pid), "agent still running");
    assert!(!pidfile.exists());
    assert_eq!(init("status").status.code(), Some(3));
    // The signed manifests were in force and the tree was clean.
    assert_eq!(
        alerts_with(&c, "integrity.finding", ""),
        0,
        "{:#?}",
        c.alerts()
    );
    assert_eq!(c.stop(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The static aarch64 agent from `VIGIL_DIST` under `qemu-aarch64`.
fn aarch64_agent(dist: &Path) -> Command {
    let mut cmd = Command::new("qemu-aarch64");
    cmd.arg(dist.join("vigil-agent-aarch64-unknown-linux-musl"));
    cmd
}

fn skipped(test: &str) {
    vigil_tests::cannot_run(&format!(
        "{test}: needs VIGIL_DIST (cargo run -p xtask -- dist; .ci/test sets it)"
    ));
}

#[test]
fn the_aarch64_agent_under_qemu_streams_to_the_host_collector_over_tls() {
    let Some(dist) = dist() else {
        return skipped("aarch64 stream");
    };
    let dir = tempdir("aarch64-stream");
    let (state, cstate) = (dir.join("state"), dir.join("collector"));
    let keygen = aarch64_agent(&dist)
        .args(["keygen", "--state-dir", s(&state)])
        .output()
        .unwrap();
    let id = ok(keygen, "keygen under qemu");
    enroll(&cstate, &id, "xr9-aarch64");
    let c = Collector::start(&cstate, &["--listen", "127.0.0.1:0"]);
    let mut run = aarch64_agent(&dist);
    run.args(["run", "--state-dir", s(&state), "--interval-ms", "200"])
        .args(["--batch", "1", "--collector", c.tls.as_deref().unwrap()])
        .args(["--pin", c.pin.as_deref().unwrap()]);
    let log = dir.join("agent.log");
    let agent = Agent::spawn_logged(run, &log);
    assert!(
        c.wait_for(Duration::from_secs(60), |c| c
            .devices()
            .iter()
            .any(
                |d| d["name"] == "xr9-aarch64" && d["frames_received"].as_u64() >= Some(5)
            )),
        "{:#?}\n{}\n{}",
        c.devices(),
        std::fs::read_to_string(&log).unwrap(),
        c.log()
    );
    let out = c.cli(&["device", "xr9-aarch64", "--json"]);
    let d: Value = serde_json::from_str(&ok(out, "device --json")).unwrap();
    assert_eq!(d["state"], "approved", "{d:#}");
    assert_eq!(d["inventory"]["arch"], "aarch64", "{d:#}");
    assert!(d["latest_sample"]["memory"].is_object(), "{d:#}");
    let (code, _) = agent.stop();
    assert_eq!(code, Some(0), "{}", std::fs::read_to_string(&log).unwrap());
    assert_eq!(c.stop(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Debian 12 arm64 root filesystem: `debootstrap --foreign` (minbase and
/// openssh-server), every downloaded package unpacked. The second stage,
/// which runs the packages' scripts inside the tree, needs binfmt_misc and
/// is not run: the agent only reads the tree, and the files are the image.
fn debian_arm64_root(root: &Path) {
    let mirror = std::env::var("VIGIL_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let out = Command::new("debootstrap")
        .args(["--foreign", "--arch=arm64", "--variant=minbase"])
        .args(["--include=openssh-server", "bookworm", s(root), &mirror])
        .output()
        .expect("debootstrap (apt-get install debootstrap)");
    ok(out, "debootstrap");
    // The first stage unpacks only the required packages; the rest (sshd)
    // wait as .debs for the second stage. Unpack them as it would, minus
    // their maintainer scripts, and drop the download cache.
    let archives = root.join("var/cache/apt/archives");
    for deb in std::fs::read_dir(&archives).unwrap() {
        let deb = deb.unwrap().path();
        if deb.extension().is_some_and(|e| e == "deb") {
            let out = Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(root)
                .output()
                .unwrap();
            ok(out, &format!("dpkg-deb -x {}", deb.display()));
            std::fs::remove_file(&deb).unwrap();
        }
    }
    // The image's sshd configuration, as the vendor's recipe leaves it:
    // Debian's default file and a hardening drop-in.
    let ssh = root.join("etc/ssh");
    std::fs::create_dir_all(ssh.join("sshd_config.d")).unwrap();
    std::fs::copy(
        root.join("usr/share/openssh/sshd_config"),
        ssh.join("sshd_config"),
    )
    .unwrap();
    std::fs::write(
        ssh.join("sshd_config.d/50-vendor.conf"),
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin no\n",
    )
    .unwrap();
    // The running device's /proc: the agent samples it under its root.
    std::fs::remove_dir(root.join("proc")).unwrap();
    std::os::unix::fs::symlink("/proc", root.join("proc")).unwrap();
}

#[test]
fn a_signed_arm64_image_is_clean_and_its_tampering_reaches_the_collector() {
    let Some(dist) = dist() else {
        return skipped("arm64 image");
    };
    let dir = tempdir("arm64-image");
    let root = dir.join("rootfs");
    debian_arm64_root(&root);
    let agent_bin = dist.join("vigil-agent-aarch64-unknown-linux-musl");
    install(&root, &agent_bin, &[]);
    let (sk, pk) = vendor_key(&dir);
    let (fw, cfg) = (dir.join("firmware.manifest"), dir.join("config.manifest"));
    signed_manifest(
        &sk,
        &root,
        "firmware",
        &["/usr/bin", "/usr/sbin", "/usr/lib"],
        &fw,
    );
    signed_manifest(&sk, &root, "config", &["/etc/ssh"], &cfg);
    install_signed(&root, &agent_bin, &pk, &fw, &cfg);
    // Clean, as the aarch64 agent itself sees it.
    for m in ["firmware", "config"] {
        let out = aarch64_agent(&dist)
            .args(["manifest", "verify", "--public-key"])
            .arg(root.join("etc/vigil/trust/vendor.pub"))
            .args(["--root", s(&root)])
            .arg(root.join(format!("etc/vigil/manifests/{m}.manifest")))
            .output()
            .unwrap();
        ok(out, &format!("{m} manifest verify under qemu"));
    }

    let (state, cstate) = (dir.join("state"), dir.join("collector"));
    let keygen = aarch64_agent(&dist)
        .args(["keygen", "--state-dir", s(&state)])
        .output()
        .unwrap();
    enroll(&cstate, &ok(keygen, "keygen under qemu"), "xr9-image");
    let c = Collector::start(&cstate, &["--listen", "127.0.0.1:0"]);
    let config = dir.join("agent.toml");
    std::fs::write(&config, device_config(&root, &state, &c, 15)).unwrap();
    let log = dir.join("agent.log");
    let mut run = aarch64_agent(&dist);
    run.args(["run", "--config", s(&config)]);
    let agent = Agent::spawn_logged(run, &log);
    let logged = || std::fs::read_to_string(&log).unwrap();
    assert!(
        c.wait_for(Duration::from_secs(120), |c| logged()
            .contains("guard: full pass")
            && c.devices().iter().any(
                |d| d["name"] == "xr9-image" && d["frames_received"].as_u64() > Some(0)
            )),
        "{:#?}\n{}",
        c.devices(),
        logged()
    );
    let d: Value =
        serde_json::from_str(&ok(c.cli(&["device", "xr9-image", "--json"]), "device")).unwrap();
    assert_eq!(d["inventory"]["arch"], "aarch64", "{d:#}");
    assert!(
        d["inventory"]["os_release"]
            .as_str()
            .unwrap_or("")
            .contains("bookworm"),
        "{d:#}"
    );
    // The first pass's reports are in the archive (the two manifests'
    // Integrity frames and the Posture frame; each frame's alerts commit
    // with it), then: nothing found. The tampering below is the positive
    // control: the same pipeline then raises both kinds.
    let stored = |kind: &str| -> i64 {
        rusqlite::Connection::open(cstate.join("vigil.sqlite"))
            .and_then(|db| {
                db.query_row("SELECT count(*) FROM frames WHERE kind = ?1", [kind], |r| {
                    r.get(0)
                })
            })
            .unwrap_or(0)
    };
    assert!(
        c.wait_for(Duration::from_secs(120), |_| stored("integrity") >= 2
            && stored("posture") >= 1),
        "the first guard pass never reached the archive: {} integrity, {} posture frames\n{}",
        stored("integrity"),
        stored("posture"),
        logged()
    );
    assert_eq!(
        alerts_with(&c, "integrity.finding", ""),
        0,
        "{:#?}\n{}",
        c.alerts(),
        logged()
    );
    assert_eq!(
        alerts_with(&c, "posture.fail", "ssh."),
        0,
        "{:#?}",
        c.alerts()
    );

    // An attacker replaces a binary and re-enables password logins.
    let sshd = root.join("usr/sbin/sshd");
    let mut bytes = std::fs::read(&sshd).unwrap();
    bytes.extend_from_slice(b"implant");
    std::fs::write(&sshd, bytes).unwrap();
    let conf = root.join("etc/ssh/sshd_config");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("PasswordAuthentication yes\n{text}")).unwrap();
    assert!(
        c.wait_for(Duration::from_secs(120), |c| {
            alerts_with(c, "integrity.finding", "/usr/sbin/sshd") > 0
                && alerts_with(c, "integrity.finding", "/etc/ssh/sshd_config") > 0
                && alerts_with(c, "posture.fail", "ssh.password-auth") > 0
        }),
        "{:#?}\n{}",
        c.alerts(),
        logged()
    );
    let (code, _) = agent.stop();
    let text = logged();
    assert_eq!(code, Some(0), "{text}");
    for l in text.lines().filter(|l| l.contains("guard: ")) {
        eprintln!("{l}");
    }
    assert_eq!(c.stop(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
