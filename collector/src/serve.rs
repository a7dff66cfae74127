//! `vigil-collector serve`: wires the parts together. Listeners (TLS,
//! plain, serial) feed the writer; the writer owns the archive; the sink
//! thread delivers events; metrics on loopback. SIGTERM or SIGINT: stop
//! accepting, let connections finish their batch, commit, flush the sinks,
//! exit 0.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::ingest::tls;
use crate::ingest::writer::{Job, Settings, Writer};
use crate::ingest::{self, Ctx};
use crate::metrics::Metrics;
use crate::sink;
use crate::store::registry::Registry;
use crate::store::Store;

/// What a running collector tells its caller once it listens.
#[derive(Debug, Clone)]
pub struct Started {
    pub tls: Option<SocketAddr>,
    pub plain: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub pin: Option<String>,
}

/// Every connection is a descriptor: lifts the soft limit towards the
/// hard one so `limits.max_connections` can be reached (a distribution's
/// default soft limit is often 1,024), and says when it cannot.
fn raise_fd_limit(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // Connections, the archive, the sinks, the listeners.
    let want = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_add(256);
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= want {
        return;
    }
    let new = want.min(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, new, hard).is_err() || new < want {
        log::warn!(
            "open files limited to {new} (hard limit {hard}): fewer than limits.max_connections = {max_connections} connections can be held"
        );
    }
}

/// Makes the state dir (0700) or narrows an existing one to 0700: it holds
/// the archive, the TLS key and the alert evidence, whatever the umask.
fn private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| anyhow::anyhow!("state dir {}: {e}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .map_err(|e| anyhow::anyhow!("state dir {}: {e}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| anyhow::anyhow!("state dir {}: making it 0700: {e}", dir.display()))?;
    }
    Ok(())
}

/// SQLite says the file is damaged or not a database.
fn is_damage(e: &crate::store::StoreError) -> bool {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    let sql = match e {
        crate::store::StoreError::Open { source, .. } => source,
        crate::store::StoreError::Sql(source) => source,
        _ => return false,
    };
    matches!(
        sql.sqlite_error_code(),
        Some(DatabaseCorrupt | NotADatabase)
    )
}

/// Moves a refused archive (and its WAL and shared memory) aside, never
/// deleting it (`--new`).
fn move_aside(db: &std::path::Path, why: &str) -> anyhow::Result<()> {
    let stamp = crate::clock::now_ms();
    let named = |suffix: &str, tail: &str| {
        let mut p = db.to_path_buf().into_os_string();
        p.push(format!("{suffix}{tail}"));
        std::path::PathBuf::from(p)
    };
    let aside = named("", &format!(".refused-{stamp}"));
    for (from, to) in [
        (db.to_path_buf(), aside.clone()),
        (
            named("-wal", ""),
            named("-wal", &format!(".refused-{stamp}")),
        ),
        (
            named("-shm", ""),
            named("-shm", &format!(".refused-{stamp}")),
        ),
    ] {
        if from.exists() {
            std::fs::rename(&from, &to)
                .map_err(|e| anyhow::anyhow!("moving {} aside: {e}", from.display()))?;
        }
    }
    log::warn!(
        "{why}: moved aside to {} (--new); starting a new archive",
        aside.display()
    );
    Ok(())
}

