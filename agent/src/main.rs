//! `vigil-agent`: the on-device agent's command line. Exit codes: 0 ok,
//! 2 usage or runtime error, 78 bad configuration. Never depends on the
//! collector.

use std::path::PathBuf;
use std::process::ExitCode;

use vigil_agent::config::{Collector, Config, Failover, Serial};
use vigil_agent::sample::reading;
use vigil_agent::{identity, logger, stream};

const USAGE: &str = "\
vigil-agent: Vigil's on-device security agent

usage:
  vigil-agent keygen --state-dir DIR [--if-missing]
                                         create this device's key (once, on the device;
                                         --if-missing: keep and print an existing one)
  vigil-agent id --state-dir DIR         print the device id and public key for enrollment
  vigil-agent sample [--root DIR] [--json]
                                         print one reading of this machine's counters
  vigil-agent run [--config FILE] [options]
                                         sample, sign and stream to the collector
  vigil-agent check --config FILE [--root DIR] [--json]
                                         integrity and posture once: exit 0 clean,
                                         1 findings, 2 error
  vigil-agent manifest keygen --secret-key FILE --public-key FILE
                                         minisign key pair (secret key 0600, no password)
  vigil-agent manifest build --root DIR --class firmware|model|config --version N
        [--include PATH]... [--exclusive DIR]... [--issuer NAME] [--scope NAME]
        [--model NAME] [--threads N] --out FILE
                                         record files, links and directories (SHA-256,
                                         size, mode, owner); SOURCE_DATE_EPOCH is honoured
  vigil-agent manifest sign --secret-key FILE MANIFEST
                                         write MANIFEST.minisig (minisign format)
  vigil-agent manifest verify --public-key FILE --root DIR [--threads N] [--json] MANIFEST
                                         check the tree: exit 0 clean, 1 findings, 2 error
  vigil-agent manifest reset-record [--state-dir DIR]
                                         after a rollback record was lost or tampered
                                         with: a new, empty one signed by the device key
  vigil-agent --version | --help

run options (each overrides the same setting in --config):
  --state-dir DIR          key and boot counter (default /var/lib/vigil-agent)
  --root DIR               filesystem root to observe (default /)
  --interval-ms N          sampling interval (default 1000)
  --batch N                samples per frame, 1..16 (default 10)
  --sockets-interval-s N   socket table cadence (default 10)
  --sessions-interval-s N  login and sudo/su session cadence (default 5)
  --utmp FILE              current logins (default /var/run/utmp, under --root)
  --wtmp FILE              login history (default /var/log/wtmp, under --root)
  --no-sessions            do not report sessions
  --collector HOST:PORT    stream over TCP + TLS 1.3 to the collector
  --pin SHA256             pin the collector's certificate (hex SHA-256 of its DER)
  --ca-file FILE           or verify it against these CA certificates (PEM)
  --server-name NAME       name to verify with --ca-file (default: the host)
  --insecure-plaintext     plain TCP, no TLS (lab use only)
  --failover HOST:PORT     another collector, tried in order when one cannot be
                           reached or stops acknowledging (repeatable)
  --failover-pin SHA256    the pin of the --failover just before it (default: --pin)
  --failback-s N           seconds on a failover collector before trying the
                           first again (default 300)
  --serial DEVICE          stream over a serial port instead
  --baud N                 serial speed (default 115200)
  --test-clock START_MS:FACTOR
                           soak tests only: sample times start at START_MS and
                           run FACTOR times faster than real time

exit codes: 0 ok, 2 usage or runtime error, 78 bad configuration";

const EX_CONFIG: u8 = 78;

/// Writes to stdout; when the reader has gone (`| head`), exits with 141,
/// the status a shell shows for a death by SIGPIPE, rather than panicking
/// or pretending success.
macro_rules! outln {
    ($($t:tt)*) => {
        $crate::write_out(format_args!("{}\n", format_args!($($t)*)))
    };
}

macro_rules! out {
    ($($t:tt)*) => {
        $crate::write_out(format_args!($($t)*))
    };
}

fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if o.write_fmt(args).and_then(|()| o.flush()).is_err() {
        std::process::exit(141);
    }
}

