//! Workers and the per-model pools that route to them.
//!
//! A [`Worker`] is one vLLM server, identified by its URL. It lives as long as
//! some configuration references it: a reload that keeps a URL keeps the same
//! `Worker` (its in-flight count, health and breaker state), because the
//! registry hands out the existing `Arc`. A [`WorkerPool`] is the set of
//! workers that serve one model, with that model's routing policy.
//!
//! Picking reserves a slot at once (the in-flight count rises inside the
//! pick, by compare-and-swap on the value the choice was made on), and the
//! returned [`Reservation`] gives it back when dropped, on every path. So a
//! burst never lands on one worker because counts were stale at pick time,
//! and counts never leak.

pub mod discovery;
pub mod health;
pub mod ring;
mod spill;
pub mod worker;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use crate::config::{ModelConfig, PoolPolicy, Routing, UpstreamTimeouts, WorkerSpec};
use ring::Ring;
use spill::SpillMemory;
pub use worker::{LoadMark, Worker, WorkerState};

/// Hands out one shared [`Worker`] per URL, so every pool and every config
/// generation that names a URL sees the same counters.
#[derive(Default)]
pub struct WorkerRegistry {
    workers: Mutex<HashMap<String, Weak<Worker>>>,
}

impl WorkerRegistry {
    /// The worker for `spec`, created if no live configuration has it.
    /// `checked_first` creates it unhealthy until a health check passes (for
    /// workers that appear at run time).
    pub fn get_or_create(&self, spec: &WorkerSpec, checked_first: bool) -> Arc<Worker> {
        let make = || {
            Arc::new(if checked_first {
                Worker::new_unchecked(spec)
            } else {
                Worker::new(spec)
            })
        };
        let Ok(mut map) = self.workers.lock() else {
            // Poisoned only by a panic elsewhere; a fresh worker is a safe
            // answer (it only loses the old counters).
            return make();
        };
        if let Some(w) = map.get(&spec.url).and_then(Weak::upgrade) {
            if w.addr == spec.addr {
                return w;
            }
        }
        map.retain(|_, w| w.strong_count() > 0);
        let w = make();
        map.insert(spec.url.clone(), Arc::downgrade(&w));
        w
    }
}

/// A worker as a member of one model's pool.
#[derive(Debug)]
pub struct Member {
    pub worker: Arc<Worker>,
}

/// Why a worker was chosen (the `reason` label of the decisions counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickReason {
    LeastLoaded,
    /// The prefix's worker took it: its worker on the ring, or the one it
    /// spilled to earlier while its home stays busy (see `spill.rs`).
    AffinityHit,
    /// The prefix's worker was over the load bound; the next on the ring
    /// within the bound took it (and keeps it while the home stays busy).
    AffinitySpill,
    /// A retry after a failed attempt.
    Retry,
}

impl PickReason {
    pub const ALL: [PickReason; 4] = [
        PickReason::LeastLoaded,
        PickReason::AffinityHit,
        PickReason::AffinitySpill,
        PickReason::Retry,
    ];

    pub fn label(self) -> &'static str {
        match self {
            PickReason::LeastLoaded => "least_loaded",
            PickReason::AffinityHit => "affinity_hit",
            PickReason::AffinitySpill => "affinity_spill",
            PickReason::Retry => "retry",
        }
    }
}

/// The workers serving one model.
#[derive(Debug)]
pub struct WorkerPool {
    pub model: Arc<str>,
    pub members: Vec<Member>,
    pub timeouts: UpstreamTimeouts,
    pub policy: PoolPolicy,
    ring: Ring,
    /// Where spilled prefixes went (prefix_affinity pools only).
    spills: Option<SpillMemory>,
}

impl WorkerPool {
    /// The pool of a static configuration.
    pub fn new(model: &ModelConfig, registry: &WorkerRegistry) -> WorkerPool {
        WorkerPool::with_workers(model, &model.workers, registry, false)
    }

