//! The simulated engine: admission (running vs waiting), KV-cache accounting, the prefix cache
//! and the counters behind `/metrics` and `SimStats`.
//!
//! As in vLLM, at most `max_num_seqs` sequences run at once and the rest wait in FIFO order
//! (vLLM queues without limit by default, ../shared/reference/vllm.md §8). A request with `n`
//! choices is `n` sequences, as vLLM V1 fans it out into `n` child requests. The queue is a fair
//! tokio semaphore: a waiter is served in arrival order and leaves the queue the moment its
//! client goes away (the acquire future is dropped).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use tokio::sync::{Semaphore, SemaphorePermit};

use super::http::{Conn, Gone};
use super::prefix_cache::PrefixCache;
use super::text::Finish;
use super::tokenizer::PromptDigest;
use super::SimStats;

/// Monotonic counters and gauges, all lock-free.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub completed: AtomicU64,
    pub aborted: AtomicU64,
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    pub kv_tokens: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub open_connections: AtomicU64,
    pub prefix_cache_queries: AtomicU64,
    pub prefix_cache_hits: AtomicU64,
    pub errors_injected: AtomicU64,
    pub finished_stop: AtomicU64,
    pub finished_length: AtomicU64,
    pub finished_abort: AtomicU64,
    pub finished_error: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> SimStats {
        SimStats {
            requests: self.requests.load(Relaxed),
            completed: self.completed.load(Relaxed),
            aborted: self.aborted.load(Relaxed),
            running: self.running.load(Relaxed),
            waiting: self.waiting.load(Relaxed),
            connections_accepted: self.connections_accepted.load(Relaxed),
            open_connections: self.open_connections.load(Relaxed),
            prefix_cache_queries: self.prefix_cache_queries.load(Relaxed),
            prefix_cache_hits: self.prefix_cache_hits.load(Relaxed),
            errors_injected: self.errors_injected.load(Relaxed),
        }
    }

    pub(crate) fn fault(&self) {
        self.errors_injected.fetch_add(1, Relaxed);
    }
}

/// Admission control and caches of one simulated worker.
#[derive(Debug)]
pub(crate) struct Engine {
    pub counters: Counters,
    slots: Semaphore,
    max_num_seqs: usize,
    kv_capacity: u64,
    prefix: Option<Mutex<PrefixCache>>,
}

