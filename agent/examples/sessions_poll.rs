//! How long one sessions read takes on this machine (process table, utmp,
//! wtmp), beside one socket-table read for scale. Prints medians of
//! `ROUNDS` reads each. `cargo run --release -p vigil-agent --example
//! sessions_poll`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Instant;

const ROUNDS: usize = 200;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let root = Path::new("/");
    let procs = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
        })
        .count();
    let cfg = vigil_agent::config::Sessions::default();
    let mut t = vigil_agent::sessions::Tracker::new(root, &cfg);
    let mut issues = Vec::new();
    let mut sessions = Vec::new();
    for _ in 0..ROUNDS {
        let s = Instant::now();
        let _ = t.poll(0, &mut issues);
        sessions.push(s.elapsed().as_secs_f64() * 1e6);
    }
    let mut owners = vigil_agent::sample::sockets::Owners::new();
    let mut sockets = Vec::new();
    for _ in 0..ROUNDS {
        let s = Instant::now();
        let _ = vigil_agent::sample::sockets::read(root, &mut owners, &mut issues);
        sockets.push(s.elapsed().as_secs_f64() * 1e6);
    }
    println!("processes: {procs}");
    println!("sessions read: median {:.0} us", median(sessions));
    println!("socket table read: median {:.0} us", median(sockets));
}
