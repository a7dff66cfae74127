//! The soak, fast-forwarded: the real agent's and the real collector's
//! test clocks (`--test-clock START:FACTOR` on both) start
//! `VIGIL_SOAK_HOURS` ago and run `VIGIL_SOAK_FACTOR` times faster than
//! real time, so that many hours of 1 s samples (10 per frame, sockets
//! every 10 s, sessions every 5 s, all in the clock's seconds) go through
//! the real collector over TLS. The collector keeps
//! `VIGIL_SOAK_RETENTION_DAYS` of raw samples by its own (fast) clock and
//! rolls up every 10 s of real time. Every second the test counts the
//! agent's and the collector's resident memory, threads and open files.
//!
//! CI runs 30 hours at 500x (216 s) against a 1-day retention. The month,
//! with the release binaries (they keep up with about 1000x on this 2-core
//! machine, the debug ones with 500x), in 45 minutes:
//! `VIGIL_TEST_PROFILE=release VIGIL_SOAK_FACTOR=1000 VIGIL_SOAK_HOURS=720 VIGIL_SOAK_RETENTION_DAYS=7 cargo test -p vigil-tests --test soak -- --nocapture`

use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::collector::{cli, transport_alerts, Collector};
use vigil_tests::{binary, keygen, tempdir, usage, Agent, Usage};

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;
/// The agent's memory is compared with what it held after this long.
const SETTLED: Duration = Duration::from_secs(60);
/// The collector's page cache (64 MiB) and as much again for the rest.
const COLLECTOR_RSS_BOUND_KIB: u64 = 128 * 1024;

fn env(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        Err(_) => default,
    }
}

fn wall_ms() -> u64 {
    vigil_tests::collector::now_ms()
}

struct Reading {
    at: Duration,
    agent: Usage,
    collector: Usage,
}

