//! Network policy out of an approved baseline: the flows a device was seen
//! to use while it was learned (its outbound endpoints and the peers that
//! connected to it), as an RFC 8520 MUD file (`mud`), an nftables ruleset
//! for the gateway in front of the device (`nft`), or neutral JSON
//! (`Policy::to_json`). Everything not allowed is denied; what a baseline
//! holds that a policy cannot say is listed in `Policy::unexpressed`, never
//! dropped without a word. Pure: a `Learned` and what the operator names
//! in, text out.

pub mod mud;
pub mod nft;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use serde_json::{json, Value};

use crate::alert::rfc3339;
use crate::config::Prefix;
use crate::detect::baseline::Learned;

pub const JSON_FORMAT: &str = "vigil-policy/1";

/// Linux's default `net.ipv4.ip_local_port_range` starts here (32768 to
/// 60999), and IANA's dynamic range (49152 to 65535) lies inside it: a
/// remote port up here may be the remote's client port, not a service.
pub const EPHEMERAL_FROM: u16 = 32768;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// The device connects to the remote's `port`.
    Outbound,
    /// The remote connects to the device's `port`.
    Inbound,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Transport::Tcp => 6,
            Transport::Udp => 17,
        }
    }

    fn parse(s: &str) -> Option<Transport> {
        match s {
            "tcp" => Some(Transport::Tcp),
            "udp" => Some(Transport::Udp),
            _ => None,
        }
    }
}

/// A network the operator names (`--network pacs=10.20.0.0/24`): every
/// endpoint inside it is allowed as the network, not one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    pub prefix: Prefix,
}

impl Network {
    /// `NAME=PREFIX`; the name is letters, digits, `-`, `_` and `.`.
    pub fn parse(s: &str) -> Result<Network, String> {
        let (name, prefix) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: a network is NAME=PREFIX, e.g. pacs=10.20.0.0/24"))?;
        if name.is_empty()
            || name.len() > 32
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "`{s}`: a network's name is 1 to 32 letters, digits, `-`, `_` or `.`"
            ));
        }
        let prefix = Prefix::parse(prefix)
            .ok_or_else(|| format!("`{s}`: `{prefix}` is not an address prefix"))?;
        Ok(Network {
            name: name.to_string(),
            prefix: prefix.network(),
        })
    }
}

/// One allowed flow: who opens it, to which port, with what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub direction: Direction,
    pub transport: Transport,
    /// The remote side: one address or a named network.
    pub remote: Prefix,
    pub network: Option<String>,
    /// The server's port: the remote's for outbound, the device's for
    /// inbound.
    pub port: u16,
    pub processes: BTreeSet<String>,
    /// The baseline entries this flow stands for.
    pub seen: BTreeSet<String>,
}

impl Flow {
    pub fn v6(&self) -> bool {
        self.remote.addr().is_ipv6()
    }

    /// How a person reads it: `outbound tcp 10.1.2.3:443 (storescu)`.
    pub fn describe(&self) -> String {
        let remote = match &self.network {
            Some(n) => format!("{n} ({})", self.remote),
            None => self.remote.addr().to_string(),
        };
        let what = match self.direction {
            Direction::Outbound => format!("to {remote} port {}", self.port),
            Direction::Inbound => format!("from {remote} to port {}", self.port),
        };
        let procs: Vec<&str> = self
            .processes
            .iter()
            .map(String::as_str)
            .filter(|p| !p.is_empty())
            .collect();
        if procs.is_empty() {
            format!("{} {} {what}", self.direction.name(), self.transport.name())
        } else {
            format!(
                "{} {} {what} ({})",
                self.direction.name(),
                self.transport.name(),
                procs.join(", ")
            )
        }
    }
}

/// A baseline entry the policy does not allow, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unexpressed {
    pub entry: String,
    pub reason: String,
}

