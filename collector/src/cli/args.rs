//! The collector's command line as clap types: every command, flag and
//! help text, and nothing else. Self-contained (clap and std only) so that
//! the xtask can `#[path]`-include this file to generate the man pages and
//! shell completions from the same definitions the binary parses with.
//! Values that are configuration (serve's overrides of the file's
//! settings) stay text here and are checked where the configuration is,
//! so a bad one exits 78 naming its field; everything else is typed and a
//! bad one is a usage error (exit 2).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
DEVICE is a device id (or a unique prefix of at least 4 digits) or a device name.
T is YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC).

Exit codes: 0 ok, 1 audit found problems, 2 usage or runtime error, 78 bad configuration.";

/// Vigil's hospital-side collector: receive, verify, archive, alert.
#[derive(Debug, Parser)]
#[command(
    name = "vigil-collector",
    version,
    after_help = AFTER_HELP,
    propagate_version = true,
    disable_help_subcommand = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command understands.
#[derive(Debug, Args)]
pub struct Global {
    /// The configuration file (TOML); its state_dir is the archive's folder.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The state dir: the archive, TLS identity and keys [default: /var/lib/vigil-collector].
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive, verify, archive and alert (the service).
    Serve(Box<Serve>),
    /// A collector and a local agent on this machine, with a live view.
    Quickstart {
        /// Stop after N seconds (default: until Ctrl-C).
        #[arg(long, value_name = "N")]
        duration_s: Option<u64>,
    },
    /// Approve a device ahead of time, by its key.
    Enroll {
        /// The device key, as `vigil-agent id` prints it (`ed25519:<base64>`).
        #[arg(long, value_name = "KEY")]
        key: String,
        /// A name for the device (unique).
        #[arg(long, value_name = "NAME")]
        name: String,
        /// The device model; a fleet baseline of that model is adopted.
        #[arg(long, value_name = "MODEL")]
        model: Option<String>,
    },
    /// Approve a pending device.
    Approve {
        #[arg(value_name = "DEVICE")]
        device: String,
    },
    /// Revoke a device: its frames are refused and alerted.
    Revoke {
        #[arg(value_name = "DEVICE")]
        device: String,
    },
    /// Every device, its state and last sample.
    Devices,
    /// One device: its latest sample, open alerts and baseline.
    Device {
        #[arg(value_name = "DEVICE")]
        device: String,
    },
    /// The alerts, newest first.
    Alerts {
        /// Only alerts not yet resolved.
        #[arg(long)]
        open: bool,
        /// Only this device's alerts.
        #[arg(long, value_name = "DEVICE")]
        device: Option<String>,
        /// Only alerts of at least this severity.
        #[arg(long, value_enum, value_name = "SEVERITY")]
        severity: Option<SeverityArg>,
    },
    /// Acknowledge an alert (audited).
    Ack {
        /// The alert number, as `alerts` shows it.
        #[arg(value_name = "ALERT")]
        alert: i64,
    },
    /// Resolve an alert (audited).
    Resolve {
        /// The alert number, as `alerts` shows it.
        #[arg(value_name = "ALERT")]
        alert: i64,
    },
    /// A device's samples as CSV or JSON.
    Export {
        #[arg(long, value_name = "DEVICE")]
        device: String,
        #[command(flatten)]
        range: Range,
        #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
        format: ExportFormat,
    },
    /// Re-verify every stored frame and the rows decoded from it, walk the
    /// hash chain, and name every sequence hole nothing explains.
    Audit {
        /// Also check the archive against signed checkpoints exported
        /// earlier: the JSON sink's file, or `checkpoints` output.
        #[arg(long, value_name = "FILE")]
        against: Option<std::path::PathBuf>,
        /// The collector's checkpoint key (64 hex digits, as `checkpoints`
        /// prints it) the checkpoints must be signed with.
        #[arg(long, value_name = "HEX", requires = "against")]
        collector_key: Option<String>,
    },
    /// The signed checkpoints of the archive's hash chain, one JSON line
    /// each (what the sinks received), for `audit --against`.
    Checkpoints,
    /// Who changed what, and when.
    AdminLog,
    /// A device's baseline: review, close, approve, reset, export, import.
    Baseline {
        #[command(subcommand)]
        command: BaselineCommand,
    },
    /// Network policy from an approved baseline: an RFC 8520 MUD file, an
    /// nftables ruleset for the gateway in front of the device, or JSON.
    Policy(Policy),
    /// The access record (every session the devices reported), and the
    /// access windows opened by hand.
    #[command(args_conflicts_with_subcommands = true)]
    Access {
        #[command(subcommand)]
        command: Option<AccessCommand>,
        #[command(flatten)]
        record: AccessRecord,
    },
    /// Replay a recorded series through the detector: prints
    /// timestamp,value,score,anomaly rows.
    Detect(Detect),
}

