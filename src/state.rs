//! What the gateway shares between requests, background tasks and the admin
//! listener.
//!
//! The configuration and everything derived from it (pools, later keys and
//! limiters) form one immutable [`Snapshot`] behind an `ArcSwap`: a request
//! loads it once, keeps it in its context, and so sees one consistent
//! configuration from start to end, while a reload swaps in a new snapshot
//! without a lock on the request path. State that must outlive a reload
//! (metrics, worker counters, the upstream connection pool) sits beside it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora_core::connectors::http::v1::Connector;
use pingora_core::connectors::ConnectorOptions;
use tokio::sync::Notify;

use std::sync::Mutex;

use crate::config::{Config, DiscoverySource, WorkerSpec};
use crate::metrics::Metrics;
use crate::pool::{WorkerPool, WorkerRegistry};

/// Workers found by discovery, per model.
pub type Discovered = HashMap<String, Vec<WorkerSpec>>;

/// An immutable view of one configuration generation.
pub struct Snapshot {
    pub config: Arc<Config>,
    pools: HashMap<String, Arc<WorkerPool>>,
}

impl Snapshot {
    /// Derive pools from `config`; DNS-discovered models take the workers
    /// discovery last found, so a reload does not empty them.
    pub fn build(
        config: Arc<Config>,
        registry: &WorkerRegistry,
        discovered: &Discovered,
    ) -> Snapshot {
        let pools = config
            .models
            .iter()
            .map(|m| {
                let pool = match &m.discovery {
                    DiscoverySource::Static => WorkerPool::new(m, registry),
                    DiscoverySource::Dns { .. } => WorkerPool::with_workers(
                        m,
                        discovered.get(&m.name).map_or(&[][..], Vec::as_slice),
                        registry,
                        true,
                    ),
                };
                (m.name.clone(), Arc::new(pool))
            })
            .collect();
        Snapshot { config, pools }
    }

    pub fn pool(&self, model: &str) -> Option<&Arc<WorkerPool>> {
        self.pools.get(model)
    }

    /// Pools in configuration order.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<WorkerPool>> {
        self.config
            .models
            .iter()
            .filter_map(|m| self.pools.get(&m.name))
    }
}

/// Process-wide state of one gateway instance.
pub struct Shared {
    pub metrics: Metrics,
    pub connector: Connector,
    pub registry: WorkerRegistry,
    snapshot: ArcSwap<Snapshot>,
    /// Workers discovery found; only touched by discovery and reloads.
    discovered: Mutex<Discovered>,
    pub drain: Arc<Drain>,
}

impl Shared {
    pub fn new(config: Config, metrics: Metrics) -> Shared {
        let registry = WorkerRegistry::default();
        let snapshot = Snapshot::build(Arc::new(config), &registry, &Discovered::new());
        let options = ConnectorOptions {
            // One global LRU pool of idle upstream connections; large enough
            // for every worker to keep a healthy set of warm connections.
            keepalive_pool_size: 4096,
            ..ConnectorOptions::new(4096)
        };
        Shared {
            metrics,
            connector: Connector::new(Some(options)),
            registry,
            snapshot: ArcSwap::from_pointee(snapshot),
            discovered: Mutex::new(Discovered::new()),
            drain: Arc::new(Drain::default()),
        }
    }

    /// The current configuration generation (one atomic load, no lock).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swap in a new configuration generation built from `config`.
    pub fn install(&self, config: Config) -> Arc<Snapshot> {
        let empty = Discovered::new();
        let guard = self.discovered.lock();
        let discovered = guard.as_deref().unwrap_or(&empty);
        // Models no longer discovered through DNS are built from their static
        // list; stale discovered entries are harmless (unused).
        let snapshot = Arc::new(Snapshot::build(
            Arc::new(config),
            &self.registry,
            discovered,
        ));
        self.snapshot.store(Arc::clone(&snapshot));
        snapshot
    }

    /// Record the workers discovery found for `model` and rebuild the pools
    /// if they changed. Returns whether they changed.
    pub fn set_discovered(&self, model: &str, workers: Vec<WorkerSpec>) -> bool {
        let Ok(mut discovered) = self.discovered.lock() else {
            return false;
        };
        if discovered.get(model) == Some(&workers) {
            return false;
        }
        discovered.insert(model.to_string(), workers);
        // Same configuration, new worker set: only pools change. Holding the
        // discovery lock orders this against a concurrent reload.
        let config = Arc::clone(&self.snapshot.load().config);
        let snapshot = Snapshot::build(config, &self.registry, &discovered);
        self.snapshot.store(Arc::new(snapshot));
        true
    }
}

/// Tracks requests in flight and whether the gateway is draining for shutdown.
#[derive(Default)]
pub struct Drain {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl Drain {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.idle.notify_waiters();
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Count a request as in flight until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    /// Wait until no request is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A request in flight; see [`Drain::enter`].
pub struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