/// `vigil-agent CMD --help`: each command's usage line, then what it does.
/// The same shape as the collector's clap help, from a parser a few
/// hundred bytes big (clap would cost more than the agent's size budget
/// has left: agent/README.md).
const HELP: &[(&str, &str, &str)] = &[
    ("keygen", "vigil-agent keygen --state-dir DIR [--if-missing]",
     "Create this device's key, once, on the device; --if-missing keeps and prints an existing one."),
    ("id", "vigil-agent id --state-dir DIR",
     "Print the device id and public key, for `vigil-collector enroll`."),
    ("sample", "vigil-agent sample [--root DIR] [--json]",
     "Print one reading of this machine's counters."),
    ("run", "vigil-agent run [--config FILE] [options]",
     "Sample, sign and stream to the collector; the options are listed in `vigil-agent --help`."),
    ("check", "vigil-agent check --config FILE [--root DIR] [--json]",
     "Integrity and posture once: exit 0 clean, 1 findings, 2 error."),
    ("manifest", "vigil-agent manifest keygen|build|sign|verify ...",
     "Signed manifests of files: see `vigil-agent manifest CMD --help`."),
    ("manifest keygen", "vigil-agent manifest keygen --secret-key FILE --public-key FILE",
     "A minisign key pair (secret key 0600, no password)."),
    ("manifest build", "vigil-agent manifest build --root DIR --class firmware|model|config --version N [--include PATH]... [--exclusive DIR]... [--issuer NAME] [--scope NAME] [--model NAME] [--threads N] --out FILE",
     "Record files, links and directories (SHA-256, size, mode, owner); SOURCE_DATE_EPOCH is honoured."),
    ("manifest sign", "vigil-agent manifest sign --secret-key FILE MANIFEST",
     "Write MANIFEST.minisig (minisign format)."),
    ("manifest verify", "vigil-agent manifest verify --public-key FILE --root DIR [--threads N] [--json] MANIFEST",
     "Check the tree against the signed manifest: exit 0 clean, 1 findings, 2 error."),
];

/// The command being parsed (an index into `HELP`, or `usize::MAX` before
/// one is known), for the usage line of an error.
static COMMAND: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);

