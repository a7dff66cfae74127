//! Network namespaces for the scenario tests (`ip netns`, veth from
//! iproute2): a device, a hospital that routes, and an "Internet" host on
//! TEST-NET-3 (203.0.113.0/24) behind the hospital. Only addresses inside
//! these namespaces are used; everything is deleted on drop.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::thread::{self, JoinHandle};

use nix::sched::{setns, CloneFlags};

pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The addresses of one topology.
pub struct Plan<'a> {
    /// Two letters naming this test's namespaces and links.
    pub tag: &'a str,
    /// The device's address; the hospital's is on the same /24.
    pub device: &'a str,
    pub hospital: &'a str,
    /// More hospital hosts (addresses on the hospital's loopback).
    pub hospital_hosts: &'a [&'a str],
    /// Hospital addresses that never answer (blackhole routes).
    pub blackholes: &'a [&'a str],
    /// The Internet host, in 203.0.113.0/24 (the hospital is 203.0.113.1).
    pub internet: &'a str,
}

/// Three namespaces, deleted (with their veths) on drop.
pub struct Net {
    pub dev: String,
    pub hosp: String,
    pub inet: String,
    /// The device's interface.
    pub veth_dev: String,
}

impl Net {
    pub fn create(plan: &Plan<'_>) -> Result<Net, String> {
        let n = std::process::id() % 100_000;
        let t = plan.tag;
        let net = Net {
            dev: format!("{t}-dev-{n}"),
            hosp: format!("{t}-hosp-{n}"),
            inet: format!("{t}-inet-{n}"),
            veth_dev: format!("{t}d{n}"),
        };
        for ns in [&net.dev, &net.hosp, &net.inet] {
            let _ = ip(&["netns", "del", ns]);
            ip(&["netns", "add", ns])?;
        }
        let (vh, vh1, vi) = (format!("{t}h{n}"), format!("{t}x{n}"), format!("{t}i{n}"));
        let x = |ns: &str, args: &[&str]| {
            let mut a = vec!["-n", ns];
            a.extend_from_slice(args);
            ip(&a)
        };
        ip(&[
            "link",
            "add",
            &net.veth_dev,
            "netns",
            &net.dev,
            "type",
            "veth",
            "peer",
            "name",
            &vh,
            "netns",
            &net.hosp,
        ])?;
        ip(&[
            "link", "add", &vh1, "netns", &net.hosp, "type", "veth", "peer", "name", &vi, "netns",
            &net.inet,
        ])?;
        for ns in [&net.dev, &net.hosp, &net.inet] {
            x(ns, &["link", "set", "lo", "up"])?;
        }
        x(
            &net.dev,
            &[
                "addr",
                "add",
                &format!("{}/24", plan.device),
                "dev",
                &net.veth_dev,
            ],
        )?;
        x(&net.dev, &["link", "set", &net.veth_dev, "up"])?;
        x(&net.dev, &["route", "add", "default", "via", plan.hospital])?;
        x(
            &net.hosp,
            &["addr", "add", &format!("{}/24", plan.hospital), "dev", &vh],
        )?;
        for h in plan.hospital_hosts {
            x(&net.hosp, &["addr", "add", &format!("{h}/32"), "dev", "lo"])?;
        }
        x(&net.hosp, &["addr", "add", "203.0.113.1/24", "dev", &vh1])?;
        for b in plan.blackholes {
            x(
                &net.hosp,
                &["route", "add", "blackhole", &format!("{b}/32")],
            )?;
        }
        x(&net.hosp, &["link", "set", &vh, "up"])?;
        x(&net.hosp, &["link", "set", &vh1, "up"])?;
        x(
            &net.inet,
            &["addr", "add", &format!("{}/24", plan.internet), "dev", &vi],
        )?;
        x(&net.inet, &["link", "set", &vi, "up"])?;
        x(
            &net.inet,
            &["route", "add", "default", "via", "203.0.113.1"],
        )?;
        let fwd = Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.hosp,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .status()
            .map_err(|e| e.to_string())?;
        if !fwd.success() {
            return Err("cannot enable forwarding in the hospital namespace".into());
        }
        Ok(net)
    }

    /// `ip netns exec NS` as a command prefix.
    pub fn exec<'a>(&'a self, ns: &'a str) -> [&'a str; 4] {
        ["ip", "netns", "exec", ns]
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.dev, &self.hosp, &self.inet] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// `vigil-agent run` inside namespace `ns`, pinned to the collector at
/// `addr`, with `extra` flags.
pub fn agent(ns: &str, state: &std::path::Path, addr: &str, pin: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(crate::binary("vigil-agent"))
        .arg("run")
        .arg("--state-dir")
        .arg(state)
        .args(["--collector", addr, "--pin", pin])
        .args(extra);
    cmd
}

/// Runs `f` on a thread inside network namespace `ns`.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let f_ns = File::open(&path).unwrap();
        setns(f_ns.as_raw_fd(), CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
}