/// `serve`: each option overrides the same setting of --config.
#[derive(Debug, Args)]
pub struct Serve {
    /// Start a new archive if the one in the state dir is empty, cut off or
    /// not a Vigil archive (it is moved aside, never deleted).
    #[arg(long)]
    pub new: bool,
    /// TLS 1.3 listener [default: 0.0.0.0:7443].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// PEM certificate chain [default: a self-signed Ed25519 certificate in the state dir].
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Plain TCP listener (lab use only; needs --insecure-plaintext).
    #[arg(long, value_name = "ADDR")]
    pub plain_listen: Option<String>,
    /// Allow --plain-listen.
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// No TLS listener (serial or plain only).
    #[arg(long)]
    pub no_tls: bool,
    /// Read a serial port (repeatable; default baud 115200).
    #[arg(long, value_name = "DEVICE[:BAUD]")]
    pub serial: Vec<String>,
    /// Prometheus metrics on http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Raw samples kept N days, then per-minute aggregates [default: 30].
    #[arg(long, value_name = "N")]
    pub retention_days: Option<String>,
    /// How often older samples are rolled up, in seconds [default: 3600, and once at start].
    #[arg(long, value_name = "N")]
    pub rollup_every_s: Option<String>,
    /// Silence alert after N s without a frame [default: 300].
    #[arg(long, value_name = "N")]
    pub silence_s: Option<String>,
    /// Alert an unexplained sequence hole after N s [default: 120].
    #[arg(long, value_name = "N")]
    pub loss_grace_s: Option<String>,
    /// Alert a device clock more than N s from the collector's [default: 300].
    #[arg(long, value_name = "N")]
    pub clock_skew_s: Option<String>,
    /// Most connections at once.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<String>,
    /// Most frames per second per connection.
    #[arg(long, value_name = "N")]
    pub frames_per_s: Option<String>,
    /// Most connections at once from one address [default: 64].
    #[arg(long, value_name = "N")]
    pub max_connections_per_address: Option<String>,
    /// Most frames per second from one device, all its connections together [default: 500].
    #[arg(long, value_name = "N")]
    pub device_frames_per_s: Option<String>,
    /// Most bytes per second from one device, all its connections together [default: 262144].
    #[arg(long, value_name = "N")]
    pub device_bytes_per_s: Option<String>,
    /// Close a connection idle for N s.
    #[arg(long, value_name = "N")]
    pub idle_timeout_s: Option<String>,
    /// Close a connection whose TLS handshake takes over N s.
    #[arg(long, value_name = "N")]
    pub handshake_timeout_s: Option<String>,
    /// Hellos a minute from keys nobody enrolled.
    #[arg(long, value_name = "N")]
    pub unknown_per_minute: Option<String>,
    /// Hellos a minute from one address for keys nobody enrolled [default: 4].
    #[arg(long, value_name = "N")]
    pub unknown_per_address_per_minute: Option<String>,
    /// Most devices pending approval.
    #[arg(long, value_name = "N")]
    pub max_pending: Option<String>,
    /// Most devices pending from one address; a newer one replaces its oldest [default: 4].
    #[arg(long, value_name = "N")]
    pub max_pending_per_address: Option<String>,
    /// JSON lines to PATH (- for stdout; repeatable).
    #[arg(long, value_name = "PATH")]
    pub sink_json: Vec<String>,
    /// RFC 5424 syslog to ADDR (UDP unless ADDR/tcp; repeatable).
    #[arg(long, value_name = "ADDR[/tcp]")]
    pub sink_syslog: Vec<String>,
    /// CEF over syslog to ADDR, or CEF lines to a file (repeatable).
    #[arg(long, value_name = "ADDR[/tcp]|PATH")]
    pub sink_cef: Vec<String>,
    /// A new device's baseline closes for review after N s [default: 604800, 7 days].
    #[arg(long, value_name = "N")]
    pub baseline_period_s: Option<String>,
    /// The hospital's networks (repeatable; replaces the default RFC 1918,
    /// loopback, link-local and ULA).
    #[arg(long, value_name = "PREFIX")]
    pub internal_prefix: Vec<String>,
    /// An outbound endpoint never alerted as new (repeatable; PREFIX,
    /// PREFIX:PORT or `[V6PREFIX]:PORT`).
    #[arg(long, value_name = "E")]
    pub allow_outbound: Vec<String>,
    /// A remote-admin or file-sharing port allowed towards E (repeatable).
    #[arg(long, value_name = "E")]
    pub allow_lateral: Vec<String>,
    /// A metric learned but never alerted on (repeatable; a name like
    /// disk.read_bytes or a prefix like disk.*).
    #[arg(long, value_name = "M")]
    pub unwatched_metric: Vec<String>,
    /// Soak tests only: the collector's clock starts at START_MS and runs
    /// FACTOR times faster.
    #[arg(long, value_name = "START_MS:FACTOR", hide = true)]
    pub test_clock: Option<String>,
}