    /// A pool over `workers` (static ones, or the addresses discovery found).
    pub fn with_workers(
        model: &ModelConfig,
        workers: &[WorkerSpec],
        registry: &WorkerRegistry,
        checked_first: bool,
    ) -> WorkerPool {
        let members: Vec<Member> = workers
            .iter()
            .map(|spec| Member {
                worker: registry.get_or_create(spec, checked_first),
            })
            .collect();
        let ring = Ring::new(members.iter().map(|m| &*m.worker.url));
        WorkerPool {
            model: Arc::from(model.name.as_str()),
            members,
            timeouts: model.timeouts,
            policy: model.pool,
            ring,
            spills: (model.pool.routing == Routing::PrefixAffinity).then(SpillMemory::new),
        }
    }

    pub fn has_healthy_worker(&self) -> bool {
        self.members.iter().any(|m| m.worker.is_available())
    }

    /// The model's context length as its workers report it (the smallest, in
    /// case a rolling upgrade left them disagreeing).
    pub fn reported_max_model_len(&self) -> Option<u64> {
        self.members
            .iter()
            .filter_map(|m| m.worker.max_model_len(&self.model))
            .min()
    }

    /// Pick a worker for a request and reserve a slot on it.
    ///
    /// `exclude` holds the members that already failed this request (so a
    /// retry goes elsewhere); `prefix_key` is the hash of the prompt's leading
    /// part, used by `prefix_affinity` routing.
    pub fn pick(
        &self,
        exclude: &[usize],
        prefix_key: Option<u64>,
    ) -> Option<(Reservation, PickReason)> {
        // A bounded number of rounds: each lost compare-and-swap means another
        // request just took a slot, so the next round sees fresher counts.
        for _ in 0..64 {
            let candidate = match (self.policy.routing, prefix_key) {
                (Routing::PrefixAffinity, Some(key)) => self.affinity_candidate(key, exclude),
                _ => self
                    .least_loaded_candidate(exclude)
                    .map(|(i, load)| (i, load, Placement::LeastLoaded)),
            };
            let (i, seen_in_flight, placement) = candidate?;
            let w = &self.members[i].worker;
            if w.in_flight
                .compare_exchange(
                    seen_in_flight,
                    seen_in_flight + 1,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                continue;
            }
            let Some(probe) = w.claim() else {
                // Lost the half-open probe slot to another request.
                w.in_flight.fetch_sub(1, Ordering::AcqRel);
                continue;
            };
            if let (Some(spills), Some(key), true) = (&self.spills, prefix_key, exclude.is_empty())
            {
                match placement {
                    Placement::Spill => spills.set(key, i),
                    Placement::Home => spills.clear(key),
                    Placement::Spilled | Placement::LeastLoaded => {}
                }
            }
            let reason = if !exclude.is_empty() {
                PickReason::Retry
            } else {
                match placement {
                    Placement::LeastLoaded => PickReason::LeastLoaded,
                    Placement::Home | Placement::Spilled => PickReason::AffinityHit,
                    Placement::Spill => PickReason::AffinitySpill,
                }
            };
            return Some((
                Reservation {
                    index: i,
                    worker: Arc::clone(w),
                    probe,
                },
                reason,
            ));
        }
        None
    }

    /// Members that may take a request now, honouring `max_waiting`: workers
    /// with a deep queue of their own are skipped while others have room.
    fn eligible(&self, exclude: &[usize]) -> Vec<usize> {
        let available: Vec<usize> = (0..self.members.len())
            .filter(|i| !exclude.contains(i) && self.members[*i].worker.is_available())
            .collect();
        let Some(max_waiting) = self.policy.max_waiting else {
            return available;
        };
        let roomy: Vec<usize> = available
            .iter()
            .copied()
            .filter(|i| self.members[*i].worker.remote_waiting() < max_waiting)
            .collect();
        if roomy.is_empty() {
            available
        } else {
            roomy
        }
    }