fn enter(cmd: &str) {
    if let Some(i) = HELP.iter().position(|h| h.0 == cmd) {
        COMMAND.store(i, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `--help` of the current command.
fn help() -> Result<ExitCode, Failure> {
    match HELP.get(COMMAND.load(std::sync::atomic::Ordering::Relaxed)) {
        Some((_, usage, what)) => outln!("{what}\n\nUsage: {usage}"),
        None => outln!("{USAGE}"),
    }
    Ok(ExitCode::SUCCESS)
}

enum Failure {
    Usage(String),
    Config(String),
    Runtime(anyhow::Error),
}

impl From<lexopt::Error> for Failure {
    fn from(e: lexopt::Error) -> Self {
        Failure::Usage(e.to_string())
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

fn main() -> ExitCode {
    logger::init();
    match cli() {
        Ok(code) => code,
        Err(Failure::Usage(m)) => {
            // clap's shape: the error, the usage line, where help is.
            let (usage, more) = match HELP.get(COMMAND.load(std::sync::atomic::Ordering::Relaxed)) {
                Some((cmd, usage, _)) => (*usage, format!("vigil-agent {cmd} --help")),
                None => (
                    "vigil-agent <COMMAND> [OPTIONS]",
                    "vigil-agent --help".into(),
                ),
            };
            eprintln!("error: {m}\n\nUsage: {usage}\n\nFor more information, try '{more}'.");
            ExitCode::from(2)
        }
        Err(Failure::Config(m)) => {
            eprintln!("vigil-agent: bad configuration: {m}");
            ExitCode::from(EX_CONFIG)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("vigil-agent: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn cli() -> Result<ExitCode, Failure> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_env();
    let cmd = match p.next()? {
        Some(Long("version") | Short('V')) => {
            outln!(
                "vigil-agent {} (wire format {})",
                env!("CARGO_PKG_VERSION"),
                vigil_protocol::VERSION
            );
            return Ok(ExitCode::SUCCESS);
        }
        Some(Long("help") | Short('h')) => {
            outln!("{USAGE}");
            return Ok(ExitCode::SUCCESS);
        }
        Some(Value(v)) => v.string()?,
        Some(other) => return Err(Failure::Usage(other.unexpected().to_string())),
        None => return Err(Failure::Usage("a command is needed".into())),
    };
    enter(&cmd);
    match cmd.as_str() {
        "keygen" | "id" => {
            let (mut dir, mut if_missing) = (None, false);
            while let Some(a) = p.next()? {
                match a {
                    Long("state-dir") => dir = Some(PathBuf::from(p.value()?)),
                    Long("if-missing") if cmd == "keygen" => if_missing = true,
                    Long("help") | Short('h') => return help(),
                    other => return Err(Failure::Usage(other.unexpected().to_string())),
                }
            }
            let dir = dir.ok_or_else(|| Failure::Usage("--state-dir is required".into()))?;
            let key = if cmd == "keygen" {
                match identity::keygen(&dir) {
                    // First boot: a unit or init script runs this before every start.
                    Err(identity::IdentityError::Exists { .. }) if if_missing => {
                        identity::load(&dir)
                            .map_err(anyhow::Error::from)?
                            .verifying_key()
                    }
                    other => other.map_err(anyhow::Error::from)?,
                }
            } else {
                identity::load(&dir)
                    .map_err(anyhow::Error::from)?
                    .verifying_key()
            };
            out!("{}", identity::describe(&key));
            Ok(ExitCode::SUCCESS)
        }
        "sample" => {
            let (mut root, mut json) = (PathBuf::from("/"), false);
            while let Some(a) = p.next()? {
                match a {
                    Long("root") => root = PathBuf::from(p.value()?),
                    Long("json") => json = true,
                    Long("help") | Short('h') => return help(),
                    other => return Err(Failure::Usage(other.unexpected().to_string())),
                }
            }
            let mut issues = Vec::new();
            let r = reading::read(&root, stream::now_ms(), &mut issues);
            for i in &issues {
                log::warn!("partial sample: {i}");
            }
            if json {
                outln!("{}", vigil_agent::report::json(&r, &issues));
            } else {
                out!("{}", vigil_agent::report::text(&r));
            }
            Ok(ExitCode::SUCCESS)
        }
        "manifest" => manifest_cmd(&mut p),
        "check" => {
            let (mut config, mut root, mut json) = (None, None, false);
            while let Some(a) = p.next()? {
                match a {
                    Long("config") => config = Some(PathBuf::from(p.value()?)),
                    Long("root") => root = Some(PathBuf::from(p.value()?)),
                    Long("json") => json = true,
                    Long("help") | Short('h') => return help(),
                    other => return Err(Failure::Usage(other.unexpected().to_string())),
                }
            }
            let path = config.ok_or_else(|| Failure::Usage("--config is required".into()))?;
            let mut cfg = Config::from_file(&path).map_err(|e| Failure::Config(e.to_string()))?;
            if let Some(r) = root {
                cfg.root = r;
            }
            cfg.validate_local()
                .map_err(|e| Failure::Config(e.to_string()))?;
            let out = vigil_agent::guard::once(&cfg, Some(&path));
            if json {
                outln!("{}", vigil_agent::report::outcome_json(&out));
            } else {
                out!("{}", vigil_agent::report::outcome_text(&out));
            }
            Ok(ExitCode::from(if !out.errors.is_empty() {
                2
            } else if out.has_findings() {
                1
            } else {
                0
            }))
        }
        "run" => {
            let Some((cfg, path)) = run_config(&mut p)? else {
                return help();
            };
            stream::run(cfg, path.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        other => Err(Failure::Usage(format!("unrecognized subcommand '{other}'"))),
    }
}

fn collector(cfg: &mut Config) -> &mut Collector {
    cfg.collector.get_or_insert_with(|| Collector {
        address: String::new(),
        server_name: None,
        pin_sha256: None,
        ca_file: None,
        insecure_plaintext: false,
        failover: Vec::new(),
        failback_s: vigil_agent::config::default_failback_s(),
    })
}

/// `run`'s configuration: the file, then the flags over it; `None` for `--help`.
fn run_config(p: &mut lexopt::Parser) -> Result<Option<(Config, Option<PathBuf>)>, Failure> {
    use lexopt::prelude::*;
    let mut flags: Vec<(String, Option<String>)> = Vec::new();
    let mut path = None;
    while let Some(a) = p.next()? {
        match a {
            Long("config") => path = Some(PathBuf::from(p.value()?)),
            Long(f @ ("insecure-plaintext" | "no-sessions")) => flags.push((f.into(), None)),
            Long("help") | Short('h') => return Ok(None),
            Long(name) => {
                let name = name.to_string();
                let v = p.value()?.string()?;
                flags.push((name, Some(v)));
            }
            other => return Err(Failure::Usage(other.unexpected().to_string())),
        }
    }
    let mut cfg = match &path {
        Some(f) => Config::from_file(f).map_err(|e| Failure::Config(e.to_string()))?,
        None => Config::default(),
    };
    let num = |name: &str, v: &str| {
        v.parse::<u64>()
            .map_err(|_| Failure::Usage(format!("--{name}: not a number: {v}")))
    };
    for (name, v) in flags {
        let v = v.unwrap_or_default();
        match name.as_str() {
            "state-dir" => cfg.state_dir = v.into(),
            "root" => cfg.root = v.into(),
            "interval-ms" => cfg.interval_ms = num(&name, &v)?,
            "batch" => cfg.batch = usize::try_from(num(&name, &v)?).unwrap_or(usize::MAX),
            "sockets-interval-s" => cfg.sockets_interval_s = num(&name, &v)?,
            "sessions-interval-s" => cfg.sessions.interval_s = num(&name, &v)?,
            "utmp" => cfg.sessions.utmp = v.into(),
            "wtmp" => cfg.sessions.wtmp = v.into(),
            "no-sessions" => cfg.sessions.enabled = false,
            "test-clock" => {
                cfg.test_clock =
                    Some(vigil_agent::config::TestClock::parse(&v).ok_or_else(|| {
                        Failure::Usage(format!(
                            "--test-clock: START_MS:FACTOR with a factor 1..100000, not {v}"
                        ))
                    })?)
            }
            "collector" => collector(&mut cfg).address = v,
            "pin" => collector(&mut cfg).pin_sha256 = Some(v),
            "ca-file" => collector(&mut cfg).ca_file = Some(v.into()),
            "server-name" => collector(&mut cfg).server_name = Some(v),
            "failover" => collector(&mut cfg).failover.push(Failover {
                address: v,
                server_name: None,
                pin_sha256: None,
            }),
            "failover-pin" => match collector(&mut cfg).failover.last_mut() {
                Some(f) => f.pin_sha256 = Some(v),
                None => {
                    return Err(Failure::Usage(
                        "--failover-pin: give --failover first".into(),
                    ))
                }
            },
            "failback-s" => collector(&mut cfg).failback_s = num(&name, &v)?,
            "insecure-plaintext" => collector(&mut cfg).insecure_plaintext = true,
            "serial" => {
                cfg.serial
                    .get_or_insert(Serial {
                        device: PathBuf::new(),
                        baud: 115_200,
                    })
                    .device = v.into()
            }
            "baud" => {
                let baud = u32::try_from(num(&name, &v)?)
                    .map_err(|_| Failure::Usage("--baud: too large".into()))?;
                cfg.serial
                    .get_or_insert(Serial {
                        device: PathBuf::new(),
                        baud,
                    })
                    .baud = baud;
            }
            other => {
                return Err(Failure::Usage(format!(
                    "unexpected argument '--{other}' found"
                )))
            }
        }
    }
    cfg.validate().map_err(|e| Failure::Config(e.to_string()))?;
    Ok(Some((cfg, path)))
}

fn manifest_cmd(p: &mut lexopt::Parser) -> Result<ExitCode, Failure> {
    use lexopt::prelude::*;
    use vigil_agent::manifest::{self, tool};
    let sub = match p.next()? {
        Some(Value(v)) => v.string()?,
        Some(Long("help") | Short('h')) => return help(),
        _ => {
            return Err(Failure::Usage(
                "manifest: keygen, build, sign, verify or reset-record".into(),
            ))
        }
    };
    enter(&format!("manifest {sub}"));
    let mut o: std::collections::HashMap<&'static str, String> = Default::default();
    let (mut include, mut exclusive, mut free, mut json) = (vec![], vec![], vec![], false);
    while let Some(a) = p.next()? {
        let key = match a {
            Long("help") | Short('h') => return help(),
            Long("json") => {
                json = true;
                continue;
            }
            Long("include") => {
                include.push(p.value()?.string()?);
                continue;
            }
            Long("exclusive") => {
                exclusive.push(p.value()?.string()?);
                continue;
            }
            Long("secret-key") => "secret-key",
            Long("public-key") => "public-key",
            Long("root") => "root",
            Long("class") => "class",
            Long("version") => "version",
            Long("issuer") => "issuer",
            Long("scope") => "scope",
            Long("model") => "model",
            Long("threads") => "threads",
            Long("out") => "out",
            Long("state-dir") => "state-dir",
            Value(v) => {
                free.push(PathBuf::from(v));
                continue;
            }
            other => return Err(Failure::Usage(other.unexpected().to_string())),
        };
        o.insert(key, p.value()?.string()?);
    }
    let need = |k: &str| {
        o.get(k)
            .cloned()
            .ok_or_else(|| Failure::Usage(format!("manifest {sub}: --{k} is required")))
    };
    let one_file = |free: &[PathBuf]| match free {
        [f] => Ok(f.clone()),
        _ => Err(Failure::Usage(format!(
            "manifest {sub}: give exactly one MANIFEST"
        ))),
    };
    let threads = match o.get("threads") {
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|&n| (1..=64).contains(&n))
            .ok_or_else(|| Failure::Usage(format!("--threads: 1..64, not {t}")))?,
        None => manifest::workers(0),
    };
    match sub.as_str() {
        "reset-record" => {
            let dir = PathBuf::from(
                o.get("state-dir")
                    .cloned()
                    .unwrap_or_else(|| Config::default().state_dir.display().to_string()),
            );
            let key = identity::load(&dir).map_err(|e| Failure::Runtime(e.into()))?;
            let path = vigil_agent::manifest::trust::Versions::reset(&dir, &key)
                .map_err(|e| Failure::Runtime(anyhow::anyhow!("{}: {e}", dir.display())))?;
            outln!(
                "{}: a new, empty rollback record signed by the device key (the old one, if any, \
                 is beside it as manifest-versions.lost); the next run records the manifests it accepts",
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        "keygen" => {
            let id = tool::keygen(
                std::path::Path::new(&need("secret-key")?),
                std::path::Path::new(&need("public-key")?),
            )?;
            outln!("key id {id}");
            Ok(ExitCode::SUCCESS)
        }
        "sign" => {
            let out = tool::sign(
                std::path::Path::new(&need("secret-key")?),
                &one_file(&free)?,
                stream::now_ms() / 1000,
            )?;
            outln!("{}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        "build" => {
            let class = need("class")?;
            let class = vigil_protocol::body::Class::from_name(&class).ok_or_else(|| {
                Failure::Usage(format!("--class: firmware, model or config, not {class}"))
            })?;
            let version = need("version")?;
            let version = version
                .parse::<u64>()
                .map_err(|_| Failure::Usage(format!("--version: not a number: {version}")))?;
            let paths = |v: &[String], flag: &str| -> Result<Vec<Vec<u8>>, Failure> {
                v.iter()
                    .map(|s| {
                        manifest::manifest_path(s).ok_or_else(|| {
                            Failure::Usage(format!("--{flag} {s}: `..` is not allowed"))
                        })
                    })
                    .collect()
            };
            let created = std::env::var("SOURCE_DATE_EPOCH")
                .ok()
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or_else(|| i64::try_from(stream::now_ms() / 1000).unwrap_or(0));
            let opts = manifest::BuildOptions {
                root: PathBuf::from(need("root")?),
                class,
                version,
                issuer: o.get("issuer").cloned().unwrap_or_else(|| "vendor".into()),
                scope: o
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| class.name().to_string()),
                model: o.get("model").cloned().unwrap_or_else(|| "any".into()),
                created,
                include: paths(&include, "include")?,
                exclusive: paths(&exclusive, "exclusive")?,
                threads,
            };
            let out = PathBuf::from(need("out")?);
            let (m, special) = manifest::build(&opts)?;
            for s in special {
                log::warn!(
                    "left out (not a file, directory or symlink): {}",
                    vigil_protocol::manifest::display_path(&s)
                );
            }
            std::fs::write(&out, m.to_text())
                .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
            eprintln!("{}: {} entries", out.display(), m.entries.len());
            Ok(ExitCode::SUCCESS)
        }
        "verify" => {
            let v = tool::verify(
                std::path::Path::new(&need("public-key")?),
                std::path::Path::new(&need("root")?),
                &one_file(&free)?,
                threads,
            )?;
            if json {
                let list: Vec<String> = v
                    .findings
                    .iter()
                    .map(vigil_agent::report::finding_json)
                    .collect();
                outln!(
                    "{{\"checked\":{},\"findings\":[{}]}}",
                    v.checked,
                    list.join(",")
                );
            } else {
                for f in &v.findings {
                    outln!("{}", manifest::describe(f));
                }
                eprintln!(
                    "{} entries checked, {} findings",
                    v.checked,
                    v.findings.len()
                );
            }
            Ok(ExitCode::from(u8::from(!v.findings.is_empty())))
        }
        other => Err(Failure::Usage(format!("unrecognized subcommand '{other}'"))),
    }
}