/// `--from T --to T`: a time range, both ends optional.
#[derive(Debug, Args)]
pub struct Range {
    /// From T [default: the beginning].
    #[arg(long, value_name = "T")]
    pub from: Option<String>,
    /// Until T [default: no end].
    #[arg(long, value_name = "T")]
    pub to: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Csv,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeverityArg {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

#[derive(Debug, Subcommand)]
pub enum BaselineCommand {
    /// What the baseline learned (a preview while it is still learning).
    Show {
        #[arg(value_name = "DEVICE")]
        device: String,
    },
    /// End learning: the baseline waits for review.
    Close {
        #[arg(value_name = "DEVICE")]
        device: String,
    },
    /// Approve a reviewed baseline: the device is monitored against it.
    Approve {
        #[arg(value_name = "DEVICE")]
        device: String,
    },
    /// Throw the baseline away and learn again.
    Reset {
        #[arg(value_name = "DEVICE")]
        device: String,
    },
    /// The approved baseline as JSON (for `baseline import`).
    Export {
        #[arg(value_name = "DEVICE")]
        device: String,
    },
    /// One exported baseline for every device of a model (a fleet baseline).
    Import {
        #[arg(long, value_name = "MODEL")]
        model: String,
        /// A file written by `baseline export`.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// `policy`: what an approved baseline allows, as network policy.
#[derive(Debug, Args)]
pub struct Policy {
    /// The device whose approved baseline it is (or --model).
    #[arg(
        value_name = "DEVICE",
        required_unless_present = "model",
        conflicts_with = "model"
    )]
    pub device: Option<String>,
    /// A model's fleet baseline instead of one device's.
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// mud (RFC 8520), nftables (for the gateway) or json.
    #[arg(long, value_enum)]
    pub format: PolicyFormat,
    /// The device's address as the gateway sees it (repeatable) [default:
    /// where the collector last saw the device, or the model's devices, connect from].
    #[arg(long, value_name = "ADDR")]
    pub address: Vec<String>,
    /// A network whose endpoints are allowed as the whole network, not one
    /// address each (repeatable; e.g. pacs=10.20.0.0/24).
    #[arg(long, value_name = "NAME=PREFIX")]
    pub network: Vec<String>,
    /// Where the MUD file will be published [default: a placeholder under
    /// mud.vigil.invalid].
    #[arg(long, value_name = "URL")]
    pub mud_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyFormat {
    Mud,
    Nftables,
    Json,
}

/// `access` without a command: the access record.
#[derive(Debug, Args)]
pub struct AccessRecord {
    /// Only this device's sessions.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    #[command(flatten)]
    pub range: Range,
    /// Print CSV instead of a table (not with --json).
    #[arg(long)]
    pub csv: bool,
}

#[derive(Debug, Subcommand)]
pub enum AccessCommand {
    /// Open an access window for a device (audited).
    Open {
        #[arg(long, value_name = "DEVICE")]
        device: String,
        /// How long, at most 31d: 2h, 90m, 1h30m, 45s, 1d.
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why (it goes in the admin log).
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Close a device's open access windows (audited).
    Close {
        #[arg(long, value_name = "DEVICE")]
        device: String,
    },
    /// The access windows opened by hand.
    Windows {
        #[arg(long, value_name = "DEVICE")]
        device: Option<String>,
    },
}

/// `detect`: the live detector, offline. Tuning options default to the
/// collector's own values.
#[derive(Debug, Args)]
pub struct Detect {
    /// The series: `timestamp,value` rows (NAB's layout) or an `export --format csv`.
    #[arg(long, value_name = "FILE")]
    pub csv: PathBuf,
    /// Which metric of an export to replay (e.g. cpu.busy).
    #[arg(long, value_name = "KIND")]
    pub metric: Option<String>,
    /// Learn from the first N rows [default: the first 15 % of the file, at most 750].
    #[arg(long, value_name = "N")]
    pub learn: Option<usize>,
    /// A single value this far beyond the learned min/max opens a
    /// deviation (in learned spreads, the 1st-to-99th percentile range) [default: 0.5].
    #[arg(long, value_name = "X")]
    pub spike: Option<f64>,
    /// A value this far beyond counts towards persistence [default: 0.25].
    #[arg(long, value_name = "X")]
    pub hold: Option<f64>,
    /// Persistence: this many such values ... [default: 3].
    #[arg(long, value_name = "N")]
    pub hold_count: Option<usize>,
    /// ... within the last this many open a deviation [default: 6].
    #[arg(long, value_name = "N")]
    pub hold_of: Option<usize>,
    /// Values in the rolling mean of the sustained-shift detector [default: 24].
    #[arg(long, value_name = "N")]
    pub shift_window: Option<usize>,
    /// The rolling mean this far beyond the learned rolling means opens a
    /// shift [default: 0.8].
    #[arg(long, value_name = "X")]
    pub shift: Option<f64>,
    /// An open alarm closes after this many values back in range [default: 288].
    #[arg(long, value_name = "N")]
    pub resolve_after: Option<usize>,
    /// Only the frozen baseline's detectors: no change detector.
    #[arg(long)]
    pub no_change: bool,
    /// Values the change detector measures the metric's spread on [default: 256].
    #[arg(long, value_name = "N")]
    pub change_history: Option<usize>,
    /// The change detector's short window (whose mean is judged), in values [default: 12].
    #[arg(long, value_name = "N")]
    pub change_short: Option<usize>,
    /// Values per block of the change detector's long memory [default: 192].
    #[arg(long, value_name = "N")]
    pub change_block: Option<usize>,
    /// Blocks in the change detector's long memory [default: 96].
    #[arg(long, value_name = "N")]
    pub change_blocks: Option<usize>,
    /// Off the daily or weekly pattern: a residual this far beyond the
    /// remembered ones (in spreads) [default: 0.1].
    #[arg(long, value_name = "X")]
    pub change_season: Option<f64>,
    /// A new extreme: this far beyond the recent past (in its spreads) [default: 0.5].
    #[arg(long, value_name = "X")]
    pub change_spike: Option<f64>,
    /// A change of level: the short mean this far beyond every remembered
    /// short mean (in spreads) [default: 0.5].
    #[arg(long, value_name = "X")]
    pub change_level: Option<f64>,
    /// Values after an alert before the change detector raises again [default: 144].
    #[arg(long, value_name = "N")]
    pub change_quiet: Option<usize>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        // clap's own consistency checks: ids, conflicts, value names.
        super::Cli::command().debug_assert();
    }

    #[test]
    fn a_bad_argument_is_named() {
        let e = <super::Cli as clap::Parser>::try_parse_from([
            "vigil-collector",
            "alerts",
            "--severity",
            "urgent",
        ])
        .unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(e.to_string().contains("--severity"), "{e}");
    }
}