    /// The eligible member with the lowest effective load (this gateway's
    /// exact in-flight count plus other clients' load from the last scrape),
    /// KV-cache usage breaking ties, then a random start so equal workers
    /// share a burst. Returns (index, in-flight count seen).
    fn least_loaded_candidate(&self, exclude: &[usize]) -> Option<(usize, u32)> {
        let eligible = self.eligible(exclude);
        if eligible.is_empty() {
            return None;
        }
        let start = fastrand::usize(..eligible.len());
        let mut best: Option<(usize, u32, (u32, u32))> = None;
        for k in 0..eligible.len() {
            let i = eligible[(start + k) % eligible.len()];
            let w = &self.members[i].worker;
            let in_flight = w.in_flight();
            let score = (in_flight.saturating_add(w.foreign_load()), w.kv_milli());
            if best.is_none_or(|(_, _, b)| score < b) {
                best = Some((i, in_flight, score));
            }
        }
        best.map(|(i, in_flight, _)| (i, in_flight))
    }

    /// Consistent hashing with bounded load: the prefix's worker on the ring
    /// (its home: the first eligible one from the prefix's point) takes the
    /// request while its load stays within `affinity_max_imbalance` of the
    /// pool average (counting this request); otherwise the next worker on
    /// the ring that is within the bound does, and the prefix stays there
    /// while its home is busy (`spill.rs` says why). A warm worker keeps its
    /// prefixes, but cannot be piled onto.
    fn affinity_candidate(&self, key: u64, exclude: &[usize]) -> Option<(usize, u32, Placement)> {
        let eligible = self.eligible(exclude);
        if eligible.is_empty() {
            return None;
        }
        let total: u64 = eligible
            .iter()
            .map(|i| u64::from(self.members[*i].worker.effective_load()))
            .sum();
        let bound = affinity_bound(
            self.policy.affinity_max_imbalance,
            total + 1,
            eligible.len() as u64,
        );
        // A worker's in-flight count is read once and the decision made on
        // it, so the compare-and-swap in `pick` only succeeds if no other
        // request took a slot there meanwhile: the bound holds under races.
        let seen = |i: usize| {
            let w = &self.members[i].worker;
            let in_flight = w.in_flight();
            (
                in_flight,
                u64::from(in_flight.saturating_add(w.foreign_load())),
            )
        };
        let mut walk = self
            .ring
            .walk(key, self.members.len())
            .filter(|i| eligible.contains(i));
        let home = walk.next()?;
        let (home_in_flight, home_load) = seen(home);
        if let Some(moved) = self.spills.as_ref().and_then(|s| s.get(key)) {
            if moved != home && eligible.contains(&moved) && home_load > 0 {
                let (in_flight, load) = seen(moved);
                if load < bound {
                    return Some((moved, in_flight, Placement::Spilled));
                }
            }
        }
        if home_load < bound {
            return Some((home, home_in_flight, Placement::Home));
        }
        for next in walk {
            let (in_flight, load) = seen(next);
            if load < bound {
                return Some((next, in_flight, Placement::Spill));
            }
        }
        // Every worker is at the bound (it never is below the average, so
        // this is rare): fall back to the least loaded.
        self.least_loaded_candidate(exclude)
            .map(|(i, load)| (i, load, Placement::Spill))
    }
}

/// Where a pick placed a request, before it becomes a [`PickReason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    LeastLoaded,
    /// The prefix's home on the ring.
    Home,
    /// The worker the prefix spilled to earlier (its home is still busy).
    Spilled,
    /// Away from the prefix's worker, over the bound.
    Spill,
}

/// The most load a worker may carry after taking a request, when the pool
/// carries `total` (this request included) over `workers`: `max_imbalance`
/// times the average, rounded down, so no worker ends above the configured
/// multiple of the mean (rounding up let 12 requests on 4 workers land
/// 4/4/4/0: 1.33x). It never drops below the average rounded up, so some
/// worker always has room (`workers × bound ≥ total`).
fn affinity_bound(max_imbalance: f64, total: u64, workers: u64) -> u64 {
    let workers = workers.max(1);
    // The epsilon keeps 1.2 × 5 / 2 = 2.9999999999999996 from flooring to 2.
    let scaled = (max_imbalance * total as f64 / workers as f64 + 1e-9).floor() as u64;
    scaled.max(total.div_ceil(workers)).max(1)
}