/// Runs until `stop` turns true (or a signal, when `signals` is set).
pub fn run(
    cfg: Config,
    signals: bool,
    stop: watch::Receiver<bool>,
    on_start: impl FnOnce(Started),
) -> anyhow::Result<()> {
    private_dir(&cfg.state_dir)?;
    raise_fd_limit(cfg.limits.max_connections);
    let db = cfg.db_path();
    if let Err(e) = crate::store::check_file(&db) {
        if !cfg.new_archive {
            anyhow::bail!("{e}; refusing to start on it (restore the archive from a backup, or pass --new to move it aside and start a new one)");
        }
        move_aside(&db, &e.to_string())?;
    }
    let store = {
        // Every page readable and well formed before anything is acked
        // on top of it (SQLite's own recovery of a damaged WAL is silent).
        let started = std::time::Instant::now();
        let checked = Store::open(&db).and_then(|s| {
            let problems = s.quick_check()?;
            Ok((s, problems))
        });
        log::debug!(
            "archive {}: opened and quick_check in {:?}",
            db.display(),
            started.elapsed()
        );
        let refused = match checked {
            Ok((s, problems)) if problems.is_empty() => Ok(s),
            Ok((s, problems)) => {
                drop(s);
                Err(format!(
                    "archive {}: SQLite's quick_check fails: {}",
                    db.display(),
                    problems.join("; ")
                ))
            }
            // Damage is refused like a failed check; anything else (a
            // lock, permissions) is no reason to move an archive aside.
            Err(e) if is_damage(&e) => Err(e.to_string()),
            Err(e) => return Err(e.into()),
        };
        match refused {
            Ok(s) => s,
            Err(e) if !cfg.new_archive => {
                anyhow::bail!("{e}; refusing to start on it (restore the archive from a backup, or pass --new to move it aside and start a new one)")
            }
            Err(e) => {
                move_aside(&db, &e)?;
                Store::open(&db)?
            }
        }
    };
    if let Err(e) = std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)) {
        log::warn!("archive {}: cannot make it 0600: {e}", db.display());
    }
    store.manual_checkpoints()?;
    let registry = Registry::default();
    let metrics = Arc::new(Metrics::default());
    let writer = Writer::new(
        store,
        registry.clone(),
        Arc::clone(&metrics),
        Settings {
            silence_ms: cfg.silence_s.saturating_mul(1000),
            loss_grace_ms: cfg.loss_grace_s.saturating_mul(1000),
            clock_skew_ms: cfg.clock_skew_s.saturating_mul(1000),
            retention_ms: u64::from(cfg.retention_days) * 86_400_000,
            rollup_every: Duration::from_secs(cfg.rollup_every_s),
            checkpoint_every: Duration::from_secs(cfg.checkpoint_every_s),
            checkpoint_key: crate::store::chain::key(&db)?,
            max_pending: cfg.limits.max_pending,
            max_pending_per_address: cfg.limits.max_pending_per_address,
            policy: cfg.detect.policy()?,
            tuning: crate::detect::score::Tuning::default(),
            access: crate::access::Policy::new(&cfg.access)?,
            ack_ledger: cfg.state_dir.join("vigil.acks"),
        },
    )?;
    let identity = match cfg.listen {
        Some(_) => Some(tls::identity(
            &cfg.state_dir,
            cfg.tls_cert.as_deref(),
            cfg.tls_key.as_deref(),
        )?),
        None => None,
    };
    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(4096);
    let writer_thread = std::thread::Builder::new()
        .name("archive-writer".into())
        .spawn(move || writer.run(jobs_rx))?;
    let sink_stop = Arc::new(AtomicBool::new(false));
    let checkpointer = {
        let (db, stop) = (db.clone(), Arc::clone(&sink_stop));
        std::thread::Builder::new()
            .name("checkpointer".into())
            .spawn(move || checkpoints(&db, &stop))?
    };
    let sink_thread = {
        let (db, sinks, m, s) = (
            db.clone(),
            cfg.sinks.clone(),
            Arc::clone(&metrics),
            Arc::clone(&sink_stop),
        );
        std::thread::Builder::new()
            .name("sinks".into())
            .spawn(move || sink::run(db, sinks, m, s))?
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ctx = Arc::new(Ctx::new(
        registry.clone(),
        Arc::clone(&metrics),
        jobs_tx.clone(),
        cfg.limits.clone(),
    ));
    let (conn_stop_tx, conn_stop) = watch::channel(false);
    let serial_stop = Arc::new(AtomicBool::new(false));
    let result = rt.block_on(async {
        let mut started = Started { tls: None, plain: None, metrics: None, pin: None };
        let mut tasks = Vec::new();
        if let (Some(addr), Some(id)) = (cfg.listen, identity.as_ref()) {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("listen {addr}: {e}"))?;
            started.tls = Some(l.local_addr()?);
            started.pin = Some(id.pin.clone());
            if id.created {
                log::info!("created a self-signed TLS certificate in {}", cfg.state_dir.join("tls").display());
            }
            log::info!("TLS 1.3 on {}; agents pin pin_sha256 = \"{}\"", l.local_addr()?, id.pin);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(id)?);
            tasks.push(tokio::spawn(ingest::listen(l, Some(acceptor), Arc::clone(&ctx), conn_stop.clone())));
        }
        if let Some(addr) = cfg.plain_listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("plain_listen {addr}: {e}"))?;
            started.plain = Some(l.local_addr()?);
            log::warn!("INSECURE: accepting plain TCP on {} (insecure_plaintext); frames are still signed but not encrypted", l.local_addr()?);
            tasks.push(tokio::spawn(ingest::listen(l, None, Arc::clone(&ctx), conn_stop.clone())));
        }
        if let Some(addr) = cfg.metrics_listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("metrics_listen {addr}: {e}"))?;
            started.metrics = Some(l.local_addr()?);
            tasks.push(tokio::spawn(crate::metrics::serve(l, Arc::clone(&metrics), registry.clone())));
        }
        let mut serial_threads = Vec::new();
        for p in &cfg.serial {
            let (path, baud, ctx, stop) = (p.device.clone(), p.baud, Arc::clone(&ctx), Arc::clone(&serial_stop));
            serial_threads.push(std::thread::spawn(move || ingest::serial(path, baud, ctx, stop)));
        }
        let ticker = {
            let jobs = jobs_tx.clone();
            tokio::spawn(async move {
                let mut t = tokio::time::interval(Duration::from_millis(250));
                loop {
                    t.tick().await;
                    if jobs.send(Job::Tick).await.is_err() {
                        return;
                    }
                }
            })
        };
        // The handlers are in place before anyone is told the collector
        // is up: a SIGTERM right after start is a clean stop.
        let handlers = signals.then(|| {
            use tokio::signal::unix::{signal, SignalKind};
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        });
        on_start(started);
        crate::notify::send("READY=1\nSTATUS=receiving");
        let watchdog = crate::notify::watchdog().map(|every| {
            let metrics = Arc::clone(&metrics);
            tokio::spawn(async move {
                // Twice per period, and only while the writer handles its
                // ticks: a stuck archive writer gets the service restarted.
                let mut t = tokio::time::interval((every / 2).max(Duration::from_millis(300)));
                let mut seen = metrics.writer_ticks.load(Relaxed);
                loop {
                    t.tick().await;
                    let now = metrics.writer_ticks.load(Relaxed);
                    if now != seen {
                        crate::notify::send("WATCHDOG=1");
                        seen = now;
                    }
                }
            })
        });
        wait_for_stop(handlers, stop).await;
        crate::notify::send("STOPPING=1");
        if let Some(w) = watchdog {
            w.abort();
        }
        log::info!("stopping: no new connections; finishing what is in flight");
        let _ = conn_stop_tx.send(true);
        serial_stop.store(true, Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while metrics.connections_open.load(Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for t in tasks {
            t.abort();
        }
        ticker.abort();
        for t in serial_threads {
            let _ = t.join();
        }
        anyhow::Ok(())
    });
    drop(ctx);
    drop(jobs_tx);
    rt.shutdown_timeout(Duration::from_secs(2));
    let _ = writer_thread.join();
    sink_stop.store(true, Relaxed);
    let _ = sink_thread.join();
    let _ = checkpointer.join();
    result
}

