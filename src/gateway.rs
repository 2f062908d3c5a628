//! Assembles a running gateway: listeners bound up front, the Pingora server
//! with its services, and a handle to stop it. `serve`, `demo` and the
//! integration tests all start the gateway through [`start`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use tokio::sync::watch;

use crate::admin::AdminApp;
use crate::config::reload::{ReloadHandle, ReloadOutcome, ReloadRequest, Reloader};
use crate::config::{Config, ConfigError};
use crate::listener::{self, ConnectionSettings, Listener, SettingsSource};
use crate::metrics::Metrics;
use crate::pool::discovery::{self, Resolver, SystemResolver};
use crate::pool::health;
use crate::proxy::Gateway;
use crate::shutdown::{DrainingShutdown, ShutdownKind, ShutdownTrigger};
use crate::state::Shared;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start the server thread: {0}")]
    Thread(std::io::Error),
}

#[derive(Clone)]
pub struct StartOptions {
    /// React to SIGTERM/SIGINT/SIGQUIT (the binary); embedded gateways
    /// (tests, several per process) leave this off.
    pub os_signals: bool,
    /// Resolves `discovery = "dns"` names (the system resolver by default).
    pub resolver: Arc<dyn Resolver>,
    /// The configuration file, reloaded on SIGHUP, on change and on request.
    /// None: the configuration came from elsewhere (demo) and never reloads.
    pub config_path: Option<PathBuf>,
    /// Tokio's work-stealing runtime instead of Pingora's one-runtime-per-
    /// thread. A process runs one gateway on per-thread runtimes (faster:
    /// no cross-thread wake-ups); processes that start and stop many
    /// gateways (test binaries) need work stealing, because Pingora finds a
    /// per-thread runtime through a thread-local map that keeps entries of
    /// exited threads and hands them to new threads that reuse their ids.
    pub work_stealing: bool,
}

impl StartOptions {
    /// The binary's options: OS signals and the system resolver.
    pub fn process() -> StartOptions {
        StartOptions {
            os_signals: true,
            resolver: Arc::new(SystemResolver),
            config_path: None,
            work_stealing: false,
        }
    }

    /// An embedded gateway (tests): no OS signals.
    pub fn embedded() -> StartOptions {
        StartOptions {
            os_signals: false,
            resolver: Arc::new(SystemResolver),
            config_path: None,
            work_stealing: true,
        }
    }
}

/// A running gateway.
pub struct GatewayHandle {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shared: Arc<Shared>,
    trigger: ShutdownTrigger,
    reload: Option<ReloadHandle>,
    thread: Option<JoinHandle<()>>,
}

impl GatewayHandle {
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.public_addr)
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// Reload the configuration file now (as SIGHUP), and report the outcome.
    pub async fn reload(&self) -> Result<ReloadOutcome, ConfigError> {
        match &self.reload {
            Some(r) => r.reload().await,
            None => Err(ConfigError::Invalid(vec![crate::config::ConfigIssue {
                key: String::new(),
                message: "this gateway was started without a configuration file".into(),
            }])),
        }
    }

    /// Ask for a graceful shutdown (as SIGTERM) without waiting for it.
    pub fn begin_drain(&self) {
        self.trigger.trigger(ShutdownKind::Graceful);
    }

    /// Stop now and wait until the server has stopped.
    pub fn shutdown(mut self) {
        self.trigger.trigger(ShutdownKind::Fast);
        self.join_thread();
    }

    /// Wait until the server stops (after a signal or [`Self::begin_drain`]).
    pub fn wait(mut self) {
        self.join_thread();
    }

    fn join_thread(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.trigger.trigger(ShutdownKind::Fast);
            self.join_thread();
        }
    }
}