/// A reserved in-flight slot on a worker; released on drop, on every path.
/// When the request is the breaker's half-open probe, dropping it also frees
/// the probe slot if the request settled nothing (its client left), so an
/// abandoned probe cannot keep the worker out for good.
#[derive(Debug)]
pub struct Reservation {
    pub index: usize,
    pub worker: Arc<Worker>,
    /// The half-open probe ticket, 0 when this request is not the probe.
    probe: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.worker.release_probe(self.probe);
        self.worker.end_request();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn model(n: usize, extra: &str) -> ModelConfig {
        let workers: Vec<String> = (0..n)
            .map(|i| format!("\"http://127.0.0.1:{}\"", 9000 + i))
            .collect();
        let text = format!(
            "[[models]]\nname = \"m\"\nworkers = [{}]\n{extra}\n",
            workers.join(",")
        );
        Config::parse(&text).unwrap().models.remove(0)
    }

    fn pool(n: usize, extra: &str) -> (WorkerPool, WorkerRegistry) {
        let registry = WorkerRegistry::default();
        (WorkerPool::new(&model(n, extra), &registry), registry)
    }

    #[test]
    fn burst_spreads_evenly() {
        let (p, _r) = pool(4, "");
        let held: Vec<_> = (0..100).map(|_| p.pick(&[], None).unwrap()).collect();
        for m in &p.members {
            assert_eq!(m.worker.in_flight(), 25);
        }
        drop(held);
        for m in &p.members {
            assert_eq!(m.worker.in_flight(), 0);
        }
    }

    #[test]
    fn concurrent_burst_spreads_evenly() {
        let (p, _r) = pool(4, "");
        let p = Arc::new(p);
        let held: Vec<Vec<Reservation>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let p = Arc::clone(&p);
                    s.spawn(move || (0..25).map(|_| p.pick(&[], None).unwrap().0).collect())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for m in &p.members {
            assert_eq!(m.worker.in_flight(), 25);
        }
        drop(held);
    }

    #[test]
    fn skips_unavailable_and_excluded() {
        let (p, _r) = pool(3, "");
        p.members[0].worker.record_check(false, 1, 1);
        for _ in 0..20 {
            let (r, reason) = p.pick(&[1], None).unwrap();
            assert_eq!(r.index, 2);
            assert_eq!(reason, PickReason::Retry);
        }
        p.members[2].worker.record_check(false, 1, 1);
        assert!(p.pick(&[1], None).is_none());
    }

    #[test]
    fn registry_shares_workers_across_pools() {
        let (p, r) = pool(2, "");
        let again = r.get_or_create(
            &WorkerSpec {
                url: "http://127.0.0.1:9000".into(),
                addr: "127.0.0.1:9000".parse().unwrap(),
            },
            false,
        );
        assert!(Arc::ptr_eq(&again, &p.members[0].worker));
    }

