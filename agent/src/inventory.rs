//! Inventory for `Hello`: hostname, kernel release, architecture, OS,
//! kernel boot id, boot time, interfaces with MAC addresses, disks. Read
//! under a root directory (files) plus `uname`/`gethostname` (system calls,
//! only when the root is `/`). Missing pieces are issues, not errors.

use std::path::Path;

use vigil_protocol::body::{Hello, Interface, ManifestVersion, MAX_MANIFESTS};

use crate::sample::reading::{read_file, Layout};
use crate::sample::{fit, Issue};

/// `PRETTY_NAME` from an os-release file (quotes and escapes removed).
pub fn pretty_name(text: &str) -> Option<String> {
    let line = text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME="))?;
    let v = line.trim();
    let v = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
        .unwrap_or(v);
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            chars.next().unwrap_or('\\')
        } else {
            c
        });
    }
    Some(out)
}

/// The kernel's boot id (a UUID) as 16 bytes.
pub fn parse_boot_id(text: &str) -> Option<[u8; 16]> {
    let hex: String = text.trim().chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `aa:bb:cc:dd:ee:ff`; all-zero (loopback) counts as none.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.trim().split(':');
    for o in &mut out {
        *o = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    (parts.next().is_none() && out != [0; 6]).then_some(out)
}

pub struct Inputs<'a> {
    pub public_key: [u8; 32],
    pub root: &'a Path,
    pub layout: &'a Layout,
    pub boot_time_s: Option<u64>,
    pub cpus: u16,
    pub manifests: &'a [ManifestVersion],
}

pub fn hello(inp: &Inputs<'_>, issues: &mut Vec<Issue>) -> Hello {
    let live = inp.root == Path::new("/");
    let (hostname, release, machine) = if live {
        let u = nix::sys::utsname::uname();
        match u {
            Ok(u) => (
                u.nodename().to_string_lossy().into_owned(),
                u.release().to_string_lossy().into_owned(),
                u.machine().to_string_lossy().into_owned(),
            ),
            Err(e) => {
                issues.push(Issue::new("uname", e.to_string()));
                Default::default()
            }
        }
    } else {
        let f = |rel: &'static str| {
            read_file(inp.root, rel)
                .map(|t| t.trim().to_string())
                .unwrap_or_default()
        };
        (
            f("/proc/sys/kernel/hostname"),
            f("/proc/sys/kernel/osrelease"),
            std::env::consts::ARCH.to_string(),
        )
    };
    let os = read_file(inp.root, "/etc/os-release")
        .or_else(|_| read_file(inp.root, "/usr/lib/os-release"))
        .ok()
        .and_then(|t| pretty_name(&t));
    if os.is_none() {
        issues.push(Issue::new(
            "/etc/os-release",
            "missing or without PRETTY_NAME",
        ));
    }
    let boot_id = read_file(inp.root, "/proc/sys/kernel/random/boot_id")
        .ok()
        .and_then(|t| parse_boot_id(&t));
    if boot_id.is_none() {
        issues.push(Issue::new(
            "/proc/sys/kernel/random/boot_id",
            "missing or not a UUID",
        ));
    }
    let interfaces = inp
        .layout
        .interfaces
        .iter()
        .map(|name| {
            let rel = format!("sys/class/net/{name}/address");
            let mac = std::fs::read_to_string(inp.root.join(rel))
                .ok()
                .and_then(|t| parse_mac(&t));
            Interface {
                name: fit(name),
                mac,
            }
        })
        .collect();
    Hello {
        public_key: inp.public_key,
        agent_version: fit(env!("CARGO_PKG_VERSION")),
        hostname: fit(&hostname),
        kernel_release: fit(&release),
        os_release: fit(os.as_deref().unwrap_or("")),
        arch: fit(&machine),
        kernel_boot_id: boot_id.unwrap_or_default(),
        boot_time_s: inp.boot_time_s.unwrap_or(0),
        cpus: inp.cpus,
        interfaces,
        disks: inp.layout.disks.iter().map(|d| fit(d)).collect(),
        manifests: inp.manifests.iter().take(MAX_MANIFESTS).cloned().collect(),
    }
}