/// Start a gateway for `config` on its own threads.
pub fn start(config: Config, options: StartOptions) -> Result<GatewayHandle, StartError> {
    let public = bind("server.listen", config.server.listen)?;
    let admin = bind("server.admin_listen", config.server.admin_listen)?;
    let public_addr = local_addr("server.listen", &public, config.server.listen)?;
    let admin_addr = local_addr("server.admin_listen", &admin, config.server.admin_listen)?;

    // Every connection holds a descriptor: let the process use what the
    // system allows rather than a small default soft limit.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
    }
    for w in &config.warnings {
        tracing::warn!(key = %w.key, "{}", w.message);
    }
    if config.api_keys.is_empty() {
        tracing::warn!(
            "no [[api_keys]] configured: the gateway is open to anyone who can reach it"
        );
    }
    let threads = config.server.threads;
    let shared = Shared::new(config, Metrics::new()?);

    let conf = ServerConf {
        threads,
        // One single-threaded runtime per thread (Pingora's NoSteal runtime)
        // rather than tokio's work-stealing one: a connection's tasks, its
        // socket's reactor and its upstream connections stay on one thread,
        // so answering a request wakes no other thread (see StartOptions).
        work_stealing: options.work_stealing,
        // The gateway drains before telling Pingora to stop (see
        // shutdown.rs), so Pingora itself must not sleep another grace period;
        // it only gives the runtimes a moment to unwind.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);

    let (stop_tx, stop_rx) = watch::channel(false);
    let (_never_tx, never_rx) = watch::channel(false);
    let public_settings: SettingsSource = {
        let shared = Arc::clone(&shared);
        Arc::new(move || {
            let s = &shared.snapshot().config.server;
            ConnectionSettings {
                keepalive_idle_secs: s.keepalive_idle_timeout.as_secs().max(1),
                header_read_timeout: s.header_read_timeout,
                max_requests_per_connection: s.max_requests_per_connection,
                max_connections: s.max_connections,
                send_timeout: s.send_timeout,
            }
        })
    };
    // The admin listener serves a handful of scrapers and probes.
    let admin_settings: SettingsSource = Arc::new(|| ConnectionSettings {
        keepalive_idle_secs: 60,
        header_read_timeout: Duration::from_secs(10),
        max_requests_per_connection: 10_000,
        max_connections: 256,
        send_timeout: Duration::from_secs(60),
    });
    let proxy = Arc::new(Gateway::new(Arc::clone(&shared)));
    server.add_service(Listener::new(
        "public",
        public,
        proxy,
        threads,
        public_settings,
        stop_rx,
    ));
    // The admin listener keeps answering while the gateway drains: /readyz
    // reporting "draining" is what takes the replica out of rotation.
    server.add_service(Listener::new(
        "admin",
        admin,
        Arc::new(AdminApp::new(Arc::clone(&shared))),
        1,
        admin_settings,
        never_rx,
    ));
    server.add_service(background_service(
        "pool",
        PoolTasks {
            shared: Arc::clone(&shared),
            resolver: Arc::clone(&options.resolver),
        },
    ));

    let mut reload = None;
    if let Some(path) = &options.config_path {
        let (handle, requests) = ReloadHandle::new();
        let loaded = std::fs::read_to_string(path).ok();
        server.add_service(background_service(
            "reload",
            ReloadTask {
                reloader: std::sync::Mutex::new(Some((
                    Reloader::new(Arc::clone(&shared), path.clone(), loaded),
                    requests,
                ))),
                os_signals: options.os_signals,
            },
        ));
        reload = Some(handle);
    }

    let (trigger, requests) = ShutdownTrigger::new();
    let watch = DrainingShutdown {
        shared: Arc::clone(&shared),
        stop_accepting: stop_tx,
        requests,
        os_signals: options.os_signals,
    };
    let thread = std::thread::Builder::new()
        .name("gateway".into())
        .spawn(move || {
            // Keep the admin stop-sender alive as long as the server runs.
            let _never_tx = _never_tx;
            server.run(RunArgs {
                shutdown_signal: Box::new(watch),
            });
        })
        .map_err(StartError::Thread)?;

    Ok(GatewayHandle {
        public_addr,
        admin_addr,
        shared,
        trigger,
        reload,
        thread: Some(thread),
    })
}

fn bind(key: &'static str, addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    listener::bind(addr).map_err(|source| StartError::Bind { key, addr, source })
}

fn local_addr(
    key: &'static str,
    l: &std::net::TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, StartError> {
    l.local_addr()
        .map_err(|source| StartError::Bind { key, addr, source })
}

/// The pools' background work: health checks, load polling, DNS discovery.
struct PoolTasks {
    shared: Arc<Shared>,
    resolver: Arc<dyn Resolver>,
}

#[async_trait]
impl BackgroundService for PoolTasks {
    async fn start(&self, shutdown: ShutdownWatch) {
        // Connect to a shared rate-limit store now rather than on the first
        // request (which would otherwise meet on_store_error).
        if let crate::ratelimit::Store::Redis(store) = &self.shared.snapshot().limits.store {
            store.warm_up().await;
        }
        tokio::join!(
            health::run(Arc::clone(&self.shared), shutdown.clone()),
            discovery::run(
                Arc::clone(&self.shared),
                Arc::clone(&self.resolver),
                shutdown
            ),
        );
    }
}

/// Runs the reloader until shutdown.
struct ReloadTask {
    /// Taken by the one `start` call.
    reloader: std::sync::Mutex<Option<(Reloader, tokio::sync::mpsc::Receiver<ReloadRequest>)>>,
    os_signals: bool,
}

#[async_trait]
impl BackgroundService for ReloadTask {
    async fn start(&self, shutdown: ShutdownWatch) {
        let taken = self.reloader.lock().ok().and_then(|mut r| r.take());
        if let Some((reloader, requests)) = taken {
            reloader.run(requests, self.os_signals, shutdown).await;
        }
    }
}
