//! `hindsight agent`: the daemon. A tokio runtime (one thread) accepts connections on the
//! local unix socket and, when `[api] listen` is set, on a mutual-TLS listener; both
//! serve the same HTTP API ([`api`]). Callers are identified and given roles ([`auth`]),
//! every request is audited ([`audit`]), and captures and profiles run on low-priority
//! worker threads behind bounded queues ([`jobs`]). systemd is told when we are ready
//! ([`notify`]); SIGTERM/SIGINT shut down in order (stop accepting, let the running job
//! finish or stop early, fail the queued ones, exit), SIGHUP reloads the config and
//! certificates. [`client`] is the other end, used by `hindsight trigger`.

pub mod api;
pub mod audit;
pub mod auth;
pub mod client;
pub mod jobs;
pub mod metrics;
pub mod notify;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ConfigError};

/// How long open connections get to finish after SIGTERM before they are dropped.
const CONNECTION_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("TLS for [api] listen")]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    #[error("cannot listen on {what}")]
    Listen {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another process is already serving {0} (is the daemon running?); refusing to replace its socket"
    )]
    SocketInUse(PathBuf),
    #[error("[api] socket_group: no group named {0:?}")]
    NoGroup(String),
    #[error("setting up the daemon ({what})")]
    Setup {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What every connection and worker shares.
pub struct Shared {
    pub config_path: PathBuf,
    config: RwLock<Arc<Config>>,
    tls: RwLock<Option<TlsAcceptor>>,
    pub jobs: jobs::Jobs,
    pub metrics: metrics::Metrics,
    pub audit: audit::AuditLog,
    pub rate: auth::RateLimiter,
    /// Becomes readable at shutdown: running profiles stop sampling and write what they
    /// have.
    pub stop: EventFd,
    shutting_down: AtomicBool,
    pub started: Instant,
    /// The flight recorder (None: disabled in the config, or it could not start).
    pub recorder: Option<crate::recorder::Recorder>,
    /// The exec history (None: `[history] enabled = false`).
    pub history: Option<Arc<crate::history::ExecHistory>>,
}

impl Shared {
    /// The configuration in force (replaced as a whole by a reload).
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    fn acceptor(&self) -> Option<TlsAcceptor> {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Runs the daemon until SIGTERM or SIGINT. `explicit`: the config file was named on the
/// command line (then it must exist; the default path may be absent).
pub fn run(config_path: &Path, explicit: bool) -> Result<(), DaemonError> {
    let config = Config::load(config_path, explicit)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| DaemonError::Setup {
            what: "tokio runtime",
            source,
        })?
        .block_on(serve(config_path.to_owned(), config))
}

async fn serve(config_path: PathBuf, config: Config) -> Result<(), DaemonError> {
    let tls = match &config.api.listen {
        Some(_) => Some(TlsAcceptor::from(tls::server_config(&config.api)?)),
        None => None,
    };
    let audit = audit::AuditLog::open(&config.api.audit_log)?;
    clean_capture_leftovers(&config);
    if !config.capture.signing_key.exists() {
        tracing::warn!(
            "no signing key at {}: captures will fail until one is created with `hindsight keygen`",
            config.capture.signing_key.display()
        );
    }
    let stop = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map_err(|e| DaemonError::Setup {
            what: "eventfd",
            source: e.into(),
        })?;
    let queue_size = config.daemon.queue_size;
    let unix = bind_unix(&config)?;
    let tcp = match &config.api.listen {
        Some(addr) => {
            Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| DaemonError::Listen {
                        what: addr.clone(),
                        source,
                    })?,
            )
        }
        None => None,
    };
    let socket_path = config.api.socket.clone();
    let recorder = crate::recorder::Recorder::start(&config.recorder);
    let (exits_tx, exits_rx) = std::sync::mpsc::channel();
    let history = config
        .history
        .enabled
        .then(|| crate::history::ExecHistory::start(&config.history, Some(exits_tx)));
    let shared = Arc::new(Shared {
        config_path,
        config: RwLock::new(Arc::new(config)),
        tls: RwLock::new(tls),
        jobs: jobs::Jobs::default(),
        metrics: metrics::Metrics::default(),
        audit,
        rate: auth::RateLimiter::default(),
        stop,
        shutting_down: AtomicBool::new(false),
        started: Instant::now(),
        recorder,
        history,
    });
    jobs::Jobs::start(&shared, queue_size).map_err(|source| DaemonError::Setup {
        what: "worker threads",
        source,
    })?;
    crate::triggers::start(&shared, exits_rx).map_err(|source| DaemonError::Setup {
        what: "trigger thread",
        source,
    })?;
    let sig = |kind, what| signal(kind).map_err(|source| DaemonError::Setup { what, source });
    let mut term = sig(SignalKind::terminate(), "SIGTERM handler")?;
    let mut int = sig(SignalKind::interrupt(), "SIGINT handler")?;
    let mut hup = sig(SignalKind::hangup(), "SIGHUP handler")?;

    let tcp_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
    let listening = match tcp_addr {
        Some(addr) => format!("{} and https://{addr} (mutual TLS)", socket_path.display()),
        None => socket_path.display().to_string(),
    };
    tracing::info!(audit_log = %shared.audit.path().display(), "listening on {listening}");
    notify::notify(&format!("READY=1\nSTATUS=listening on {listening}"));

    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = unix.accept() => match accepted {
                Ok((stream, _)) => {
                    let config = shared.config();
                    let peer = match stream.peer_cred() {
                        Ok(cred) => auth::unix_peer(&config.api, cred.uid(), cred.gid(), cred.pid()),
                        Err(err) => {
                            tracing::warn!("no peer credentials on the socket: {err}");
                            continue;
                        }
                    };
                    tokio::spawn(serve_connection(Arc::clone(&shared), peer, stream, graceful.watcher()));
                }
                Err(err) => tracing::warn!("accepting on {}: {err}", socket_path.display()),
            },
            accepted = accept_tcp(tcp.as_ref()) => match accepted {
                Ok((stream, addr)) => {
                    let Some(acceptor) = shared.acceptor() else { continue };
                    let shared = Arc::clone(&shared);
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let timeout = Duration::from_secs(shared.config().api.request_timeout_secs);
                        let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(err)) => {
                                tracing::info!(from = %addr, "TLS handshake failed: {err}");
                                return;
                            }
                            Err(_) => {
                                tracing::info!(from = %addr, "TLS handshake timed out");
                                return;
                            }
                        };
                        let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
                            // Unreachable: the verifier requires a certificate.
                            return;
                        };
                        let peer = auth::cert_peer(&shared.config().api, cert.as_ref(), addr.to_string());
                        serve_connection(shared, peer, tls, watcher).await;
                    });
                }
                Err(err) => tracing::warn!("accepting on the TLS listener: {err}"),
            },
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => {
                if let Err(err) = reload(&shared) {
                    tracing::error!("reload failed, the old configuration stays in force: {err}");
                }
            }
        }
    }

    notify::notify("STOPPING=1\nSTATUS=shutting down");
    shared.shutting_down.store(true, Ordering::Relaxed);
    if let Err(err) = shared.stop.write(1) {
        tracing::error!("cannot stop running profiles: {err}");
    }
    drop(unix);
    drop(tcp);
    let _ = std::fs::remove_file(&socket_path);
    if tokio::time::timeout(CONNECTION_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("dropping connections still open after {CONNECTION_GRACE:?}");
    }
    let joined = Arc::clone(&shared);
    // The running capture completes (captures are seconds; systemd's TimeoutStopSec bounds
    // it), a running profile stops early and writes what it has, queued jobs fail.
    let _ = tokio::task::spawn_blocking(move || {
        joined.jobs.close_and_join();
        if let Some(recorder) = &joined.recorder {
            recorder.stop();
        }
    })
    .await;
    if let Some(history) = &shared.history {
        history.stop();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Serves the API to `peer` over one HTTP/1.1 connection until it closes or shutdown
/// ends it.
async fn serve_connection<S>(
    shared: Arc<Shared>,
    peer: auth::Peer,
    stream: S,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = Arc::new(peer);
    let timeout = Duration::from_secs(shared.config().api.request_timeout_secs);
    let service = service_fn(move |req| api::handle(Arc::clone(&shared), Arc::clone(&peer), req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(err) = watcher.watch(conn).await {
        tracing::debug!("connection ended: {err}");
    }
}

async fn accept_tcp(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Re-reads the config file and the TLS certificates; on any error the old ones stay.
/// The socket path and the listen address are bound once: changing them needs a
/// restart.
pub fn reload(shared: &Shared) -> Result<(), String> {
    let new = Config::load(&shared.config_path, true).map_err(|e| error_chain(&e))?;
    let old = shared.config();
    let tls = match &new.api.listen {
        Some(_) if old.api.listen.is_some() => Some(TlsAcceptor::from(
            tls::server_config(&new.api).map_err(|e| error_chain(&e))?,
        )),
        _ => None,
    };
    if new.api.listen != old.api.listen || new.api.socket != old.api.socket {
        tracing::warn!("[api] listen and socket changes take effect at the next restart");
    }
    if new.api.audit_log != old.api.audit_log || new.daemon.queue_size != old.daemon.queue_size {
        tracing::warn!(
            "[api] audit_log and [daemon] queue_size changes take effect at the next restart"
        );
    }
    if new.recorder != old.recorder {
        tracing::warn!("[recorder] changes take effect at the next restart");
    }
    if old.api.listen.is_some() {
        *shared.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
    }
    *shared.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
    metrics::Metrics::add(&shared.metrics.reloads, 1);
    tracing::info!(config = %shared.config_path.display(), "configuration and certificates reloaded");
    Ok(())
}

/// Binds the local socket: mode 0660, group `[api] socket_group`. A stale socket file
/// (nobody answering) is replaced; a live one is an error.
fn bind_unix(config: &Config) -> Result<UnixListener, DaemonError> {
    let path = &config.api.socket;
    let listen_err = |source| DaemonError::Listen {
        what: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(listen_err)?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::SocketInUse(path.clone()));
        }
        std::fs::remove_file(path).map_err(listen_err)?;
    }
    let listener = UnixListener::bind(path).map_err(listen_err)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(listen_err)?;
    if let Some(name) = &config.api.socket_group {
        let group = nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| DaemonError::NoGroup(name.clone()))?;
        nix::unistd::chown(path, None, Some(group.gid)).map_err(|e| listen_err(e.into()))?;
    }
    Ok(listener)
}

/// A daemon killed mid-capture leaves a `.partial` file; remove it now rather than at
/// the next capture.
fn clean_capture_leftovers(config: &Config) {
    let dir = &config.capture.output_dir;
    match crate::capture::store::OutputDir::open(dir).and_then(|out| out.clean_leftovers()) {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(dir = %dir.display(), "removed {} leftovers of interrupted captures", removed.len())
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(dir = %dir.display(), "cannot check for leftovers: {err}"),
    }
}

/// An error and its sources, `a: b: c`, for logs and API messages.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
