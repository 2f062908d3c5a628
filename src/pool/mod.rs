//! Workers and the per-model pools that route to them.
//!
//! A [`Worker`] is one vLLM server, identified by its URL. It lives as long as
//! some configuration references it: a reload that keeps a URL keeps the same
//! `Worker` (and so its in-flight count and health), because the registry
//! hands out the existing `Arc`. A [`WorkerPool`] is the set of workers that
//! serve one model, plus that model's upstream settings.
//!
//! Picking reserves a slot at once (the in-flight count rises inside the pick),
//! and the returned [`Reservation`] gives it back when dropped, on every path:
//! success, error, client gone. So load counts are never stale at pick time and
//! never leak.

pub mod health;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use pingora_core::protocols::TcpKeepalive;
use pingora_core::upstreams::peer::HttpPeer;

use crate::config::{ModelConfig, UpstreamTimeouts, WorkerSpec};

/// One vLLM server.
#[derive(Debug)]
pub struct Worker {
    pub url: Arc<str>,
    pub addr: SocketAddr,
    in_flight: AtomicU32,
    healthy: AtomicBool,
    /// `max_model_len` per served model, as the worker's `/v1/models` reports.
    max_model_len: Mutex<HashMap<String, u64>>,
    /// Bumped on every health transition; lets tests and metrics observe them.
    transitions: AtomicU64,
}

impl Worker {
    fn new(spec: &WorkerSpec) -> Worker {
        Worker {
            url: Arc::from(spec.url.as_str()),
            addr: spec.addr,
            in_flight: AtomicU32::new(0),
            // Optimistic until the first health check says otherwise: a
            // gateway restarted under load must not refuse traffic for a
            // whole check interval.
            healthy: AtomicBool::new(true),
            max_model_len: Mutex::new(HashMap::new()),
            transitions: AtomicU64::new(0),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Set the health state; returns true when it changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let changed = self.healthy.swap(healthy, Ordering::Relaxed) != healthy;
        if changed {
            self.transitions.fetch_add(1, Ordering::Relaxed);
        }
        changed
    }

    pub fn max_model_len(&self, model: &str) -> Option<u64> {
        self.max_model_len
            .lock()
            .ok()
            .and_then(|m| m.get(model).copied())
    }

    pub fn set_max_model_lens(&self, lens: HashMap<String, u64>) {
        if let Ok(mut m) = self.max_model_len.lock() {
            *m = lens;
        }
    }
}

/// Hands out one shared [`Worker`] per URL, so every pool and every config
/// generation that names a URL sees the same counters.
#[derive(Default)]
pub struct WorkerRegistry {
    workers: Mutex<HashMap<String, Weak<Worker>>>,
}

impl WorkerRegistry {
    pub fn get_or_create(&self, spec: &WorkerSpec) -> Arc<Worker> {
        let Ok(mut map) = self.workers.lock() else {
            // A poisoned lock means a panic elsewhere; a fresh worker is a
            // safe answer (it only loses the old counters).
            return Arc::new(Worker::new(spec));
        };
        if let Some(w) = map.get(&spec.url).and_then(Weak::upgrade) {
            if w.addr == spec.addr {
                return w;
            }
        }
        map.retain(|_, w| w.strong_count() > 0);
        let w = Arc::new(Worker::new(spec));
        map.insert(spec.url.clone(), Arc::downgrade(&w));
        w
    }
}

/// A worker as a member of one model's pool: the shared worker plus the
/// connection settings this model uses to reach it.
#[derive(Debug)]
pub struct Member {
    pub worker: Arc<Worker>,
    pub peer: HttpPeer,
}

/// The workers serving one model.
#[derive(Debug)]
pub struct WorkerPool {
    pub model: Arc<str>,
    pub members: Vec<Member>,
    pub timeouts: UpstreamTimeouts,
}

impl WorkerPool {
    pub fn new(model: &ModelConfig, registry: &WorkerRegistry) -> WorkerPool {
        let members = model
            .workers
            .iter()
            .map(|spec| Member {
                worker: registry.get_or_create(spec),
                peer: peer_for(spec.addr, &model.timeouts),
            })
            .collect();
        WorkerPool {
            model: Arc::from(model.name.as_str()),
            members,
            timeouts: model.timeouts,
        }
    }

