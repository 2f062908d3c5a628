//! One vLLM server and everything the gateway knows about it: requests in
//! flight through this gateway, load reported by the worker itself, active
//! health, and the passive circuit breaker.
//!
//! All state is atomics: the request path reads and updates it without a lock
//! a reload or a health check could hold.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

pub use crate::config::BreakerPolicy;
use crate::config::WorkerSpec;
use crate::upstream::ConnectionPool;

/// Health as the rest of the gateway sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Takes traffic.
    Healthy,
    /// Failed its active checks (`unhealthy_after` in a row).
    Unhealthy,
    /// Ejected by the circuit breaker after repeated request failures.
    Ejected,
    /// The ejection ran out: exactly one request may probe the worker.
    HalfOpen,
}

impl WorkerState {
    pub fn label(self) -> &'static str {
        match self {
            WorkerState::Healthy => "healthy",
            WorkerState::Unhealthy => "unhealthy",
            WorkerState::Ejected => "ejected",
            WorkerState::HalfOpen => "half_open",
        }
    }
}

/// Where the count of ended requests stood when a load scrape began.
#[derive(Debug, Clone, Copy)]
pub struct LoadMark {
    released: u64,
}

/// One vLLM server.
#[derive(Debug)]
pub struct Worker {
    pub url: Arc<str>,
    pub addr: SocketAddr,
    /// Monotonic reference for the nanosecond timestamps below.
    epoch: Instant,
    pub(super) in_flight: AtomicU32,
    /// Requests through this gateway that have ended, ever: with the live
    /// count it bounds what the gateway had in flight at any past moment.
    released: AtomicU64,

    // Active checks.
    check_healthy: AtomicBool,
    check_failures: AtomicU32,
    check_successes: AtomicU32,
    /// Has passed at least one check (or was trusted from the start).
    ever_passed: AtomicBool,

    // Passive checks: the circuit breaker.
    request_failures: AtomicU32,
    ejections: AtomicU32,
    /// While > now: ejected. 0 = closed.
    ejected_until_ns: AtomicU64,
    /// The ticket of the half-open probe request in flight; 0 = none.
    probe: AtomicU64,
    /// Source of probe tickets.
    probe_tickets: AtomicU64,

    // Load the worker reports on its /metrics.
    remote_running: AtomicU32,
    remote_waiting: AtomicU32,
    /// KV-cache usage in thousandths (vllm:kv_cache_usage_perc × 1000).
    kv_milli: AtomicU32,
    /// At most what this gateway had in flight when the worker counted its
    /// load, to separate our requests from other replicas' in its totals.
    in_flight_at_scrape: AtomicU32,

    /// `max_model_len` per served model, from its `/v1/models`; read on
    /// every chat request, so swapped whole rather than locked.
    max_model_len: ArcSwap<foldhash::HashMap<String, u64>>,
    /// Idle connections for requests.
    pub connections: ConnectionPool,
    /// Idle connections for health checks and load polls, kept apart: they
    /// are opened on the background runtime, and a request must never wait
    /// on another runtime's reactor.
    pub probes: ConnectionPool,
}

impl Worker {
    pub fn new(spec: &WorkerSpec) -> Worker {
        Worker {
            url: Arc::from(spec.url.as_str()),
            addr: spec.addr,
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            released: AtomicU64::new(0),
            // Optimistic until the first check says otherwise: a gateway
            // restarted under load must not refuse traffic for a whole check
            // interval. Workers that join later (discovery) are created
            // unhealthy instead, see `new_unchecked`.
            check_healthy: AtomicBool::new(true),
            check_failures: AtomicU32::new(0),
            check_successes: AtomicU32::new(0),
            ever_passed: AtomicBool::new(true),
            request_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ns: AtomicU64::new(0),
            probe: AtomicU64::new(0),
            probe_tickets: AtomicU64::new(0),
            remote_running: AtomicU32::new(0),
            remote_waiting: AtomicU32::new(0),
            kv_milli: AtomicU32::new(0),
            in_flight_at_scrape: AtomicU32::new(0),
            max_model_len: ArcSwap::from_pointee(foldhash::HashMap::default()),
            connections: ConnectionPool::default(),
            probes: ConnectionPool::default(),
        }
    }

