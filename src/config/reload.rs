//! Hot reload: `SIGHUP`, a change to the configuration file, or an in-process
//! request reload the file.
//!
//! The new file is read and validated off the request path; a bad file
//! changes nothing (the error names the key, `config_reloads_total{result=
//! "error"}` rises) and the old configuration keeps serving. A good file is
//! swapped in atomically: new requests see it at once, requests in flight
//! finish on the snapshot they started with. Listener addresses and thread
//! counts cannot change without a restart (pingora.md §9): a reload that
//! changes them keeps the running values and says so.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pingora_core::server::ShutdownWatch;
use tokio::sync::{mpsc, oneshot};

use super::{Config, ConfigError};
use crate::state::Shared;

/// Quiet time after a file event before reloading: editors and Kubernetes
/// ConfigMap updates touch several files in a burst.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The outcome of one reload.
#[derive(Debug)]
pub enum ReloadOutcome {
    Applied,
    /// The file did not change since the last load.
    Unchanged,
}

/// A reload asked for from inside the process (tests, admin tooling).
pub type ReloadRequest = oneshot::Sender<Result<ReloadOutcome, ConfigError>>;

/// Sends in-process reload requests to the reloader.
#[derive(Clone)]
pub struct ReloadHandle(mpsc::Sender<ReloadRequest>);

impl ReloadHandle {
    pub fn new() -> (ReloadHandle, mpsc::Receiver<ReloadRequest>) {
        let (tx, rx) = mpsc::channel(8);
        (ReloadHandle(tx), rx)
    }

    /// Reload the configuration file now and report what happened.
    pub async fn reload(&self) -> Result<ReloadOutcome, ConfigError> {
        let (tx, rx) = oneshot::channel();
        let gone = || {
            ConfigError::Invalid(vec![super::ConfigIssue {
                key: String::new(),
                message: "the gateway is not running a reloader (no configuration file)".into(),
            }])
        };
        self.0.send(tx).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// Reads, validates and installs configuration generations.
pub struct Reloader {
    shared: Arc<Shared>,
    path: PathBuf,
    last_text: Option<String>,
}

impl Reloader {
    pub fn new(shared: Arc<Shared>, path: PathBuf, loaded_text: Option<String>) -> Reloader {
        Reloader {
            shared,
            path,
            last_text: loaded_text,
        }
    }

    /// Reload once. `force` reloads even an unchanged file (SIGHUP, in-process).
    pub async fn reload(&mut self, force: bool) -> Result<ReloadOutcome, ConfigError> {
        let result = self.try_reload(force).await;
        let m = &self.shared.metrics;
        match &result {
            Ok(ReloadOutcome::Applied) => {
                m.config_reloads.with_label_values(&["ok"]).inc();
            }
            Ok(ReloadOutcome::Unchanged) => {}
            Err(e) => {
                m.config_reloads.with_label_values(&["error"]).inc();
                for issue in e.issues() {
                    tracing::error!(file = %self.path.display(), key = %issue.key, "reload refused, keeping the running configuration: {}", issue.message);
                }
            }
        }
        result
    }

    async fn try_reload(&mut self, force: bool) -> Result<ReloadOutcome, ConfigError> {
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|source| ConfigError::Read {
                path: self.path.clone(),
                source,
            })?;
        if !force && self.last_text.as_deref() == Some(text.as_str()) {
            return Ok(ReloadOutcome::Unchanged);
        }
        // Parsing resolves worker host names: blocking work, off the runtime.
        let parse_text = text.clone();
        let mut config = tokio::task::spawn_blocking(move || Config::parse(&parse_text))
            .await
            .map_err(|e| {
                ConfigError::Invalid(vec![super::ConfigIssue {
                    key: String::new(),
                    message: format!("reload task failed: {e}"),
                }])
            })??;
        self.keep_fixed_settings(&mut config);
        for w in &config.warnings {
            tracing::warn!(key = %w.key, "{}", w.message);
        }
        let models = config.models.len();
        let keys = config.api_keys.len();
        self.shared.install(config);
        self.last_text = Some(text);
        tracing::info!(file = %self.path.display(), models, keys, "configuration reloaded");
        Ok(ReloadOutcome::Applied)
    }

    /// Settings that need a restart keep their running values.
    fn keep_fixed_settings(&self, new: &mut Config) {
        let running = &self.shared.snapshot().config.server;
        let s = &mut new.server;
        for (key, changed) in [
            ("server.listen", s.listen != running.listen),
            (
                "server.admin_listen",
                s.admin_listen != running.admin_listen,
            ),
            ("server.threads", s.threads != running.threads),
        ] {
            if changed {
                tracing::warn!(
                    key,
                    "changing this needs a restart; keeping the running value"
                );
            }
        }
        s.listen = running.listen;
        s.admin_listen = running.admin_listen;
        s.threads = running.threads;
    }

    /// Run until shutdown: reload on SIGHUP (`os_signals`), on changes to
    /// the file, and on in-process requests.
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<ReloadRequest>,
        os_signals: bool,
        mut shutdown: ShutdownWatch,
    ) {
        let (file_tx, mut file_rx) = mpsc::channel::<()>(16);
        let _watcher = watch_file(&self.path, file_tx);
        let mut hangup = if os_signals {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
        } else {
            None
        };
        // A change to the file is reloaded once its burst of events has
        // settled. The wait is a deadline in this loop, not a sleep in it, so
        // a SIGHUP or an in-process request meanwhile is served at once.
        let mut file_changed_at: Option<tokio::time::Instant> = None;
        loop {
            let settle = async {
                match file_changed_at {
                    Some(at) => tokio::time::sleep_until(at + DEBOUNCE).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(reply) = requests.recv() => {
                    let r = self.reload(true).await;
                    let _ = reply.send(r);
                }
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let _ = self.reload(true).await;
                }
                Some(()) = file_rx.recv() => {
                    file_changed_at.get_or_insert_with(tokio::time::Instant::now);
                }
                () = settle => {
                    file_changed_at = None;
                    // Unchanged text (already loaded by a request or a
                    // SIGHUP meanwhile) is not reloaded again.
                    let _ = self.reload(false).await;
                }
                r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return },
            }
        }
    }
}

/// Watch the file's directory (editors replace files; Kubernetes swaps a
/// symlink), nudging `tx` on any change there. None if watching is not
/// possible; SIGHUP still works.
fn watch_file(path: &Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = path.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        // Only the configuration file itself, or Kubernetes' `..data`
        // symlink swap, concern us: other files in the directory (a log
        // written next to the config) must not wake the reloader.
        let concerns_us = event.paths.iter().any(|p| {
            p.file_name().is_some_and(|f| {
                name.as_deref() == Some(f) || f.to_string_lossy().starts_with("..")
            })
        });
        if concerns_us {
            let _ = tx.try_send(());
        }
    })
    .map_err(
        |e| tracing::warn!(error = %e, "cannot watch the configuration file; SIGHUP still reloads"),
    )
    .ok()?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the configuration directory; SIGHUP still reloads"))
        .ok()?;
    Some(watcher)
}