    pub fn has_healthy_worker(&self) -> bool {
        self.members.iter().any(|m| m.worker.is_healthy())
    }

    /// The model's context length as its workers report it (the smallest, in
    /// case a rolling upgrade left them disagreeing).
    pub fn reported_max_model_len(&self) -> Option<u64> {
        self.members
            .iter()
            .filter_map(|m| m.worker.max_model_len(&self.model))
            .min()
    }

    /// Pick the healthy member with the fewest in-flight requests, skipping
    /// the indexes in `exclude` (workers that already failed this request),
    /// and reserve a slot on it before returning.
    ///
    /// The reservation is a compare-and-swap on the count that was read, so
    /// two concurrent picks cannot both take the same "least loaded" slot: the
    /// loser re-reads and picks again. Ties start from a random offset so that
    /// equal workers share a burst evenly instead of the first one taking all.
    pub fn pick(&self, exclude: &[usize]) -> Option<Reservation> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        loop {
            let start = fastrand::usize(..n);
            let mut best: Option<(usize, u32)> = None;
            for k in 0..n {
                let i = (start + k) % n;
                if exclude.contains(&i) {
                    continue;
                }
                let w = &self.members[i].worker;
                if !w.is_healthy() {
                    continue;
                }
                let load = w.in_flight();
                if best.is_none_or(|(_, b)| load < b) {
                    best = Some((i, load));
                }
            }
            let (i, load) = best?;
            let w = &self.members[i].worker;
            if w.in_flight
                .compare_exchange(load, load + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Some(Reservation {
                    index: i,
                    worker: Arc::clone(w),
                });
            }
        }
    }
}

/// A reserved in-flight slot on a worker; released on drop.
#[derive(Debug)]
pub struct Reservation {
    pub index: usize,
    pub worker: Arc<Worker>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.worker.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn peer_for(addr: SocketAddr, timeouts: &UpstreamTimeouts) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(timeouts.connect);
    peer.options.idle_timeout = Some(timeouts.keepalive_idle);
    // A worker that vanishes without a FIN/RST (node lost) is noticed by TCP
    // keep-alive rather than only by the idle timeout.
    peer.options.tcp_keepalive = Some(TcpKeepalive {
        idle: std::time::Duration::from_secs(30),
        interval: std::time::Duration::from_secs(5),
        count: 3,
        #[cfg(target_os = "linux")]
        user_timeout: std::time::Duration::from_secs(0),
    });
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> (WorkerPool, WorkerRegistry) {
        let registry = WorkerRegistry::default();
        let model = ModelConfig {
            name: "m".into(),
            workers: (0..n)
                .map(|i| WorkerSpec {
                    url: format!("http://127.0.0.1:{}", 9000 + i),
                    addr: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                })
                .collect(),
            timeouts: UpstreamTimeouts::default(),
        };
        (WorkerPool::new(&model, &registry), registry)
    }

    #[test]
    fn burst_spreads_evenly() {
        let (p, _r) = pool(4);
        let held: Vec<_> = (0..100).map(|_| p.pick(&[]).unwrap()).collect();
        for m in &p.members {
            assert_eq!(m.worker.in_flight(), 25);
        }
        drop(held);
        for m in &p.members {
            assert_eq!(m.worker.in_flight(), 0);
        }
    }

    #[test]
    fn skips_unhealthy_and_excluded() {
        let (p, _r) = pool(3);
        p.members[0].worker.set_healthy(false);
        for _ in 0..20 {
            let r = p.pick(&[1]).unwrap();
            assert_eq!(r.index, 2);
        }
        p.members[2].worker.set_healthy(false);
        assert!(p.pick(&[1]).is_none());
    }

    #[test]
    fn registry_shares_workers_across_pools() {
        let (p, r) = pool(2);
        let again = r.get_or_create(&WorkerSpec {
            url: "http://127.0.0.1:9000".into(),
            addr: "127.0.0.1:9000".parse().unwrap(),
        });
        assert!(Arc::ptr_eq(&again, &p.members[0].worker));
    }

    #[test]
    fn ties_break_without_bias() {
        let (p, _r) = pool(4);
        let mut counts = [0u32; 4];
        for _ in 0..4000 {
            let r = p.pick(&[]).unwrap();
            counts[r.index] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }
}