    /// A worker that must pass a health check before it takes traffic
    /// (discovered addresses: a new pod may not be serving yet).
    pub fn new_unchecked(spec: &WorkerSpec) -> Worker {
        let w = Worker::new(spec);
        w.check_healthy.store(false, Ordering::Relaxed);
        w.ever_passed.store(false, Ordering::Relaxed);
        w
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A request through this gateway ended (its reservation dropped).
    pub(super) fn end_request(&self) {
        self.released.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Taken just before asking the worker for its load; see
    /// [`Worker::record_load`].
    pub fn load_mark(&self) -> LoadMark {
        LoadMark {
            released: self.released.load(Ordering::Acquire),
        }
    }

    pub fn state(&self) -> WorkerState {
        if !self.check_healthy.load(Ordering::Relaxed) {
            return WorkerState::Unhealthy;
        }
        let until = self.ejected_until_ns.load(Ordering::Acquire);
        if until == 0 {
            WorkerState::Healthy
        } else if self.now_ns() < until {
            WorkerState::Ejected
        } else {
            WorkerState::HalfOpen
        }
    }

    /// Whether a request may be sent now. In the half-open state only one
    /// probe request is let through until it settles.
    pub fn is_available(&self) -> bool {
        match self.state() {
            WorkerState::Healthy => true,
            WorkerState::HalfOpen => self.probe.load(Ordering::Acquire) == 0,
            WorkerState::Unhealthy | WorkerState::Ejected => false,
        }
    }

    /// Called on the worker picked for a request: in the half-open state it
    /// claims the single probe slot. `None` if another request took it first;
    /// otherwise the probe ticket (`Some(0)`: not a probe), which the request
    /// hands back through [`Worker::release_probe`] when it ends.
    pub fn claim(&self) -> Option<u64> {
        if self.state() != WorkerState::HalfOpen {
            return Some(0);
        }
        let ticket = self.probe_tickets.fetch_add(1, Ordering::Relaxed) + 1;
        self.probe
            .compare_exchange(0, ticket, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| ticket)
    }

    /// The request holding probe `ticket` ended. If it settled nothing (its
    /// client left, or it ended on a path that judges neither the worker nor
    /// the request), free the slot so the next request probes; otherwise the
    /// success or failure already did. A stale ticket changes nothing, so a
    /// late release cannot free a newer probe's slot.
    pub fn release_probe(&self, ticket: u64) {
        if ticket != 0 {
            let _ = self
                .probe
                .compare_exchange(ticket, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.state() == WorkerState::Healthy
    }

    /// Record an active check result; returns true when the checked health
    /// changed.
    pub fn record_check(&self, ok: bool, unhealthy_after: u32, healthy_after: u32) -> bool {
        if ok {
            self.check_failures.store(0, Ordering::Relaxed);
            let n = self.check_successes.fetch_add(1, Ordering::Relaxed) + 1;
            // A newly discovered worker joins on its first passing check; a
            // worker that was ejected needs `healthy_after` in a row.
            let first = !self.ever_passed.swap(true, Ordering::AcqRel);
            if (first || n >= healthy_after) && !self.check_healthy.swap(true, Ordering::AcqRel) {
                return true;
            }
        } else {
            self.check_successes.store(0, Ordering::Relaxed);
            let n = self.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= unhealthy_after && self.check_healthy.swap(false, Ordering::AcqRel) {
                return true;
            }
        }
        false
    }

    /// A request to this worker succeeded: closes the breaker.
    pub fn record_success(&self) {
        self.request_failures.store(0, Ordering::Relaxed);
        if self.ejected_until_ns.load(Ordering::Relaxed) != 0 {
            self.ejected_until_ns.store(0, Ordering::Release);
            self.ejections.store(0, Ordering::Relaxed);
            tracing::info!(worker = %self.url, "worker recovered; circuit closed");
        }
        self.probe.store(0, Ordering::Release);
    }

    /// A request to this worker failed (connect, reset, timeout, 5xx).
    /// Returns true if this failure ejected the worker.
    pub fn record_failure(&self, policy: &BreakerPolicy) -> bool {
        let was_probe = self.probe.swap(0, Ordering::AcqRel) != 0;
        let n = self.request_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if !was_probe && n < policy.failures_to_eject {
            return false;
        }
        let ejections = self.ejections.fetch_add(1, Ordering::Relaxed);
        let factor = 1u32.checked_shl(ejections.min(20)).unwrap_or(u32::MAX);
        let ejection = policy
            .base_ejection
            .saturating_mul(factor)
            .min(policy.max_ejection);
        let until = self
            .now_ns()
            .saturating_add(u64::try_from(ejection.as_nanos()).unwrap_or(u64::MAX));
        self.ejected_until_ns.store(until.max(1), Ordering::Release);
        self.request_failures.store(0, Ordering::Relaxed);
        tracing::warn!(
            worker = %self.url,
            ejection_s = ejection.as_secs_f64(),
            "worker ejected after repeated failures"
        );
        true
    }

    /// Store load figures scraped from the worker's /metrics; `mark` was
    /// taken before the scrape was sent.
    ///
    /// The worker counted our requests at some moment during the scrape, so
    /// reading our in-flight count when the answer is back is not enough:
    /// requests that ended in between were in the worker's count but not in
    /// ours, and would pass for another replica's load until the next poll
    /// (after a burst, up to the whole burst, steering traffic away from a
    /// worker that is in fact idle). Our count now plus the requests that
    /// ended since the mark bounds what we had there at that moment, so the
    /// foreign load derived from it is never our own.
    pub fn record_load(&self, mark: LoadMark, running: u32, waiting: u32, kv_usage: f64) {
        let ended = self
            .released
            .load(Ordering::Acquire)
            .saturating_sub(mark.released);
        let ours = u64::from(self.in_flight()).saturating_add(ended);
        self.remote_running.store(running, Ordering::Relaxed);
        self.remote_waiting.store(waiting, Ordering::Relaxed);
        let kv = (kv_usage.clamp(0.0, 1.0) * 1000.0).round() as u32;
        self.kv_milli.store(kv, Ordering::Relaxed);
        self.in_flight_at_scrape
            .store(u32::try_from(ours).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    pub fn remote_waiting(&self) -> u32 {
        self.remote_waiting.load(Ordering::Relaxed)
    }

    pub fn kv_milli(&self) -> u32 {
        self.kv_milli.load(Ordering::Relaxed)
    }

    /// Load the worker carries for other clients (other gateway replicas):
    /// its own running + waiting count at the last scrape, minus what this
    /// gateway had in flight there at that moment.
    ///
    /// The worker counts engine requests, and vLLM fans a request with `n`
    /// choices or a batch of embedding inputs out into one per choice or
    /// input; this gateway counts HTTP requests. Our own fan-out requests in
    /// flight at a scrape therefore show up here as extra foreign load until
    /// the next poll (a batch of 2 embedding inputs left 1 behind in
    /// tests/endpoints.rs).
    pub fn foreign_load(&self) -> u32 {
        let total = self
            .remote_running
            .load(Ordering::Relaxed)
            .saturating_add(self.remote_waiting.load(Ordering::Relaxed));
        total.saturating_sub(self.in_flight_at_scrape.load(Ordering::Relaxed))
    }

    /// What routing compares: this gateway's live in-flight count (exact at
    /// pick time) plus the other clients' load from the last scrape.
    pub fn effective_load(&self) -> u32 {
        self.in_flight().saturating_add(self.foreign_load())
    }

    pub fn max_model_len(&self, model: &str) -> Option<u64> {
        self.max_model_len.load().get(model).copied()
    }

    pub fn set_max_model_lens(&self, lens: HashMap<String, u64>) {
        let lens: foldhash::HashMap<String, u64> = lens.into_iter().collect();
        if **self.max_model_len.load() != lens {
            self.max_model_len.store(Arc::new(lens));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker() -> Worker {
        Worker::new(&WorkerSpec {
            url: "http://127.0.0.1:1".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
        })
    }

    const POLICY: BreakerPolicy = BreakerPolicy {
        failures_to_eject: 3,
        base_ejection: Duration::from_millis(40),
        max_ejection: Duration::from_millis(100),
    };

    #[test]
    fn active_checks_need_consecutive_results() {
        let w = worker();
        assert!(!w.record_check(false, 2, 2));
        assert!(w.is_healthy());
        assert!(w.record_check(false, 2, 2));
        assert_eq!(w.state(), WorkerState::Unhealthy);
        assert!(!w.record_check(true, 2, 2));
        assert!(
            !w.record_check(false, 2, 2),
            "a failure resets the success run"
        );
        assert!(!w.record_check(true, 2, 2));
        assert!(w.record_check(true, 2, 2));
        assert!(w.is_healthy());
    }

    #[test]
    fn a_discovered_worker_joins_after_one_passing_check() {
        let w = Worker::new_unchecked(&WorkerSpec {
            url: "http://127.0.0.1:2".into(),
            addr: "127.0.0.1:2".parse().unwrap(),
        });
        assert_eq!(w.state(), WorkerState::Unhealthy);
        assert!(w.record_check(true, 2, 2));
        assert!(w.is_healthy());
    }

    #[test]
    fn breaker_ejects_then_half_opens_with_one_probe() {
        let w = worker();
        assert!(!w.record_failure(&POLICY));
        assert!(!w.record_failure(&POLICY));
        w.record_success();
        assert!(!w.record_failure(&POLICY), "success resets the count");
        assert!(!w.record_failure(&POLICY));
        assert!(w.record_failure(&POLICY));
        assert_eq!(w.state(), WorkerState::Ejected);
        assert!(!w.is_available());
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(w.state(), WorkerState::HalfOpen);
        assert!(w.is_available());
        let ticket = w.claim().unwrap();
        assert_ne!(ticket, 0, "a probe");
        assert!(!w.is_available(), "only one probe at a time");
        assert_eq!(w.claim(), None);
        // The probe fails: ejected again, for twice as long.
        assert!(w.record_failure(&POLICY));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(w.state(), WorkerState::Ejected, "second ejection is longer");
        std::thread::sleep(Duration::from_millis(50));
        assert!(w.claim().is_some_and(|t| t != 0));
        w.record_success();
        assert_eq!(w.claim(), Some(0), "closed: not a probe");
        assert_eq!(w.state(), WorkerState::Healthy);
    }

    #[test]
    fn an_unsettled_probe_frees_its_slot_and_a_stale_ticket_does_not() {
        let w = worker();
        for _ in 0..3 {
            w.record_failure(&POLICY);
        }
        std::thread::sleep(Duration::from_millis(50));
        let first = w.claim().unwrap();
        assert!(!w.is_available());
        // Its client left: nothing was learned; the next request may probe.
        w.release_probe(first);
        assert!(w.is_available());
        let second = w.claim().unwrap();
        w.release_probe(first);
        assert!(!w.is_available(), "an old ticket cannot free a new probe");
        w.release_probe(second);
        assert_eq!(w.state(), WorkerState::HalfOpen);
        assert!(w.is_available());
    }

    #[test]
    fn requests_that_end_during_a_scrape_are_not_taken_for_foreign_load() {
        let w = worker();
        w.in_flight.store(5, Ordering::Relaxed);
        let mark = w.load_mark();
        // The worker counts our 5 requests; they all end before its answer
        // is back.
        for _ in 0..5 {
            w.end_request();
        }
        w.record_load(mark, 5, 0, 0.1);
        assert_eq!(w.foreign_load(), 0);
        // Another replica's 2 requests still count.
        w.in_flight.store(1, Ordering::Relaxed);
        let mark = w.load_mark();
        w.record_load(mark, 3, 0, 0.1);
        assert_eq!(w.foreign_load(), 2);
    }

    #[test]
    fn foreign_load_excludes_our_own_requests() {
        let w = worker();
        w.in_flight.store(3, Ordering::Relaxed);
        w.record_load(w.load_mark(), 5, 2, 0.5);
        assert_eq!(w.foreign_load(), 4);
        assert_eq!(w.effective_load(), 7);
        assert_eq!(w.kv_milli(), 500);
    }
}
