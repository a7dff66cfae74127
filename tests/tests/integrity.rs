//! Signed manifests and posture with the real `vigil-agent`: the vendor
//! tools and the real `minisign` accept each other's keys and signatures;
//! every kind of tampering in a small firmware tree is found and named;
//! rollback, untrusted keys and bad signatures are refused on the device;
//! each posture check passes on a hardened fixture tree and fails on a weak
//! one; real loopback listeners are seen; and a changed `sshd_config`
//! reaches the collector side within seconds although the full pass is
//! hourly (inotify).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_protocol::body::{CheckStatus, FindingKind};
use vigil_protocol::Body;
use vigil_tests::receiver::{listen, Policy};
use vigil_tests::{binary, keygen, tempdir, Agent};

fn agent(args: &[&str]) -> Output {
    Command::new(binary("vigil-agent"))
        .args(args)
        .output()
        .expect("run vigil-agent")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn write(root: &Path, rel: &str, content: &[u8], mode: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

const GOOD_SSHD: &str = "\
# vendor default
Include /etc/ssh/sshd_config.d/*.conf
PermitRootLogin prohibit-password
KbdInteractiveAuthentication no
PubkeyAuthentication yes
Match User vendor
    PasswordAuthentication yes
";

/// A small device image: binaries, a model file of a few MiB, SSH and a
/// systemd unit directory.
fn firmware_tree(root: &Path) {
    write(
        root,
        "usr/bin/monitor",
        b"#!/bin/sh\necho monitoring\n",
        0o755,
    );
    write(root, "usr/bin/helper", b"\x7fELF helper", 0o755);
    write(root, "usr/bin/infer", b"\x7fELF inference engine", 0o755);
    symlink("infer", root.join("usr/bin/infer-latest")).unwrap();
    let model: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write(root, "opt/model/chest-xray.onnx", &model, 0o644);
    write(root, "opt/model/labels.txt", b"normal\npneumonia\n", 0o644);
    write(root, "etc/ssh/sshd_config", GOOD_SSHD.as_bytes(), 0o644);
    write(
        root,
        "etc/ssh/sshd_config.d/10-vendor.conf",
        b"PasswordAuthentication no\n",
        0o644,
    );
    write(
        root,
        "etc/systemd/system/xray-ai.service",
        b"[Service]\nExecStart=/usr/bin/infer\n",
        0o644,
    );
}

fn build(root: &Path, out: &Path, class: &str, version: u64, extra: &[&str]) {
    let v = version.to_string();
    let mut args = vec![
        "manifest",
        "build",
        "--root",
        s(root),
        "--class",
        class,
        "--version",
        &v,
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    let o = agent(&args);
    assert!(
        o.status.success(),
        "build: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn sign(key: &Path, manifest: &Path) {
    let o = agent(&["manifest", "sign", "--secret-key", s(key), s(manifest)]);
    assert!(
        o.status.success(),
        "sign: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (sk, pk) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    );
    let o = agent(&[
        "manifest",
        "keygen",
        "--secret-key",
        s(&sk),
        "--public-key",
        s(&pk),
    ]);
    assert!(
        o.status.success(),
        "keygen: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (sk, pk)
}

/// `manifest verify --json`: exit code and the (kind, path) findings.
fn verify(pk: &Path, root: &Path, manifest: &Path) -> (i32, BTreeSet<(String, String)>) {
    let o = agent(&[
        "manifest",
        "verify",
        "--json",
        "--public-key",
        s(pk),
        "--root",
        s(root),
        s(manifest),
    ]);
    let code = o.status.code().unwrap();
    if code == 2 {
        return (2, BTreeSet::new());
    }
    let v: Value = serde_json::from_slice(&o.stdout).expect("verify --json");
    let found = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (code, found)
}

fn minisign(args: &[&str]) -> Output {
    Command::new("minisign")
        .args(args)
        .output()
        .expect("minisign (Debian package minisign)")
}

#[test]
fn minisign_and_vigil_accept_each_others_keys_and_signatures() {
    let dir = tempdir("minisign-interop");
    let root = dir.join("root");
    firmware_tree(&root);
    let m = dir.join("firmware.manifest");
    build(&root, &m, "firmware", 1, &["--include", "/usr"]);

    // Ours signs, minisign verifies.
    let (sk, pk) = keypair(&dir, "vendor");
    let mode = std::fs::metadata(&sk).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "secret key file mode");
    sign(&sk, &m);
    let o = minisign(&["-V", "-p", s(&pk), "-m", s(&m)]);
    assert!(
        o.status.success(),
        "minisign -V on our signature: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(verify(&pk, &root, &m).0, 0);

    // minisign signs with our secret key, we verify.
    std::fs::remove_file(format!("{}.minisig", s(&m))).unwrap();
    let o = minisign(&["-S", "-s", s(&sk), "-m", s(&m)]);
    assert!(
        o.status.success(),
        "minisign -S with our key: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(verify(&pk, &root, &m).0, 0);

    // A key made by minisign (-W: no password): minisign signs, we verify;
    // we sign with it, minisign verifies.
    let (msk, mpk) = (dir.join("m.key"), dir.join("m.pub"));
    let o = minisign(&["-G", "-W", "-p", s(&mpk), "-s", s(&msk)]);
    assert!(
        o.status.success(),
        "minisign -G: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = minisign(&["-S", "-s", s(&msk), "-m", s(&m)]);
    assert!(o.status.success());
    assert_eq!(verify(&mpk, &root, &m).0, 0);
    assert_eq!(
        verify(&pk, &root, &m).0,
        2,
        "signed by another key: an error"
    );
    sign(&msk, &m);
    let o = minisign(&["-V", "-p", s(&mpk), "-m", s(&m)]);
    assert!(
        o.status.success(),
        "minisign -V: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // One changed byte in the signed manifest: both refuse it.
    let mut text = std::fs::read(&m).unwrap();
    let at = text.iter().position(|&b| b == b'1').unwrap();
    text[at] = b'2';
    std::fs::write(&m, &text).unwrap();
    assert!(!minisign(&["-V", "-p", s(&mpk), "-m", s(&m)])
        .status
        .success());
    let o = agent(&[
        "manifest",
        "verify",
        "--public-key",
        s(&mpk),
        "--root",
        s(&root),
        s(&m),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bad-signature"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Unreadable manifest, missing signature: errors, not findings.
    let o = agent(&[
        "manifest",
        "verify",
        "--public-key",
        s(&pk),
        "--root",
        s(&root),
        "/nonexistent",
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn every_kind_of_tampering_is_found_and_named() {
    let dir = tempdir("tamper");
    let root = dir.join("root");
    firmware_tree(&root);
    let (sk, pk) = keypair(&dir, "vendor");
    let fw = dir.join("firmware.manifest");
    let model = dir.join("model.manifest");
    let cfg = dir.join("config.manifest");
    build(
        &root,
        &fw,
        "firmware",
        7,
        &[
            "--include",
            "/usr",
            "--include",
            "/etc/systemd",
            "--exclusive",
            "/usr/bin",
            "--exclusive",
            "/etc/systemd/system",
        ],
    );
    build(&root, &model, "model", 3, &["--include", "/opt/model"]);
    build(&root, &cfg, "config", 1, &["--include", "/etc/ssh"]);
    for m in [&fw, &model, &cfg] {
        sign(&sk, m);
        assert_eq!(verify(&pk, &root, m), (0, BTreeSet::new()), "clean tree");
    }
    let text = std::fs::read_to_string(&fw).unwrap();
    assert!(
        text.contains(" /usr/bin/infer-latest\n") && text.contains("link firmware 0777 0 0 infer "),
        "{text}"
    );

    // One byte of the model changed.
    let mut bytes = std::fs::read(root.join("opt/model/chest-xray.onnx")).unwrap();
    bytes[3 << 20] ^= 1;
    std::fs::write(root.join("opt/model/chest-xray.onnx"), bytes).unwrap();
    // A new set-uid bit; a new owner.
    std::fs::set_permissions(
        root.join("usr/bin/helper"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    nix::unistd::chown(
        &root.join("usr/bin/monitor"),
        Some(nix::unistd::Uid::from_raw(1000)),
        None,
    )
    .unwrap();
    // A unit removed, another slipped in; a tool dropped into /usr/bin.
    std::fs::remove_file(root.join("etc/systemd/system/xray-ai.service")).unwrap();
    write(
        &root,
        "etc/systemd/system/backdoor.service",
        b"[Service]\nExecStart=/usr/bin/nc -l\n",
        0o644,
    );
    write(&root, "usr/bin/nc", b"\x7fELF netcat", 0o755);
    // A symlink pointed elsewhere; the sshd configuration edited.
    std::fs::remove_file(root.join("usr/bin/infer-latest")).unwrap();
    symlink("/tmp/evil", root.join("usr/bin/infer-latest")).unwrap();
    std::fs::write(
        root.join("etc/ssh/sshd_config.d/10-vendor.conf"),
        "PasswordAuthentication yes\n",
    )
    .unwrap();
    // A file replaced by a directory.
    std::fs::remove_file(root.join("opt/model/labels.txt")).unwrap();
    std::fs::create_dir(root.join("opt/model/labels.txt")).unwrap();

    let set = |v: &[(&str, &str)]| -> BTreeSet<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        verify(&pk, &root, &fw),
        (
            1,
            set(&[
                ("metadata", "/usr/bin/helper"),
                ("metadata", "/usr/bin/monitor"),
                ("unexpected", "/usr/bin/nc"),
                ("type-changed", "/usr/bin/infer-latest"),
                ("missing", "/etc/systemd/system/xray-ai.service"),
                ("unexpected", "/etc/systemd/system/backdoor.service"),
            ])
        )
    );
    assert_eq!(
        verify(&pk, &root, &model),
        (
            1,
            set(&[
                ("modified", "/opt/model/chest-xray.onnx"),
                ("type-changed", "/opt/model/labels.txt")
            ])
        )
    );
    assert_eq!(
        verify(&pk, &root, &cfg),
        (
            1,
            set(&[("modified", "/etc/ssh/sshd_config.d/10-vendor.conf")])
        )
    );

    // The readable form names the change: expected and found mode.
    let o = agent(&[
        "manifest",
        "verify",
        "--public-key",
        s(&pk),
        "--root",
        s(&root),
        s(&fw),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(
            "metadata /usr/bin/helper: mode 0755 uid 0 gid 0 expected, mode 4755 uid 0 gid 0 found"
        ),
        "{out}"
    );

    // A 4 GiB sparse file in the model's place: another size, so modified
    // without being read (it was hashed in full, 15.6 s, before).
    let model_file = root.join("opt/model/chest-xray.onnx");
    std::fs::remove_file(&model_file).unwrap();
    std::fs::File::create(&model_file)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let started = std::time::Instant::now();
    let o = agent(&[
        "manifest",
        "verify",
        "--public-key",
        s(&pk),
        "--root",
        s(&root),
        s(&model),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    eprintln!("4 GiB sparse model: verified in {:?}", started.elapsed());
    assert!(
        out.contains("modified /opt/model/chest-xray.onnx: sha256 ")
            && out.contains("another size found (not hashed)"),
        "{out}"
    );
}

/// Writes sysctls, socket tables, SSH and account files for a posture
/// fixture; `good` selects the hardened or the weak variant.
fn posture_tree(root: &Path, good: bool) {
    let sysctls: &[(&str, &str, &str)] = &[
        ("kernel/randomize_va_space", "2", "1"),
        ("kernel/kptr_restrict", "1", "0"),
        ("kernel/dmesg_restrict", "1", "0"),
        ("kernel/yama/ptrace_scope", "1", "0"),
        ("net/ipv4/ip_forward", "0", "1"),
        ("net/ipv4/conf/all/accept_redirects", "0", "1"),
        ("net/ipv6/conf/all/accept_redirects", "0", "1"),
        ("fs/protected_symlinks", "1", "0"),
        ("fs/protected_hardlinks", "1", "0"),
        ("kernel/osrelease", "5.10.0-vendor", "4.9.337-old"),
    ];
    for (k, g, b) in sysctls {
        write(
            root,
            &format!("proc/sys/{k}"),
            format!("{}\n", if good { g } else { b }).as_bytes(),
            0o644,
        );
    }
    let head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
    let row = |i: usize, port: u16, st: &str| {
        format!("   {i}: 0100007F:{port:04X} 00000000:0000 {st} 00000000:00000000 00:00000000 00000000     0        0 {} 1 0000000000000000 100 0 0 10 0\n", 4000 + i)
    };
    let (mut tcp, mut udp) = (head.to_string(), head.to_string());
    tcp.push_str(&row(0, 22, "0A")); // ssh: fine
    tcp.push_str(&row(1, 443, "0A")); // https: fine
    if !good {
        for (i, p) in [23u16, 21, 80, 513, 5901, 445, 3389].iter().enumerate() {
            tcp.push_str(&row(i + 2, *p, "0A"));
        }
        udp.push_str(&row(20, 69, "07"));
    }
    write(root, "proc/net/tcp", tcp.as_bytes(), 0o644);
    write(root, "proc/net/udp", udp.as_bytes(), 0o644);
    if good {
        write(root, "etc/ssh/sshd_config", GOOD_SSHD.as_bytes(), 0o644);
        write(
            root,
            "etc/ssh/sshd_config.d/10-vendor.conf",
            b"PasswordAuthentication no\n",
            0o644,
        );
        write(
            root,
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1::/:/sbin/nologin\n",
            0o644,
        );
        write(
            root,
            "etc/shadow",
            b"root:$6$salt$hash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
            0o600,
        );
    } else {
        write(
            root,
            "etc/ssh/sshd_config",
            b"PasswordAuthentication yes\nChallengeResponseAuthentication yes\nPermitRootLogin yes\nPermitEmptyPasswords yes\nPubkeyAuthentication no\n",
            0o644,
        );
        write(
            root,
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\ntoor:x:0:0::/root:/bin/sh\n",
            0o644,
        );
        write(
            root,
            "etc/shadow",
            b"root:$6$salt$hash:19000:0:99999:7:::\nguest::19000:0:99999:7:::\n",
            0o600,
        );
    }
}

fn check_json(config: &Path) -> (i32, Value) {
    let o = agent(&["check", "--config", s(config), "--json"]);
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("check --json: {e}: {}", String::from_utf8_lossy(&o.stderr)));
    (o.status.code().unwrap(), v)
}

fn statuses(v: &Value) -> Vec<(String, String, String)> {
    v["posture"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
                c["evidence"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn each_posture_check_passes_on_a_hardened_tree_and_fails_on_a_weak_one() {
    let dir = tempdir("posture");
    for good in [true, false] {
        let root = dir.join(if good { "good" } else { "weak" });
        posture_tree(&root, good);
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "root = \"{}\"\nstate_dir = \"{}\"\n[posture]\nmin_kernel = \"4.19\"\n",
                s(&root),
                s(&dir.join("state"))
            ),
        )
        .unwrap();
        let (code, v) = check_json(&config);
        let all = statuses(&v);
        assert_eq!(all.len(), 25, "{all:?}");
        let want = if good { "pass" } else { "fail" };
        for (id, status, evidence) in &all {
            assert_eq!(
                status,
                want,
                "{id} on the {} tree: {evidence}",
                if good { "hardened" } else { "weak" }
            );
        }
        assert_eq!(code, if good { 0 } else { 1 });
        let ev = |id: &str| all.iter().find(|c| c.0 == id).unwrap().2.clone();
        if good {
            // The Include wins over the Match block and the default.
            assert!(
                ev("ssh.password-auth").contains("sshd_config.d/10-vendor.conf:1"),
                "{}",
                ev("ssh.password-auth")
            );
            assert!(ev("ssh.empty-passwords").contains("OpenSSH default"));
        } else {
            assert!(
                ev("service.telnet").contains("127.0.0.1:23"),
                "{}",
                ev("service.telnet")
            );
            assert!(
                ev("service.tftp").contains("udp 127.0.0.1:69"),
                "{}",
                ev("service.tftp")
            );
            assert!(ev("accounts.uid0").contains("toor"));
            assert!(ev("accounts.empty-password").contains("guest"));
            assert!(ev("kernel.release").contains("4.9.337-old, below 4.19"));
            assert!(
                ev("ssh.kbd-interactive").contains("kbdinteractiveauthentication yes"),
                "alias read"
            );
        }
    }
    // What the configuration allows is not a finding.
    let root = dir.join("weak");
    let config = dir.join("allow.toml");
    std::fs::write(
        &config,
        format!(
            "root = \"{}\"\nstate_dir = \"{}\"\n[posture]\nallow_ports = [80]\nroutes = true\nskip = [\"accounts.uid0\"]\n",
            s(&root),
            s(&dir.join("state"))
        ),
    )
    .unwrap();
    let all = statuses(&check_json(&config).1);
    let st = |id: &str| all.iter().find(|c| c.0 == id).unwrap().1.clone();
    assert_eq!(st("service.http"), "pass");
    assert_eq!(st("net.ip-forward"), "n/a");
    assert_eq!(st("accounts.uid0"), "n/a");
    assert_eq!(st("service.telnet"), "fail");
    // An unknown check id is a configuration error.
    std::fs::write(&config, "[posture]\nskip = [\"ssh.nonsense\"]\n").unwrap();
    assert_eq!(
        agent(&["check", "--config", s(&config)]).status.code(),
        Some(78)
    );
}

#[test]
fn real_loopback_listeners_on_insecure_ports_are_reported_with_their_process() {
    let tcp = std::net::TcpListener::bind("127.0.0.1:23");
    let udp = std::net::UdpSocket::bind("127.0.0.1:69");
    let (Ok(_tcp), Ok(_udp)) = (tcp, udp) else {
        return vigil_tests::cannot_run("ports 23/69 on loopback are taken or not bindable here");
    };
    let dir = tempdir("posture-live");
    let config = dir.join("agent.toml");
    std::fs::write(&config, format!("state_dir = \"{}\"\n", s(&dir))).unwrap();
    let all = statuses(&check_json(&config).1);
    let get = |id: &str| all.iter().find(|c| c.0 == id).unwrap().clone();
    let me = std::fs::read_to_string("/proc/self/comm").unwrap();
    let (_, status, evidence) = get("service.telnet");
    assert_eq!(status, "fail");
    assert!(
        evidence.contains("tcp 127.0.0.1:23 by ") && evidence.contains(me.trim()),
        "{evidence}"
    );
    let (_, status, evidence) = get("service.tftp");
    assert_eq!(status, "fail");
    assert!(evidence.contains("udp 127.0.0.1:69"), "{evidence}");
}

/// Agent configuration for a device tree with a trust directory.
fn device_config(dir: &Path, root: &Path, manifests: &[&Path], extra: &str) -> PathBuf {
    let list: Vec<String> = manifests.iter().map(|m| format!("\"{}\"", s(m))).collect();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "root = \"{}\"\nstate_dir = \"{}\"\n{extra}\n[integrity]\ntrust_dir = \"{}\"\nmanifests = [{}]\ninterval_s = 3600\n[posture]\ninterval_s = 3600\n",
            s(root),
            s(&dir.join("state")),
            s(&dir.join("trust")),
            list.join(", ")
        ),
    )
    .unwrap();
    config
}

fn integrity_findings(v: &Value) -> Vec<(String, String)> {
    v["integrity"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["findings"].as_array().unwrap().iter())
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn the_device_refuses_rollback_untrusted_keys_and_bad_signatures() {
    let dir = tempdir("rollback");
    let root = dir.join("root");
    firmware_tree(&root);
    posture_tree(&root, true);
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::fs::create_dir_all(dir.join("trust")).unwrap();
    let (sk, pk) = keypair(&dir, "vendor");
    std::fs::copy(&pk, dir.join("trust/vendor.pub")).unwrap();
    let m = dir.join("firmware.manifest");
    let config = device_config(&dir, &root, &[&m], "");
    // The device key signs the rollback record.
    vigil_tests::keygen(&dir.join("state"));
    let firmware = |version| {
        let extra = [
            "--include",
            "/usr",
            "--issuer",
            "Acme Imaging",
            "--scope",
            "xray-fw",
        ];
        build(&root, &m, "firmware", version, &extra);
    };

    firmware(2);
    sign(&sk, &m);
    let (code, v) = check_json(&config);
    assert_eq!(integrity_findings(&v), vec![], "{v}");
    assert_eq!(code, 0, "{v}");
    let record = std::fs::read_to_string(dir.join("state/manifest-versions")).unwrap();
    assert!(
        record.starts_with(&format!(
            "vigil-agent manifest-versions 1\nv\t2\tAcme Imaging\txray-fw\np\t{}\tfirmware\tAcme Imaging\txray-fw\nsig\t",
            s(&m)
        )),
        "{record}"
    );

    // An older, validly signed manifest: refused, and the record stays.
    firmware(1);
    sign(&sk, &m);
    let (code, v) = check_json(&config);
    let f = integrity_findings(&v);
    assert_eq!(f.len(), 1, "{v}");
    assert_eq!(f[0].0, "rollback");
    assert!(
        f[0].1.contains("version 1 offered, 2 accepted before"),
        "{}",
        f[0].1
    );
    assert_eq!(code, 1);
    assert_eq!(
        std::fs::read_to_string(dir.join("state/manifest-versions")).unwrap(),
        record
    );

    // A newer one signed by a key the device does not trust.
    firmware(3);
    let (other, _) = keypair(&dir, "other");
    sign(&other, &m);
    let (code, v) = check_json(&config);
    assert_eq!(
        integrity_findings(&v)
            .iter()
            .map(|f| f.0.as_str())
            .collect::<Vec<_>>(),
        ["untrusted-key"]
    );
    assert_eq!(code, 1);

    // Signed by the vendor, then edited.
    sign(&sk, &m);
    let text = std::fs::read_to_string(&m)
        .unwrap()
        .replace("version 3", "version 4");
    std::fs::write(&m, text).unwrap();
    let (code, v) = check_json(&config);
    assert_eq!(
        integrity_findings(&v)
            .iter()
            .map(|f| f.0.as_str())
            .collect::<Vec<_>>(),
        ["bad-signature"]
    );
    assert_eq!(code, 1);

    // Put right: version 3, properly signed, is accepted and recorded.
    firmware(3);
    sign(&sk, &m);
    assert_eq!(check_json(&config).0, 0);
    let record_path = dir.join("state/manifest-versions");
    assert!(std::fs::read_to_string(&record_path)
        .unwrap()
        .contains("\nv\t3\tAcme Imaging\txray-fw\n"));

    // Another validly signed manifest (a model's, of another scope, a
    // higher version) in the firmware manifest's place: refused.
    let good = std::fs::read(&m).unwrap();
    let good_sig = std::fs::read(dir.join("firmware.manifest.minisig")).unwrap();
    build(
        &root,
        &m,
        "model",
        9,
        &[
            "--include",
            "/usr",
            "--issuer",
            "Acme Imaging",
            "--scope",
            "tumour-net",
        ],
    );
    sign(&sk, &m);
    let (code, v) = check_json(&config);
    assert_eq!(
        integrity_findings(&v)
            .iter()
            .map(|f| f.0.as_str())
            .collect::<Vec<_>>(),
        ["scope-changed"],
        "{v}"
    );
    assert_eq!(code, 1);
    std::fs::write(&m, &good).unwrap();
    std::fs::write(dir.join("firmware.manifest.minisig"), &good_sig).unwrap();
    assert_eq!(check_json(&config).0, 0, "put back, clean again");

    // The rollback record itself: once the agent has run (boot counter 2),
    // a deleted or hand-edited record is a finding naming it on every
    // manifest, left as found, until an operator resets it.
    std::fs::write(dir.join("state/boot"), "2\n").unwrap();
    let kinds_at = |v: &Value| -> Vec<(String, String)> {
        v["integrity"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["findings"].as_array().unwrap().iter())
            .map(|f| {
                (
                    f["kind"].as_str().unwrap().to_string(),
                    f["path"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let record = std::fs::read_to_string(&record_path).unwrap();
    std::fs::remove_file(&record_path).unwrap();
    let (code, v) = check_json(&config);
    assert_eq!(code, 1, "{v}");
    assert_eq!(
        kinds_at(&v),
        vec![("missing".into(), s(&record_path).to_string())],
        "{v}"
    );
    assert!(
        !record_path.exists(),
        "a lost record is not silently recreated"
    );
    std::fs::write(&record_path, record.replace("v\t3\t", "v\t1\t")).unwrap();
    let (code, v) = check_json(&config);
    assert_eq!(code, 1, "{v}");
    assert_eq!(
        kinds_at(&v),
        vec![("bad-signature".into(), s(&record_path).to_string())],
        "{v}"
    );
    let o = agent(&[
        "manifest",
        "reset-record",
        "--state-dir",
        s(&dir.join("state")),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.join("state/manifest-versions.lost").exists());
    assert_eq!(check_json(&config).0, 0, "after the operator's reset");
    assert!(std::fs::read_to_string(&record_path)
        .unwrap()
        .contains("\nv\t3\t"));

    // Integrity cannot be switched off quietly: a deleted signature, and a
    // FIFO in place of the signature, the manifest or a trust key, are each
    // a finding naming the file, and the pass ends (a FIFO opened for
    // reading would block until a writer came: `timeout` would kill it).
    let bounded = |config: &Path| -> (i32, Value) {
        let o = Command::new("timeout")
            .args([
                "60",
                s(&binary("vigil-agent")),
                "check",
                "--config",
                s(config),
                "--json",
            ])
            .output()
            .unwrap();
        assert_ne!(o.status.code(), Some(124), "check hung");
        let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!("check --json: {e}: {}", String::from_utf8_lossy(&o.stderr))
        });
        (o.status.code().unwrap(), v)
    };
    let fifo = |p: &Path| {
        let _ = std::fs::remove_file(p);
        nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    };
    let sig = dir.join("firmware.manifest.minisig");
    let kept = std::fs::read(&sig).unwrap();
    std::fs::remove_file(&sig).unwrap();
    let (code, v) = bounded(&config);
    assert_eq!(code, 1, "{v}");
    assert_eq!(
        kinds_at(&v),
        vec![("missing".into(), s(&sig).to_string())],
        "{v}"
    );
    fifo(&sig);
    let (code, v) = bounded(&config);
    assert_eq!(code, 1, "{v}");
    assert_eq!(
        kinds_at(&v),
        vec![("type-changed".into(), s(&sig).to_string())],
        "{v}"
    );
    std::fs::remove_file(&sig).unwrap();
    std::fs::write(&sig, &kept).unwrap();
    let manifest = std::fs::read(&m).unwrap();
    fifo(&m);
    let (code, v) = bounded(&config);
    assert_eq!(code, 1, "{v}");
    assert_eq!(
        kinds_at(&v),
        vec![("type-changed".into(), s(&m).to_string())],
        "{v}"
    );
    std::fs::remove_file(&m).unwrap();
    std::fs::write(&m, &manifest).unwrap();
    assert_eq!(bounded(&config).0, 0, "put back, clean again");
    let key = dir.join("trust/vendor.pub");
    fifo(&key);
    let (code, v) = bounded(&config);
    assert_eq!(code, 2, "an unusable trust key is an error: {v}");
    assert_eq!(
        kinds_at(&v),
        vec![("untrusted-key".into(), s(&dir.join("trust")).to_string())],
        "and a finding the collector sees: {v}"
    );

    // A trust directory that cannot be read is an error (exit 2).
    std::fs::remove_dir_all(dir.join("trust")).unwrap();
    assert_eq!(check_json(&config).0, 2);
}

#[test]
fn a_changed_sshd_config_is_reported_within_seconds_with_hourly_passes() {
    let dir = tempdir("inotify");
    let root = dir.join("root");
    firmware_tree(&root);
    posture_tree(&root, true);
    let state = dir.join("state");
    let key = keygen(&state);
    std::fs::create_dir_all(dir.join("trust")).unwrap();
    let (sk, pk) = keypair(&dir, "hospital");
    std::fs::copy(&pk, dir.join("trust/hospital.pub")).unwrap();
    let m = dir.join("config.manifest");
    build(
        &root,
        &m,
        "config",
        1,
        &["--include", "/etc/ssh", "--issuer", "St Elsewhere"],
    );
    sign(&sk, &m);
    let server = listen(key, Policy::default(), true);
    let config = device_config(
        &dir,
        &root,
        &[&m],
        &format!(
            "[collector]\naddress = \"{}\"\npin_sha256 = \"{}\"\n",
            server.address, server.pin
        ),
    );
    // TOML tables must follow top-level keys: move [collector] after them.
    let text = std::fs::read_to_string(&config).unwrap();
    let (top, rest) = text.split_once("[collector]").unwrap();
    let (coll, tail) = rest.split_once("\n\n").unwrap();
    std::fs::write(&config, format!("{top}{tail}[collector]{coll}\n")).unwrap();

    let agent = Agent::start(&["--config", s(&config)]);
    let first = |frames: &[vigil_tests::receiver::Received]| {
        let hello = frames.iter().any(|f| matches!(&f.body, Body::Hello(h) if h.manifests.len() == 1 && h.manifests[0].version == 1));
        let integrity = frames.iter().any(|f| matches!(&f.body, Body::Integrity(i) if i.manifest.scope == "config" && i.checked > 0 && i.findings.is_empty()));
        let posture = frames.iter().any(|f| matches!(&f.body, Body::Posture(p) if p.results.iter().any(|c| c.id == "ssh.password-auth" && c.status == CheckStatus::Pass)));
        hello && integrity && posture
    };
    assert!(
        server.log.wait_for(Duration::from_secs(20), first),
        "first pass: {:?}",
        server.log.frames().len()
    );

    // An editor's save: write a new file and rename it over the old one.
    let changed = Instant::now();
    let p = root.join("etc/ssh/sshd_config.d/10-vendor.conf");
    std::fs::write(p.with_extension("tmp"), "PasswordAuthentication yes\n").unwrap();
    std::fs::rename(p.with_extension("tmp"), &p).unwrap();
    let seen = |frames: &[vigil_tests::receiver::Received]| {
        let modified = frames.iter().any(|f| matches!(&f.body, Body::Integrity(i) if i.findings.iter().any(|x| matches!(x.kind, FindingKind::Modified { .. }) && x.path.as_slice() == b"/etc/ssh/sshd_config.d/10-vendor.conf")));
        let failed = frames.iter().any(|f| matches!(&f.body, Body::Posture(p) if p.results.iter().any(|c| c.id == "ssh.password-auth" && c.status == CheckStatus::Fail)));
        modified && failed
    };
    assert!(
        server.log.wait_for(Duration::from_secs(15), seen),
        "change not reported"
    );
    eprintln!(
        "sshd_config change reported after {} ms (full pass interval: 1 h)",
        changed.elapsed().as_millis()
    );

    // The agent's own configuration is covered without any manifest.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("# edited on the device\n");
    std::fs::write(&config, text).unwrap();
    let own = config.to_str().unwrap().as_bytes().to_vec();
    let self_seen = |frames: &[vigil_tests::receiver::Received]| {
        frames.iter().any(|f| matches!(&f.body, Body::Integrity(i) if i.manifest.scope == "self"
            && i.findings.iter().any(|x| matches!(x.kind, FindingKind::Modified { .. }) && x.path.as_slice() == own.as_slice())))
    };
    assert!(
        server.log.wait_for(Duration::from_secs(15), self_seen),
        "own configuration change not reported"
    );
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// Lynis (Debian package `lynis`) checks the same kernel settings in its
/// KRNL-6000 test. On this host, for every sysctl where both tools want the
/// same exact value, Lynis lists it as differing exactly when our check
/// fails, and both read the same value. (Where Lynis is stricter, e.g.
/// `kernel.kptr_restrict` 2 against our >= 1, only the value is compared.)
#[test]
fn kernel_settings_agree_with_lynis_on_this_host() {
    let dir = tempdir("lynis");
    let report = dir.join("lynis.dat");
    let o = Command::new("lynis")
        .args([
            "audit",
            "system",
            "--tests",
            "KRNL-6000",
            "--quick",
            "--no-colors",
            "--report-file",
        ])
        .arg(&report)
        .arg("--log-file")
        .arg(dir.join("lynis.log"))
        .current_dir(&dir)
        .output()
        .expect("lynis (apt-get install -y lynis)");
    assert!(
        o.status.success(),
        "lynis: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(text.contains("tests_executed=KRNL-6000"), "{text}");
    // field -> (preferred, value) for every sysctl Lynis found different.
    let differing: std::collections::HashMap<String, (String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("details[]=KRNL-6000|sysctl|"))
        .filter_map(|l| {
            let get = |k: &str| {
                l.split(';')
                    .find_map(|f| f.strip_prefix(k))
                    .map(String::from)
            };
            Some((get("field:")?, (get("prefval:")?, get("value:")?)))
        })
        .collect();
    let config = dir.join("agent.toml");
    std::fs::write(&config, format!("state_dir = \"{}\"\n", s(&dir))).unwrap();
    let ours = statuses(&check_json(&config).1);
    let mut compared = 0;
    for (id, key, exact) in [
        ("kernel.aslr", "kernel.randomize_va_space", true),
        ("kernel.dmesg-restrict", "kernel.dmesg_restrict", true),
        ("fs.protected-symlinks", "fs.protected_symlinks", true),
        ("fs.protected-hardlinks", "fs.protected_hardlinks", true),
        (
            "net.ipv4-redirects",
            "net.ipv4.conf.all.accept_redirects",
            true,
        ),
        (
            "net.ipv6-redirects",
            "net.ipv6.conf.all.accept_redirects",
            true,
        ),
        ("kernel.kptr-restrict", "kernel.kptr_restrict", false),
    ] {
        let (_, status, evidence) = ours.iter().find(|c| c.0 == id).unwrap();
        if status == "n/a" {
            continue;
        }
        compared += 1;
        match differing.get(key) {
            Some((_, value)) => {
                assert!(
                    evidence.ends_with(&format!("= {value}")),
                    "{id}: Lynis read {value}, we {evidence}"
                );
                if exact {
                    assert_eq!(
                        status, "fail",
                        "{id}: Lynis says {key} differs, we {status} ({evidence})"
                    );
                }
            }
            None if exact => assert_eq!(
                status, "pass",
                "{id}: Lynis accepts {key}, we {status} ({evidence})"
            ),
            None => {}
        }
    }
    assert!(compared >= 5, "too few settings compared: {compared}");
}

/// The whole path to the SOC: a tampered model file and a rolled-back
/// configuration manifest on the device become `integrity.finding` alerts
/// in the real collector, naming the path and the finding; the failed
/// posture check becomes `posture.fail`.
#[test]
fn findings_reach_the_collector_as_alerts() {
    use vigil_tests::collector::{cli, Collector};
    let dir = tempdir("integrity-collector");
    let root = dir.join("root");
    firmware_tree(&root);
    posture_tree(&root, true);
    std::fs::write(root.join("proc/sys/kernel/dmesg_restrict"), "0\n").unwrap();
    let (state, cstate) = (dir.join("state"), dir.join("collector"));
    let key = keygen(&state);
    let mut pk_text = String::new();
    vigil_protocol::frame::write_public_key(&mut pk_text, &key).unwrap();
    let out = cli(
        &cstate,
        &[
            "enroll", "--key", &pk_text, "--name", "xray-7", "--model", "XR-9",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::create_dir_all(dir.join("trust")).unwrap();
    let (sk, pk) = keypair(&dir, "vendor");
    std::fs::copy(&pk, dir.join("trust/vendor.pub")).unwrap();
    let model = dir.join("model.manifest");
    build(&root, &model, "model", 5, &["--include", "/opt/model"]);
    sign(&sk, &model);
    // Accept version 5 once, then ship version 4: a rollback.
    let config = device_config(&dir, &root, &[&model], "");
    assert_eq!(check_json(&config).0, 1, "dmesg_restrict fails");
    build(&root, &model, "model", 4, &["--include", "/opt/model"]);
    sign(&sk, &model);
    let cfgm = dir.join("config.manifest");
    build(&root, &cfgm, "config", 1, &["--include", "/etc/ssh"]);
    sign(&sk, &cfgm);
    let mut bytes = std::fs::read(root.join("etc/ssh/sshd_config")).unwrap();
    bytes.extend_from_slice(b"# edited on the device\n");
    std::fs::write(root.join("etc/ssh/sshd_config"), bytes).unwrap();

    let c = Collector::start(&cstate, &["--listen", "127.0.0.1:0"]);
    let (addr, pin) = (c.tls.clone().unwrap(), c.pin.clone().unwrap());
    let config = device_config(&dir, &root, &[&model, &cfgm], "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}[collector]\naddress = \"{addr}\"\npin_sha256 = \"{pin}\"\n"),
    )
    .unwrap();
    let agent = Agent::start(&["--config", s(&config)]);
    let has = |c: &Collector, rule: &str, what: &str| {
        c.alerts()
            .iter()
            .any(|a| a["rule"] == rule && a.to_string().contains(what))
    };
    assert!(
        c.wait_for(Duration::from_secs(30), |c| {
            has(c, "integrity.finding", "/etc/ssh/sshd_config")
                && has(c, "integrity.finding", "rollback")
                && has(c, "posture.fail", "kernel.dmesg-restrict")
        }),
        "alerts: {:#?}\n{}",
        c.alerts(),
        c.log()
    );
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(c.stop(), Some(0));
}
