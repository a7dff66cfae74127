//! Start-up benchmark: how long from spawning `vigil-agent run` to the
//! first signed frame arriving, verified, at a TLS 1.3 receiver on
//! loopback (connect, handshake, first reading and signature included).
//!
//! usage: vigil-startup RUNS AGENT_COMMAND...
//! e.g.   vigil-startup 30 qemu-aarch64 dist/vigil-agent-aarch64-unknown-linux-musl
//! Prints the median, min, p90 and max in milliseconds.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vigil_tests::receiver::{listen, Policy};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(runs), Some(program)) = (
        args.first().and_then(|r| r.parse::<usize>().ok()),
        args.get(1),
    ) else {
        eprintln!("usage: vigil-startup RUNS AGENT_COMMAND...");
        std::process::exit(2);
    };
    let prefix = &args[2..];
    let agent = |extra: &[&str]| {
        let mut c = Command::new(program);
        c.args(prefix).args(extra);
        c
    };
    let dir = std::env::temp_dir().join(format!("vigil-startup-{}", std::process::id()));
    let mut ms = Vec::with_capacity(runs);
    for i in 0..runs {
        let state = dir.join(i.to_string());
        let _ = std::fs::remove_dir_all(&state);
        let state = state.to_str().unwrap().to_string();
        let key = vigil_tests::keygen_with(agent(&["keygen", "--state-dir", &state]));
        let server = listen(key, Policy::default(), true);
        let mut run = agent(&["run", "--state-dir", &state, "--batch", "1"]);
        run.args(["--collector", &server.address, "--pin", &server.pin])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let start = Instant::now();
        let mut child = run.spawn().expect("start the agent");
        let deadline = start + Duration::from_secs(30);
        while server.log.frames().is_empty() {
            assert!(Instant::now() < deadline, "no frame within 30 s");
            std::thread::sleep(Duration::from_micros(200));
        }
        ms.push(start.elapsed().as_secs_f64() * 1000.0);
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    println!(
        "runs {runs}  median {:.1} ms  min {:.1}  p90 {:.1}  max {:.1}",
        at(0.5),
        ms[0],
        at(0.9),
        ms[ms.len() - 1]
    );
}
