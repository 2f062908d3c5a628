//! Per-key rate limits: requests per minute and tokens per minute.
//!
//! Two stores behind one interface. `memory`: each gateway counts alone
//! (requests with `governor`'s GCRA, tokens with the same algorithm on one
//! atomic, since tokens are reserved up front and refunded later, which
//! governor cannot do). `redis`: every replica spends from one budget, each
//! check a single atomic Lua script, so N replicas enforce the limit once,
//! not N times.
//!
//! Tokens are reserved at admission (prompt estimate + the most the answer
//! can produce) and settled when the real usage is known: what was not used
//! is given back, what was used beyond the estimate is charged.

pub mod gcra;
pub mod redis;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};

use governor::clock::{Clock, DefaultClock};

use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::Quota;

use gcra::AtomicGcra;
pub use gcra::{Spend, Window};
use redis::RedisStore;

/// A key's configured budgets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Quotas {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
}

impl Quotas {
    pub fn is_limited(&self) -> bool {
        self.requests_per_minute.is_some() || self.tokens_per_minute.is_some()
    }
}

type RequestLimiter =
    governor::RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// One key's in-memory limits. Kept across reloads while the key's name and
/// quotas are unchanged, so a reload does not hand every key a fresh budget.
pub struct KeyLimiter {
    pub name: Arc<str>,
    pub quotas: Quotas,
    requests: Option<RequestLimiter>,
    tokens: Option<AtomicGcra>,
}

impl std::fmt::Debug for KeyLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyLimiter")
            .field("name", &self.name)
            .field("quotas", &self.quotas)
            .finish()
    }
}

impl KeyLimiter {
    pub fn new(name: &str, quotas: Quotas) -> KeyLimiter {
        KeyLimiter {
            name: Arc::from(name),
            quotas,
            requests: quotas
                .requests_per_minute
                .and_then(NonZeroU32::new)
                .map(|n| governor::RateLimiter::direct(Quota::per_minute(n)).with_middleware()),
            tokens: quotas.tokens_per_minute.map(AtomicGcra::new),
        }
    }
}

/// Which budget ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
}

impl LimitKind {
    pub fn label(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
        }
    }
}

/// The state of a key's budgets after this request's decisions: the
/// `x-ratelimit-*` headers OpenAI sends (chat-completions.md §7.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitStatus {
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
}

impl LimitStatus {
    /// The header pairs, in OpenAI's names, ready for a response head.
    /// Every answer to a limited key carries them, so the values are written
    /// into one buffer and handed out as slices of it: one allocation, where
    /// a value each would take two.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let windows = [
            (self.requests, REQUEST_HEADERS),
            (self.tokens, TOKEN_HEADERS),
        ];
        let mut text = String::with_capacity(96);
        // Where each value ends in `text`, in the order they are written.
        let mut ends = [0usize; 6];
        let mut written = 0;
        let mut int = itoa::Buffer::new();
        for (w, _) in &windows {
            let Some(w) = w else { continue };
            text.push_str(int.format(w.limit));
            ends[written] = text.len();
            text.push_str(int.format(w.remaining));
            ends[written + 1] = text.len();
            write_go_duration(&mut text, w.reset);
            ends[written + 2] = text.len();
            written += 3;
        }
        let text = Bytes::from(text);
        let mut out = Vec::with_capacity(written);
        let (mut start, mut i) = (0, 0);
        for (_, names) in windows.into_iter().filter(|(w, _)| w.is_some()) {
            for name in names {
                // Digits and unit letters only: always a valid value.
                if let Ok(v) = HeaderValue::from_maybe_shared(text.slice(start..ends[i])) {
                    out.push((name, v));
                }
                start = ends[i];
                i += 1;
            }
        }
        out
    }
}

/// `x-ratelimit-{limit,remaining,reset}-requests`.
const REQUEST_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
];
/// `x-ratelimit-{limit,remaining,reset}-tokens`.
const TOKEN_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// A duration the way OpenAI's reset headers write it (Go's format):
/// `20ms`, `1s`, `6m0s`, `1.5s`.
pub fn go_duration(d: Duration) -> String {
    let mut out = String::new();
    write_go_duration(&mut out, d);
    out
}