#[test]
fn a_fast_forwarded_month_keeps_memory_flat_storage_in_retention_and_leaks_nothing() {
    let hours = env("VIGIL_SOAK_HOURS", 30);
    let factor = env("VIGIL_SOAK_FACTOR", 500);
    let retention_days = env("VIGIL_SOAK_RETENTION_DAYS", 1);
    assert!(
        hours * HOUR_MS > retention_days * DAY_MS,
        "the soak must outlast the retention to show the roll-up"
    );
    let span_ms = hours * HOUR_MS;
    let run = Duration::from_millis(span_ms / factor);
    assert!(run > SETTLED * 2, "{run:?} is too short to show a trend");
    eprintln!("soak: {hours} h of 1 s samples at {factor}x: {run:?}, retention {retention_days} d");

    let dir = tempdir("soak");
    let (agent_dir, state) = (dir.join("agent"), dir.join("collector"));
    std::fs::create_dir_all(&agent_dir).unwrap();
    let retention = retention_days.to_string();
    // One fast clock for both: `clock(t)` is where it stands at real time t.
    // The binaries are built first: a build after the clock started would
    // put the collector's clock behind the agent's by as long.
    let (collector_bin, _) = (binary("vigil-collector"), binary("vigil-agent"));
    assert!(collector_bin.exists());
    let start_ms = wall_ms() - span_ms;
    let began_clock = Instant::now();
    let clock = |t: Instant| start_ms + (t - began_clock).as_millis() as u64 * factor;
    let serve_args = |at: Instant| {
        let mut a: Vec<String> = [
            "--listen",
            "127.0.0.1:0",
            "--retention-days",
            &retention,
            "--rollup-every-s",
            "10",
            "--baseline-period-s",
            "3600",
            // The agent's clock starts after the collector's: however long
            // its start takes (a second is 500 s of the clock) is not skew.
            "--clock-skew-s",
            "86400",
            // The agent sends what it has about once a real second (500 s
            // of the clock): that is not silence, and a hole in the stream
            // is given as long as it would have at real speed.
            "--silence-s",
            "604800",
            "--loss-grace-s",
            "86400",
        ]
        .map(String::from)
        .to_vec();
        a.extend(["--test-clock".into(), format!("{}:{factor}", clock(at))]);
        a
    };
    let args = serve_args(Instant::now());
    let c = Collector::start(&state, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let key = keygen(&agent_dir);
    c.enroll(&key, "soak", "");
    let id = vigil_protocol::DeviceId::of(&key).to_string();
    // The agent's clock starts where the collector's stands.
    let agent_start_ms = clock(Instant::now());
    let mut cmd = std::process::Command::new(binary("vigil-agent"));
    cmd.arg("run")
        .arg("--state-dir")
        .arg(&agent_dir)
        .args(["--collector", c.tls.as_deref().unwrap()])
        .args(["--pin", c.pin.as_deref().unwrap()])
        .args(["--interval-ms", "1000", "--batch", "10"])
        .args(["--test-clock", &format!("{agent_start_ms}:{factor}")]);
    let agent = Agent::spawn_logged(cmd, &dir.join("agent.log"));
    let agent_pid = agent.0.id();

    let began = Instant::now();
    let mut readings = Vec::new();
    while began.elapsed() < run {
        std::thread::sleep(Duration::from_secs(1));
        readings.push(Reading {
            at: began.elapsed(),
            agent: usage(agent_pid),
            collector: usage(c.pid()),
        });
    }
    let (code, _) = agent.stop();
    assert_eq!(code, Some(0), "{}", agent_log(&dir));
    assert!(
        agent_log(&dir).contains("stopped; 0 frames left unacknowledged"),
        "{}",
        agent_log(&dir)
    );

    // The table, a line per tenth of the run.
    eprintln!("| real s | clock day | agent RSS KiB | threads | fds | collector RSS KiB | threads | fds |");
    eprintln!("|---|---|---|---|---|---|---|---|");
    let step = (readings.len() / 10).max(1);
    for r in readings.iter().step_by(step).chain(readings.last()) {
        let day = r.at.as_millis() as f64 * factor as f64 / DAY_MS as f64;
        eprintln!(
            "| {} | {day:.1} | {} | {} | {} | {} | {} | {} |",
            r.at.as_secs(),
            r.agent.rss_kib,
            r.agent.threads,
            r.agent.fds,
            r.collector.rss_kib,
            r.collector.threads,
            r.collector.fds
        );
    }

    // The agent: flat after the first minute, no thread or file growth.
    let settled = readings
        .iter()
        .find(|r| r.at >= SETTLED)
        .expect("a reading after the first minute");
    let after: Vec<&Reading> = readings.iter().filter(|r| r.at >= SETTLED).collect();
    let (lo, hi) = after.iter().fold((u64::MAX, 0), |(lo, hi), r| {
        (lo.min(r.agent.rss_kib), hi.max(r.agent.rss_kib))
    });
    let reference = settled.agent.rss_kib as f64;
    eprintln!(
        "agent RSS after the first minute: {} KiB, then {lo}..{hi} KiB ({:+.1} % .. {:+.1} %)",
        settled.agent.rss_kib,
        100.0 * (lo as f64 / reference - 1.0),
        100.0 * (hi as f64 / reference - 1.0)
    );
    assert!(
        hi as f64 <= reference * 1.05 && lo as f64 >= reference * 0.95,
        "agent RSS not flat within 5 % of {reference} KiB: {lo}..{hi}"
    );
    let max = |f: fn(&Reading) -> u64| after.iter().map(|r| f(r)).max().unwrap_or(0);
    // Sampling opens a /proc file for a moment: one or two may be caught.
    assert!(
        max(|r| r.agent.fds) <= settled.agent.fds + 2,
        "agent file descriptors grew: {} then up to {}",
        settled.agent.fds,
        max(|r| r.agent.fds)
    );
    assert!(
        max(|r| r.agent.threads) <= settled.agent.threads,
        "agent threads grew: {} then up to {}",
        settled.agent.threads,
        max(|r| r.agent.threads)
    );
    // The collector: its memory is mostly SQLite's page cache, 64 MiB at
    // most; no thread or file growth over the second half.
    let collector_peak = readings
        .iter()
        .map(|r| r.collector.rss_kib)
        .max()
        .unwrap_or(0);
    assert!(
        collector_peak <= COLLECTOR_RSS_BOUND_KIB,
        "collector RSS {collector_peak} KiB over {COLLECTOR_RSS_BOUND_KIB} KiB"
    );
    let half = readings.len() / 2;
    let first_half_max = |f: fn(&Reading) -> u64| readings[..half].iter().map(f).max().unwrap_or(0);
    let second_half_max =
        |f: fn(&Reading) -> u64| readings[half..].iter().map(f).max().unwrap_or(0);
    for (what, f) in [
        (
            "threads",
            (|r: &Reading| r.collector.threads) as fn(&Reading) -> u64,
        ),
        ("file descriptors", |r: &Reading| r.collector.fds),
    ] {
        assert!(
            second_half_max(f) <= first_half_max(f),
            "collector {what} grew: up to {} in the first half, {} in the second",
            first_half_max(f),
            second_half_max(f)
        );
    }

    // A restart rolls up at once what aged meanwhile: then the archive holds
    // raw samples for the retention period and minutes before it.
    let rollups = |c: &Collector| c.log().matches("rolled up").count();
    let before = rollups(&c);
    assert!(before > 0, "no roll-up while the soak ran:\n{}", c.log());
    assert_eq!(c.stop(), Some(0));
    let before_restart = clock(Instant::now());
    let args = serve_args(Instant::now());
    let c = Collector::start(&state, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        c.wait_for(Duration::from_secs(20), |c| rollups(c) > before),
        "no roll-up at start:\n{}",
        c.log()
    );
    assert_eq!(c.stop(), Some(0));
    let after_restart = clock(Instant::now());
    let retention_ms = retention_days * DAY_MS;

    let db = rusqlite::Connection::open(state.join("vigil.sqlite")).unwrap();
    let q = |sql: &str| -> (i64, i64, i64) {
        db.query_row(sql, [], |r| {
            Ok((
                r.get::<_, Option<i64>>(0)?.unwrap_or(0),
                r.get::<_, Option<i64>>(1)?.unwrap_or(0),
                r.get::<_, Option<i64>>(2)?.unwrap_or(0),
            ))
        })
        .unwrap()
    };
    let (raw, raw_first, raw_last) = q("SELECT count(*), min(time_ms), max(time_ms) FROM samples");
    let (minutes, rolled, first_minute) =
        q("SELECT count(*), sum(samples), min(minute_ms) FROM samples_minute");
    let (_, last_minute, _) = q("SELECT 0, max(minute_ms), 0 FROM samples_minute");
    let db_bytes = std::fs::metadata(state.join("vigil.sqlite")).unwrap().len();
    let ago = |ms: i64| (after_restart as i64 - ms) as f64 / HOUR_MS as f64;
    eprintln!(
        "archive: {raw} raw samples (from {:.2} h to {:.2} h ago), {minutes} minutes holding {rolled} rolled-up samples, {:.1} MiB",
        ago(raw_first),
        ago(raw_last),
        db_bytes as f64 / 1_048_576.0
    );
    // Raw samples: exactly the retention period, by the collector's
    // receive time. The agent sends what it has about once a real second,
    // so frames arrive in bursts up to `gap` of the clock apart, each
    // holding samples up to `lag` older than its arrival.
    let cutoff_lo = before_restart - retention_ms;
    let cutoff_hi = after_restart - retention_ms;
    let (kept_first, lag, _) = q(
        "SELECT min(received_ms), max(received_ms - time_ms), 0 FROM frames WHERE kind = 'samples'",
    );
    let (gap, _, _) = q(
        "SELECT max(received_ms - prev), 0, 0 FROM (SELECT received_ms,
            lag(received_ms) OVER (ORDER BY received_ms) AS prev FROM frames WHERE kind = 'samples')",
    );
    eprintln!(
        "receive: bursts up to {:.1} s of the clock apart, samples up to {:.1} s old on arrival",
        gap as f64 / 1000.0,
        lag as f64 / 1000.0
    );
    assert!(
        kept_first as u64 >= cutoff_lo && kept_first as u64 <= cutoff_hi + gap as u64,
        "oldest raw frame received at {kept_first}, not at the retention cutoff {cutoff_lo}..{cutoff_hi}"
    );
    assert!(
        raw_first as u64 + 15_000 + lag as u64 >= cutoff_lo,
        "a raw sample dated {raw_first} is older than the cutoff {cutoff_lo} and its arrival"
    );
    // Minutes: from the soak's start to the cutoff, none missing.
    assert!(
        (first_minute as u64).abs_diff(agent_start_ms) < 120_000,
        "first minute {first_minute}, soak began {agent_start_ms}"
    );
    assert_eq!(
        minutes,
        (last_minute - first_minute) / 60_000 + 1,
        "a minute is missing between the first and the last rolled up"
    );
    assert!(last_minute as u64 + 120_000 + lag as u64 >= cutoff_lo);
    // At most a sample per second of the clock, raw or rolled up, each
    // once: none made up. A tick the agent could not make in time is
    // skipped, never made up in a burst, and how many it can make at 500x
    // is the machine's speed, not a property of the code: 83 % here for
    // the landed code on a quiet 2-core machine, 56 % under load, over 90 %
    // on the CI machine of earlier rounds. So the floor is only that the
    // clock was covered densely (every minute of it is checked above);
    // the ratio is printed, and the agent's cost is measured in
    // `tests/bench/agent-footprint.sh`, not here.
    let samples = (raw + rolled) as u64;
    let seconds = (raw_last as u64 - agent_start_ms) / 1000;
    eprintln!(
        "samples: {samples} for {seconds} s of the clock ({:.1} %)",
        100.0 * samples as f64 / seconds as f64
    );
    assert!(
        samples <= seconds + 20 && samples * 100 >= seconds * 25,
        "{samples} samples for {seconds} clock seconds"
    );
    // Nothing lost on the way: every frame the agent made arrived once.
    let devices: Value =
        serde_json::from_slice(&cli(&state, &["devices", "--json"]).stdout).unwrap();
    let received = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id.as_str())
        .and_then(|d| d["frames_received"].as_i64())
        .unwrap();
    // `frames_received` counts resends too (the agent sends everything
    // unacknowledged again when acks stall for 3 s); each was stored once
    // (the samples above are one per second, not more).
    let (_, high, acked) = q("SELECT 0, high_seq, acked_seq FROM tracks");
    eprintln!(
        "frames: sequence 0..={high}, acked to {acked}, {received} received ({} resends)",
        received - (high + 1)
    );
    assert_eq!(acked, high, "not everything was acknowledged");
    assert!(received > high, "{received} frames received for 0..={high}");
    let transport = transport_alerts(&state);
    assert!(transport.is_empty(), "{transport:#?}");
    let alerts: Vec<Value> =
        serde_json::from_slice(&cli(&state, &["alerts", "--json"]).stdout).unwrap();
    let clock_or_silence: Vec<&Value> = alerts
        .iter()
        .filter(|a| {
            matches!(
                a["rule"].as_str(),
                Some("device.clock-skew" | "device.silence")
            )
        })
        .collect();
    assert!(clock_or_silence.is_empty(), "{clock_or_silence:#?}");
    let audit = cli(&state, &["audit"]);
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stdout)
    );
}

fn agent_log(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
}
