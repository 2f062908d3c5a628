//! GCRA (the generic cell rate algorithm) with weighted costs and refunds.
//!
//! One number per limit, the "theoretical arrival time" (TAT): the moment
//! the bucket would be full again if nothing else came. A request costing
//! `c` units moves it `c × interval` later; it is allowed while the TAT stays
//! within `window` of now. So a key with 600 requests per minute may spend
//! all 600 at once and then one every 100 ms. The same arithmetic runs in
//! memory (here, lock-free on one atomic) and inside Redis (a Lua script),
//! so both stores enforce the same limits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The limit every quota here is expressed over.
pub const WINDOW: Duration = Duration::from_secs(60);

/// What a limit looks like after a decision, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: u64,
    pub remaining: u64,
    /// Until the budget is whole again.
    pub reset: Duration,
}

/// The result of trying to spend from a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    Allowed(Window),
    /// Denied; retry after the given time.
    Denied {
        retry_after: Duration,
        window: Window,
    },
}

/// Per-unit spacing in nanoseconds for `per_window` units per [`WINDOW`].
pub fn interval_ns(per_window: u64) -> u64 {
    let window = WINDOW.as_nanos() as u64;
    window.div_ceil(per_window.max(1)).max(1)
}

/// The pure decision: given the stored TAT and now (both in ns on one
/// clock), spend `cost` units of a `limit`-per-window budget.
/// Returns the decision and the TAT to store (None = leave it).
pub fn decide(tat: u64, now: u64, cost: u64, limit: u64) -> (Spend, Option<u64>) {
    let interval = interval_ns(limit);
    let window = WINDOW.as_nanos() as u64;
    let base = tat.max(now);
    let new = base.saturating_add(cost.saturating_mul(interval));
    let used = new - now;
    if used > window {
        let current = base - now;
        let w = Window {
            limit,
            remaining: window.saturating_sub(current) / interval,
            reset: Duration::from_nanos(current),
        };
        return (
            Spend::Denied {
                retry_after: Duration::from_nanos(used - window),
                window: w,
            },
            None,
        );
    }
    let w = Window {
        limit,
        remaining: (window - used) / interval,
        reset: Duration::from_nanos(used),
    };
    (Spend::Allowed(w), Some(new))
}

/// Move the TAT by `delta` units (negative = refund), never below now: an
/// unused budget does not accumulate beyond a full bucket.
pub fn adjust(tat: u64, now: u64, delta: i64, limit: u64) -> u64 {
    let interval = interval_ns(limit);
    let base = tat.max(now);
    let shift = delta.unsigned_abs().saturating_mul(interval);
    if delta >= 0 {
        base.saturating_add(shift)
    } else {
        base.saturating_sub(shift).max(now)
    }
}

/// An in-memory GCRA limit on one atomic: no lock, so a request never waits
/// on another request, a reload or a metrics scrape.
#[derive(Debug)]
pub struct AtomicGcra {
    limit: u64,
    epoch: Instant,
    /// TAT in ns since `epoch`.
    tat: AtomicU64,
}

impl AtomicGcra {
    pub fn new(limit: u64) -> AtomicGcra {
        AtomicGcra {
            limit,
            epoch: Instant::now(),
            tat: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn spend(&self, cost: u64) -> Spend {
        let now = self.now();
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let (spend, store) = decide(tat, now, cost, self.limit);
            let Some(new) = store else { return spend };
            match self
                .tat
                .compare_exchange_weak(tat, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return spend,
                Err(current) => tat = current,
            }
        }
    }

    pub fn adjust(&self, delta: i64) {
        let now = self.now();
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(adjust(tat, now, delta, self.limit))
            });
    }

    /// The budget as it stands, without spending.
    pub fn window(&self) -> Window {
        match self.peek() {
            Spend::Allowed(w) | Spend::Denied { window: w, .. } => w,
        }
    }

    fn peek(&self) -> Spend {
        decide(self.tat.load(Ordering::Acquire), self.now(), 0, self.limit).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_full_bucket_then_the_steady_rate() {
        // 60 per minute: 60 at once, then one per second.
        let mut tat = 0;
        for i in 0..60 {
            let (spend, store) = decide(tat, 0, 1, 60);
            let Spend::Allowed(w) = spend else {
                panic!("request {i} denied")
            };
            assert_eq!(w.remaining, 59 - i);
            tat = store.unwrap();
        }
        let (spend, store) = decide(tat, 0, 1, 60);
        assert!(store.is_none());
        let Spend::Denied {
            retry_after,
            window,
        } = spend
        else {
            panic!()
        };
        assert_eq!(retry_after, Duration::from_secs(1));
        assert_eq!(window.remaining, 0);
        // One second later, one more.
        assert!(matches!(decide(tat, S, 1, 60).0, Spend::Allowed(_)));
    }

    #[test]
    fn weighted_costs_and_refunds() {
        // 1000 tokens per minute: reserve 800, then 300 does not fit.
        let (spend, store) = decide(0, 0, 800, 1000);
        assert!(matches!(spend, Spend::Allowed(w) if w.remaining == 200));
        let tat = store.unwrap();
        assert!(matches!(decide(tat, 0, 300, 1000).0, Spend::Denied { .. }));
        // The answer used 100: refund 700, and 300 fits again.
        let tat = adjust(tat, 0, -700, 1000);
        assert!(matches!(decide(tat, 0, 300, 1000).0, Spend::Allowed(w) if w.remaining == 600));
        // A refund never makes more than a full bucket.
        assert_eq!(adjust(tat, 0, -1_000_000, 1000), 0);
        // Using more than reserved pushes later.
        assert!(adjust(tat, 0, 50, 1000) > tat);
    }

    #[test]
    fn atomic_gcra_counts_concurrent_spends_exactly() {
        let g = std::sync::Arc::new(AtomicGcra::new(1000));
        let allowed = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..500 {
                        if matches!(g.spend(1), Spend::Allowed(_)) {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        // 1000 in the bucket, plus at most a few refilled during the run.
        let n = allowed.load(Ordering::Relaxed);
        assert!((1000..1010).contains(&n), "{n}");
    }
}
