//! `cargo run -p xtask -- <task>`: Vigil's build tasks. The linker, C
//! compiler and runner for each target are set here, per invocation, and
//! not in a repo-wide `.cargo/config.toml` that would fight Yocto's or
//! Buildroot's own settings.
//!
//! * `dist [--out DIR]`: static release builds of the agent for aarch64 and
//!   x86_64 (musl, rust-lld) and armv7 (glibc, `crt-static`), the collector
//!   for x86_64 and aarch64; `SHA256SUMS`, a size report checked against
//!   `cross/expected/sizes.txt` (fails above +10 %), a CycloneDX SBOM beside
//!   each binary, a hardening report checked against
//!   `cross/expected/hardening.txt`; with the collector, its man pages and
//!   completions (`man`) in `collector-docs/`.
//! * `smoke [--dist DIR]`: runs each binary on its architecture (qemu-user
//!   for the foreign ones): `--version`, `sample --json`, a manifest build,
//!   sign and verify, clean and tampered; then the protocol crate's tests
//!   built for aarch64 musl and run under `qemu-aarch64` (the golden wire
//!   bytes must be the same on both architectures).
//! * `files`: checks the firmware-image files: both systemd units with
//!   `systemd-analyze verify` (any complaint fails) and `security
//!   --offline=yes` (fails above an exposure of 2.5), the init script and
//!   `cross/install` with `sh -n` and shellcheck, and that the Yocto and
//!   Buildroot recipes agree with the workspace (version, licence checksums,
//!   the crate list from `Cargo.lock`).
//! * `recipes`: regenerates the Yocto recipe's crate list from `Cargo.lock`.
//! * `man [--out DIR]`: the collector's man pages (one per command) and its
//!   bash, zsh and fish completions, generated from the clap definitions
//!   the binary parses with (`collector/src/cli/args.rs`, included here), in
//!   `DIR/man/` and `DIR/completions/` (default `target/dist/collector-docs`);
//!   `cross/install --collector-docs DIR` installs them. `files` generates
//!   them too and checks that bash completes a command and groff renders
//!   every page without a warning.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

#[allow(dead_code)] // the types are read only through clap's CommandFactory
#[path = "../../collector/src/cli/args.rs"]
mod collector_cli;

/// What is built: binary, target, C compiler, linker, extra rustflags, qemu.
struct Build {
    bin: &'static str,
    target: &'static str,
    cc: &'static str,
    linker: &'static str,
    rustflags: &'static str,
    /// Link with `cross/no-unwind-tables.ld` (the musl agents: panic =
    /// abort, so the unwind tables are dead weight on the device). Not for
    /// armv7, whose glibc start-up code and ARM EHABI index (`.ARM.exidx`)
    /// are another scheme; it is outside the size budget.
    no_unwind_tables: bool,
    /// How to run it here: a qemu-user command line, or empty for native.
    runner: &'static [&'static str],
}

const BUILDS: &[Build] = &[
    Build {
        bin: "vigil-agent",
        target: "aarch64-unknown-linux-musl",
        cc: "aarch64-linux-gnu-gcc",
        linker: "rust-lld",
        rustflags: "",
        no_unwind_tables: true,
        runner: &["qemu-aarch64"],
    },
    Build {
        bin: "vigil-agent",
        target: "x86_64-unknown-linux-musl",
        cc: "gcc",
        linker: "rust-lld",
        rustflags: "",
        no_unwind_tables: true,
        runner: &[],
    },
    Build {
        bin: "vigil-agent",
        target: "armv7-unknown-linux-gnueabihf",
        cc: "arm-linux-gnueabihf-gcc",
        linker: "arm-linux-gnueabihf-gcc",
        rustflags: "-C target-feature=+crt-static",
        no_unwind_tables: false,
        runner: &["qemu-arm"],
    },
    Build {
        bin: "vigil-collector",
        target: "x86_64-unknown-linux-gnu",
        cc: "gcc",
        linker: "gcc",
        rustflags: "",
        no_unwind_tables: false,
        runner: &[],
    },
    Build {
        bin: "vigil-collector",
        target: "aarch64-unknown-linux-gnu",
        cc: "aarch64-linux-gnu-gcc",
        linker: "aarch64-linux-gnu-gcc",
        rustflags: "",
        no_unwind_tables: false,
        runner: &["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"],
    },
];