/// Whose policy it is and where it comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    /// The device id, or none for a model's fleet baseline.
    pub device: Option<String>,
    pub name: String,
    pub model: String,
    /// `learned on this device` or the fleet baseline it uses.
    pub source: String,
    pub learned_from_ms: u64,
    pub learned_to_ms: u64,
    /// When the baseline was approved (or the fleet baseline imported).
    pub approved_ms: Option<u64>,
    pub approved_by: Option<String>,
    /// The device's addresses (for a ruleset), and where they came from.
    pub addresses: Vec<IpAddr>,
    pub addresses_from: String,
    /// A short name for tables and ACLs: letters, digits and `_`.
    pub tag: String,
}

/// A device's (or a model's) network policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub subject: Subject,
    pub flows: Vec<Flow>,
    pub unexpressed: Vec<Unexpressed>,
    /// Other things a network engineer must know before loading it.
    pub notes: Vec<String>,
    pub generated_ms: u64,
}

/// `tcp 10.1.2.3:443` or `udp [fd00::1]:53`.
fn parse_outbound(key: &str) -> Option<(Transport, IpAddr, u16)> {
    let (t, ep) = key.split_once(' ')?;
    let ep: SocketAddr = ep.parse().ok()?;
    Some((Transport::parse(t)?, ep.ip(), ep.port()))
}

/// `tcp 10.4.5.6 -> 22`.
fn parse_inbound(key: &str) -> Option<(Transport, IpAddr, u16)> {
    let (t, rest) = key.split_once(' ')?;
    let (peer, port) = rest.split_once(" -> ")?;
    Some((Transport::parse(t)?, peer.parse().ok()?, port.parse().ok()?))
}

/// The flows of `learned`, generalized to the operator's `networks`.
pub fn build(learned: &Learned, subject: Subject, networks: &[Network], now_ms: u64) -> Policy {
    let mut unexpressed = Vec::new();
    let mut notes = Vec::new();
    // (direction, transport, remote, port) -> (processes, seen)
    type Key = (Direction, Transport, IpAddr, u16);
    let mut raw: BTreeMap<Key, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    let mut inbound_hosts: BTreeSet<(Transport, IpAddr)> = BTreeSet::new();
    for (key, procs) in &learned.inbound {
        match parse_inbound(key) {
            Some((t, peer, port)) if !peer.is_unspecified() && port != 0 => {
                let peer = Prefix::host(peer).addr();
                inbound_hosts.insert((t, peer));
                let e = raw.entry((Direction::Inbound, t, peer, port)).or_default();
                e.0.extend(procs.iter().cloned());
                e.1.insert(key.clone());
            }
            _ => unexpressed.push(Unexpressed {
                entry: format!("inbound {key}"),
                reason: "not a protocol, an address and a port: not allowed".into(),
            }),
        }
    }
    let mut outbound = Vec::new();
    for (key, procs) in &learned.outbound {
        match parse_outbound(key) {
            Some((t, peer, port)) if !peer.is_unspecified() && port != 0 => {
                outbound.push((key, procs, t, Prefix::host(peer).addr(), port));
            }
            _ => unexpressed.push(Unexpressed {
                entry: format!("outbound {key}"),
                reason: "not a protocol, an address and a port: not allowed".into(),
            }),
        }
    }
    // Ports in the ephemeral range, per remote host: more than one means
    // they are that host's client ports (no service listens on a new
    // random port each time), so the connections were the host's to us.
    let mut ephemeral: BTreeMap<(Transport, IpAddr), BTreeSet<u16>> = BTreeMap::new();
    for (_, _, t, peer, port) in &outbound {
        if *port >= EPHEMERAL_FROM {
            ephemeral.entry((*t, *peer)).or_default().insert(*port);
        }
    }
    for (key, procs, t, peer, port) in outbound {
        if port >= EPHEMERAL_FROM {
            let ports = &ephemeral[&(t, peer)];
            if inbound_hosts.contains(&(t, peer)) {
                notes.push(format!(
                    "outbound {key}: port {port} is {peer}'s client port of a connection it opened to the device; allowed as that inbound flow"
                ));
                continue;
            }
            if ports.len() > 1 {
                let list: Vec<String> = ports.iter().map(u16::to_string).collect();
                unexpressed.push(Unexpressed {
                    entry: format!("outbound {key}"),
                    reason: format!(
                        "one of {} ports in the ephemeral range towards {peer} ({}): the client side of connections {peer} opened, whose server port the baseline never saw listening; not allowed",
                        ports.len(),
                        list.join(", ")
                    ),
                });
                continue;
            }
        }
        let e = raw.entry((Direction::Outbound, t, peer, port)).or_default();
        e.0.extend(procs.iter().cloned());
        e.1.insert(key.clone());
    }
    // Listeners nobody connected to while learning stay closed.
    for (listener, procs) in &learned.listeners {
        let used = listener.split_once('/').is_some_and(|(t, p)| {
            raw.keys().any(|(d, tt, _, port)| {
                *d == Direction::Inbound && tt.name() == t && port.to_string() == p
            })
        });
        if !used {
            let who: Vec<&str> = procs
                .iter()
                .map(String::as_str)
                .filter(|p| !p.is_empty())
                .collect();
            unexpressed.push(Unexpressed {
                entry: format!("listener {listener}"),
                reason: format!(
                    "{}no connection to it was seen while the baseline learned: nobody is allowed to reach it",
                    if who.is_empty() {
                        String::new()
                    } else {
                        format!("{} listens there; ", who.join(", "))
                    }
                ),
            });
        }
    }
    // Generalize to the named networks (the most specific one wins).
    let mut flows: BTreeMap<(Direction, Transport, String, u16), Flow> = BTreeMap::new();
    for ((d, t, peer, port), (procs, seen)) in raw {
        let net = networks
            .iter()
            .filter(|n| n.prefix.contains(peer))
            .max_by_key(|n| n.prefix.bits());
        let (remote, network) = match net {
            Some(n) => (n.prefix, Some(n.name.clone())),
            None => (Prefix::host(peer), None),
        };
        let f = flows
            .entry((d, t, remote.to_string(), port))
            .or_insert_with(|| Flow {
                direction: d,
                transport: t,
                remote,
                network,
                port,
                processes: BTreeSet::new(),
                seen: BTreeSet::new(),
            });
        f.processes.extend(procs);
        f.seen.extend(seen);
    }
    let flows: Vec<Flow> = flows.into_values().collect();
    if flows.is_empty() {
        notes.insert(
            0,
            "the baseline approved no endpoints: this policy denies all of the device's traffic"
                .into(),
        );
    }
    Policy {
        subject,
        flows,
        unexpressed,
        notes,
        generated_ms: now_ms,
    }
}

