//! Helpers for the end-to-end tests: build and locate the real binaries of
//! the workspace, and a test-side receiver that stands in for the collector
//! until it exists. Tests run the binaries as a user would; nothing here
//! reaches into their internals.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

pub mod collector;
pub mod netns;
pub mod receiver;
pub mod tls;
pub mod yang;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::sync::Once;

/// A test that cannot run its check (a tool, root or data missing). Under
/// CI (`CI` set, as `.ci/test` does) that is a failure naming the reason,
/// never a pass; elsewhere it says why and the test returns.
#[track_caller]
pub fn cannot_run(why: &str) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0") {
        panic!("cannot run this test's check under CI: {why}");
    }
    eprintln!("skipped (not under CI): {why}");
}

/// Path of a workspace binary (`vigil-agent`, `vigil-collector`), built on
/// first use: debug, or release with `VIGIL_TEST_PROFILE=release` (the
/// long soak).
pub fn binary(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let release = std::env::var("VIGIL_TEST_PROFILE").is_ok_and(|p| p == "release");
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // What cargo sets for the test process itself describes the tests
        // crate: ring's build script reruns when CARGO_MANIFEST_DIR changes,
        // and with it ring, rustls and both binaries were rebuilt (30 s) by
        // every test process.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_BIN_")
                || matches!(
                    &*k,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                )
            {
                cmd.env_remove(&*k);
            }
        }
        let status = cmd
            .args([
                "build",
                "--quiet",
                "-p",
                "vigil-agent",
                "-p",
                "vigil-collector",
            ])
            .args(release.then_some("--release"))
            .current_dir(&root)
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "building the binaries failed: {status:?}"
        );
    });
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    target
        .join(if release { "release" } else { "debug" })
        .join(name)
}

/// The folder of static release builds made by `cargo run -p xtask -- dist`
/// (CI sets `VIGIL_DIST`); the cross-architecture tests need it and say
/// so when it is not set.
pub fn dist() -> Option<PathBuf> {
    let d = PathBuf::from(std::env::var_os("VIGIL_DIST")?);
    assert!(
        d.join("SHA256SUMS").is_file(),
        "VIGIL_DIST={} has no SHA256SUMS: run `cargo run -p xtask -- dist` first",
        d.display()
    );
    Some(d)
}

/// What a process holds, from /proc: resident memory, threads, open files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub rss_kib: u64,
    pub threads: u64,
    pub fds: u64,
}

pub fn usage(pid: u32) -> Usage {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    Usage {
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("process fds")
            .count() as u64,
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    usage(pid).rss_kib
}

/// A fresh temporary directory for one test.
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vigil-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tempdir");
    d
}

/// Makes a device key in `dir` with the real agent and returns its public key.
pub fn keygen(dir: &std::path::Path) -> vigil_protocol::VerifyingKey {
    let mut cmd = Command::new(binary("vigil-agent"));
    cmd.arg("keygen").arg("--state-dir").arg(dir);
    keygen_with(cmd)
}

/// A device key as `enroll --key` takes it (`ed25519:<base64>`).
pub fn key_text(k: &vigil_protocol::VerifyingKey) -> String {
    let mut s = String::new();
    vigil_protocol::frame::write_public_key(&mut s, k).expect("key text");
    s
}

/// Runs a `vigil-agent keygen` command line and returns the key it made.
pub fn keygen_with(mut cmd: Command) -> vigil_protocol::VerifyingKey {
    let out = cmd.output().expect("run keygen");
    assert!(
        out.status.success(),
        "keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("key "))
        .expect("key line");
    vigil_protocol::frame::parse_public_key(key).expect("public key")
}

/// The real `vigil-agent run` as a child process (debug logging, stderr
/// captured); killed if the test ends early.
pub struct Agent(pub Child);

impl Agent {
    pub fn start(args: &[&str]) -> Agent {
        let child = Command::new(binary("vigil-agent"))
            .arg("run")
            .args(args)
            .env("VIGIL_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start agent");
        Agent(child)
    }

    /// Runs `cmd` (an agent command line, e.g. under qemu) with debug
    /// logging to the file `log`, which a test can read while it runs.
    pub fn spawn_logged(mut cmd: Command, log: &std::path::Path) -> Agent {
        let file = std::fs::File::create(log).expect("agent log file");
        let child = cmd
            .env("VIGIL_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start agent");
        Agent(child)
    }

    /// SIGTERM, then the exit code and what it logged.
    pub fn stop(mut self) -> (Option<i32>, String) {
        kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.0.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = std::mem::replace(&mut self.0, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
