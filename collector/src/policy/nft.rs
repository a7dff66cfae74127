//! The policy as an nftables ruleset for the gateway that routes the
//! device's traffic (the IoMT segment's router or firewall): one table of
//! its own, `inet vigil_TAG`, with a `forward` chain that lets through
//! exactly the approved flows of the device's addresses (new connections
//! by conntrack, their replies and related ICMP), counts, logs and drops
//! the rest of the device's traffic, and leaves every other host's
//! traffic to the gateway's own rules (the chain's policy is accept).
//! Loading the file again replaces the table.

use std::fmt::Write;
use std::net::IpAddr;

use super::{Direction, Flow, Policy};
use crate::alert::rfc3339;

/// The table's name.
pub fn table(p: &Policy) -> String {
    format!("vigil_{}", p.subject.tag)
}

/// A comment nft accepts: no quotes or backslashes, at most 128 bytes.
fn comment(s: &str) -> String {
    let mut c: String = s
        .chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '\''
            } else {
                c
            }
        })
        .collect();
    while c.len() > 128 {
        c.pop();
    }
    c
}

fn rule(f: &Flow) -> String {
    let (fam, set) = if f.v6() {
        ("ip6", "@device_v6")
    } else {
        ("ip", "@device_v4")
    };
    let remote = if f.remote.bits() == if f.v6() { 128 } else { 32 } {
        f.remote.addr().to_string()
    } else {
        f.remote.network().to_string()
    };
    let l4 = f.transport.name();
    let (dev, peer) = match f.direction {
        Direction::Outbound => ("saddr", "daddr"),
        Direction::Inbound => ("daddr", "saddr"),
    };
    format!(
        "{fam} {dev} {set} {fam} {peer} {remote} {l4} dport {} ct state new accept comment \"{}\"",
        f.port,
        comment(&f.describe())
    )
}

/// The ruleset for `p`; `p.subject.addresses` must not be empty.
pub fn render(p: &Policy) -> String {
    let s = &p.subject;
    let t = table(p);
    let mut o = String::new();
    let who = match &s.device {
        Some(d) => format!("{} ({d}), model {}", s.name, s.model),
        None => format!("every device of model {}", s.model),
    };
    let _ = writeln!(o, "#!/usr/sbin/nft -f");
    let _ = writeln!(o, "# Vigil network policy for {who}.");
    let _ = writeln!(
        o,
        "# From the baseline {} ({}), {}; generated {}.",
        match s.approved_ms {
            Some(a) => format!("approved {}", rfc3339(a)),
            None => "not approved".into(),
        },
        s.source,
        match &s.approved_by {
            Some(by) => format!("approved by {by}"),
            None => "approver not recorded".into(),
        },
        rfc3339(p.generated_ms)
    );
    let addrs: Vec<String> = s.addresses.iter().map(IpAddr::to_string).collect();
    let _ = writeln!(
        o,
        "# The device's addresses: {} ({}).",
        addrs.join(", "),
        s.addresses_from
    );
    let _ = writeln!(
        o,
        "# Load it on the gateway that routes the device's traffic: nft -f FILE (it replaces table inet {t})."
    );
    let _ = writeln!(
        o,
        "# Allowed: the approved flows below; everything else to or from the device is counted, logged and dropped."
    );
    for line in p.report() {
        let _ = writeln!(o, "# {}", line.replace(['\n', '\r'], " "));
    }
    let _ = writeln!(o, "table inet {t}");
    let _ = writeln!(o, "delete table inet {t}");
    let _ = writeln!(o, "table inet {t} {{");
    let v4: Vec<&String> = s
        .addresses
        .iter()
        .zip(&addrs)
        .filter(|(a, _)| a.is_ipv4())
        .map(|(_, t)| t)
        .collect();
    let v6: Vec<&String> = s
        .addresses
        .iter()
        .zip(&addrs)
        .filter(|(a, _)| a.is_ipv6())
        .map(|(_, t)| t)
        .collect();
    for (name, ty, list) in [
        ("device_v4", "ipv4_addr", &v4),
        ("device_v6", "ipv6_addr", &v6),
    ] {
        if list.is_empty() {
            let _ = writeln!(o, "\tset {name} {{\n\t\ttype {ty}\n\t}}");
        } else {
            let items: Vec<&str> = list.iter().map(|s| s.as_str()).collect();
            let _ = writeln!(
                o,
                "\tset {name} {{\n\t\ttype {ty}\n\t\telements = {{ {} }}\n\t}}",
                items.join(", ")
            );
        }
    }
    let _ = writeln!(o, "\tchain forward {{");
    let _ = writeln!(
        o,
        "\t\ttype filter hook forward priority filter; policy accept;"
    );
    for (fam, set) in [("ip", "@device_v4"), ("ip6", "@device_v6")] {
        let _ = writeln!(
            o,
            "\t\t{fam} saddr {set} ct state established,related accept"
        );
        let _ = writeln!(
            o,
            "\t\t{fam} daddr {set} ct state established,related accept"
        );
    }
    for f in &p.flows {
        let _ = writeln!(o, "\t\t{}", rule(f));
    }
    let prefix = |dir: &str| comment(&format!("vigil drop {dir} {}: ", s.tag));
    for (fam, set) in [("ip", "@device_v4"), ("ip6", "@device_v6")] {
        let _ = writeln!(
            o,
            "\t\t{fam} saddr {set} counter log prefix \"{}\" drop comment \"not in the approved baseline\"",
            prefix("from")
        );
        let _ = writeln!(
            o,
            "\t\t{fam} daddr {set} counter log prefix \"{}\" drop comment \"not in the approved baseline\"",
            prefix("to")
        );
    }
    let _ = writeln!(o, "\t}}");
    let _ = writeln!(o, "}}");
    o
}
