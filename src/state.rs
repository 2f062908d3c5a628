//! What the gateway shares between requests, background tasks and the admin
//! listener.
//!
//! The configuration and everything derived from it (pools, keys, limiters)
//! form one immutable [`Snapshot`] behind an `ArcSwap`: a request loads it
//! once, keeps it in its context, and so sees one consistent configuration
//! from start to end, while a reload swaps in a new snapshot without a lock
//! on the request path. State that must outlive a reload (metrics, worker
//! counters, key budgets, the upstream connection pool) sits beside it, in
//! registries that hand the same objects to every generation that keeps them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::auth::{ApiKey, KeyTable};
use crate::config::{Config, DiscoverySource, LimitStore, WorkerSpec};
use crate::metrics::Metrics;
use crate::pool::{WorkerPool, WorkerRegistry};
use crate::ratelimit::redis::RedisStore;
use crate::ratelimit::{KeyLimiter, Quotas, RateLimits, Store};

/// Workers found by discovery, per model.
pub type Discovered = HashMap<String, Vec<WorkerSpec>>;

/// An immutable view of one configuration generation.
pub struct Snapshot {
    pub config: Arc<Config>,
    pools: foldhash::HashMap<String, Arc<WorkerPool>>,
    pub keys: KeyTable,
    pub limits: Arc<RateLimits>,
}

impl Snapshot {
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

/// The shared store a generation uses, kept while its settings stay.
type RedisSlot = Option<((String, String, Duration), Arc<RedisStore>)>;

/// Process-wide state of one gateway instance.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub registry: WorkerRegistry,
    snapshot: ArcSwap<Snapshot>,
    /// Serializes building snapshots (reload, discovery); never taken by a
    /// request. Holds the workers discovery found.
    build: Mutex<Discovered>,
    limiters: Mutex<HashMap<(String, Quotas), Weak<KeyLimiter>>>,
    redis: Mutex<RedisSlot>,
    pub drain: Arc<Drain>,
}

impl Shared {
    pub fn new(config: Config, metrics: Metrics) -> Arc<Shared> {
        // A placeholder generation so the real one is built by the same code
        // path as every reload.
        let empty = Snapshot {
            config: Arc::new(config.clone()),
            pools: foldhash::HashMap::default(),
            keys: KeyTable::default(),
            limits: Arc::new(RateLimits::memory()),
        };
        let shared = Arc::new(Shared {
            metrics: Arc::new(metrics),
            registry: WorkerRegistry::default(),
            snapshot: ArcSwap::from_pointee(empty),
            build: Mutex::new(Discovered::new()),
            limiters: Mutex::new(HashMap::new()),
            redis: Mutex::new(None),
            drain: Arc::new(Drain::default()),
        });
        shared.install(config);
        shared
    }

    /// The current configuration generation (one atomic load, no lock).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swap in a new configuration generation built from `config`.
    pub fn install(&self, config: Config) -> Arc<Snapshot> {
        let Ok(discovered) = self.build.lock() else {
            return self.snapshot();
        };
        let snapshot = Arc::new(self.build_snapshot(Arc::new(config), &discovered));
        self.snapshot.store(Arc::clone(&snapshot));
        snapshot
    }

    /// Record the workers discovery found for `model` and rebuild the pools
    /// if they changed. Returns whether they changed.
    pub fn set_discovered(&self, model: &str, workers: Vec<WorkerSpec>) -> bool {
        let Ok(mut discovered) = self.build.lock() else {
            return false;
        };
        if discovered.get(model) == Some(&workers) {
            return false;
        }
        discovered.insert(model.to_string(), workers);
        let config = Arc::clone(&self.snapshot.load().config);
        let snapshot = self.build_snapshot(config, &discovered);
        self.snapshot.store(Arc::new(snapshot));
        true
    }

    fn build_snapshot(&self, config: Arc<Config>, discovered: &Discovered) -> Snapshot {
        let pools = config
            .models
            .iter()
            .map(|m| {
                let pool = match &m.discovery {
                    DiscoverySource::Static => WorkerPool::new(m, &self.registry),
                    // DNS pools start from what discovery last found, so a
                    // reload does not empty them.
                    DiscoverySource::Dns { .. } => WorkerPool::with_workers(
                        m,
                        discovered.get(&m.name).map_or(&[][..], Vec::as_slice),
                        &self.registry,
                        true,
                    ),
                };
                (m.name.clone(), Arc::new(pool))
            })
            .collect();
        let keys = KeyTable::new(config.api_keys.iter().map(|k| {
            (
                k.digest,
                Arc::new(ApiKey {
                    name: Arc::from(k.name.as_str()),
                    models: k.models.clone(),
                    limiter: self.limiter(&k.name, k.quotas),
                }),
            )
        }));
        let limits = Arc::new(self.rate_limits(&config));
        Snapshot {
            config,
            pools,
            keys,
            limits,
        }
    }

    /// The key's limiter: the existing one while its name and quotas are
    /// unchanged, so budgets survive a reload.
    fn limiter(&self, name: &str, quotas: Quotas) -> Arc<KeyLimiter> {
        let fresh = || Arc::new(KeyLimiter::new(name, quotas));
        let Ok(mut map) = self.limiters.lock() else {
            return fresh();
        };
        let id = (name.to_string(), quotas);
        if let Some(l) = map.get(&id).and_then(Weak::upgrade) {
            return l;
        }
        map.retain(|_, l| l.strong_count() > 0);
        let l = fresh();
        map.insert(id, Arc::downgrade(&l));
        l
    }

    fn rate_limits(&self, config: &Config) -> RateLimits {
        let rl = &config.rate_limit;
        let store = match (rl.store, &rl.redis_url) {
            (LimitStore::Redis, Some(url)) => {
                let id = (url.clone(), rl.redis_key_prefix.clone(), rl.redis_timeout);
                let mut slot = self.redis.lock().ok();
                let existing = slot
                    .as_deref()
                    .and_then(|s| s.as_ref())
                    .filter(|(k, _)| *k == id)
                    .map(|(_, s)| Arc::clone(s));
                match existing {
                    Some(s) => Store::Redis(s),
                    None => {
                        let metrics = Arc::clone(&self.metrics);
                        let hook = Arc::new(move |e: &crate::ratelimit::redis::StoreError| {
                            metrics
                                .rate_limit_store_errors
                                .with_label_values(&[e.kind()])
                                .inc();
                        });
                        match RedisStore::new(url, &rl.redis_key_prefix, rl.redis_timeout, hook) {
                            Ok(s) => {
                                if let Some(slot) = slot.as_deref_mut() {
                                    *slot = Some((id, Arc::clone(&s)));
                                }
                                Store::Redis(s)
                            }
                            Err(e) => {
                                // Validated at load, so this is unexpected;
                                // limits fall back to this replica alone.
                                tracing::error!(error = %e, "cannot use the Redis rate-limit store; limiting in memory");
                                Store::Memory
                            }
                        }
                    }
                }
            }
            _ => Store::Memory,
        };
        RateLimits {
            store,
            on_store_error: rl.on_store_error,
        }
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