/// Debian packages the builds and runs need: (command, or a file when it
/// starts with `/`, package). The cross C libraries' headers are only a
/// recommendation of the cross compilers, so they are named here.
const PACKAGES: &[(&str, &str)] = &[
    ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    ("arm-linux-gnueabihf-gcc", "gcc-arm-linux-gnueabihf"),
    (
        "/usr/aarch64-linux-gnu/include/stdio.h",
        "libc6-dev-arm64-cross",
    ),
    (
        "/usr/arm-linux-gnueabihf/include/stdio.h",
        "libc6-dev-armhf-cross",
    ),
    ("qemu-aarch64", "qemu-user"),
    ("readelf", "binutils"),
    ("shellcheck", "shellcheck"),
    ("systemd-analyze", "systemd"),
    ("groff", "groff-base"),
];

/// Highest `systemd-analyze security` exposure accepted for each unit.
const UNITS: &[(&str, f64)] = &[
    ("vigil-agent.service", 2.5),
    ("vigil-collector.service", 2.5),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn run(cmd: &mut Command) -> Result<std::process::Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn have(cmd: &str) -> bool {
    if cmd.starts_with('/') {
        return Path::new(cmd).is_file();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs the rustup targets and Debian packages that are missing.
fn install() -> Result<()> {
    let targets: BTreeSet<&str> = BUILDS.iter().map(|b| b.target).collect();
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add"]).args(&targets);
    run(&mut cmd)?;
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(c, _)| !have(c))
        .map(|(_, p)| *p)
        .collect();
    if !missing.is_empty() {
        let sudo: &[&str] = if nix_is_root() { &[] } else { &["sudo"] };
        let apt = |args: &[&str]| -> Result<()> {
            let mut c = Command::new(sudo.first().copied().unwrap_or("apt-get"));
            if !sudo.is_empty() {
                c.arg("apt-get");
            }
            c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            run(&mut c).map(|_| ())
        };
        apt(&["update", "-qq"])?;
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(&missing);
        apt(&args)?;
    }
    Ok(())
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn env_key(target: &str) -> String {
    target.replace('-', "_")
}

fn build(b: &Build) -> Result<PathBuf> {
    let root = workspace();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--locked",
            "-q",
            "-p",
            b.bin,
            "--target",
            b.target,
        ])
        .env(format!("CC_{}", env_key(b.target)), b.cc)
        .env(
            format!("CARGO_TARGET_{}_LINKER", env_key(b.target).to_uppercase()),
            b.linker,
        );
    let mut rustflags = b.rustflags.to_string();
    if b.no_unwind_tables {
        let script = root.join("cross/no-unwind-tables.ld");
        rustflags = format!(
            "{rustflags} -C link-arg=-T{} -C link-arg=--no-eh-frame-hdr",
            script.display()
        );
    }
    if !rustflags.trim().is_empty() {
        cmd.env(
            format!(
                "CARGO_TARGET_{}_RUSTFLAGS",
                env_key(b.target).to_uppercase()
            ),
            rustflags.trim(),
        );
    }
    run(&mut cmd)?;
    let dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    Ok(dir.join(b.target).join("release").join(b.bin))
}

fn sha256_hex(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Hardening properties read from the ELF headers with `readelf`.
fn hardening(path: &Path) -> Result<String> {
    let out = run(Command::new("readelf")
        .args(["-W", "-h", "-l", "-d", "-s", "--dyn-syms"])
        .arg(path))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let static_ = !text.contains("INTERP");
    let pie = text
        .lines()
        .any(|l| l.trim_start().starts_with("Type:") && l.contains("DYN"));
    let relro = if !text.contains("GNU_RELRO") {
        "none"
    } else if text.contains("BIND_NOW")
        || text.contains("Flags: NOW")
        || (static_ && !text.contains("(DYNAMIC)"))
    {
        "full"
    } else {
        "partial"
    };
    let nx = match text.lines().find(|l| l.contains("GNU_STACK")) {
        Some(l) if l.contains("RWE") => "no",
        Some(_) => "yes",
        None => "unknown",
    };
    let has_symbols = text.contains("Symbol table");
    let canary = if text.contains("__stack_chk_fail") || text.contains("__stack_chk_guard") {
        "yes"
    } else if has_symbols {
        "no"
    } else {
        "unknown (stripped)"
    };
    Ok(format!(
        "static={} pie={} relro={relro} nx={nx} stack-protector={canary}",
        if static_ { "yes" } else { "no" },
        if pie { "yes" } else { "no" },
    ))
}

/// A CycloneDX 1.5 SBOM of the crates linked into `bin` for `target`.
fn sbom(bin: &str, target: &str) -> Result<String> {
    let out = run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace())
            .args([
                "metadata",
                "--format-version",
                "1",
                "--locked",
                "--filter-platform",
                target,
            ]),
    )?;
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let packages: BTreeMap<&str, &serde_json::Value> = meta["packages"]
        .as_array()
        .context("metadata packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: BTreeMap<&str, &serde_json::Value> = meta["resolve"]["nodes"]
        .as_array()
        .context("metadata resolve")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let root = packages
        .iter()
        .find(|(_, p)| p["name"] == bin)
        .map(|(id, _)| *id)
        .context("binary package")?;
    // Normal (not dev, not build) dependencies, transitively.
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        for d in nodes
            .get(id)
            .and_then(|n| n["deps"].as_array())
            .into_iter()
            .flatten()
        {
            let normal = d["dep_kinds"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k["kind"].is_null()));
            if normal {
                if let Some(p) = d["pkg"].as_str() {
                    stack.push(p);
                }
            }
        }
    }
    let components: Vec<serde_json::Value> = seen
        .iter()
        .filter(|id| **id != root)
        .filter_map(|id| packages.get(id))
        .map(|p| {
            let (name, version) = (
                p["name"].as_str().unwrap_or(""),
                p["version"].as_str().unwrap_or(""),
            );
            let mut c = serde_json::json!({
                "type": "library", "name": name, "version": version,
                "purl": format!("pkg:cargo/{name}@{version}"),
            });
            if let Some(l) = p["license"].as_str() {
                c["licenses"] = serde_json::json!([{"expression": l}]);
            }
            c
        })
        .collect();
    let version = packages
        .get(root)
        .and_then(|p| p["version"].as_str())
        .unwrap_or("");
    let doc = serde_json::json!({
        "bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1,
        "metadata": {"component": {"type": "application", "name": bin, "version": version,
                      "purl": format!("pkg:cargo/{bin}@{version}"),
                      "properties": [{"name": "target", "value": target}]}},
        "components": components,
    });
    Ok(serde_json::to_string_pretty(&doc)?)
}

