//! The policy as an RFC 8520 Manufacturer Usage Description: the
//! `ietf-mud:mud` container and the `ietf-access-control-list:acls` it
//! points to (RFC 8519), in the YANG JSON encoding (RFC 7951). Each flow is
//! two ACEs: the packets towards the server's port in one direction's ACL
//! and the replies in the other's, TCP ones tied to who opened the
//! connection (`ietf-mud:direction-initiated`). The approval is recorded
//! in the `vigil-approval` extension, whose YANG module
//! (`collector/yang/vigil-mud-approval.yang`) augments `/mud:mud`.

use serde_json::{json, Map, Value};

use super::{Direction, Flow, Policy, Transport};
use crate::alert::rfc3339;

/// The extension's name in `extensions` and its module's name.
pub const EXTENSION: &str = "vigil-approval";
pub const MODULE: &str = "vigil-mud-approval";
/// How long a MUD manager may keep the file, hours (RFC 8520's default).
const CACHE_VALIDITY_H: u8 = 48;

/// A placeholder MUD URL under a reserved name (RFC 6761's `.invalid`),
/// for when the operator gives none.
pub fn default_url(tag: &str) -> String {
    format!("https://mud.vigil.invalid/{tag}.json")
}

fn port(p: u16) -> Value {
    json!({"operator": "eq", "port": p})
}

/// The two ACEs of one flow: (from the device, to the device).
fn aces(i: usize, f: &Flow) -> (Value, Value) {
    let fam = if f.v6() { "ipv6" } else { "ipv4" };
    let net = f.remote.network().to_string();
    let proto = f.transport.number();
    let l4 = f.transport.name();
    let initiated = match f.direction {
        Direction::Outbound => "from-device",
        Direction::Inbound => "to-device",
    };
    // The remote's side of each packet, and which end has the server port.
    let (fr_port, to_port) = match f.direction {
        Direction::Outbound => ("destination-port", "source-port"),
        Direction::Inbound => ("source-port", "destination-port"),
    };
    let one = |dst: bool, port_field: &str, dir: &str| {
        let mut ip = Map::new();
        ip.insert("protocol".into(), json!(proto));
        let field = if dst {
            format!("destination-{fam}-network")
        } else {
            format!("source-{fam}-network")
        };
        ip.insert(field, json!(net));
        let mut l4m = Map::new();
        if f.transport == Transport::Tcp {
            l4m.insert("ietf-mud:direction-initiated".into(), json!(initiated));
        }
        l4m.insert(port_field.into(), port(f.port));
        json!({
            "name": format!("{}{i}-{dir}", if f.direction == Direction::Outbound { "out" } else { "in" }),
            "matches": {fam: Value::Object(ip), l4: Value::Object(l4m)},
            "actions": {"forwarding": "accept"},
        })
    };
    (one(true, fr_port, "frdev"), one(false, to_port, "todev"))
}

/// The MUD file for `p`, published at `url`.
pub fn render(p: &Policy, url: &str) -> Value {
    let s = &p.subject;
    let base = format!("mud-{}", s.tag);
    // family -> (from-device ACEs, to-device ACEs)
    let mut fams: Vec<(&str, &str, Vec<Value>, Vec<Value>)> = vec![
        ("v4", "ipv4-acl-type", Vec::new(), Vec::new()),
        ("v6", "ipv6-acl-type", Vec::new(), Vec::new()),
    ];
    for (i, f) in p.flows.iter().enumerate() {
        let (fr, to) = aces(i, f);
        let fam = &mut fams[usize::from(f.v6())];
        fam.2.push(fr);
        fam.3.push(to);
    }
    if p.flows.is_empty() {
        // Deny-all, said in so many words.
        for fam in &mut fams {
            fam.2
                .push(json!({"name": "deny-all-frdev", "actions": {"forwarding": "drop"}}));
            fam.3
                .push(json!({"name": "deny-all-todev", "actions": {"forwarding": "drop"}}));
        }
    }
    let mut acls = Vec::new();
    let (mut from_lists, mut to_lists) = (Vec::new(), Vec::new());
    for (fam, kind, fr, to) in fams {
        if fr.is_empty() {
            continue;
        }
        let (nfr, nto) = (format!("{base}-{fam}fr"), format!("{base}-{fam}to"));
        from_lists.push(json!({"name": nfr}));
        to_lists.push(json!({"name": nto}));
        acls.push(json!({"name": nfr, "type": kind, "aces": {"ace": fr}}));
        acls.push(json!({"name": nto, "type": kind, "aces": {"ace": to}}));
    }
    let approved = match s.approved_ms {
        Some(t) => format!("approved {}", rfc3339(t)),
        None => "not approved".into(),
    };
    let mut approval = Map::new();
    if let Some(d) = &s.device {
        approval.insert("device".into(), json!(d));
        approval.insert("device-name".into(), json!(s.name));
    }
    approval.insert("baseline-source".into(), json!(s.source));
    if s.learned_from_ms > 0 {
        approval.insert("learned-from".into(), json!(rfc3339(s.learned_from_ms)));
    }
    if s.learned_to_ms > 0 {
        approval.insert("learned-to".into(), json!(rfc3339(s.learned_to_ms)));
    }
    if let Some(t) = s.approved_ms {
        approval.insert("approved".into(), json!(rfc3339(t)));
    }
    if let Some(by) = &s.approved_by {
        approval.insert("approved-by".into(), json!(by));
    }
    approval.insert(
        "generator".into(),
        json!(format!("vigil-collector {}", env!("CARGO_PKG_VERSION"))),
    );
    let mut mud = Map::new();
    mud.insert("mud-version".into(), json!(1));
    mud.insert("mud-url".into(), json!(url));
    mud.insert("last-update".into(), json!(rfc3339(p.generated_ms)));
    mud.insert("cache-validity".into(), json!(CACHE_VALIDITY_H));
    mud.insert("is-supported".into(), json!(true));
    mud.insert(
        "systeminfo".into(),
        json!(format!(
            "{} ({}): the flows of its Vigil baseline, {approved}",
            if s.name.is_empty() {
                "every device"
            } else {
                &s.name
            },
            if s.model.is_empty() {
                "no model"
            } else {
                &s.model
            }
        )),
    );
    if !s.model.is_empty() {
        mud.insert("model-name".into(), json!(s.model));
    }
    mud.insert("extensions".into(), json!([EXTENSION]));
    mud.insert(format!("{MODULE}:approval"), Value::Object(approval));
    mud.insert(
        "from-device-policy".into(),
        json!({"access-lists": {"access-list": from_lists}}),
    );
    mud.insert(
        "to-device-policy".into(),
        json!({"access-lists": {"access-list": to_lists}}),
    );
    json!({
        "ietf-mud:mud": Value::Object(mud),
        "ietf-access-control-list:acls": {"acl": acls},
    })
}
