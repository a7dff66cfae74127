//! `vigil-collector policy`: an approved baseline (a device's, or a
//! model's fleet baseline) as network policy. The policy goes to stdout;
//! what it leaves out and what the reader must know go to stderr (and, in
//! a ruleset, into its comments).

use std::net::{IpAddr, SocketAddr};

use anyhow::anyhow;

use super::args::{Global, Policy as Args, PolicyFormat};
use super::{baseline, store, usage};
use crate::detect::baseline::{Learned, Phase};
use crate::policy::{self, mud, nft, Network, Subject};
use crate::store::{self as archive, Store};

pub fn run(g: &Global, a: &Args, now: u64) -> anyhow::Result<()> {
    let networks = a
        .network
        .iter()
        .map(|n| Network::parse(n).map_err(|e| usage(format!("--network {e}"))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let addresses = a
        .address
        .iter()
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|_| usage(format!("--address `{s}`: not an IP address")))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(url) = &a.mud_url {
        if !url.starts_with("https://") || url.len() <= "https://".len() {
            return Err(usage(format!(
                "--mud-url `{url}`: a MUD URL is an https:// URL (RFC 8520, section 3.3)"
            )));
        }
    }
    let store = store(g)?;
    let (learned, mut subject) = match (&a.device, &a.model) {
        (Some(what), _) => device(&store, what)?,
        (None, Some(model)) => fleet(&store, model)?,
        (None, None) => return Err(usage("name a DEVICE or a --model")),
    };
    if !addresses.is_empty() {
        subject.addresses = addresses;
        subject.addresses_from = "given with --address".into();
    }
    let p = policy::build(&learned, subject, &networks, now);
    match a.format {
        PolicyFormat::Json => {
            out!("{}", serde_json::to_string_pretty(&p.to_json())?);
        }
        PolicyFormat::Mud => {
            let url = a
                .mud_url
                .clone()
                .unwrap_or_else(|| mud::default_url(&p.subject.tag));
            out!("{}", serde_json::to_string_pretty(&mud::render(&p, &url))?);
            if a.mud_url.is_none() {
                eprintln!("note: the MUD URL is a placeholder ({url}); pass --mud-url with where the file will be published");
            }
            for line in p.report() {
                eprintln!("note: {line}");
            }
        }
        PolicyFormat::Nftables => {
            if p.subject.addresses.is_empty() {
                return Err(usage(format!(
                    "no address is known for {}: pass the device's address as the gateway sees it with --address ADDR",
                    p.subject.device.as_deref().map_or_else(
                        || format!("the devices of model {}", p.subject.model),
                        |d| format!("device {d}")
                    )
                )));
            }
            out!("{}", nft::render(&p).trim_end());
            for line in p.report() {
                eprintln!("note: {line}");
            }
        }
    }
    Ok(())
}

/// The address in a device's `peer` (`ADDR:PORT`), if it is one.
fn peer_address(peer: Option<&str>) -> Option<IpAddr> {
    let peer = peer?;
    let ip = peer
        .parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| peer.parse::<IpAddr>())
        .ok()?;
    Some(crate::config::Prefix::host(ip).addr())
}

/// The latest admin-log entry approving `target`, as (time, actor).
fn approval(store: &Store, target: &str, actions: &[&str]) -> anyhow::Result<Option<String>> {
    Ok(store
        .admin_log()?
        .into_iter()
        .rev()
        .find(|e| {
            e["target"] == target && e["action"].as_str().is_some_and(|a| actions.contains(&a))
        })
        .and_then(|e| e["actor"].as_str().map(str::to_string)))
}

fn device(store: &Store, what: &str) -> anyhow::Result<(Learned, Subject)> {
    let d = store.find_device(what)?;
    let refuse = |m: String| anyhow!(archive::StoreError::Refused(m));
    let Some((_, b)) = baseline::load(store, &d.id)? else {
        return Err(refuse(format!(
            "device {} has no baseline yet (it starts learning when the device is approved): there is nothing to make a policy from",
            d.id
        )));
    };
    match b.phase {
        Phase::Baselining => {
            return Err(refuse(format!(
                "the baseline of {} ({}) is still learning{}: a policy comes from an approved baseline (close it, review it with `baseline show`, then `baseline approve`)",
                d.id,
                d.name,
                b.closes_ms
                    .map(|t| format!(" until {}", crate::alert::rfc3339(t)))
                    .unwrap_or_default()
            )))
        }
        Phase::Review => {
            return Err(refuse(format!(
                "the baseline of {} ({}) is closed but not approved: review it with `baseline show`, then `baseline approve`",
                d.id, d.name
            )))
        }
        Phase::Monitoring => {}
    }
    let fleet = b.source.starts_with("fleet baseline");
    let approved_by = if fleet {
        approval(store, &d.model, &["baseline-import"])?
    } else {
        approval(store, &d.id, &["baseline-approve"])?
    };
    let addresses: Vec<IpAddr> = peer_address(d.peer.as_deref()).into_iter().collect();
    let subject = Subject {
        device: Some(d.id.clone()),
        name: d.name.clone(),
        model: d.model.clone(),
        source: b.source.clone(),
        learned_from_ms: b.learned.from_ms,
        learned_to_ms: b.learned.to_ms,
        approved_ms: b.approved_ms,
        approved_by,
        addresses,
        addresses_from: "where the collector last saw the device connect from".into(),
        tag: policy::tag(&format!("{}_{}", d.name, &d.id[..d.id.len().min(8)]), 24),
    };
    Ok((b.learned, subject))
}

fn fleet(store: &Store, model: &str) -> anyhow::Result<(Learned, Subject)> {
    let Some((body, imported_ms)) = store.fleet_baseline_row(model)? else {
        return Err(usage(format!(
            "there is no fleet baseline for model `{model}` (import one with `baseline import --model {model} FILE`)"
        )));
    };
    let learned: Learned = serde_json::from_str(&body)
        .map_err(|e| anyhow!("the fleet baseline of model {model} is unreadable: {e}"))?;
    let addresses: Vec<IpAddr> = store
        .devices()?
        .into_iter()
        .filter(|d| d.model == model && d.state != archive::DeviceState::Revoked)
        .filter_map(|d| peer_address(d.peer.as_deref()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let subject = Subject {
        device: None,
        name: String::new(),
        model: model.to_string(),
        source: format!("fleet baseline of model {model}"),
        learned_from_ms: learned.from_ms,
        learned_to_ms: learned.to_ms,
        approved_ms: Some(imported_ms),
        approved_by: approval(store, model, &["baseline-import"])?,
        addresses,
        addresses_from: format!(
            "where the collector last saw each device of model {model} connect from"
        ),
        tag: policy::tag(&format!("model_{model}"), 24),
    };
    Ok((learned, subject))
}