fn write_go_duration(out: &mut String, d: Duration) {
    use std::fmt::Write;
    let ms = d.as_millis();
    if ms < 1000 {
        out.push_str(itoa::Buffer::new().format(ms));
        out.push_str("ms");
        return;
    }
    let total_s = d.as_secs_f64();
    let minutes = (total_s / 60.0).floor() as u64;
    let secs = total_s - (minutes * 60) as f64;
    if minutes > 0 {
        let _ = write!(out, "{minutes}m");
    }
    if (secs - secs.round()).abs() < 0.0005 {
        let _ = write!(out, "{}s", secs.round() as u64);
    } else {
        let at = out.len();
        let _ = write!(out, "{secs:.3}");
        let kept = out[at..].trim_end_matches('0').len();
        out.truncate(at + kept);
        out.push('s');
    }
}

/// What to do when the shared store cannot answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Let the request through (limits are protection, not billing).
    #[default]
    Allow,
    /// Refuse with 503 until the store is back.
    Deny,
}

/// The outcome of a limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Limited {
        kind: LimitKind,
        retry_after: Duration,
    },
    /// The shared store failed and `on_store_error = "deny"`.
    StoreDown,
}

/// Where budgets live.
pub enum Store {
    Memory,
    Redis(Arc<RedisStore>),
}

/// The rate limiter of one configuration generation.
pub struct RateLimits {
    pub store: Store,
    pub on_store_error: OnStoreError,
}

impl RateLimits {
    pub fn memory() -> RateLimits {
        RateLimits {
            store: Store::Memory,
            on_store_error: OnStoreError::Allow,
        }
    }

    /// Spend one request from the key's request budget.
    pub async fn admit_request(&self, key: &KeyLimiter, status: &mut LimitStatus) -> Verdict {
        let Some(limit) = key.quotas.requests_per_minute else {
            return Verdict::Allowed;
        };
        let spend = match &self.store {
            Store::Memory => match &key.requests {
                Some(limiter) => Ok(governor_spend(limiter, u64::from(limit))),
                None => return Verdict::Allowed,
            },
            Store::Redis(r) => {
                r.spend(&key.name, LimitKind::Requests, 1, u64::from(limit))
                    .await
            }
        };
        self.verdict(spend, LimitKind::Requests, |w| status.requests = Some(w))
    }

    /// Reserve `tokens` from the key's token budget. A reservation larger than
    /// the whole budget is capped to it, so a long answer is never refused
    /// outright; settling charges what was really used.
    pub async fn reserve_tokens(
        &self,
        key: &KeyLimiter,
        tokens: u64,
        status: &mut LimitStatus,
    ) -> (Verdict, u64) {
        let Some(limit) = key.quotas.tokens_per_minute else {
            return (Verdict::Allowed, 0);
        };
        let cost = tokens.min(limit);
        let spend = match &self.store {
            Store::Memory => match &key.tokens {
                Some(g) => Ok(g.spend(cost)),
                None => return (Verdict::Allowed, 0),
            },
            Store::Redis(r) => r.spend(&key.name, LimitKind::Tokens, cost, limit).await,
        };
        let verdict = self.verdict(spend, LimitKind::Tokens, |w| status.tokens = Some(w));
        let reserved = if verdict == Verdict::Allowed { cost } else { 0 };
        (verdict, reserved)
    }

    /// Settle a reservation with the real usage (`used − reserved`; negative
    /// gives tokens back).
    pub async fn settle_tokens(&self, key: &KeyLimiter, delta: i64) {
        let Some(limit) = key.quotas.tokens_per_minute else {
            return;
        };
        if delta == 0 {
            return;
        }
        match &self.store {
            Store::Memory => {
                if let Some(g) = &key.tokens {
                    g.adjust(delta);
                }
            }
            Store::Redis(r) => {
                // A failed refund only makes the limit stricter for a
                // minute; it is logged by the store.
                let _ = r.adjust(&key.name, delta, limit).await;
            }
        }
    }

    fn verdict(
        &self,
        spend: Result<Spend, redis::StoreError>,
        kind: LimitKind,
        record: impl FnOnce(Window),
    ) -> Verdict {
        match spend {
            Ok(Spend::Allowed(w)) => {
                record(w);
                Verdict::Allowed
            }
            Ok(Spend::Denied {
                retry_after,
                window,
            }) => {
                record(window);
                Verdict::Limited { kind, retry_after }
            }
            Err(_) => match self.on_store_error {
                OnStoreError::Allow => Verdict::Allowed,
                OnStoreError::Deny => Verdict::StoreDown,
            },
        }
    }
}

