//! Graceful shutdown: stop accepting at once, let requests in flight finish
//! (up to `server.shutdown_grace`), then exit as soon as they have.
//!
//! Pingora's own SIGTERM handling sleeps the whole grace period even when
//! nothing is in flight (pingora.md §9), so the gateway supplies the shutdown
//! signal itself: it drains first and only then tells Pingora to stop, with no
//! further grace period to sleep through.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::sync::watch;

use crate::state::Shared;

/// How a shutdown was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownKind {
    /// Drain in-flight requests first (SIGTERM).
    Graceful,
    /// Stop now (SIGINT / Ctrl-C).
    Fast,
}

/// Lets code in the same process (tests, the demo) ask for a shutdown.
#[derive(Clone)]
pub struct ShutdownTrigger(watch::Sender<Option<ShutdownKind>>);

impl ShutdownTrigger {
    pub fn new() -> (ShutdownTrigger, watch::Receiver<Option<ShutdownKind>>) {
        let (tx, rx) = watch::channel(None);
        (ShutdownTrigger(tx), rx)
    }

    pub fn trigger(&self, kind: ShutdownKind) {
        let _ = self.0.send(Some(kind));
    }
}

pub struct DrainingShutdown {
    pub shared: Arc<Shared>,
    /// Tells the public listener to stop accepting.
    pub stop_accepting: watch::Sender<bool>,
    pub requests: watch::Receiver<Option<ShutdownKind>>,
    /// Listen to SIGTERM/SIGINT/SIGQUIT too (the real binary does; gateways
    /// embedded in tests do not, or one signal would stop them all).
    pub os_signals: bool,
}

impl DrainingShutdown {
    async fn next_request(&self) -> ShutdownKind {
        let mut requests = self.requests.clone();
        let from_process = async {
            loop {
                if let Some(kind) = *requests.borrow_and_update() {
                    return kind;
                }
                if requests.changed().await.is_err() {
                    // Trigger dropped: only OS signals remain.
                    std::future::pending::<()>().await;
                }
            }
        };
        if !self.os_signals {
            return from_process.await;
        }
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; only in-process shutdown works");
            return from_process.await;
        };
        tokio::select! {
            _ = term.recv() => ShutdownKind::Graceful,
            // Without a successor process to hand sockets to, SIGQUIT (Pingora's
            // upgrade signal) is treated as a plain graceful stop.
            _ = quit.recv() => ShutdownKind::Graceful,
            _ = int.recv() => ShutdownKind::Fast,
            kind = from_process => kind,
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for DrainingShutdown {
    async fn recv(&self) -> ShutdownSignal {
        if self.next_request().await == ShutdownKind::Fast {
            tracing::info!("fast shutdown");
            return ShutdownSignal::FastShutdown;
        }
        let in_flight = self.shared.drain.in_flight();
        // The grace period of the configuration running now (reloadable).
        let grace = self.shared.snapshot().config.server.shutdown_grace;
        tracing::info!(
            in_flight,
            grace_s = grace.as_secs_f64(),
            "graceful shutdown: not accepting, draining requests in flight"
        );
        self.shared.drain.start_draining();
        let _ = self.stop_accepting.send(true);
        let drained = tokio::select! {
            r = tokio::time::timeout(grace, self.shared.drain.wait_idle()) => r.is_ok(),
            // A second request to stop (e.g. Ctrl-C again) cuts the drain short.
            kind = self.next_request_after_drain_started() => kind == ShutdownKind::Graceful,
        };
        if drained {
            tracing::info!("drained; exiting");
        } else {
            tracing::warn!(
                in_flight = self.shared.drain.in_flight(),
                "grace period over; closing the remaining requests"
            );
        }
        ShutdownSignal::GracefulTerminate
    }
}

impl DrainingShutdown {
    /// Resolves on a Fast request that arrives while draining.
    async fn next_request_after_drain_started(&self) -> ShutdownKind {
        let mut requests = self.requests.clone();
        if self.os_signals {
            use tokio::signal::unix::{signal, SignalKind};
            if let Ok(mut int) = signal(SignalKind::interrupt()) {
                loop {
                    tokio::select! {
                        _ = int.recv() => return ShutdownKind::Fast,
                        r = requests.changed() => {
                            if r.is_err() { std::future::pending::<()>().await; }
                            if *requests.borrow() == Some(ShutdownKind::Fast) { return ShutdownKind::Fast; }
                        }
                    }
                }
            }
        }
        loop {
            if requests.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if *requests.borrow() == Some(ShutdownKind::Fast) {
                return ShutdownKind::Fast;
            }
        }
    }
}