    #[test]
    fn ties_break_without_bias() {
        let (p, _r) = pool(4, "");
        let mut counts = [0u32; 4];
        for _ in 0..4000 {
            let (r, _) = p.pick(&[], None).unwrap();
            counts[r.index] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn foreign_load_steers_away() {
        let (p, _r) = pool(2, "");
        // Another gateway replica keeps worker 0 busy.
        p.members[0]
            .worker
            .record_load(p.members[0].worker.load_mark(), 10, 0, 0.2);
        for _ in 0..10 {
            let (r, _) = p.pick(&[], None).unwrap();
            assert_eq!(r.index, 1);
        }
    }

    #[test]
    fn deep_queues_are_skipped_while_others_have_room() {
        let (p, _r) = pool(2, "max_waiting = 5");
        p.members[0]
            .worker
            .record_load(p.members[0].worker.load_mark(), 0, 8, 0.0);
        let held: Vec<_> = (0..10).map(|_| p.pick(&[], None).unwrap()).collect();
        assert!(held.iter().all(|(r, _)| r.index == 1));
        drop(held);
        p.members[1]
            .worker
            .record_load(p.members[1].worker.load_mark(), 0, 9, 0.0);
        // Both queues are deep: fall back to all available workers.
        assert!(p.pick(&[], None).is_some());
    }

    #[test]
    fn affinity_keeps_a_prefix_on_one_worker_until_it_is_over_the_bound() {
        let (p, _r) = pool(4, "routing = \"prefix_affinity\"");
        let (first, reason) = p.pick(&[], Some(42)).unwrap();
        assert_eq!(reason, PickReason::AffinityHit);
        let home = first.index;
        drop(first);
        for _ in 0..20 {
            let (r, reason) = p.pick(&[], Some(42)).unwrap();
            assert_eq!((r.index, reason), (home, PickReason::AffinityHit));
        }
        // Hold requests with the same prefix: the home worker takes them up
        // to 1.25x the average, then they spill.
        let held: Vec<_> = (0..40).map(|_| p.pick(&[], Some(42)).unwrap()).collect();
        let spills = held
            .iter()
            .filter(|(_, r)| *r == PickReason::AffinitySpill)
            .count();
        assert!(spills > 0);
        let loads: Vec<u32> = p.members.iter().map(|m| m.worker.in_flight()).collect();
        let max = *loads.iter().max().unwrap() as f64;
        let mean = 40.0 / 4.0;
        assert!(max / mean <= 1.25, "{loads:?}");
    }

    #[test]
    fn a_concurrent_same_prefix_burst_stays_within_the_bound() {
        let (p, _r) = pool(4, "routing = \"prefix_affinity\"");
        let p = Arc::new(p);
        let held: Vec<Vec<Reservation>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let p = Arc::clone(&p);
                    s.spawn(move || (0..25).map(|_| p.pick(&[], Some(7)).unwrap().0).collect())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let loads: Vec<u32> = p.members.iter().map(|m| m.worker.in_flight()).collect();
        assert_eq!(loads.iter().sum::<u32>(), 100);
        // 1.25 x the mean of 25.
        assert!(loads.iter().all(|&l| l <= 31), "{loads:?}");
        drop(held);
    }

    #[test]
    fn a_spilled_prefix_stays_where_it_spilled_while_its_home_is_busy() {
        let (p, _r) = pool(4, "routing = \"prefix_affinity\"");
        let key = 0x5eed_u64;
        let (first, reason) = p.pick(&[], Some(key)).unwrap();
        assert_eq!(reason, PickReason::AffinityHit);
        let home = first.index;
        // Pile the prefix onto its home until a request spills.
        let mut held = vec![first];
        let spilled_to = loop {
            let (r, reason) = p.pick(&[], Some(key)).unwrap();
            let index = r.index;
            held.push(r);
            if reason == PickReason::AffinitySpill {
                break index;
            }
            assert_eq!(index, home);
        };
        assert_ne!(spilled_to, home);
        // The pressure eases, but the home still has a request: the prefix
        // keeps going where it spilled to (its cache is there now), and it is
        // counted as a hit.
        let keep = held.iter().position(|r| r.index == home).unwrap();
        let busy_home = held.swap_remove(keep);
        drop(held);
        for _ in 0..5 {
            let (r, reason) = p.pick(&[], Some(key)).unwrap();
            assert_eq!((r.index, reason), (spilled_to, PickReason::AffinityHit));
        }
        // Home idle: the prefix goes home and stays there.
        drop(busy_home);
        let (r, reason) = p.pick(&[], Some(key)).unwrap();
        assert_eq!((r.index, reason), (home, PickReason::AffinityHit));
        assert_eq!(
            p.spills.as_ref().unwrap().get(key),
            None,
            "the spill is forgotten"
        );
        drop(r);
    }

    #[test]
    fn affinity_bound_stays_within_the_imbalance_and_leaves_room() {
        // 12 requests on 4 workers: 3 each at most (1.25 x 3 = 3.75).
        assert_eq!(affinity_bound(1.25, 12, 4), 3);
        assert_eq!(affinity_bound(1.25, 33, 4), 10);
        assert_eq!(affinity_bound(1.2, 5, 2), 3);
        for workers in 1..=8u64 {
            for total in 1..=200u64 {
                for c in [1.0, 1.1, 1.25, 1.5, 2.0] {
                    let b = affinity_bound(c, total, workers);
                    assert!(b * workers >= total, "no room: {c} {total} {workers}");
                    let mean = total as f64 / workers as f64;
                    assert!(b as f64 <= (c * mean).max(mean.ceil()) + 1e-6);
                }
            }
        }
    }
}
