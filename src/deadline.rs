//! Timers on the request path: header and body read deadlines, the first
//! token, the gap between events, the whole request.
//!
//! They run on Pingora's coarse timer wheel (`pingora_timeout::fast_timeout`,
//! 10 ms resolution) rather than tokio's timer. Registering a tokio timer
//! that becomes its runtime's earliest wakes the runtime's driver, an
//! eventfd write and another trip through epoll: a profile of the gateway at
//! 64 connections showed 1.25 such writes per request, from the five or so
//! deadlines each request arms and re-arms. A fast timer goes into a
//! per-thread tree shared by every timer due in the same 10 ms, and costs a
//! wake-up only if it fires, which a deadline almost never does. Every
//! timeout the gateway has is tens of milliseconds or more, so 10 ms of
//! resolution is plenty.
//!
//! A timer stays in the wheel until its time comes, even after the request
//! that armed it finished, one entry per 10 ms slot that any request used:
//! with the 600 s request timeout that was 60,000 live entries per thread
//! after ten minutes of traffic, memory that grew for ten minutes before it
//! levelled off (a 90 s soak: +24% RSS). Deadlines 10 s or more away are
//! therefore rounded up to a whole second, so every request arming one in
//! the same second shares an entry (600 for the request timeout); such a
//! deadline fires up to a second late, which nothing that long cares about.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pingora_timeout::fast_timeout::{fast_sleep, fast_timeout};

/// From this far out, deadlines are kept to whole seconds (see above).
const COARSE_FROM: Duration = Duration::from_secs(10);

/// How long to sleep for a deadline `d` from `now`: `d` itself when short,
/// else up to the next whole second counted from a fixed origin, so that
/// deadlines armed within the same second share one wheel entry.
fn wheel_delay(now: Instant, d: Duration) -> Duration {
    if d < COARSE_FROM {
        return d;
    }
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    let Some(from_origin) = now.checked_duration_since(origin) else {
        return d;
    };
    let at = from_origin + d;
    let whole = Duration::from_secs(at.as_secs() + u64::from(at.subsec_nanos() > 0));
    whole - from_origin
}

/// Resolves once `at` has passed (at once if it already has).
pub async fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        fast_sleep(wheel_delay(now, at - now)).await;
    }
}

/// Resolves after `d`.
pub async fn sleep(d: Duration) {
    fast_sleep(wheel_delay(Instant::now(), d)).await;
}

/// `fut`'s output, or `None` when `d` passed first.
pub async fn within<F: Future>(d: Duration, fut: F) -> Option<F::Output> {
    fast_timeout(wheel_delay(Instant::now(), d), fut).await.ok()
}

/// A silence limit that every arrival restarts, without re-arming a timer
/// per arrival: [`Idle::touch`] only records the time, and [`Idle::stalled`]
/// sleeps again for whatever remains when its timer fires early.
#[derive(Debug)]
pub struct Idle {
    base: Instant,
    /// Nanoseconds from `base` to the last arrival.
    last: AtomicU64,
    /// The silence allowed.
    limit: Duration,
}

/// Why [`Idle::stalled`] gave up waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// Nothing arrived for the whole silence limit.
    Silent,
    /// The deadline passed.
    Overdue,
}

impl Idle {
    pub fn new(limit: Duration) -> Idle {
        Idle {
            base: Instant::now(),
            last: AtomicU64::new(0),
            limit,
        }
    }

    /// Something arrived: the silence starts over. Returns the time of
    /// arrival, so the caller need not read the clock again.
    pub fn touch(&self) -> Instant {
        let now = Instant::now();
        self.last.store(
            nanos(now.saturating_duration_since(self.base)),
            Ordering::Relaxed,
        );
        now
    }

    /// Resolves once nothing has arrived for the whole limit, or `deadline`
    /// passed, whichever comes first (silence when both have). One timer
    /// for both: a relay loop polls it on every chunk it reads.
    pub async fn stalled(&self, deadline: Instant) -> Stall {
        loop {
            let due =
                self.base + Duration::from_nanos(self.last.load(Ordering::Relaxed)) + self.limit;
            let now = Instant::now();
            if now >= due {
                return Stall::Silent;
            }
            if now >= deadline {
                return Stall::Overdue;
            }
            let until = due.min(deadline);
            fast_sleep(wheel_delay(now, until - now)).await;
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_the_whole_silence_after_the_last_touch() {
        let idle = Idle::new(Duration::from_millis(60));
        let started = Instant::now();
        let stalled = idle.stalled(started + Duration::from_secs(5));
        let touches = async {
            for _ in 0..4 {
                sleep(Duration::from_millis(30)).await;
                idle.touch();
            }
            std::future::pending::<()>().await;
        };
        let why = tokio::select! {
            why = stalled => why,
            () = touches => unreachable!(),
        };
        assert_eq!(why, Stall::Silent);
        // Four touches 30 ms apart, then 60 ms of silence; the wheel's
        // resolution is 10 ms.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(175), "{took:?}");
        assert!(took < Duration::from_millis(400), "{took:?}");
    }

    #[tokio::test]
    async fn a_deadline_before_the_silence_ends_the_wait_as_overdue() {
        let idle = Idle::new(Duration::from_millis(200));
        let started = Instant::now();
        let stalled = idle.stalled(started + Duration::from_millis(90));
        let touches = async {
            loop {
                sleep(Duration::from_millis(20)).await;
                idle.touch();
            }
        };
        let why = tokio::select! {
            why = stalled => why,
            () = touches => unreachable!(),
        };
        assert_eq!(why, Stall::Overdue);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(90), "{took:?}");
        assert!(took < Duration::from_millis(180), "{took:?}");
    }

    #[test]
    fn long_deadlines_share_whole_seconds_and_short_ones_stay_exact() {
        // The origin is fixed by the first long deadline of the process.
        let _ = wheel_delay(Instant::now(), COARSE_FROM);
        let now = Instant::now();
        let short = Duration::from_millis(2500);
        assert_eq!(wheel_delay(now, short), short);
        let long = Duration::from_secs(600);
        let a = wheel_delay(now, long);
        assert!(a >= long && a < long + Duration::from_secs(1), "{a:?}");
        // Armed a moment apart, two long deadlines end at the same instant.
        let later = now + Duration::from_millis(3);
        let b = wheel_delay(later, long);
        let (end_a, end_b) = (now + a, later + b);
        // (Or a whole second apart, when the 3 ms straddle a second.)
        let apart = end_a.max(end_b) - end_a.min(end_b);
        assert!(
            apart == Duration::ZERO || apart == Duration::from_secs(1),
            "{apart:?}"
        );
    }

    #[tokio::test]
    async fn sleep_until_the_past_is_immediate_and_within_times_out() {
        let started = Instant::now();
        sleep_until(
            started
                .checked_sub(Duration::from_secs(1))
                .unwrap_or(started),
        )
        .await;
        assert!(started.elapsed() < Duration::from_millis(5));
        assert_eq!(
            within(Duration::from_millis(500), async { 7 }).await,
            Some(7)
        );
        let never = within(Duration::from_millis(20), std::future::pending::<()>()).await;
        assert_eq!(never, None);
    }
}