/// `name target bytes` lines.
fn parse_sizes(text: &str) -> BTreeMap<(String, String), u64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((
                (f.next()?.to_string(), f.next()?.to_string()),
                f.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// The builds selected by `--only agent|collector` (all by default).
fn selected(only: Option<&str>) -> impl Iterator<Item = &'static Build> + '_ {
    BUILDS
        .iter()
        .filter(move |b| only.map_or(true, |o| b.bin == format!("vigil-{o}")))
}

fn dist(out: &Path, only: Option<&str>) -> Result<()> {
    install()?;
    std::fs::create_dir_all(out)?;
    let (mut sums, mut sizes, mut hard) = (String::new(), String::new(), String::new());
    for b in selected(only) {
        eprintln!("xtask: building {} for {}", b.bin, b.target);
        let built = build(b)?;
        let name = format!("{}-{}", b.bin, b.target);
        let dest = out.join(&name);
        std::fs::copy(&built, &dest).with_context(|| built.display().to_string())?;
        sums.push_str(&format!("{}  {name}\n", sha256_hex(&dest)?));
        let len = std::fs::metadata(&dest)?.len();
        sizes.push_str(&format!("{} {} {len}\n", b.bin, b.target));
        hard.push_str(&format!("{} {} {}\n", b.bin, b.target, hardening(&dest)?));
        std::fs::write(out.join(format!("{name}.cdx.json")), sbom(b.bin, b.target)?)?;
    }
    if selected(only).any(|b| b.bin == "vigil-collector") {
        man(&out.join("collector-docs"))?;
    }
    std::fs::write(out.join("SHA256SUMS"), &sums)?;
    std::fs::write(out.join("hardening.txt"), &hard)?;
    let expected_dir = workspace().join("cross/expected");
    let expected =
        parse_sizes(&std::fs::read_to_string(expected_dir.join("sizes.txt")).unwrap_or_default());
    let mut report = String::from(
        "| binary | target | bytes | MiB | committed | change |\n|---|---|---|---|---|---|\n",
    );
    let mut failures = Vec::new();
    for ((bin, target), len) in parse_sizes(&sizes) {
        let was = expected.get(&(bin.clone(), target.clone())).copied();
        let change = was.map_or_else(
            || "new".to_string(),
            |w| format!("{:+.1} %", (len as f64 / w as f64 - 1.0) * 100.0),
        );
        report.push_str(&format!(
            "| {bin} | {target} | {len} | {:.2} | {} | {change} |\n",
            len as f64 / 1_048_576.0,
            was.map_or_else(|| "-".into(), |w| w.to_string())
        ));
        match was {
            Some(w) if len * 10 > w * 11 => failures.push(format!(
                "{bin} {target}: {len} bytes, more than 10 % over the committed {w}: \
                 update cross/expected/sizes.txt in the same change if this is intended"
            )),
            None => failures.push(format!(
                "{bin} {target}: no committed size in cross/expected/sizes.txt"
            )),
            _ => {}
        }
    }
    if let Some(agent) =
        parse_sizes(&sizes).get(&("vigil-agent".into(), "aarch64-unknown-linux-musl".into()))
    {
        report.push_str(&format!(
            "\naarch64 agent: {agent} bytes against the 1.5 MiB target ({} bytes): {}\n",
            3 << 19,
            if *agent <= 3 << 19 { "within" } else { "OVER" }
        ));
    }
    std::fs::write(out.join("sizes.txt"), &sizes)?;
    std::fs::write(out.join("sizes.md"), &report)?;
    print!("{report}");
    let want_hard: String = std::fs::read_to_string(expected_dir.join("hardening.txt"))
        .unwrap_or_default()
        .lines()
        .filter(|l| selected(only).any(|b| l.starts_with(&format!("{} {} ", b.bin, b.target))))
        .map(|l| format!("{l}\n"))
        .collect();
    if want_hard != hard {
        failures.push(format!(
            "hardening differs from cross/expected/hardening.txt:\n--- expected\n{want_hard}--- built\n{hard}"
        ));
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    eprintln!("xtask: dist in {}", out.display());
    Ok(())
}

/// Runs `bin` through its runner with `args`; returns (exit code, stdout).
fn exec(b: &Build, bin: &Path, args: &[&str], cwd: &Path) -> Result<(i32, String)> {
    let mut cmd = match b.runner.split_first() {
        Some((q, rest)) => {
            let mut c = Command::new(q);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let out = cmd
        .args(args)
        .current_dir(cwd)
        .output()
        .with_context(|| format!("{cmd:?}"))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

fn smoke(dist: &Path, only: Option<&str>) -> Result<()> {
    let work = std::env::temp_dir().join(format!("vigil-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("tree/usr/bin"))?;
    std::fs::write(work.join("tree/usr/bin/tool"), b"\x7fELF tool")?;
    for b in selected(only) {
        let bin = dist.join(format!("{}-{}", b.bin, b.target));
        let (code, out) = exec(b, &bin, &["--version"], &work)?;
        if code != 0 || !out.starts_with(b.bin) {
            bail!("{} {}: --version gave {code}: {out}", b.bin, b.target);
        }
        if b.bin != "vigil-agent" {
            eprintln!("xtask: {} {}: {}", b.bin, b.target, out.trim());
            continue;
        }
        let (code, out) = exec(b, &bin, &["sample", "--json"], &work)?;
        let v: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("sample --json: {out}"))?;
        if code != 0
            || v["cpu"]["cpus"].as_u64().unwrap_or(0) == 0
            || v["memory"]["total_bytes"].as_u64().unwrap_or(0) == 0
        {
            bail!("{}: sample --json gave {code}: {out}", b.target);
        }
        let t = b.target;
        let (sk, pk, m) = (
            format!("{t}.key"),
            format!("{t}.pub"),
            format!("{t}.manifest"),
        );
        for f in [&sk, &pk] {
            let _ = std::fs::remove_file(work.join(f));
        }
        let verify = [
            "manifest",
            "verify",
            "--public-key",
            &pk,
            "--root",
            "tree",
            &m,
        ];
        let steps: [(&[&str], i32); 4] = [
            (
                &[
                    "manifest",
                    "keygen",
                    "--secret-key",
                    &sk,
                    "--public-key",
                    &pk,
                ],
                0,
            ),
            (
                &[
                    "manifest",
                    "build",
                    "--root",
                    "tree",
                    "--class",
                    "firmware",
                    "--version",
                    "1",
                    "--out",
                    &m,
                ],
                0,
            ),
            (&["manifest", "sign", "--secret-key", &sk, &m], 0),
            (&verify, 0),
        ];
        for (args, want) in steps {
            let (code, out) = exec(b, &bin, args, &work)?;
            if code != want {
                bail!("{t}: {args:?} exited {code}, wanted {want}: {out}");
            }
        }
        std::fs::write(work.join("tree/usr/bin/tool"), b"\x7fELF tampered")?;
        let (code, out) = exec(b, &bin, &verify, &work)?;
        std::fs::write(work.join("tree/usr/bin/tool"), b"\x7fELF tool")?;
        if code != 1 || !out.contains("modified /usr/bin/tool") {
            bail!("{t}: tampered tree: exit {code}: {out}");
        }
        eprintln!("xtask: vigil-agent {t}: --version, sample --json, manifest keygen/build/sign/verify ok");
    }
    let _ = std::fs::remove_dir_all(&work);
    if let Some(b) = selected(only).find(|b| b.target == "aarch64-unknown-linux-musl") {
        protocol_tests(b)?;
    }
    Ok(())
}

/// The protocol crate's unit and integration tests (golden bytes included)
/// built for `b.target` and run through its qemu runner.
fn protocol_tests(b: &Build) -> Result<()> {
    let key = env_key(b.target).to_uppercase();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace())
        .args([
            "test",
            "--locked",
            "-p",
            "vigil-protocol",
            "--target",
            b.target,
        ])
        .env(format!("CC_{}", env_key(b.target)), b.cc)
        .env(format!("CARGO_TARGET_{key}_LINKER"), b.linker)
        .env(format!("CARGO_TARGET_{key}_RUNNER"), b.runner.join(" "));
    let out = run(&mut cmd)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let passed: u64 = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("test result: ok. ")?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    if passed == 0 {
        bail!("no protocol test ran under {}:\n{text}", b.runner.join(" "));
    }
    eprintln!(
        "xtask: vigil-protocol tests on {} under {}: {passed} passed",
        b.target,
        b.runner.join(" ")
    );
    Ok(())
}

const CRATES_INC: &str = "cross/yocto/recipes-security/vigil-agent/vigil-agent-crates.inc";

/// The Yocto crate list (`crate://` URIs and their sha256) for every
/// registry package in `Cargo.lock`, as `cargo-update-recipe-crates` writes it.
fn crates_inc() -> Result<String> {
    let lock = std::fs::read_to_string(workspace().join("Cargo.lock"))?;
    let mut crates = Vec::new();
    for block in lock.split("[[package]]").skip(1) {
        let field = |k: &str| {
            block.lines().find_map(|l| {
                l.strip_prefix(&format!("{k} = \""))
                    .and_then(|v| v.strip_suffix('"'))
            })
        };
        if let (Some(name), Some(version), Some(sum)) =
            (field("name"), field("version"), field("checksum"))
        {
            crates.push((name.to_string(), version.to_string(), sum.to_string()));
        }
    }
    let mut out = String::from(
        "# Generated from Cargo.lock by `cargo run -p xtask -- recipes`; CI checks it is current.\n\
         SRC_URI += \" \\\n",
    );
    for (n, v, _) in &crates {
        out.push_str(&format!("    crate://crates.io/{n}/{v} \\\n"));
    }
    out.push_str("\"\n\n");
    for (n, v, sum) in &crates {
        out.push_str(&format!("SRC_URI[{n}-{v}.sha256sum] = \"{sum}\"\n"));
    }
    Ok(out)
}

/// The recipes against the workspace: version in names and variables,
/// licence checksums, the crate list.
fn check_recipes() -> Result<()> {
    let root = workspace();
    let version = env!("CARGO_PKG_VERSION");
    let read = |p: &str| std::fs::read_to_string(root.join(p)).with_context(|| p.to_string());
    let mut failures = Vec::new();
    if read(CRATES_INC)? != crates_inc()? {
        failures.push(format!(
            "{CRATES_INC} does not match Cargo.lock: run `cargo run -p xtask -- recipes`"
        ));
    }
    let md5 = run(Command::new("md5sum").arg(root.join("LICENSE")))?;
    let md5 = String::from_utf8_lossy(&md5.stdout);
    let md5 = md5.split_whitespace().next().unwrap_or("");
    for bb in ["vigil-agent", "vigil-agent-bin"] {
        let path = format!("cross/yocto/recipes-security/vigil-agent/{bb}_{version}.bb");
        match read(&path) {
            Ok(text) if text.contains(&format!("file://LICENSE;md5={md5}")) => {}
            Ok(_) => failures.push(format!(
                "{path}: LIC_FILES_CHKSUM is not LICENSE's md5 {md5}"
            )),
            Err(e) => failures.push(format!(
                "{e:#} (the recipe is named after the workspace version)"
            )),
        }
    }
    let mk = read("cross/buildroot/package/vigil-agent/vigil-agent.mk")?;
    if !mk.contains(&format!("VIGIL_AGENT_VERSION = {version}\n")) {
        failures.push(format!(
            "vigil-agent.mk: VIGIL_AGENT_VERSION is not {version}"
        ));
    }
    let hash = read("cross/buildroot/package/vigil-agent/vigil-agent.hash")?;
    let license = sha256_hex(&root.join("LICENSE"))?;
    if !hash.contains(&format!("sha256  {license}  LICENSE")) {
        failures.push(format!("vigil-agent.hash: LICENSE's sha256 is {license}"));
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    eprintln!("xtask: Yocto and Buildroot recipes match version {version}, LICENSE and Cargo.lock");
    Ok(())
}

/// Checks the units, the init script, the install script and the recipes.
fn files() -> Result<()> {
    install()?;
    check_recipes()?;
    let docs = check_man()?;
    let cross = workspace().join("cross");
    for script in ["install", "sysvinit/vigil-agent"] {
        let path = cross.join(script);
        run(Command::new("sh").arg("-n").arg(&path))?;
        run(Command::new("shellcheck").arg("--shell=sh").arg(&path))?;
        eprintln!("xtask: cross/{script}: sh -n and shellcheck clean");
    }
    // A staging root as an image would have it: the install script's tree,
    // with this host's systemd targets and kill(1) for the references the
    // units make. The binaries are stand-ins: verify checks only that the
    // commands exist and are executable.
    let stage = std::env::temp_dir().join(format!("vigil-units-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(stage.join("bin"))?;
    let true_ = PathBuf::from("/bin/true");
    run(Command::new("sh")
        .arg(cross.join("install"))
        .arg("--destdir")
        .arg(&stage)
        .arg("--agent")
        .arg(&true_)
        .arg("--collector")
        .arg(&true_)
        .arg("--collector-docs")
        .arg(&docs))?;
    for f in [
        "usr/share/man/man1/vigil-collector.1",
        "usr/share/man/man1/vigil-collector-serve.1",
        "usr/share/bash-completion/completions/vigil-collector",
        "usr/share/zsh/vendor-completions/_vigil-collector",
        "usr/share/fish/vendor_completions.d/vigil-collector.fish",
    ] {
        if !stage.join(f).is_file() {
            bail!("cross/install --collector-docs did not install /{f}");
        }
    }
    let _ = std::fs::remove_dir_all(&docs);
    eprintln!("xtask: cross/install puts the collector's man pages and completions in place");
    // The agent's account: systemd-sysusers on the staging root (which has
    // no /etc/passwd yet) must create it. The collector's unit uses a
    // DynamicUser, which a static account of that name would replace.
    let out = run(Command::new("systemd-sysusers")
        .arg("--dry-run")
        .arg(format!("--root={}", stage.display())))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !said.contains("Creating user 'vigil' ") || said.contains("'vigil-collector'") {
        bail!("systemd-sysusers --dry-run should create the user vigil and no other:\n{said}");
    }
    eprintln!("xtask: the sysusers.d entry creates the user vigil");
    std::fs::copy("/bin/kill", stage.join("bin/kill"))?;
    let units = stage.join("usr/lib/systemd/system");
    for entry in std::fs::read_dir("/usr/lib/systemd/system")? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".target") {
            std::fs::copy(entry.path(), units.join(&name))?;
        }
    }
    let mut verify = Command::new("systemd-analyze");
    verify
        .arg("verify")
        .arg("--man=no")
        .arg(format!("--root={}", stage.display()));
    for (unit, _) in UNITS {
        verify.arg(format!("/usr/lib/systemd/system/{unit}"));
    }
    let out = run(&mut verify)?;
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !complaints.trim().is_empty() {
        bail!("systemd-analyze verify complained:\n{complaints}");
    }
    let mut failures = Vec::new();
    for (unit, limit) in UNITS {
        let out = run(Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(units.join(unit)))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let exposure: f64 = text
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")?
                    .1
                    .split_once(": ")
            })
            .and_then(|(_, v)| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no overall exposure for {unit} in:\n{text}"))?;
        eprintln!(
            "xtask: {unit}: systemd-analyze verify clean, exposure {exposure} (limit {limit})"
        );
        if exposure > *limit {
            failures.push(format!(
                "{unit}: exposure {exposure} above {limit}:\n{text}"
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&stage);
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

/// Writes the collector's man pages and completions under `out`; returns
/// the man pages written.
fn man(out: &Path) -> Result<Vec<PathBuf>> {
    use clap::CommandFactory;
    let cmd = collector_cli::Cli::command().version(env!("CARGO_PKG_VERSION"));
    let man_dir = out.join("man");
    let comp_dir = out.join("completions");
    std::fs::create_dir_all(&man_dir)?;
    std::fs::create_dir_all(&comp_dir)?;
    let mut pages = Vec::new();
    // One page for the command, one per subcommand (`vigil-collector-serve.1`, ...).
    fn write_pages(
        cmd: &clap::Command,
        name: &str,
        dir: &Path,
        pages: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let cmd = cmd.clone().name(name.to_string());
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, buf)?;
        pages.push(path);
        for sub in cmd.get_subcommands() {
            write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, pages)?;
        }
        Ok(())
    }
    write_pages(&cmd, "vigil-collector", &man_dir, &mut pages)?;
    for (shell, file) in [
        (clap_complete::Shell::Bash, "vigil-collector.bash"),
        (clap_complete::Shell::Zsh, "_vigil-collector"),
        (clap_complete::Shell::Fish, "vigil-collector.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "vigil-collector", &mut buf);
        std::fs::write(comp_dir.join(file), buf)?;
    }
    eprintln!(
        "xtask: {} man pages and 3 completions in {}",
        pages.len(),
        out.display()
    );
    Ok(pages)
}

/// Generates the man pages and completions and checks them: bash completes
/// `vigil-collector bas` to `baseline` and `serve --sink-` to the three
/// sinks; groff renders every page with no warning. Returns their folder.
fn check_man() -> Result<PathBuf> {
    let out = std::env::temp_dir().join(format!("vigil-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let pages = man(&out)?;
    let script = out.join("completions/vigil-collector.bash");
    let complete = |words: &str| -> Result<String> {
        let o = run(Command::new("bash").arg("-c").arg(format!(
            "source '{}'; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             _vigil-collector vigil-collector \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        )))?;
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let got = complete("vigil-collector bas")?;
    if got.trim() != "baseline" {
        bail!("bash completion of `vigil-collector bas`: {got:?}, not baseline");
    }
    let got = complete("vigil-collector serve --sink-")?;
    for want in ["--sink-json", "--sink-syslog", "--sink-cef"] {
        if !got.lines().any(|l| l == want) {
            bail!("bash completion of `serve --sink-` lacks {want}: {got:?}");
        }
    }
    for page in &pages {
        let o = run(Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(page))?;
        let warnings = String::from_utf8_lossy(&o.stderr);
        if !warnings.trim().is_empty() {
            bail!("groff warns on {}:\n{warnings}", page.display());
        }
    }
    eprintln!(
        "xtask: man pages render with groff, bash completes commands and flags ({} pages)",
        pages.len()
    );
    Ok(out)
}

fn main() -> Result<()> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_env();
    let task = match p.next()? {
        Some(Value(v)) => v.string()?,
        _ => bail!(
            "usage: cargo run -p xtask -- dist [--out DIR] [--only agent|collector] \
             | smoke [--dist DIR] [--only agent|collector] | files | recipes | man [--out DIR]"
        ),
    };
    let mut dir = workspace().join("target/dist");
    let mut out = None;
    let mut only = None;
    while let Some(a) = p.next()? {
        match a {
            Long("out") if task == "man" => out = Some(PathBuf::from(p.value()?)),
            Long("out") | Long("dist") => dir = PathBuf::from(p.value()?),
            Long("only") => {
                let o = p.value()?.string()?;
                if o != "agent" && o != "collector" {
                    bail!("--only agent or --only collector, not {o}");
                }
                only = Some(o);
            }
            other => return Err(other.unexpected().into()),
        }
    }
    match task.as_str() {
        "dist" => dist(&dir, only.as_deref()),
        "smoke" => smoke(&dir, only.as_deref()),
        "files" => files(),
        "recipes" => {
            std::fs::write(workspace().join(CRATES_INC), crates_inc()?)?;
            eprintln!("xtask: wrote {CRATES_INC}");
            Ok(())
        }
        "man" => man(&out.unwrap_or_else(|| dir.join("collector-docs"))).map(|_| ()),
        other => bail!("unknown task `{other}`: dist, smoke, files, recipes or man"),
    }
}