fn governor_spend(limiter: &RequestLimiter, limit: u64) -> Spend {
    // The limiter's own clock: building a new one calibrates a TSC clock
    // (CPUID and timing loops), which under load cost a fifth of the CPU.
    let clock = limiter.clock();
    let interval = Duration::from_nanos(gcra::interval_ns(limit));
    match limiter.check() {
        Ok(snapshot) => {
            let remaining = u64::from(snapshot.remaining_burst_capacity());
            Spend::Allowed(Window {
                limit,
                remaining,
                reset: interval.saturating_mul(
                    u32::try_from(limit - remaining.min(limit)).unwrap_or(u32::MAX),
                ),
            })
        }
        Err(not_until) => {
            let retry_after = not_until.wait_time_from(clock.now());
            Spend::Denied {
                retry_after,
                window: Window {
                    limit,
                    remaining: 0,
                    reset: interval.saturating_mul(u32::try_from(limit).unwrap_or(u32::MAX)),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_name_both_windows_in_openai_order() {
        let w = |limit, remaining, ms| Window {
            limit,
            remaining,
            reset: Duration::from_millis(ms),
        };
        let st = LimitStatus {
            requests: Some(w(60, 59, 1000)),
            tokens: Some(w(150_000, 149_000, 400)),
        };
        let got: Vec<(String, String)> = st
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let want = [
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-tokens", "149000"),
            ("x-ratelimit-reset-tokens", "400ms"),
        ];
        assert_eq!(got.len(), want.len());
        for ((n, v), (wn, wv)) in got.iter().zip(want) {
            assert_eq!((n.as_str(), v.as_str()), (wn, wv));
        }
        assert!(LimitStatus::default().headers().is_empty());
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_millis(61_250)), "1m1.25s");
    }

    #[tokio::test]
    async fn memory_requests_then_429() {
        let limits = RateLimits::memory();
        let key = KeyLimiter::new(
            "k",
            Quotas {
                requests_per_minute: Some(3),
                tokens_per_minute: None,
            },
        );
        for i in 0..3 {
            let mut st = LimitStatus::default();
            assert_eq!(limits.admit_request(&key, &mut st).await, Verdict::Allowed);
            assert_eq!(st.requests.unwrap().remaining, 2 - i);
        }
        let mut st = LimitStatus::default();
        let Verdict::Limited { kind, retry_after } = limits.admit_request(&key, &mut st).await
        else {
            panic!()
        };
        assert_eq!(kind, LimitKind::Requests);
        assert!(retry_after > Duration::from_secs(15) && retry_after <= Duration::from_secs(20));
        assert_eq!(
            st.headers()[0],
            (
                HeaderName::from_static("x-ratelimit-limit-requests"),
                HeaderValue::from_static("3")
            )
        );
    }

    #[tokio::test]
    async fn memory_tokens_reserve_and_refund() {
        let limits = RateLimits::memory();
        let key = KeyLimiter::new(
            "k",
            Quotas {
                requests_per_minute: None,
                tokens_per_minute: Some(1000),
            },
        );
        let mut st = LimitStatus::default();
        assert_eq!(
            limits.reserve_tokens(&key, 900, &mut st).await,
            (Verdict::Allowed, 900)
        );
        assert!(matches!(
            limits.reserve_tokens(&key, 200, &mut st).await.0,
            Verdict::Limited {
                kind: LimitKind::Tokens,
                ..
            }
        ));
        limits.settle_tokens(&key, 100 - 900).await;
        assert_eq!(
            limits.reserve_tokens(&key, 200, &mut st).await.0,
            Verdict::Allowed
        );
        // More than the whole budget is capped to it.
        let big = KeyLimiter::new(
            "b",
            Quotas {
                requests_per_minute: None,
                tokens_per_minute: Some(50),
            },
        );
        assert_eq!(
            limits.reserve_tokens(&big, 500, &mut st).await,
            (Verdict::Allowed, 50)
        );
    }
}