impl Policy {
    /// The neutral JSON (`--format json`).
    pub fn to_json(&self) -> Value {
        let s = &self.subject;
        json!({
            "format": JSON_FORMAT,
            "device": s.device,
            "name": s.name,
            "model": s.model,
            "source": s.source,
            "learned_from": (s.learned_from_ms > 0).then(|| rfc3339(s.learned_from_ms)),
            "learned_to": (s.learned_to_ms > 0).then(|| rfc3339(s.learned_to_ms)),
            "approved": s.approved_ms.map(rfc3339),
            "approved_by": s.approved_by,
            "generated": rfc3339(self.generated_ms),
            "addresses": s.addresses.iter().map(IpAddr::to_string).collect::<Vec<_>>(),
            "addresses_from": (!s.addresses.is_empty()).then_some(&s.addresses_from),
            "default": "deny",
            "flows": self.flows.iter().map(|f| json!({
                "direction": f.direction.name(),
                "protocol": f.transport.name(),
                "remote": f.remote.to_string(),
                "network": f.network,
                "port": f.port,
                "processes": f.processes,
                "seen": f.seen,
            })).collect::<Vec<_>>(),
            "not_expressed": self.unexpressed.iter().map(|u| json!({
                "entry": u.entry, "reason": u.reason,
            })).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }

    /// What is printed to stderr beside a MUD file or a ruleset.
    pub fn report(&self) -> Vec<String> {
        let mut out: Vec<String> = self.notes.clone();
        out.extend(
            self.unexpressed
                .iter()
                .map(|u| format!("not in the policy: {}: {}", u.entry, u.reason)),
        );
        out
    }
}

/// `s` with everything but letters, digits and `_` made `_`, at most
/// `max` characters, starting with a letter.
pub fn tag(s: &str, max: usize) -> String {
    let mut t: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(max)
        .collect();
    if !t.starts_with(|c: char| c.is_ascii_alphabetic()) {
        t.insert(0, 'd');
        t.truncate(max);
    }
    t
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn learned() -> Learned {
        let set = |v: &[&str]| {
            v.iter()
                .map(|s| s.to_string())
                .collect::<BTreeSet<String>>()
        };
        let mut l = Learned {
            from_ms: 1_764_000_000_000,
            to_ms: 1_764_600_000_000,
            ..Learned::default()
        };
        l.outbound
            .insert("tcp 10.20.0.5:11112".into(), set(&["storescu"]));
        l.outbound
            .insert("tcp 10.20.0.6:11112".into(), set(&["storescu"]));
        l.outbound.insert("udp 10.0.0.53:53".into(), set(&[""]));
        l.outbound
            .insert("tcp [fd00:20::7]:443".into(), set(&["updater"]));
        // The reply side of the jump host's SSH session, seen as outbound.
        l.outbound
            .insert("tcp 10.30.0.9:51022".into(), set(&["sshd"]));
        // A host that opened connections to a port never seen listening.
        l.outbound
            .insert("tcp 10.40.0.2:40001".into(), set(&["agentd"]));
        l.outbound
            .insert("tcp 10.40.0.2:40917".into(), set(&["agentd"]));
        // A real service on a high port.
        l.outbound
            .insert("tcp 10.20.0.8:50051".into(), set(&["inferd"]));
        l.inbound
            .insert("tcp 10.30.0.9 -> 22".into(), set(&["sshd"]));
        l.listeners.insert("tcp/22".into(), set(&["sshd"]));
        l.listeners.insert("tcp/8080".into(), set(&["webui"]));
        l
    }

    #[test]
    fn flows_are_generalized_and_what_cannot_be_said_is_listed() {
        let nets = [Network::parse("pacs=10.20.0.0/24").unwrap()];
        let p = build(&learned(), Subject::default(), &nets, 0);
        let find = |dir: Direction, remote: &str, port: u16| {
            p.flows
                .iter()
                .find(|f| f.direction == dir && f.remote.to_string() == remote && f.port == port)
        };
        // Two PACS hosts become one flow to the named network.
        let pacs = find(Direction::Outbound, "10.20.0.0/24", 11112).unwrap();
        assert_eq!(pacs.network.as_deref(), Some("pacs"));
        assert_eq!(pacs.seen.len(), 2);
        assert_eq!(
            pacs.describe(),
            "outbound tcp to pacs (10.20.0.0/24) port 11112 (storescu)"
        );
        // The high port with one use is a service, inside the network.
        assert!(find(Direction::Outbound, "10.20.0.0/24", 50051).is_some());
        assert_eq!(
            find(Direction::Outbound, "10.0.0.53/32", 53)
                .unwrap()
                .transport,
            Transport::Udp
        );
        assert!(find(Direction::Outbound, "fd00:20::7/128", 443).is_some());
        // The SSH reply port is folded into the inbound flow, not allowed
        // as an outbound service.
        assert!(find(Direction::Outbound, "10.30.0.9/32", 51022).is_none());
        assert!(find(Direction::Inbound, "10.30.0.9/32", 22).is_some());
        assert!(p.notes.iter().any(|n| n.contains("51022")));
        // Client ports with no server port known are reported, not allowed.
        assert!(p
            .flows
            .iter()
            .all(|f| f.remote.to_string() != "10.40.0.2/32"));
        let un: Vec<&str> = p.unexpressed.iter().map(|u| u.entry.as_str()).collect();
        assert_eq!(
            un,
            [
                "outbound tcp 10.40.0.2:40001",
                "outbound tcp 10.40.0.2:40917",
                "listener tcp/8080"
            ]
        );
        assert_eq!(p.flows.len(), 5);
    }

    #[test]
    fn an_empty_baseline_denies_everything_and_says_so() {
        let p = build(&Learned::default(), Subject::default(), &[], 0);
        assert!(p.flows.is_empty());
        assert!(p.notes[0].contains("denies all"));
        assert_eq!(p.to_json()["default"], "deny");
        assert_eq!(p.to_json()["flows"], json!([]));
    }

    #[test]
    fn unreadable_entries_are_reported() {
        let mut l = Learned::default();
        l.outbound
            .insert("sctp 10.1.1.1:80".into(), BTreeSet::new());
        l.outbound.insert("tcp 10.1.1.1:0".into(), BTreeSet::new());
        l.inbound.insert("tcp 10.1.1.1 22".into(), BTreeSet::new());
        let p = build(&l, Subject::default(), &[], 0);
        assert!(p.flows.is_empty());
        assert_eq!(p.unexpressed.len(), 3);
    }

    #[test]
    fn mapped_addresses_are_ipv4_and_networks_parse_strictly() {
        let mut l = Learned::default();
        l.outbound
            .insert("tcp [::ffff:10.1.1.1]:443".into(), BTreeSet::new());
        let p = build(&l, Subject::default(), &[], 0);
        assert_eq!(p.flows[0].remote.to_string(), "10.1.1.1/32");
        assert_eq!(
            Network::parse("lab=10.9.8.7/16")
                .unwrap()
                .prefix
                .to_string(),
            "10.9.0.0/16"
        );
        assert!(Network::parse("10.0.0.0/8").is_err());
        assert!(Network::parse("a b=10.0.0.0/8").is_err());
        assert!(Network::parse("lab=10.0.0.0/33").is_err());
        assert_eq!(tag("7f3a-01", 12), "d7f3a_01");
    }
}

/// Golden outputs of the generators (`collector/testdata/policy/`);
/// `VIGIL_BLESS=1` rewrites them. `tests/tests/policy.rs` checks the same
/// files with `nft -c` and `yanglint`.
#[cfg(test)]
mod golden {
    use super::tests::learned;
    use super::*;

    fn subject() -> Subject {
        Subject {
            device: Some("a1b2c3d4e5f60718".into()),
            name: "ct-scanner-3".into(),
            model: "CT-1".into(),
            source: "learned on this device".into(),
            learned_from_ms: 1_764_000_000_000,
            learned_to_ms: 1_764_600_000_000,
            approved_ms: Some(1_764_601_000_000),
            approved_by: Some("alice".into()),
            addresses: vec![
                "10.50.0.17".parse().unwrap(),
                "fd00:50::17".parse().unwrap(),
            ],
            addresses_from: "given with --address".into(),
            tag: tag("ct-scanner-3_a1b2c3d4", 24),
        }
    }

    fn check(name: &str, text: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/policy")
            .join(name);
        if std::env::var_os("VIGIL_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (VIGIL_BLESS=1 writes it)", path.display()));
        assert_eq!(text, want, "{name} differs from its golden file");
    }

    fn policies() -> Vec<(&'static str, Policy)> {
        let nets = [Network::parse("pacs=10.20.0.0/24").unwrap()];
        let now = 1_764_700_000_000;
        let mut fleet = subject();
        fleet.device = None;
        fleet.name = String::new();
        fleet.source = "fleet baseline of model CT-1".into();
        fleet.tag = "model_CT_1".into();
        fleet.addresses.push("10.50.0.18".parse().unwrap());
        vec![
            ("scanner", build(&learned(), subject(), &nets, now)),
            ("deny-all", build(&Learned::default(), subject(), &[], now)),
            ("fleet", build(&learned(), fleet, &[], now)),
        ]
    }

    #[test]
    fn generators_write_their_golden_files() {
        for (name, p) in policies() {
            let url = mud::default_url(&p.subject.tag);
            check(
                &format!("{name}.mud.json"),
                &(serde_json::to_string_pretty(&mud::render(&p, &url)).unwrap() + "\n"),
            );
            check(&format!("{name}.nft"), &nft::render(&p));
            check(
                &format!("{name}.json"),
                &(serde_json::to_string_pretty(&p.to_json()).unwrap() + "\n"),
            );
        }
    }
}