/// Checkpoints the WAL a few times a second until `stop`, then once more.
fn checkpoints(db: &std::path::Path, stop: &AtomicBool) {
    let store = match Store::open(db) {
        Ok(s) => s,
        Err(e) => {
            log::error!("checkpointer: {e}");
            return;
        }
    };
    // A failing checkpoint (a full disk) is said once, then once a minute.
    let mut said: Option<std::time::Instant> = None;
    loop {
        let stopping = stop.load(Relaxed);
        match store.checkpoint() {
            Err(e) if said.map_or(true, |t| t.elapsed() >= Duration::from_secs(60)) => {
                log::warn!("WAL checkpoint: {e}");
                said = Some(std::time::Instant::now());
            }
            Err(_) => {}
            Ok(()) => said = None,
        }
        if stopping {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

async fn wait_for_stop(
    handlers: Option<(
        std::io::Result<tokio::signal::unix::Signal>,
        std::io::Result<tokio::signal::unix::Signal>,
    )>,
    mut stop: watch::Receiver<bool>,
) {
    let Some((Ok(mut term), Ok(mut int))) = handlers else {
        let _ = stop.wait_for(|s| *s).await;
        return;
    };
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM"),
        _ = int.recv() => log::info!("SIGINT"),
        _ = stop.wait_for(|s| *s) => {}
    }
}