impl Engine {
    pub(crate) fn new(max_num_seqs: usize, kv_capacity: u64, prefix_blocks: usize) -> Self {
        let max_num_seqs = max_num_seqs.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            counters: Counters::default(),
            slots: Semaphore::new(max_num_seqs),
            max_num_seqs,
            kv_capacity: kv_capacity.max(1),
            prefix: (prefix_blocks > 0).then(|| Mutex::new(PrefixCache::new(prefix_blocks))),
        }
    }

    pub(crate) fn prefix_cache_enabled(&self) -> bool {
        self.prefix.is_some()
    }

    /// KV-cache use as vLLM reports it: a 0..=1 fraction.
    pub(crate) fn kv_usage(&self) -> f64 {
        let used = self.counters.kv_tokens.load(Relaxed) as f64;
        (used / self.kv_capacity as f64).min(1.0)
    }

    /// Starts tracking a generation request; if dropped before [`Tracker::finish`], the request
    /// counts as aborted.
    pub(crate) fn track(&self, seqs: u32) -> Tracker<'_> {
        Tracker {
            c: &self.counters,
            seqs: u64::from(seqs),
            done: false,
        }
    }

    /// Waits (FIFO) for `seqs` running slots while watching the client; on admission reserves
    /// `kv_tokens` and looks the prompts up in the prefix cache.
    ///
    /// A sequence's KV footprint (prompt + answer) is reserved whole on admission; vLLM grows it
    /// block by block, but the gauge only has to rise and fall with load.
    pub(crate) async fn admit<'a>(
        &'a self,
        conn: &mut Conn,
        seqs: u32,
        kv_tokens: u64,
        prompts: &[&PromptDigest],
    ) -> Result<Running<'a>, Gone> {
        let want = seqs.min(u32::try_from(self.max_num_seqs).unwrap_or(u32::MAX));
        let waiting = GaugeGuard::add(&self.counters.waiting, u64::from(seqs));
        let permit = conn
            .watch(self.slots.acquire_many(want))
            .await?
            // The semaphore is never closed; treat the impossible as the client being gone.
            .map_err(|_| Gone)?;
        drop(waiting);
        let running = GaugeGuard::add(&self.counters.running, u64::from(seqs));
        let kv = GaugeGuard::add(&self.counters.kv_tokens, kv_tokens);
        let mut cached = 0u32;
        for p in prompts {
            cached = cached.saturating_add(self.lookup_prefix(p));
        }
        Ok(Running {
            _permit: permit,
            _running: running,
            _kv: kv,
            cached_tokens: cached,
        })
    }

    /// Counts a prefix-cache query for `p` and returns the cached (hit) tokens.
    fn lookup_prefix(&self, p: &PromptDigest) -> u32 {
        let Some(cache) = &self.prefix else {
            return 0;
        };
        let hit = match cache.lock() {
            Ok(mut c) => c.lookup_and_insert(&p.block_hashes, p.tokens),
            Err(poisoned) => poisoned
                .into_inner()
                .lookup_and_insert(&p.block_hashes, p.tokens),
        };
        self.counters
            .prefix_cache_queries
            .fetch_add(u64::from(p.tokens), Relaxed);
        self.counters
            .prefix_cache_hits
            .fetch_add(u64::from(hit), Relaxed);
        hit
    }
}

/// A request's claim on running slots and KV; released on drop.
pub(crate) struct Running<'a> {
    _permit: SemaphorePermit<'a>,
    _running: GaugeGuard<'a>,
    _kv: GaugeGuard<'a>,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: u32,
}

/// Adds to a gauge now and takes the same amount off when dropped (also on cancellation).
struct GaugeGuard<'a> {
    gauge: &'a AtomicU64,
    amount: u64,
}

impl<'a> GaugeGuard<'a> {
    fn add(gauge: &'a AtomicU64, amount: u64) -> Self {
        gauge.fetch_add(amount, Relaxed);
        Self { gauge, amount }
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.gauge.fetch_sub(self.amount, Relaxed);
    }
}

/// How a tracked request ended, when it did not simply vanish.
pub(crate) enum Outcome<'a> {
    /// Answered in full: per-choice finish reasons and completion tokens.
    Completed {
        finishes: &'a [Finish],
        prompt_tokens: u32,
        completion_tokens: u64,
    },
    /// Ended by an injected fault (the simulator's choice, not the client's).
    Faulted,
}

/// Counts one generation request's outcome exactly once.
pub(crate) struct Tracker<'a> {
    c: &'a Counters,
    seqs: u64,
    done: bool,
}

impl Tracker<'_> {
    pub(crate) fn finish(mut self, outcome: Outcome<'_>) {
        self.done = true;
        match outcome {
            Outcome::Completed {
                finishes,
                prompt_tokens,
                completion_tokens,
            } => {
                self.c.completed.fetch_add(1, Relaxed);
                for f in finishes {
                    match f {
                        Finish::Stop => self.c.finished_stop.fetch_add(1, Relaxed),
                        Finish::Length => self.c.finished_length.fetch_add(1, Relaxed),
                    };
                }
                self.c
                    .prompt_tokens
                    .fetch_add(u64::from(prompt_tokens), Relaxed);
                self.c
                    .generation_tokens
                    .fetch_add(completion_tokens, Relaxed);
            }
            Outcome::Faulted => {
                self.c.finished_error.fetch_add(self.seqs, Relaxed);
            }
        }
    }
}

impl Drop for Tracker<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.c.aborted.fetch_add(1, Relaxed);
            self.c.finished_abort.fetch_add(self.seqs, Relaxed);
        }
    }
}
